"""Red team through the doors a user has: a hostile model uploaded over the HTTP API to a real
`mldropd serve`, validated and scored as every model is, tries every attack of issue 14 from
inside its predict; an honest model of another owner is scored in the same daemon. Nothing may
change, every attack must fail, the honest scores must be exact, and the daemon must live on.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.support.home import today
from tests.support.redteam import processes_named
from tests.support.wait import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.redteam]

ATTACKS = (
    "become admin in the database",
    "forge a web session",
    "drop a .pth into the virtual environment",
    "read the daemon's environment",
    "read the session key",
    "read another user's model file",
    "write into another user's scores",
    "connect to the daemon's port",
    "signal the daemon",
    "start 100 processes",
)


def hostile(home: str, daemon_pid: int, port: int, site: str, survivor: str) -> Any:
    """Mallory's pipeline: every attack, each bit of the score saying one succeeded."""

    def pipeline(frame: Any) -> Any:
        import builtins  # imported in the body: the static scan cannot see what it reaches
        import contextlib
        import ctypes
        import glob
        import os
        import socket
        import sqlite3
        import time

        import numpy as np

        open_ = builtins.open

        def attempt(action: Any) -> bool:
            try:
                action()
                return True
            except Exception:
                return False

        def admin() -> None:
            con = sqlite3.connect(f"{home}/mldropd.db", timeout=1)
            con.execute("UPDATE user SET is_admin = 1 WHERE email = 'mallory@example.com'")
            con.commit()
            if not con.execute("SELECT is_admin FROM user WHERE email='mallory@example.com'"
                               ).fetchone()[0]:  # fmt: skip
                raise RuntimeError("not admin")

        def write(path: str) -> None:
            with open_(path, "a") as f:
                f.write("pwned\n")

        def read(path: str) -> None:
            with open_(path, "rb") as f:
                if not f.read(64):
                    raise RuntimeError("empty")

        def other_model() -> None:
            found = glob.glob(f"{home}/artifacts/**/model.dill", recursive=True)
            if not found:
                raise RuntimeError("nothing found")
            read(found[0])

        def other_scores() -> None:
            found = glob.glob(f"{home}/scores/dt=*/model=*/*.parquet")
            if not found:
                raise RuntimeError("nothing found")
            write(found[0])

        def connect() -> None:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()

        def fork_many() -> None:
            pids = []
            try:
                for _ in range(100):
                    pid = os.fork()
                    if pid == 0:
                        time.sleep(5)
                        os._exit(0)
                    pids.append(pid)
            finally:
                for pid in pids:
                    with contextlib.suppress(OSError):
                        os.kill(pid, 9)
                        os.waitpid(pid, 0)

        def escape() -> None:  # a setsid'd grandchild that should outlive us
            pid = os.fork()
            if pid == 0:
                os.setsid()
                if os.fork() == 0:
                    ctypes.CDLL(None).prctl(15, survivor.encode(), 0, 0, 0)
                    time.sleep(120)
                os._exit(0)
            os.waitpid(pid, 0)

        escape()
        results = [
            attempt(admin),
            attempt(lambda: write(f"{home}/work/sessions/forged")),
            attempt(lambda: write(f"{site}/zz_mallory.pth")),
            attempt(lambda: read(f"/proc/{daemon_pid}/environ")),
            attempt(lambda: read(f"{home}/secret.key")),
            attempt(other_model),
            attempt(other_scores),
            attempt(connect),
            attempt(lambda: os.kill(daemon_pid, 0)),
            attempt(fork_many),
        ]
        mask = sum(1 << i for i, ok in enumerate(results) if ok)
        return np.full(len(frame), float(mask))

    return pipeline


def make_honest() -> Any:
    def honest(frame: Any) -> Any:  # nested: dill saves it by value, as a notebook's
        return frame["f00"].to_numpy() * 2.0 + 1.0

    return honest


def _user(home: Path, email: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "mldropd", "users", "add", email, "--config",
         str(home / "config.toml")],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return out.stdout.strip().splitlines()[-1]


def _upload(http: httpx.Client, token: str, name: str, obj: dict[str, Any]) -> dict[str, Any]:
    blob = dill.dumps(obj, recurse=True)
    r = http.post("/api/v1/models", headers={"Authorization": f"Bearer {token}"},
                  files={"file": (f"{name}.dill", blob)}, timeout=180)  # fmt: skip
    assert r.status_code == 201, r.text
    return dict(r.json())


def _run(http: httpx.Client, token: str, model_id: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    r = http.post(f"/api/v1/models/{model_id}/runs", headers=headers, json={})
    assert r.status_code == 202, r.text
    run_id = r.json()["run_id"]

    def done() -> dict[str, Any] | None:
        body = http.get(f"/api/v1/runs/{run_id}", headers=headers).json()
        return body if body["status"] in ("succeeded", "failed") else None

    return dict(wait_for(done, timeout=300, what=f"run {run_id}"))


def test_a_hostile_model_reaches_nothing_through_the_api(
    home: Path, daemon: Callable[..., Any]
) -> None:
    site = next(p for p in sys.path if p.endswith("site-packages"))
    bob, mallory = _user(home, "bob@example.com"), _user(home, "mallory@example.com")
    d = daemon()
    assert d.proc is not None
    survivor = f"rt-e2e-{os.getpid() % 10000}"
    with httpx.Client(base_url=d.url, timeout=60) as http:
        honest_model = _upload(
            http, bob, "honest", {"pipeline": make_honest(), "features": ["f00"]}
        )
        assert _run(http, bob, honest_model["id"])["status"] == "succeeded"  # bob has scores
        evil = hostile(str(home), d.proc.pid, d.port, site, survivor)
        evil_model = _upload(http, mallory, "evil", {"pipeline": evil, "features": ["f00"]})
        evil_run = _run(http, mallory, evil_model["id"])
        again = _run(http, bob, honest_model["id"])
        ready = http.get("/readyz").json()
    assert evil_run["status"] == "succeeded", evil_run["error"]
    folder = home / "scores" / f"dt={today().isoformat()}"
    masks = pq.read_table(folder / f"model={evil_model['id']}").column("score").to_numpy()
    worked = [name for i, name in enumerate(ATTACKS) if int(masks[0]) & (1 << i)]
    assert worked == [], f"attacks that worked: {worked}"
    assert again["status"] == "succeeded"
    scores = pq.read_table(folder / f"model={honest_model['id']}").to_pandas()
    features = pq.read_table(home / "features" / f"dt={today().isoformat()}").to_pandas()
    expected = features.set_index("entity_id")["f00"] * 2.0 + 1.0
    got = scores.set_index("entity_id")["score"]
    assert np.array_equal(got.sort_index().to_numpy(), expected.sort_index().to_numpy())
    with sqlite3.connect(home / "mldropd.db") as con:
        admin = con.execute("SELECT is_admin FROM user WHERE email='mallory@example.com'")
        assert admin.fetchone()[0] == 0
    assert not (home / "work" / "sessions" / "forged").exists()
    assert not Path(site, "zz_mallory.pth").exists()
    assert d.proc.poll() is None and httpx.get(f"{d.url}/healthz").status_code == 200
    assert set(ready["sandbox"]["in_force"]) >= {"landlock", "seccomp", "pidns", "netns"}
    deadline = time.monotonic() + 10
    while processes_named(survivor) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not processes_named(survivor), "a setsid'd process of the model outlived its run"


def test_params_timeout_is_capped_by_the_operator(home: Path, daemon: Callable[..., Any]) -> None:
    """params.timeout_s = 10**12 (a valid contract value) does not hold the batch: the cap of
    [engine] max_model_timeout_s stops the model, the parent's clock says when."""

    def sleeper(frame: Any) -> Any:
        import time

        import numpy as np

        if len(frame) > 1500:  # the 1,000-row dry run passes; the 3,000-row batch does not
            time.sleep(3600)
        return np.zeros(len(frame))

    config = home / "config.toml"
    config.write_text(
        config.read_text()
        .replace("batch_rows = 1000\n", "batch_rows = 3000\n")
        .replace("[engine]\n", "[engine]\nmax_model_timeout_s = 5\n")
    )
    token = _user(home, "ann@example.com")
    d = daemon()
    with httpx.Client(base_url=d.url, timeout=60) as http:
        model = _upload(
            http, token, "sleeper",
            {"pipeline": sleeper, "features": ["f00"], "params": {"timeout_s": 10**12}},
        )  # fmt: skip
        started = time.monotonic()
        run = _run(http, token, model["id"])
    assert run["status"] == "failed"
    assert "time limit of 5 s" in run["error"], run["error"]
    assert time.monotonic() - started < 120
