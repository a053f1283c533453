"""Hostile models for the red-team tests: each factory returns a pipeline function (pickled
by value by dill, as a notebook's would be) that tries one attack when called and scores
1.0 when the attack worked, 0.0 when it was stopped. Nothing here is a mock: the payloads do
exactly what a hostile team member's model would do."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dill
import numpy as np
import pyarrow as pa

from mldropd.sandbox.hosts import ModelHost, Reply
from mldropd.sandbox.policy import Limits, Policy, python_read_paths

Pipeline = Callable[[Any], Any]
SPEC = {"features": ["x"], "input": "pandas", "call": "callable", "output": "predict"}


def write_file(path: str, text: str = "pwned\n") -> Pipeline:
    def attack(frame: Any) -> Any:
        import numpy as np

        try:
            with open(path, "a") as f:
                f.write(text)
            ok = 1.0
        except OSError:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def make_admin(db: str, email: str) -> Pipeline:
    def attack(frame: Any) -> Any:
        import sqlite3

        import numpy as np

        try:
            con = sqlite3.connect(db, timeout=1)
            con.execute("UPDATE user SET is_admin = 1 WHERE email = ?", (email,))
            con.commit()
            con.close()
            ok = 1.0
        except Exception:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def read_file(path: str) -> Pipeline:
    def attack(frame: Any) -> Any:
        import numpy as np

        try:
            with open(path, "rb") as f:
                ok = 1.0 if f.read(4096) else 0.0
        except OSError:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def connect(port: int) -> Pipeline:
    def attack(frame: Any) -> Any:
        import socket

        import numpy as np

        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2):
                ok = 1.0
        except OSError:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def signal_process(pid: int) -> Pipeline:
    def attack(frame: Any) -> Any:
        import os

        import numpy as np

        try:
            os.kill(pid, 0)
            ok = 1.0
        except OSError:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def setsid_survivor(name: str, seconds: float = 30.0) -> Pipeline:
    """Double-fork a process named `name` that leaves its session and sleeps."""

    def attack(frame: Any) -> Any:
        import ctypes
        import os
        import time

        import numpy as np

        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
                time.sleep(seconds)
            os._exit(0)
        os.waitpid(pid, 0)
        return np.full(len(frame), 1.0)

    return attack


def stays_behind(name: str, seconds: float = 30.0) -> Pipeline:
    """Fork a process named `name` that sleeps on as the host's own child (no new session)."""

    def attack(frame: Any) -> Any:
        import ctypes
        import os
        import time

        import numpy as np

        if os.fork() == 0:
            ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME
            time.sleep(seconds)
            os._exit(0)
        return np.full(len(frame), 1.0)

    return attack


def fork_many(n: int) -> Pipeline:
    """Start n processes; score = the share that could be started."""

    def attack(frame: Any) -> Any:
        import os
        import signal

        import numpy as np

        started = []
        for _ in range(n):
            try:
                pid = os.fork()
            except OSError:
                break
            if pid == 0:
                signal.pause()
                os._exit(0)
            started.append(pid)
        for pid in started:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        return np.full(len(frame), len(started) / n)

    return attack


def big_file(path: str, mb: int) -> Pipeline:
    def attack(frame: Any) -> Any:
        import signal

        import numpy as np

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        block = b"\0" * (1 << 20)
        try:
            with open(path, "wb") as f:
                for _ in range(mb):
                    f.write(block)
            ok = 1.0
        except OSError:
            ok = 0.0
        return np.full(len(frame), ok)

    return attack


def replace_predict(score: float) -> Pipeline:
    """At its first call, patch mldropd's predict in its own process to return `score`."""

    def attack(frame: Any) -> Any:
        import numpy as np

        import mldropd.modelcall as mc

        def forged(pipeline: Any, x: Any, call: str, output: str) -> Any:
            return np.full(len(x), score)

        mc.predict = forged
        import mldropd.jobs.model_host as host

        host.predict = forged
        return np.full(len(frame), score)

    return attack


def channel_write(data: bytes, then_sleep: float = 0.0) -> Pipeline:
    """Write raw bytes to every socket this process holds (its channel), then maybe hang."""

    def attack(frame: Any) -> Any:
        import os
        import stat
        import time

        import numpy as np

        for fd in range(3, 256):
            try:
                if stat.S_ISSOCK(os.fstat(fd).st_mode):
                    os.write(fd, data)
            except OSError:
                continue
        if then_sleep:
            time.sleep(then_sleep)
        return np.zeros(len(frame))

    return attack


def sleeps(seconds: float) -> Pipeline:
    def attack(frame: Any) -> Any:
        import time

        import numpy as np

        time.sleep(seconds)
        return np.zeros(len(frame))

    return attack


def model_bytes(pipeline: Pipeline, **extra: Any) -> bytes:
    return bytes(dill.dumps({"pipeline": pipeline, "features": ["x"], **extra}, recurse=True))


def run_in_host(
    sandboxes: Any,
    pipeline: Pipeline,
    layers: set[str],
    *,
    limits: Limits | None = None,
    timeout_s: float = 60.0,
) -> Reply:
    """Load the payload into a host confined by exactly `layers` and score one row."""
    host, reply = scored_host(sandboxes, pipeline, layers, limits=limits, timeout_s=timeout_s)
    host.kill()
    host.close()
    return reply


def scored_host(
    sandboxes: Any,
    pipeline: Pipeline,
    layers: set[str],
    *,
    limits: Limits | None = None,
    timeout_s: float = 60.0,
) -> tuple[ModelHost, Reply]:
    """run_in_host, with the host left running (the caller ends it)."""
    policy = Policy(
        layers=frozenset(layers),
        limits=limits or Limits(memory_mb=2048, cpu_s=120),
        read=python_read_paths(),
    )
    host = ModelHost(sandboxes.server, policy, "redteam")
    host.start()
    try:
        loaded = host.load(0, SPEC, model_bytes(pipeline), timeout_s)
        assert loaded.kind == "loaded", loaded
        batch = pa.record_batch({"x": pa.array([0.0])})
        assert host.send_batch([0], batch) is None
        return host, host.reply(0, 1, time.monotonic(), timeout_s)
    except BaseException:
        host.kill()
        host.close()
        raise


def succeeded(reply: Reply) -> bool:
    """The payload scored 1.0: the attack worked."""
    assert reply.kind == "scores", reply
    return bool(np.asarray(reply.value)[0] == 1.0)


def processes_named(name: str) -> list[int]:
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == name:
                found.append(int(comm.parent.name))
        except OSError:
            continue
    return found


def free_port_listening() -> tuple[socket.socket, int]:
    """A listening socket on 127.0.0.1 (stands for the daemon's port)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    return s, int(s.getsockname()[1])


def reports_uid() -> Pipeline:
    """Not an attack: scores every row with the host's uid (which sandbox uid it runs as)."""

    def score(frame: Any) -> Any:
        import os

        import numpy as np

        return np.full(len(frame), float(os.getuid()))

    return score
