"""Scoring engines behind one interface (mldropd.engines.base.ScoringEngine).

`Engines` is what a batch job holds: it picks the engine of a batch (choose_engine), starts
the sandbox fork server or the Spark session the first time one is needed, and keeps both for
the job's next batches (a backfill's dates, a sweep's retries) instead of starting them again.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from mldropd.engines.base import (
    ModelTask,
    Outcome,
    Progress,
    ScoringEngine,
    ScoringRequest,
    choose_engine,
    timeout_of,
)
from mldropd.settings import Settings

if TYPE_CHECKING:
    from mldropd.sandbox.forkserver import ForkServer

__all__ = [
    "EngineUnavailable",
    "Engines",
    "ModelTask",
    "Outcome",
    "Progress",
    "ScoringEngine",
    "ScoringRequest",
    "choose_engine",
    "timeout_of",
]

log = logging.getLogger(__name__)

FORKSERVER_ENV = "MLDROPD_FORKSERVER"  # a batch job forked by the daemon uses its fork server


class EngineUnavailable(Exception):
    """The engine cannot run here; the message says what to install or set."""


def pyspark_available() -> bool:
    return importlib.util.find_spec("pyspark") is not None


def under_spark_submit() -> bool:
    """True when this Python process was started by spark-submit (it owns master and conf)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


_BASE_PRELOAD = ["numpy", "pandas", "pyarrow", "dill"]


def preload_for(pipeline_types: list[str], libraries: Sequence[str] = ()) -> list[str]:
    """The modules a job's fork server imports: the basics, and the modules the models' classes
    come from ("lightgbm.sklearn.LGBMClassifier" -> lightgbm.sklearn).

    A pipeline type is the model's word (its class's `__module__` is whatever the model set), and
    the fork server is trusted: it imports a model's module only inside a library the operator
    preloads anyway (`libraries`: [sandbox] preload; their packages' top level) and never a
    `__main__` (some run a program when imported: `venv.__main__` builds a virtual environment
    from the server's own arguments). Anything else the host imports itself, in its sandbox."""
    allowed = {name.split(".")[0] for name in libraries}
    modules = [t.rsplit(".", 1)[0] for t in pipeline_types if "." in t]
    wanted = [m for m in modules if m.split(".")[0] in allowed and "__main__" not in m.split(".")]
    return list(dict.fromkeys(_BASE_PRELOAD + wanted))


class Engines:
    """The engines of one batch job, started lazily and kept for its batches."""

    def __init__(self, settings: Settings, sandboxes: object | None = None) -> None:
        self.settings = settings
        self._sandboxes = sandboxes
        self._owned_sandboxes = False
        self._spark: ScoringEngine | None = None
        self._local: ScoringEngine | None = None

    def choose(
        self,
        tasks: list[ModelTask],
        requested: dict[str, str | None],
        count_rows: Callable[[], int],
    ) -> tuple[str, str]:
        return choose_engine(
            self.settings.features,
            self.settings.engine,
            requested,
            count_rows=count_rows,
            spark_installed=pyspark_available(),
            under_spark_submit=under_spark_submit(),
        )

    def sandboxes(self) -> object:
        """The fork server: the daemon's (when it forked this job), else one of our own."""
        if self._sandboxes is None:
            from mldropd.sandbox.forkserver import ForkServer
            from mldropd.sandbox.setup import Sandboxes

            path = os.environ.get(FORKSERVER_ENV)
            if path:
                self._sandboxes = Sandboxes(self.settings, ForkServer.connect(path))
            else:
                self._sandboxes = Sandboxes.start(self.settings)
                self._owned_sandboxes = True
        return self._sandboxes

    def prepare(self, pipeline_types: list[str]) -> None:
        """Have the fork server import what the models are made of while the batch is prepared:
        a job's own server is started with just that; the server that forked this job (one
        `mldropd run` started) is asked for it, in the background (the daemon's long-lived
        server has [sandbox] preload and imports nothing on request)."""
        from mldropd.sandbox.forkserver import ForkServer
        from mldropd.sandbox.setup import Sandboxes

        modules = preload_for(pipeline_types, self.settings.sandbox.preload)
        path = os.environ.get(FORKSERVER_ENV)
        if self._sandboxes is None and not path:
            self._sandboxes = Sandboxes.start(self.settings, wait=False, preload=modules)
            self._owned_sandboxes = True
            return
        # Not connected here: a Spark batch never needs the server, and one that is gone
        # fails the models that need it, when they do (Engines.local).
        given = self._sandboxes
        server = given.server if isinstance(given, Sandboxes) else ForkServer(path or "")
        threading.Thread(
            target=_preload, args=(server, modules), name="preload", daemon=True
        ).start()

    def local(self) -> ScoringEngine:
        from mldropd.engines.local import LocalEngine
        from mldropd.sandbox.setup import Sandboxes

        if self._local is None:
            sandboxes = self.sandboxes()
            assert isinstance(sandboxes, Sandboxes)
            sandboxes.ready()
            # Kept for the job's batches: a backfill loads each owner's models once.
            self._local = LocalEngine(
                sandboxes, self.settings.engine.model_memory_mb, keep_hosts=True
            )
        return self._local

    def spark(self) -> ScoringEngine:
        if self.settings.features.kind == "duckdb":  # said before Spark's ~40 s start-up
            raise EngineUnavailable(
                'it cannot read [features] kind = "duckdb"; set the model\'s params.engine to '
                '"local" or "auto"'
            )
        if not pyspark_available():
            raise EngineUnavailable(
                "pyspark is not installed where the batch job runs; install mldropd[spark] "
                "(and Java 17) or set engine to local"
            )
        if self._spark is None:
            from mldropd.engines.spark import SparkEngine

            self._spark = SparkEngine(self.settings.engine, self.settings.sandbox)
        return self._spark

    def close(self, *, keep_spark: bool = False) -> None:
        """End what the job started; keep_spark: the Spark session stays for the next job (the
        daemon's Spark batch driver, mldropd.batch.driver)."""
        if self._local is not None:
            self._local.close()  # type: ignore[attr-defined]
            self._local = None
        if self._spark is not None and not keep_spark:
            self._spark.close()  # type: ignore[attr-defined]
            self._spark = None
        if self._owned_sandboxes and self._sandboxes is not None:
            # No wait: it ends its forks itself (and its lifeline ends it with us).
            self._sandboxes.stop(wait=False)  # type: ignore[attr-defined]
            self._sandboxes = None


def _preload(server: ForkServer, modules: list[str]) -> None:
    with contextlib.suppress(Exception):  # a server gone or failing: the first fork says so
        server.preload(modules)
