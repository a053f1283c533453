"""Shared helpers of the performance benchmarks: feature data, model files, engine runs,
timing statistics, the printed table and the JSON result."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

RESULTS = Path(__file__).resolve().parent / "results"
DAY = dt.date(2026, 1, 15)
KEY = "entity_id"
ROW_GROUP = 131_072  # rows per Parquet row group (about 50 MB at 50 features), Spark-like


def feature_names(n: int) -> list[str]:
    return [f"f{i:02d}" for i in range(n)]


def write_features(
    root: Path,
    rows: int,
    n_features: int,
    *,
    day: dt.date = DAY,
    seed: int = 3,
    shift: dict[str, float] | None = None,
) -> Path:
    """One hive partition root/dt=DAY/part-0.parquet: entity_id + n_features doubles (standard
    normal, the named features moved by `shift` standard deviations; the same entities every
    day). Written chunk by chunk, so 10M rows never sit in memory at once."""
    folder = root / f"dt={day.isoformat()}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    names = feature_names(n_features)
    schema = pa.schema([(KEY, pa.int64())] + [(n, pa.float64()) for n in names])
    rng = np.random.default_rng(seed)
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, ROW_GROUP):
            n = min(ROW_GROUP, rows - start)
            values = rng.standard_normal((n_features, n))
            for name, by in (shift or {}).items():
                if name in names:
                    values[names.index(name)] += by
            arrays = [pa.array(np.arange(start, start + n, dtype=np.int64))]
            arrays += [pa.array(values[i]) for i in range(n_features)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    return path


def _training(n_features: int, rows: int = 20_000, seed: int = 5) -> tuple[Any, np.ndarray]:
    import pandas as pd

    rng = np.random.default_rng(seed)
    x = pd.DataFrame(rng.standard_normal((rows, n_features)), columns=feature_names(n_features))
    logit = x.iloc[:, : min(8, n_features)].to_numpy() @ np.linspace(1.0, -1.0, min(8, n_features))
    y = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return x, y


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: kind (lgbm | linear), its features and its input kind."""

    name: str
    kind: str
    features: tuple[str, ...]
    input: str = "pandas"


def subsets(n_features: int, k: int, size: int) -> list[tuple[str, ...]]:
    """k feature lists of `size` columns each, spread so their union is every column."""
    names = feature_names(n_features)
    size = min(size, n_features)
    step = max(1, (n_features - size) // max(1, k - 1)) if k > 1 else 0
    return [tuple(names[(i * step + j) % n_features] for j in range(size)) for i in range(k)]


def mixed_specs(n_features: int, k: int = 5, lgbm: int = 2) -> list[ModelSpec]:
    """k models, the first `lgbm` LightGBM (100 trees), the rest linear; one linear takes numpy."""
    feats = subsets(n_features, k, max(1, (n_features * 3) // 5))
    specs = []
    for i, f in enumerate(feats):
        if i < lgbm:
            specs.append(ModelSpec(f"gbm{i}", "lgbm", f))
        else:
            specs.append(ModelSpec(f"lin{i}", "linear", f, "numpy" if i == k - 1 else "pandas"))
    return specs


def linear_specs(n_features: int, k: int) -> list[ModelSpec]:
    """k linear models on half of the columns each (their union is every column)."""
    return [
        ModelSpec(f"lin{i}", "linear", f)
        for i, f in enumerate(subsets(n_features, k, max(1, n_features // 2)))
    ]


def fit_model(spec: ModelSpec, n_features: int, trees: int = 100, rows: int = 20_000) -> Any:
    """The fitted pipeline of a spec, trained on synthetic labelled rows."""
    x, y = _training(n_features, rows)
    cols = list(spec.features)
    if spec.kind == "lgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(n_estimators=trees, num_leaves=31, verbose=-1)
        return model.fit(x[cols], y)
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    model = Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(max_iter=300))])
    data = x[cols].to_numpy() if spec.input == "numpy" else x[cols]
    return model.fit(data, y)


def save_models(
    folder: Path, specs: Sequence[ModelSpec], n_features: int, data_rows: int = 20_000
) -> list[Path]:
    """Fit and save each spec with mldropd.save_model (contract check and dry run included).

    Trained on 20,000 rows (fewer for tiny smoke runs)."""
    train_rows = min(20_000, max(1_000, data_rows))
    from mldropd import save_model

    x, _ = _training(n_features, rows=200)
    paths = []
    for spec in specs:
        paths.append(
            save_model(
                folder / f"{spec.name}.dill",
                pipeline=fit_model(spec, n_features, rows=train_rows),
                features=list(spec.features),
                name=spec.name,
                input=spec.input,
                sample=x,
            )
        )
    return paths


def task_dicts(
    paths: Sequence[Path], specs: Sequence[ModelSpec], out: Path, owners: int = 1
) -> list[Any]:
    """ModelTasks for saved model files (models spread over `owners` owners, round robin)."""
    from mldropd.engines.base import ModelTask

    return [
        ModelTask(
            model_run_id=i + 1,
            model_id=i + 1,
            model_version=1,
            owner_id=1 + i % owners,
            path=Path(path),
            features=tuple(spec.features),
            input=spec.input,
            call="predict_proba",
            output="proba",
            entity_key=KEY,
            out_dir=out / f"model-{i + 1}",
            timeout_s=3600.0,
        )
        for i, (path, spec) in enumerate(zip(paths, specs, strict=True))
    ]


def feature_settings(root: Path) -> Any:
    from mldropd.settings import FeatureSettings

    return FeatureSettings(kind="parquet", path=str(root), entity_key=KEY, date_column="dt")


def start_sandboxes(work: Path) -> Any:
    """A warm fork server with every sandbox layer this machine offers, as the daemon has."""
    from mldropd.sandbox.setup import Sandboxes
    from mldropd.settings import Settings

    settings = Settings()
    settings.server.work_dir = str(work)
    settings.sandbox.require = []
    return Sandboxes.start(settings)


def run_engine(
    root: Path, tasks: list[Any], batch_rows: int, sandboxes: Any, memory_mb: int = 8192
) -> tuple[float, int]:
    """The local engine as a batch job runs it: the trusted reader and writer here, each
    owner's models in a sandboxed host (started and loaded in the time); (seconds, rows)."""
    from mldropd.engines.base import ScoringRequest
    from mldropd.engines.local import LocalEngine

    request = ScoringRequest(
        feature_settings(root), DAY, batch_rows, dt.datetime.now(dt.UTC), tuple(tasks)
    )
    started = time.perf_counter()
    outcomes = LocalEngine(sandboxes, memory_mb).score(request, heartbeat=lambda: None)
    seconds = time.perf_counter() - started
    failed = [o.error for o in outcomes.values() if not o.ok]
    if failed:
        raise RuntimeError(f"a benchmark model failed: {failed[0]}")
    return seconds, max(o.rows or 0 for o in outcomes.values())


def run_engine_process(
    root: Path, tasks: list[Any], batch_rows: int, work: Path, memory_mb: int = 8192
) -> dict[str, Any]:
    """The local engine in a fresh process, as a batch job: its peak RSS (the trusted reader
    and writer) and the largest peak RSS of its sandboxed hosts (the kernel's count)."""
    import dataclasses

    work.mkdir(parents=True, exist_ok=True)
    request = work / "engine.json"
    payload = {
        "root": str(root),
        "batch_rows": batch_rows,
        "memory_mb": memory_mb,
        "work": str(work),
        "tasks": [
            {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(t).items()}
            for t in tasks
        ],
    }
    request.write_text(json.dumps(payload))
    done = subprocess.run(
        [sys.executable, "-m", "bench.perf_common", str(request)],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parent.parent,
    )
    if done.returncode != 0:
        raise RuntimeError(f"engine process failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _engine_process(request_path: str) -> None:
    import resource

    from mldropd.engines.base import ModelTask, ScoringRequest
    from mldropd.engines.local import LocalEngine

    req = json.loads(Path(request_path).read_text())
    tasks = [
        ModelTask(
            **(
                t
                | {
                    "path": Path(t["path"]),
                    "out_dir": Path(t["out_dir"]),
                    "features": tuple(t["features"]),
                }
            )
        )
        for t in req["tasks"]
    ]
    sandboxes = start_sandboxes(Path(req["work"]) / "sandbox")
    engine = LocalEngine(sandboxes, req["memory_mb"])
    request = ScoringRequest(
        feature_settings(Path(req["root"])),
        DAY,
        req["batch_rows"],
        dt.datetime.now(dt.UTC),
        tuple(tasks),
    )
    started = time.perf_counter()
    outcomes = engine.score(request, heartbeat=lambda: None)
    seconds = time.perf_counter() - started
    sandboxes.stop()
    failed = [o.error for o in outcomes.values() if not o.ok]
    if failed:
        raise RuntimeError(f"a benchmark model failed: {failed[0]}")
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": max(o.rows or 0 for o in outcomes.values()),
                "reader_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "host_peak_mb": max(engine.host_peaks_mb.values(), default=0.0),
            }
        )
    )


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall seconds of repeat calls of fn."""
    out = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(mem_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain aligned table on stdout."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for i, r in enumerate(cells):
        print(
            "  "
            + "  ".join(
                c.rjust(w) if j else c.ljust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def target_row(name: str, value: float, op: str, target: float) -> list[Any]:
    """A row of the targets table: measure, value, target, met?"""
    met = value <= target if op == "<=" else value >= target
    return [name, value, f"{op} {target}", "met" if met else "MISSED"]


def write_result(name: str, result: dict[str, Any], out: Path | None = None) -> Path:
    """bench/results/<name>.json (or out), with the machine and the command line."""
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "command": " ".join(["python -m", f"bench.{name}", *sys.argv[1:]]),
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        **result,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"\nresult written to {path}")
    return path


if __name__ == "__main__":
    _engine_process(sys.argv[1])
