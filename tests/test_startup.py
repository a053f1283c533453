"""Start-up (issue 19): `mldropd run` starts its fork server before it imports anything heavy,
forks its batch job from it as the daemon does, and a batch pays no library import but
Polars' (which cannot be preloaded: see BATCH_JOB_MODULES)."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mldropd.sandbox.environment import clean_environment
from mldropd.sandbox.setup import BATCH_JOB_MODULES, Sandboxes
from mldropd.settings import Settings

DATA = ("numpy", "pandas", "pyarrow", "duckdb", "polars", "sklearn", "scipy", "lightgbm")
DATABASE = ("sqlalchemy", "sqlmodel", "alembic", "apscheduler")
# What a batch job imports after its fork, beyond what BATCH_JOB_MODULES names: the DQ step.
JOB_LATER = ("mldropd.batch.quality",)


def _python(code: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()[-1]


def test_the_cli_imports_no_database_or_data_library() -> None:
    """`mldropd run` starts its fork server first: nothing heavy may load before."""
    code = (
        "import json, sys; import mldropd.cli; "
        f"print(json.dumps([m for m in {DATA + DATABASE!r} if m in sys.modules]))"
    )
    assert json.loads(_python(code)) == []


@pytest.mark.slow  # imports the data libraries: seconds
def test_the_batch_job_preload_is_complete_and_starts_no_thread() -> None:
    """In a fork server's environment: the batch job's modules (the DQ's among them) start no thread
    of their own (a fork copies only the forking thread; Polars' pool would hang), and what
    the job imports after its fork brings no library but Polars."""
    code = f"""
import json, os, sys
def threads(): return len(os.listdir("/proc/self/task"))
import numpy, pandas, pyarrow, dill  # the basics every fork server preloads
import scipy.linalg  # and SciPy's OpenBLAS (its pool is fork-safe), in [sandbox] preload
before = threads()
for name in {BATCH_JOB_MODULES!r}:
    __import__(name)
after = threads()
had = set(sys.modules)
for name in {JOB_LATER!r}:
    __import__(name)
new = {{m.split(".")[0] for m in set(sys.modules) - had}}
libraries = sorted(new - set(sys.stdlib_module_names) - {{"mldropd", "_distutils_hack"}})
print(json.dumps([before, after, libraries]))
"""
    before, after, libraries = json.loads(_python(code, env=clean_environment(2)))
    assert after == before
    assert {"polars" if "polars" in name else name for name in libraries} == {"polars"}


@pytest.mark.slow
def test_a_fork_server_imports_on_request_only_when_started_for_one_command(
    tmp_path: Path,
) -> None:
    settings = Settings()
    settings.server.work_dir = str(tmp_path)
    settings.sandbox.preload = []  # the daemon's list, kept short here
    own = Sandboxes.start(settings, preload=["json"])  # as `mldropd run` and a job start one
    daemons = Sandboxes.start(settings)
    try:
        assert own.server.preload(["colorsys", "not a module", "no_such_module_here"]) == [
            "colorsys"
        ]
        assert "colorsys" in own.server.ping()["preloaded"]
        assert daemons.server.preload(["colorsys"]) == []
        assert "colorsys" not in daemons.server.ping()["preloaded"]
    finally:
        own.stop()
        daemons.stop()


@pytest.mark.slow
def test_a_model_cannot_make_a_fork_server_import_a_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attack: a model's load code (it runs in the sandbox) sets its class's `__module__` to
    "venv.__main__", so the pipeline type it reports names a module that runs `python -m venv`
    when imported: with the fork server's own arguments (it builds environments there) and
    then SystemExit, which ends the server. A job's server imports the models' modules ahead
    of loading them, outside any sandbox; only modules of the preloaded libraries are."""
    from mldropd.engines import FORKSERVER_ENV, Engines, preload_for

    monkeypatch.delenv(FORKSERVER_ENV, raising=False)
    monkeypatch.chdir(tmp_path)  # were the guard gone, what venv builds lands here
    settings = Settings()
    settings.server.work_dir = str(tmp_path)
    settings.sandbox.preload = ["json"]  # the operator's libraries: json alone
    hostile = ["venv.__main__.Model", "this.Model", "json.decoder.JSONDecoder"]
    assert preload_for(hostile, settings.sandbox.preload)[-1] == "json.decoder"
    # A job's own fork server, started with what its models are made of (mldropd run's job
    # asks its command's server the same list, on request).
    engines = Engines(settings)
    engines.prepare(hostile)
    try:
        server = engines.sandboxes().server  # type: ignore[attr-defined]
        preloaded = server.ping()["preloaded"]  # the server is alive, and says what it imported
        assert "json.decoder" in preloaded
        assert not {"venv.__main__", "this"} & set(preloaded)
        own = Sandboxes.start(settings, preload=["json"])  # as `mldropd run` starts one
        try:
            asked = own.server.preload(preload_for(hostile, settings.sandbox.preload))
            assert "json.decoder" in asked and "venv.__main__" not in asked
            assert own.server.ping()["pong"]
        finally:
            own.stop()
    finally:
        engines.close()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("mldropd")) == []


@pytest.mark.slow
def test_mldropd_run_forks_its_batch_job_and_loads_no_data_library(
    home: Path, settings: Settings, model_files: dict[str, Path]
) -> None:
    """The command plans and watches; the job it forks from its fork server does the work."""
    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine
    from mldropd.intake import UploadForm, register_file
    from mldropd.store import make_store

    db = make_engine(settings.database.path)
    init_db(db)
    user = create_user(db, "ann@example.com")[0]
    path = model_files["logreg"]
    model, _ = register_file(
        db, make_store(settings.storage), settings, user, path, UploadForm(path.name)
    )
    code = f"""
import json, os, sys
import mldropd.cli_run as cli_run
def leave(code):
    print(json.dumps([code, [m for m in {DATA!r} if m in sys.modules]]), flush=True)
    os._exit(code)
cli_run._exit = leave
from mldropd.cli import main
main(["run", "--model", "{model.id}", "--quiet", "--config", "{home / "config.toml"}"])
"""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=home
    )
    code_, loaded = json.loads(done.stdout.strip().splitlines()[-1])
    # DuckDB only: the runner counts the slice's rows to know whether the batch goes to the
    # Spark batch driver (mldropd.batch.driver.uses_spark), before it forks the job.
    assert (code_, [m for m in loaded if m != "duckdb"]) == (0, []), done.stdout + done.stderr
    assert f"churn_logreg (id {model.id})" in done.stdout
    assert "succeeded, 3000 rows" in done.stdout


def test_e2e_phases_add_up_to_the_wall_time() -> None:
    """Every second of a run is in one phase; a phase whose end is not logged passes its time
    on to the next one."""
    from bench.e2e import PHASES, phases

    def event(text: str, at: float) -> dict[str, str]:
        stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat().replace("+00:00", "Z")
        return {"ts": stamp, "event": text}

    t0 = 1_800_000_000.0
    log = [
        event("audit: cli:root run.request model:1", t0 + 0.5),
        event("batch started with 1 model(s)", t0 + 1.5),
        event("scoring with the local engine (auto)", t0 + 1.75),
        event("local engine: 100000 rows", t0 + 2.5),
        event("model run succeeded rows=100000", t0 + 2.75),
        event("daemon stopped", t0 + 3.0),
    ]
    got = phases(log, t0, t0 + 3.25, PHASES)
    assert got == {
        "start_s": 0.5,
        "fork_s": 1.0,
        "prepare_s": 0.25,
        "scoring_s": 0.75,
        "dq_s": 0.25,
        "report_s": 0.25,
        "exit_s": 0.25,
    }
    without_scoring = phases([e for e in log if "scoring" not in e["event"]], t0, t0 + 3.25, PHASES)
    assert without_scoring["prepare_s"] is None and without_scoring["scoring_s"] == 1.0
    assert sum(v or 0.0 for v in without_scoring.values()) == 3.25
