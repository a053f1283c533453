"""A real `mldropd serve` on 127.0.0.1 for the API and page benchmarks, and a timed client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
[database]
path = "mldropd.db"
[features]
path = "features"
[scheduler]
# Fires on 1 January only: no sweep starts a batch while the benchmark measures.
sweep = "0 6 1 1 *"
catchup_days = 0
[engine]
default = "local"
batch_rows = {batch_rows}
model_memory_mb = 8192
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(home: Path, batch_rows: int = 100_000) -> Path:
    """home/config.toml for a benchmark daemon on a free port."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(CONFIG.format(port=free_port(), batch_rows=batch_rows))
    return path


def settings_of(home: Path) -> Any:
    from mldropd.settings import load_settings

    return load_settings(home / "config.toml", env={})


class BenchDaemon:
    """Starts and stops a real daemon process; its log goes to home/daemon.log."""

    def __init__(self, home: Path) -> None:
        self.home = home
        port = re.search(r"^port = (\d+)$", (home / "config.toml").read_text(), re.M)
        assert port is not None
        self.url = f"http://127.0.0.1:{port.group(1)}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchDaemon:
        with open(self.home / "daemon.log", "ab") as log:
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
                process_group=0,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"daemon not healthy within 120 s: {self.log_tail()}")

    def __exit__(self, *_: object) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        path = self.home / "daemon.log"
        return path.read_text()[-chars:] if path.exists() else ""

    def api(self, token: str, timeout: float = 120) -> httpx.Client:
        """A client sending the bearer token."""
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout
        )

    def pages(self, token: str, timeout: float = 120) -> httpx.Client:
        """A client signed in to the web pages (session cookie, CSRF token)."""
        client = httpx.Client(base_url=self.url, timeout=timeout)
        client.get("/login")
        response = client.post(
            "/login",
            data={"token": token, "_csrf_token": client.cookies["csrftoken"], "next": "/"},
            follow_redirects=False,
        )
        if response.status_code != 303:
            raise RuntimeError(f"sign-in failed: {response.status_code} {response.text[:300]}")
        return client


class NotFoundError(RuntimeError):
    """The path answered 404."""


def timed_get(client: httpx.Client, path: str) -> float:
    """Seconds for one GET that must answer 200."""
    started = time.perf_counter()
    response = client.get(path)
    seconds = time.perf_counter() - started
    if response.status_code == 404:
        raise NotFoundError(path)
    if response.status_code != 200:
        raise RuntimeError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return seconds
