"""Detect and say: a daemon where the kernel refuses some sandbox layers (here: a seccomp
filter that forbids unshare, as a container's default profile does) stops at start-up naming
the missing layers and how to relax [sandbox] require; relaxed, it runs with the layers that
are there, says which in /readyz and the metrics, and still scores."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import httpx
import pytest

from tests.support.wait import wait_for

pytestmark = pytest.mark.slow

NO_UNSHARE = """\
import errno, os, sys
import pyseccomp as sc
f = sc.SyscallFilter(defaction=sc.ALLOW)
f.add_rule(sc.ERRNO(errno.EPERM), "unshare")
f.load()
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def _serve(home: Path, wrapper: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(wrapper), "-m", "mldropd", "serve", "--config",
         str(home / "config.toml")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def test_missing_layers_stop_start_up_then_relaxed_it_runs_and_says(
    home: Path, tmp_path: Path, make_user: Callable[..., str]
) -> None:
    wrapper = tmp_path / "no_unshare.py"
    wrapper.write_text(NO_UNSHARE)
    proc = _serve(home, wrapper)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    for layer in ("mountns", "pidns", "netns"):
        assert f"- {layer} (" in out
    assert "[sandbox] require" in out and "Traceback" not in out

    token = make_user("ann@example.com")
    config = home / "config.toml"
    config.write_text(config.read_text() + '\n[sandbox]\nrequire = ["landlock", "seccomp"]\n')
    port = int(config.read_text().split("port = ", 1)[1].split()[0])
    url = f"http://127.0.0.1:{port}"
    proc = _serve(home, wrapper)
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout=120, what="the relaxed daemon")

        def pipeline(frame: Any) -> Any:
            return frame["f00"].to_numpy()

        blob = dill.dumps({"pipeline": pipeline, "features": ["f00"]}, recurse=True)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, timeout=180) as http:
            model = http.post("/api/v1/models", headers=headers, files={"file": ("m.dill", blob)})
            assert model.status_code == 201, model.text  # validated with the layers there
            ready = http.get("/readyz").json()
            metrics = http.get("/metrics").text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    assert ready["checks"]["sandbox"] == "ok"
    assert {"mountns", "pidns", "netns"} <= set(ready["sandbox"]["missing"])
    assert {"landlock", "seccomp"} <= set(ready["sandbox"]["in_force"])
    assert 'mldropd_sandbox_layer{layer="landlock"} 1.0' in metrics
    assert 'mldropd_sandbox_layer{layer="netns"} 0.0' in metrics
