"""A real `mldropd serve` process on 127.0.0.1, for the tests of what only a process shows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support.wait import wait_for


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
