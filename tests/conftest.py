"""Shared fixtures: a temporary mldropd home with real feature data and real models."""

from __future__ import annotations

import datetime as dt
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from mldropd.demo import make_demo_models, write_features
from mldropd.settings import Settings, load_settings

N_ENTITIES = 3000
N_FEATURES = 12
DAYS = 3

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
[features]
path = "features"
[engine]
batch_rows = 1000
validate_timeout_s = 90
model_memory_mb = 4096
[dq]
av_max_rows = 2000
[scheduler]
retry_delay = 2
catchup_days = 2
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


@pytest.fixture(scope="session")
def feature_dates() -> list[dt.date]:
    return [today() - dt.timedelta(days=i) for i in range(DAYS)][::-1]


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real models built by the tests: a LightGBM classifier and a Pipeline with a lambda."""
    folder = tmp_path_factory.mktemp("models")
    gbm, logreg = make_demo_models(folder, N_FEATURES, "owner@example.com", n_rows=3000)
    return {"lgbm": gbm, "logreg": logreg}


@pytest.fixture
def home(tmp_path: Path, feature_dates: list[dt.date]) -> Path:
    write_features(tmp_path / "features", feature_dates, N_ENTITIES, N_FEATURES)
    (tmp_path / "config.toml").write_text(CONFIG.format(port=free_port()))
    return tmp_path


@pytest.fixture
def settings(home: Path) -> Settings:
    return load_settings(home / "config.toml", env={})


@pytest.fixture
def app(settings: Settings) -> Any:
    """The app without its lifespan: requests work, no batch job ever starts."""
    from mldropd.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Any:
    """A browser-like client; not entered as a context manager, so the lifespan never runs.
    Modules whose tests need the daemon running define their own `client`."""
    from litestar.testing import TestClient

    return TestClient(app, timeout=120)


@pytest.fixture
def make_user(settings: Settings) -> Callable[..., str]:
    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine

    engine = make_engine(settings.database.path)
    init_db(engine)

    def _make(email: str, **kwargs: Any) -> str:
        return create_user(engine, email, **kwargs)[1]

    return _make


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = 120.0,
    interval: float = 0.2,
    what: str = "condition",
) -> Any:
    """Poll until predicate() is truthy; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Daemon:
    """A real `mldropd serve` process on 127.0.0.1."""

    def __init__(self, home: Path, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "daemon.log"
        text = (home / "config.toml").read_text()
        self.port = int(text.split("port = ", 1)[1].split()[0])
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Daemon:
        env = {**os.environ, **self.env}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mldropd",
                    "serve",
                    "--config",
                    str(self.home / "config.toml"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited: {self.log.read_text()[-3000:]}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=60, what="daemon health")
        return self

    def kill(self, sig: int = 9) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            self.proc.wait(timeout=60)

    def stop(self) -> None:
        self.kill(15)


@pytest.fixture
def daemon(home: Path) -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def _start(**env: str) -> Daemon:
        d = Daemon(home, env).start()
        started.append(d)
        return d

    yield _start
    for d in started:
        d.kill()


@pytest.fixture(scope="session")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One sandbox fork server for the tests that drive the engine or model hosts directly."""
    from mldropd.sandbox.setup import Sandboxes

    settings = Settings()
    settings.server.work_dir = str(tmp_path_factory.mktemp("sandbox-work"))
    started = Sandboxes.start(settings)
    yield started
    started.stop()
