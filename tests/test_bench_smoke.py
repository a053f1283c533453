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
