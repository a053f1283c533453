"""Operations: the Containerfile lints clean, the wheel is complete, /readyz names its checks,
/metrics after a real run, backup and restore against a running daemon, check-config."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import TestClient
from prometheus_client.parser import text_string_to_metric_families

from mldropd.settings import Settings
from mldropd.store.base import sha256_file
from tests.support.wait import wait_for

ROOT = Path(__file__).resolve().parents[1]


def mldropd(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mldropd", *args, "--config", str(home / "config.toml")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", **env},
    )


# -- image ------------------------------------------------------------------------------------
def test_containerfile_lints_clean_and_has_what_an_operator_expects() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), "--no-color", str(ROOT / "Containerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    lines = (ROOT / "Containerfile").read_text().splitlines()
    for i, line in enumerate(lines):  # every ignored rule is justified just above it
        if "hadolint ignore=" in line:
            assert lines[i - 1].startswith("# ") and "hadolint" not in lines[i - 1], line
    text = "\n".join(lines)
    assert "openjdk-17-jre-headless" in text
    assert re.search(r"^USER 10001", text, re.M)  # not root
    assert 'VOLUME ["/var/lib/mldropd"]' in text and "EXPOSE 8080" in text
    assert "HEALTHCHECK" in text and "/healthz" in text
    assert "MLDROPD_CONFIG=/var/lib/mldropd/config.toml" in text
    assert text.index("COPY pyproject.toml ./") < text.index("COPY mldropd ./mldropd")


@pytest.mark.slow  # pip builds the wheel in a real process
def test_the_wheel_ships_web_jobs_and_migrations(tmp_path: Path) -> None:
    """What the image's `pip install .` installs must be a working daemon."""
    src = tmp_path / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("mldropd", "jobs", "web"):
        shutil.copytree(ROOT / name, src / name, ignore=skip)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(src)],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("mldropd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "mldropd/web/templates/base.html",
        "mldropd/web/templates/_models_table.html",
        "mldropd/web/static/style.css",
        "mldropd/web/static/htmx-2.0.11.min.js",
        "mldropd/jobs/score_batch.py",
        "mldropd/jobs/model_host.py",
        "mldropd/jobs/forkserver.py",
        "mldropd/migrations/env.py",
        "mldropd/migrations/script.py.mako",
    }
    assert expected <= names, expected - names
    # jobs/ and web/ install inside the mldropd namespace, never as top-level packages
    assert not {n for n in names if n.startswith(("jobs/", "web/"))}
    listed = {
        str(p.parent.relative_to(ROOT)).replace("/", ".")
        for p in (ROOT / "mldropd").rglob("__init__.py")
    }
    assert {f"{pkg.replace('.', '/')}/__init__.py" for pkg in listed} <= names, (
        "a package under mldropd/ is missing from [tool.setuptools] packages"
    )
    revisions = {p.name for p in (ROOT / "mldropd/migrations/versions").glob("0*.py")}
    assert {f"mldropd/migrations/versions/{r}" for r in revisions} <= names
    # an SPDX licence expression (PEP 639), not the deprecated table, and the text shipped
    metadata = zipfile.ZipFile(wheel).read("mldropd-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert "mldropd-0.1.0.dist-info/licenses/LICENSE" in names


# -- health -----------------------------------------------------------------------------------
def test_readyz_names_each_check_and_says_what_is_wrong(
    live_client: TestClient[Any], settings: Settings, home: Path
) -> None:
    ready = live_client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {
        "database": "ok",
        "store": "ok",
        "scheduler": "ok",
        "features": "ok",
        "disk": "ok",
        "sandbox": "ok",
    }
    layers = ready.json()["sandbox"]
    assert set(layers["required"]) <= set(layers["in_force"]) and not layers["missing"]
    assert live_client.get("/healthz").json()["status"] == "ok"
    settings.server.min_free_disk_mb = 10**9  # a petabyte
    (home / "features").rename(home / "features.moved")
    ready = live_client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == body["checks"]["store"] == "ok"
    assert "min_free_disk_mb = 1000000000" in body["checks"]["disk"]
    assert "feature folder" in body["checks"]["features"]


# -- metrics ----------------------------------------------------------------------------------
def _token(home: Path) -> str:
    out = mldropd(home, "users", "add", "ann@example.com")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def _upload(url: str, token: str, path: Path) -> dict[str, Any]:
    with open(path, "rb") as f:
        model = httpx.post(
            f"{url}/api/v1/models",
            headers={"Authorization": f"Bearer {token}"},
            files={"file": (path.name, f)},
            timeout=120,
        )
    assert model.status_code == 201, model.text
    return dict(model.json())


def _upload_and_score(url: str, token: str, path: Path) -> dict[str, Any]:
    bearer = {"Authorization": f"Bearer {token}"}
    model = _upload(url, token, path)
    run = httpx.post(f"{url}/api/v1/models/{model['id']}/runs", headers=bearer, json={})
    run_id = run.json()["run_id"]

    def finished() -> dict[str, Any] | None:
        state = httpx.get(f"{url}/api/v1/runs/{run_id}", headers=bearer, timeout=30).json()
        return state if state["status"] in ("succeeded", "failed") else None

    assert wait_for(finished, timeout=180, what="the run")["status"] == "succeeded"
    return model


@pytest.mark.slow
def test_metrics_after_a_real_run(
    home: Path, daemon: Callable[..., Any], model_files: dict[str, Path]
) -> None:
    token = _token(home)
    d = daemon(MLDROPD_SCHEDULER__SWEEP="0 0 * * *")  # today's sweep is due: logged at start
    _upload_and_score(d.url, token, model_files["lgbm"])
    text = httpx.get(f"{d.url}/metrics", timeout=30).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("mldropd_model_runs", status="succeeded") == 1
    assert value("mldropd_batch_runs", status="succeeded") == 1
    assert value("mldropd_rows_scored") == 3000
    assert value("mldropd_model_run_seconds_count", status="succeeded") == 1
    assert value("mldropd_model_run_seconds_bucket", status="succeeded", le="+Inf") == 1
    assert value("mldropd_model_run_seconds_sum", status="succeeded") > 0
    assert value("mldropd_batch_run_seconds_count", status="succeeded") == 1
    assert sum(v for (n, _), v in samples.items() if n == "mldropd_dq_results") == 1
    assert value("mldropd_uploads") == 1
    assert value("mldropd_upload_bytes") == model_files["lgbm"].stat().st_size
    assert value("mldropd_retries_pending") == 0
    assert value("mldropd_outbox_backlog") >= 0
    assert value("mldropd_scheduler_running") == 1
    assert value("mldropd_sweep_next_timestamp_seconds") > time.time()
    assert value("mldropd_sweep_last_timestamp_seconds") <= time.time()
    assert value("mldropd_sweep_last_lag_seconds") >= 0
    assert value("process_resident_memory_bytes") > 10_000_000
    assert value("process_cpu_seconds_total") > 0


# -- backup and restore -----------------------------------------------------------------------
@pytest.mark.slow
def test_backup_and_restore_with_a_running_daemon(
    home: Path, daemon: Callable[..., Any], model_files: dict[str, Path], tmp_path: Path
) -> None:
    token = _token(home)
    d = daemon()
    model = _upload(d.url, token, model_files["logreg"])
    folder = tmp_path / "backup"
    out = mldropd(home, "backup", str(folder))  # while the daemon runs
    assert out.returncode == 0, out.stderr
    manifest = json.loads((folder / "manifest.json").read_text())
    keys = {a["key"]: a for a in manifest["artifacts"]}
    artifact = next(k for k in keys if k.endswith("/model.dill"))
    assert keys[artifact]["sha256"] == sha256_file(home / "artifacts" / artifact)
    assert (folder / "artifacts" / artifact).is_file() and manifest["missing"] == []
    with sqlite3.connect(folder / "mldropd.db") as con:
        assert con.execute("SELECT email FROM user").fetchall() == [("ann@example.com",)]

    refused = mldropd(home, "restore", str(folder))
    assert refused.returncode != 0 and "stop it before restoring" in refused.stderr
    assert mldropd(home, "backup", str(folder)).returncode != 0  # never over a backup

    d.stop()
    (home / "mldropd.db").unlink()  # disaster: database and artifacts lost
    for suffix in ("-wal", "-shm"):
        (home / f"mldropd.db{suffix}").unlink(missing_ok=True)
    shutil.rmtree(home / "artifacts")
    restored = mldropd(home, "restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert sha256_file(home / "artifacts" / artifact) == keys[artifact]["sha256"]

    again = daemon()
    bearer = {"Authorization": f"Bearer {token}"}
    got = httpx.get(f"{again.url}/api/v1/models/{model['id']}", headers=bearer, timeout=30)
    assert got.status_code == 200 and got.json()["name"] == model["name"]
    assert got.json()["version"] == 1

    (folder / "artifacts" / artifact).write_bytes(b"damaged")
    again.stop()
    damaged = mldropd(home, "restore", str(folder))
    assert damaged.returncode != 0 and "the backup is damaged" in damaged.stderr


# -- configuration ----------------------------------------------------------------------------
@pytest.mark.slow  # the CLI in a real process
def test_check_config_shows_each_source_and_redacts_secrets(home: Path) -> None:
    config = home / "config.toml"
    config.write_text(
        config.read_text()
        + '[storage]\nendpoint_url = "http://minio:s3cr3t-pw@minio:9000"\n'
        + '[email]\npassword_file = "smtp-password"\n'
    )
    out = mldropd(home, "check-config", "--host", "0.0.0.0", MLDROPD_DQ__PSI_WARN="0.2")
    assert out.returncode == 0, out.stderr
    lines = {line.split(" = ")[0]: line for line in out.stdout.splitlines() if " = " in line}
    assert lines["batch_rows"].startswith("batch_rows = 1000  # [file]")
    assert "[environment MLDROPD_DQ__PSI_WARN]" in lines["psi_warn"]
    assert "[flag]" in lines["host"] and '"0.0.0.0"' in lines["host"]
    assert "[default]" in lines["log_format"]
    assert lines["password_file"].startswith('password_file = "<redacted>"')
    assert "s3cr3t-pw" not in out.stdout and "smtp-password" not in out.stdout
    assert "http://minio:<redacted>@minio:9000" in lines["endpoint_url"]
