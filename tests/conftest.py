"""Shared fixtures: a temporary mldropd home with real feature data and real models, the app
(`client` without its lifespan, `live_client` with it), and real servers (daemon, S3, SMTP,
Chromium, Spark). The plain helpers behind them are in tests/support/.

Tiers: `make check` runs `-m "not slow and not browser and not spark"`, the tests that start no
process that takes seconds; `make test` runs everything. A test that uses `live_client`,
`daemon`, `moto_url` or `sandboxes` is marked `slow` here (it starts the scheduler and batch
jobs, a daemon, a moto child server or sandboxed model hosts), one that uses `page` `browser`,
one that uses `spark` `spark`; other slow tests carry the mark themselves.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mldropd.demo import make_demo_models, write_features
from mldropd.settings import Settings, load_settings
from tests.support.daemon import Daemon
from tests.support.home import CONFIG, DAYS, N_ENTITIES, N_FEATURES, today
from tests.support.models import write_small_model
from tests.support.wait import free_port

# fixture -> the tier it puts a test in (each starts a process, a browser or Spark)
TIER_OF_FIXTURE = {
    "live_client": "slow",
    "daemon": "slow",
    "moto_url": "slow",
    "sandboxes": "slow",
    "page": "browser",
    "spark": "spark",
}


# Under pytest-xdist (`make test` runs `-n 2 --dist loadfile`) a module's tests run on one
# worker, so its module fixtures are built once. Modules are handed out in this order, the
# longest first, so that no worker is left with a long one at the end; the others follow in
# collection order. (Not --dist loadgroup: pytest-xdist 3.8 cannot set the group of a test on
# pytest 9.2, whose node ids are no longer the attribute xdist rewrites.)
LONGEST_MODULES = [
    "test_container",
    "test_spark_cluster",
    "test_spark",
    "test_spark_driver",
    "test_bench_smoke",
    "test_container_spark",
    "test_daemon",
    "test_dq_agreement",
    "test_demo",
    "test_s3_e2e",
    "test_intake",
    "test_progress_e2e",
    "test_browser_progress",
    "test_redteam_e2e",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        for fixture in getattr(item, "fixturenames", ()):
            if fixture in TIER_OF_FIXTURE:
                item.add_marker(TIER_OF_FIXTURE[fixture])
    rank = {module: n for n, module in enumerate(LONGEST_MODULES)}
    items.sort(key=lambda item: rank.get(Path(str(item.fspath)).stem, len(rank)))


@pytest.fixture(scope="session")
def feature_dates() -> list[dt.date]:
    return [today() - dt.timedelta(days=i) for i in range(DAYS)][::-1]


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real models built by the tests: a LightGBM classifier and a Pipeline with a lambda."""
    folder = tmp_path_factory.mktemp("models")
    gbm, logreg = make_demo_models(folder, N_FEATURES, "owner@example.com", n_rows=3000)
    return {"lgbm": gbm, "logreg": logreg}


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid model file, quick to validate (see tests/support/models.py)."""
    return write_small_model(tmp_path_factory.mktemp("small") / "small.dill")


@pytest.fixture
def home(tmp_path: Path, feature_dates: list[dt.date]) -> Path:
    write_features(tmp_path / "features", feature_dates, N_ENTITIES, N_FEATURES)
    (tmp_path / "config.toml").write_text(CONFIG.format(port=free_port()))
    return tmp_path


@pytest.fixture
def settings(home: Path) -> Settings:
    """The home's settings; a module overrides this fixture to change them for its app."""
    return load_settings(home / "config.toml", env={})


@pytest.fixture
def app(settings: Settings) -> Any:
    """The app without its lifespan: requests work, no batch job ever starts."""
    from mldropd.app import create_app

    return create_app(settings)


@pytest.fixture
def client(app: Any) -> Any:
    """A browser-like client; not entered as a context manager, so the lifespan never runs."""
    from litestar.testing import TestClient

    return TestClient(app, timeout=120)


@pytest.fixture
def live_client(settings: Settings) -> Iterator[Any]:
    """A client of the running app: lifespan entered, so the scheduler runs and batch jobs
    start. Tests that use it are in the slow tier."""
    from litestar.testing import TestClient

    from mldropd.app import create_app

    with TestClient(create_app(settings), timeout=120) as running:
        yield running


@pytest.fixture
def make_user(settings: Settings) -> Callable[..., str]:
    from mldropd.auth import create_user
    from mldropd.db import init_db, make_engine

    engine = make_engine(settings.database.path)
    init_db(engine)

    def _make(email: str, **kwargs: Any) -> str:
        return create_user(engine, email, **kwargs)[1]

    return _make


@pytest.fixture
def daemon(home: Path) -> Iterator[Callable[..., Daemon]]:
    """Start real `mldropd serve` processes on the home (env: extra variables); all killed at
    the end."""
    started: list[Daemon] = []

    def _start(**env: str) -> Daemon:
        d = Daemon(home, env).start()
        started.append(d)
        return d

    yield _start
    for d in started:
        d.kill()


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server in a child process, with the bucket tests.support.s3.BUCKET."""
    from tests.support.s3 import BUCKET, admin_client, start_child_server, stop_child

    proc, url = start_child_server(tmp_path_factory.mktemp("moto") / "server.log")
    try:
        admin_client(url).create_bucket(Bucket=BUCKET)
        yield url
    finally:
        stop_child(proc)


@pytest.fixture
def smtp_server() -> Iterator[Any]:
    """A real SMTP server on 127.0.0.1 that keeps what it receives; the test may stop it."""
    from tests.support.smtp import SmtpServer

    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh page of Debian's headless Chromium; never downloads a browser."""
    from tests.support.browser import chromium_page

    with chromium_page() as fresh:
        yield fresh


@pytest.fixture(scope="module")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One local[2] Spark session for the module."""
    from tests.support.spark import start_session

    session = start_session(tmp_path_factory.mktemp("warehouse"))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def sandboxes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One sandbox fork server for the tests that drive the engine or model hosts directly."""
    from mldropd.sandbox.setup import Sandboxes

    settings = Settings()
    settings.server.work_dir = str(tmp_path_factory.mktemp("sandbox-work"))
    started = Sandboxes.start(settings)
    yield started
    started.stop()


@pytest.fixture(scope="session")
def base_image() -> str:
    """The container image's base, made locally by .ci/base-image (no registry here)."""
    from tests.support.containers import make_base_image

    return make_base_image()


@pytest.fixture(scope="session")
def image(base_image: str) -> str:
    """The image, built by the docs' build command (cold about 6 min, warm seconds)."""
    from tests.support.containers import build_image

    return build_image(base_image)


@pytest.fixture(scope="session")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Feature slices from two days ago to tomorrow, readable by the container's user."""
    from tests.support.containers import write_container_features

    return write_container_features(tmp_path_factory.mktemp("container-features"))


@pytest.fixture
def containers(image: str, features: Path) -> Iterator[Any]:
    """A pod of the image (tests.support.containers.Pod) with the features mounted."""
    from tests.support.containers import pod

    with pod(image, features) as p:
        yield p
