"""From settings to sandboxes: start the fork server, check the required layers, and build the
Policy of each model host from what the probe found in force."""

from __future__ import annotations

import logging
import os
import pwd
from pathlib import Path
from typing import Any

from mldropd.errors import ConfigError
from mldropd.sandbox.forkserver import ForkServer
from mldropd.sandbox.policy import LAYER_HELP, LAYERS, Limits, Policy, inside, python_read_paths
from mldropd.settings import Settings

log = logging.getLogger(__name__)


# What a trusted batch job imports, preloaded by every fork server that forks batch jobs (the
# daemon's, `mldropd run`'s), so a batch pays no library import: the job, the local engine,
# DuckDB (the reader) and the DQ's libraries. Not Polars (the DQ's sampler): it starts its
# thread pool at import, and the forked child of a process with that pool hangs in its first
# parallel call; each job imports it itself (tests/test_startup.py keeps this list complete).
BATCH_JOB_MODULES = [
    "mldropd.jobs.score_batch", "mldropd.engines.local", "duckdb", "pandas", "scipy.stats",
    "sklearn.ensemble", "sklearn.inspection", "sklearn.metrics", "sklearn.model_selection",
]  # fmt: skip


class SandboxUnavailable(ConfigError):
    """A required sandbox layer is missing here; the message says how to relax the setting."""


def fork_server_config(
    settings: Settings, *, batch_jobs: bool = False, preload: list[str] | None = None
) -> dict[str, Any]:
    """preload: the modules to import (default: [sandbox] preload). A server given its own
    list (one command's, one job's) also imports, on request, the libraries of the models its
    jobs are about to load (ForkServer.preload); the daemon's long-lived server keeps to its
    list."""
    sb = settings.sandbox
    config: dict[str, Any] = {"uid_base": sb.uid_base, "threads": sb.threads}
    modules = list(sb.preload) if preload is None else list(preload)
    if preload is not None:
        config["import_on_request"] = True
    config["preload"] = modules + (BATCH_JOB_MODULES if batch_jobs else [])
    if sb.user:
        try:
            entry = pwd.getpwnam(sb.user) if not sb.user.isdigit() else pwd.getpwuid(int(sb.user))
        except KeyError:
            raise ConfigError(
                f"[sandbox] user = {sb.user!r} is not a user of this system; create it "
                "(useradd --system) or leave the setting empty"
            ) from None
        config["user_uid"], config["user_gid"] = entry.pw_uid, entry.pw_gid
    return config


class Sandboxes:
    """The fork server of this process and the layers it applies to every model host."""

    def __init__(self, settings: Settings, server: ForkServer) -> None:
        self.settings = settings
        self.server = server

    @classmethod
    def start(
        cls,
        settings: Settings,
        *,
        batch_jobs: bool = False,
        wait: bool = True,
        check_home: bool = True,
        preload: list[str] | None = None,
    ) -> Sandboxes:
        if check_home:  # a Spark executor has no home of ours
            check_home_outside_sandbox(settings)
        server = ForkServer.start(
            Path(settings.server.work_dir),
            fork_server_config(settings, batch_jobs=batch_jobs, preload=preload),
            wait=wait,
        )
        sandboxes = cls(settings, server)
        if wait:
            sandboxes.ready()
        return sandboxes

    @property
    def probe(self) -> dict[str, dict[str, Any]]:
        return self.server.wait_probed()

    def ready(self) -> None:
        """Wait for the fork server to serve (raise SandboxUnavailable as check() does)."""
        self.check()
        self.server.wait_ready()

    def check(self) -> None:
        """Wait for the probe; raise SandboxUnavailable if a required layer is missing."""
        self.server.wait_probed()
        missing = [layer for layer in self.settings.sandbox.require if layer not in self.layers]
        if missing:
            self.server.stop()
            raise SandboxUnavailable(missing_message(missing, self.server.probe))

    @property
    def layers(self) -> frozenset[str]:
        found = self.server.wait_probed()
        applied = {k for k, v in found.items() if v.get("available")}
        if os.getuid() == 0:
            applied.discard("userns")  # a root daemon makes namespaces without one
        return frozenset(applied)

    def policy(self, *, memory_mb: int, cpu_s: int) -> Policy:
        sb = self.settings.sandbox
        limits = Limits(
            memory_mb=memory_mb,
            cpu_s=max(1, cpu_s),
            processes=sb.max_processes,
            file_mb=sb.max_file_mb,
            tmp_mb=sb.tmp_mb,
        )
        return Policy(
            layers=self.layers, limits=limits, read=python_read_paths(), threads=sb.threads
        )

    def stop(self, *, wait: bool = True) -> None:
        self.server.stop(wait=wait)


def missing_message(missing: list[str], found: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"- {layer} ({LAYER_HELP[layer]}): {found.get(layer, {}).get('detail', 'not probed')}"
        for layer in missing
    ]
    return (
        "the model sandbox cannot apply layers that [sandbox] require asks for:\n"
        + "\n".join(lines)
        + "\nRun where the kernel allows them (docs/security.md: under podman, mountns needs "
        "--security-opt systempaths=unconfined; docker also needs a seccomp profile that allows "
        "user namespaces), or remove them from [sandbox] require to run with the layers that "
        "are there."
    )


def check_home_outside_sandbox(settings: Settings) -> None:
    """Refuse a home that model code could read: inside a path the sandbox may read."""
    readable = python_read_paths()
    for label, path in (
        ("[database] path", settings.database.path),
        ("[server] secret_key_file", settings.server.secret_key_file),
        ("[server] work_dir", settings.server.work_dir),
        ("[storage] path", settings.storage.path),
        ("[scores] path", settings.scores.path),
    ):
        root = inside(path, readable) if path else None
        if root is not None:
            raise ConfigError(
                f"{label} ({path}) lies inside {root}, which model code may read; move it out "
                "of the Python installation and the virtual environment"
            )


def describe_layers(found: dict[str, dict[str, Any]], require: list[str]) -> list[str]:
    """One line per layer for logs and check-config."""
    out = []
    for layer in LAYERS:
        info = found.get(layer, {})
        mark = "in force" if info.get("available") else "missing"
        need = " (required)" if layer in require else ""
        out.append(f"{layer}: {mark}{need} - {info.get('detail', '')}")
    return out
