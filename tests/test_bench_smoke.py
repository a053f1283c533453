"""Smoke runs of the benchmark scripts in bench/ at tiny sizes (they must keep working)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each benchmark scores or serves in real processes

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.spark
def test_spark_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "spark_fused.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.spark_fused",
            "--rows",
            "3000",
            "--features",
            "6",
            "--files",
            "2",
            "--ks",
            "1,2",
            "--repeats",
            "1",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    doc = json.loads(out.read_text())
    assert doc["rows"] == 3000 and [r["k"] for r in doc["results"]] == [1, 2]
    for row in doc["results"]:
        assert row["fused_s"] > 0 and row["separate_s"] > 0
        assert row["speedup"] == pytest.approx(row["separate_s"] / row["fused_s"])
    assert "| 2 |" in result.stdout and "separate / fused" in result.stdout


@pytest.mark.spark
def test_spark_sandbox_bench_tiny(tmp_path: Path) -> None:
    out = tmp_path / "spark_sandbox.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.spark_sandbox",
            "--rows",
            "3000",
            "--features",
            "6",
            "--files",
            "2",
            "--k",
            "3",
            "--repeats",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    doc = json.loads(out.read_text())
    assert doc["args"]["rows"] == 3000 and doc["args"]["k"] == 3
    assert {m["owner"] for m in doc["models"]} == {1, 2}
    for side in ("sandboxed", "in-process"):  # both sides measured, interleaved repeats
        assert len(doc["times_s"][side]) == 2 and all(t > 0 for t in doc["times_s"][side])
        assert doc["first_pass_s"][side] > 0
        assert len(doc["cpu_s"][side]) == 2 and all(c > 0 for c in doc["cpu_s"][side])
    assert doc["ratio_sandboxed_over_in_process"] == pytest.approx(
        doc["median_s"]["sandboxed"] / doc["median_s"]["in-process"]
    )
    assert doc["cpu_ratio_sandboxed_over_in_process"] == pytest.approx(
        doc["median_cpu_s"]["sandboxed"] / doc["median_cpu_s"]["in-process"]
    )
    assert doc["session_start_s"] > 0 and doc["machine"]["load_average_during"]["samples"] >= 1
    # The honest part: both sides scored every row of every model with the same scores (the
    # script also fails on any pass whose tables differ), and the sandboxed side's hosts were
    # confined with the layers [sandbox] require asks for.
    sandboxed, in_process = doc["scores"]["sandboxed"], doc["scores"]["in-process"]
    assert set(sandboxed) == {"1", "2", "3"} and sandboxed == in_process
    for run in sandboxed.values():
        assert run["rows"] == 3000 and 0 < run["score_sum"] < 3000 and len(run["sha256"]) == 64
    assert len({run["sha256"] for run in sandboxed.values()}) == 3  # three different models
    assert doc["scores_agree"] is True
    assert all(w["mldropd"].startswith(str(ROOT)) for w in doc["workers"])
    layers = [w["sandbox_layers"] for w in doc["workers"] if w["sandbox_layers"]]
    assert layers and all(set(doc["sandbox"]["require"]) <= set(found) for found in layers)
    assert "sandboxed / in-process" in result.stdout


def test_spark_sandbox_bench_compares_scores() -> None:
    """The comparison the Spark sandbox benchmark relies on fails on one changed score."""
    import pyarrow as pa

    from bench.spark_sandbox import check_same, fingerprint

    table = pa.table({"entity_id": [1, 2, 3], "score": [0.1, 0.2, 0.3]})
    changed = pa.table({"entity_id": [1, 2, 3], "score": [0.1, 0.2, 0.30000000000000004]})
    check_same({7: table}, {7: table}, "same")
    assert fingerprint({7: table}) != fingerprint({7: changed})
    with pytest.raises(AssertionError, match="model run 7 differs"):
        check_same({7: table}, {7: changed}, "changed")


def test_spark_vs_mlflow_bench_compares_scores(tmp_path: Path) -> None:
    """The score check of the Spark-vs-MLflow benchmark fails on one changed score or a missing
    key. (No smoke run: its three Spark sessions take minutes here; MLflow is an optional extra.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.perf_common import fit_model, linear_specs, write_features
    from bench.spark_vs_mlflow import compare

    slice_dir = write_features(tmp_path / "features", 200, 4).parent
    spec = linear_specs(4, 1)[0]
    fitted = fit_model(spec, 4, rows=500)
    frame = pq.read_table(slice_dir).to_pandas()
    truth = fitted.predict_proba(frame[list(spec.features)])[:, 1]
    changed_one = truth.copy()
    changed_one[0] += 1e-6
    sides = {}
    for name, scores, keys in (
        ("right", truth, frame["entity_id"]),
        ("changed", changed_one, frame["entity_id"]),
        ("short", truth[1:], frame["entity_id"][1:]),
    ):
        sides[name] = tmp_path / name
        sides[name].mkdir()
        pq.write_table(pa.table({"entity_id": keys, "score": scores}), sides[name] / "p.parquet")
    [same] = compare(slice_dir, [fitted], [spec], [sides["right"]], [sides["right"]])
    assert same["within_tolerance"] and same["a_bit_identical"] == 200
    [changed] = compare(slice_dir, [fitted], [spec], [sides["right"]], [sides["changed"]])
    assert not changed["within_tolerance"] and changed["b_max_abs_diff"] > 1e-7
    [short] = compare(slice_dir, [fitted], [spec], [sides["short"]], [sides["right"]])
    assert not short["within_tolerance"] and short["a_same_keys"] is False


# -- local engine, memory, API and page benchmarks (issue 9): tiny sizes, no timing checks ----


def _doc(path: Path) -> dict:
    doc = json.loads(path.read_text())
    assert doc["machine"]["cpus"] and doc["command"].startswith("python -m bench.")
    return doc


def test_engine_limit_bench_tiny(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bench import engine_limit

    out = tmp_path / "engine_limit.json"
    result = engine_limit.main(
        [
            "--rows",
            "3000",
            "--features",
            "6",
            "--models",
            "3",
            "--lgbm",
            "1",
            "--batch-rows",
            "1000",
            "--repeat",
            "1",
            "--out",
            str(out),
        ]
    )
    doc = _doc(out)
    assert doc["ratio"] == result["ratio"] > 0 and len(doc["engine_s"]) == 1
    assert doc["bit_identical"] == [True, True, True]  # scores equal predict_proba on the day
    assert set(doc["reads_s"]) == {"pyarrow", "polars", "duckdb"}
    assert {"landlock", "seccomp"} <= set(doc["sandbox_layers"])  # measured inside the sandbox
    assert "engine / limit" in capsys.readouterr().out


def test_fused_local_bench_tiny(tmp_path: Path) -> None:
    from bench import fused_local

    out = tmp_path / "fused_local.json"
    fused_local.main(
        [
            "--rows",
            "3000",
            "--features",
            "6",
            "--models",
            "3",
            "--batch-rows",
            "1000",
            "--repeat",
            "1",
            "--out",
            str(out),
        ]
    )
    doc = _doc(out)
    assert all(len(v) == 1 and v[0] > 0 for v in doc["seconds"].values())
    assert doc["ratio"] == pytest.approx(
        doc["seconds"]["separate_engine"][0] / doc["seconds"]["fused_engine"][0]
    )


def test_memory_flat_bench_tiny(tmp_path: Path) -> None:
    from bench import memory_flat

    out = tmp_path / "memory_flat.json"
    memory_flat.main(
        [
            "--small",
            "2000",
            "--large",
            "6000",
            "--features",
            "6",
            "--models",
            "2",
            "--batch-rows",
            "1000",
            "--repeat",
            "1",
            "--out",
            str(out),
        ]
    )
    doc = _doc(out)
    assert set(doc["peak_rss_mb"]) == {"2000", "6000"}
    assert all(v > 50 for v in doc["peak_rss_mb"].values())  # a real process's RSS, in MB
    assert doc["ratio"] == pytest.approx(doc["peak_rss_mb"]["6000"] / doc["peak_rss_mb"]["2000"])


def test_planning_bench_tiny(tmp_path: Path) -> None:
    from bench import planning

    out = tmp_path / "planning.json"
    planning.main(
        ["--models", "40", "--due", "8", "--days", "3", "--repeat", "2", "--out", str(out)]
    )
    doc = _doc(out)
    assert doc["planned_runs"] == 8 and len(doc["total_s"]) == 2


def test_dashboard_bench_tiny(tmp_path: Path) -> None:
    from bench import dashboard

    out = tmp_path / "dashboard.json"
    dashboard.main(
        ["--models", "12", "--days", "4", "--due", "3", "--repeat", "2", "--out", str(out)]
    )
    doc = _doc(out)
    assert doc["listed"] == 12
    assert {"/api/v1/models", "/", "/models"} <= set(doc["seconds"])


def test_api_latency_bench_tiny(tmp_path: Path) -> None:
    from bench import api_latency

    out = tmp_path / "api_latency.json"
    api_latency.main(
        [
            "--rows",
            "3000",
            "--features",
            "6",
            "--models",
            "1",
            "--lgbm",
            "0",
            "--listed",
            "5",
            "--clients",
            "3",
            "--requests",
            "4",
            "--repeat",
            "1",
            "--out",
            str(out),
        ]
    )
    doc = _doc(out)
    assert {k: len(v) for k, v in doc["latency_s"].items()} == {
        "owner/idle": 12,
        "owner/busy": 12,
        "admin/idle": 12,
        "admin/busy": 12,
    }
    assert doc["listed"] == {"owner": 1, "admin": 6} and min(doc["p99_s"].values()) > 0


def test_progress_cost_bench_tiny(tmp_path: Path) -> None:
    from bench import progress_cost

    out = tmp_path / "progress_cost.json"
    progress_cost.main(
        ["--rows", "6000", "--models", "2", "--batch-rows", "500", "--repeat", "1"]
        + ["--writes", "5", "--out", str(out)]
    )
    doc = _doc(out)
    assert doc["writes"][0] >= 1 and doc["write_ms"] > 0  # the recorder wrote while scoring
    assert all(len(v) == 1 and v[0] > 0 for v in doc["seconds"].values())
