"""Real S3 servers on 127.0.0.1 (moto's ThreadedMotoServer) and a client that bypasses mldropd.

The shared server runs in a child process: an in-process server would allocate every uploaded
byte in the test process, whose memory tests/test_store.py measures. Outage tests start one
in-process (or in a child of their own) and stop it.
"""

from __future__ import annotations

import select
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.support.wait import free_port

if TYPE_CHECKING:  # moto and boto3 load when a server or client is made, not at collection
    from moto.server import ThreadedMotoServer

BUCKET = "models"
KEY_ID = "testing"
SECRET = "testing"

_CHILD_SERVER = r"""
import logging, os, sys, threading
from moto.server import ThreadedMotoServer

logging.getLogger("werkzeug").setLevel(logging.ERROR)
threading.excepthook = lambda args: os._exit(3)  # e.g. the port was taken: fail fast
server = ThreadedMotoServer(ip_address="127.0.0.1", port=int(sys.argv[1]), verbose=False)
server.start()
print("ready", flush=True)
sys.stdin.read()  # serve until the test closes our stdin
server.stop()
"""


def start_child_server(log: Path, timeout: float = 20.0) -> tuple[subprocess.Popen[str], str]:
    """ThreadedMotoServer in a child process; (process, endpoint URL)."""
    for _ in range(3):  # a freshly chosen port can be taken by someone else meanwhile
        port = free_port()
        with open(log, "a") as err:
            proc = subprocess.Popen(
                [sys.executable, "-c", _CHILD_SERVER, str(port)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([proc.stdout], [], [], 0.2)
            if ready and proc.stdout.readline().strip() == "ready":
                return proc, f"http://127.0.0.1:{port}"
        stop_child(proc)
    raise RuntimeError(f"moto server did not start; see {log}")


def stop_child(proc: subprocess.Popen[str]) -> None:
    try:
        if proc.stdin:
            proc.stdin.close()
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start_inprocess_server(timeout: float = 10.0) -> tuple[ThreadedMotoServer, str]:
    """ThreadedMotoServer in this process (start() itself waits without a timeout)."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    starter = threading.Thread(target=server.start, daemon=True)
    starter.start()
    starter.join(timeout)
    if starter.is_alive():
        raise RuntimeError(f"in-process moto server did not start on port {port}")
    return server, f"http://127.0.0.1:{port}"


def stop_inprocess_server(server: ThreadedMotoServer, timeout: float = 10.0) -> None:
    stopper = threading.Thread(target=server.stop, daemon=True)
    stopper.start()
    stopper.join(timeout)
    assert not stopper.is_alive(), "moto server did not stop"


def admin_client(url: str) -> Any:
    """A boto3 S3 client of the server itself, to create buckets and inspect objects."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
    )


def key_files(tmp_path: Path) -> tuple[str, str]:
    """The access and secret key files [storage] access_key_file/secret_key_file point at."""
    access, secret = tmp_path / "s3-access-key", tmp_path / "s3-secret-key"
    access.write_text(f"  {KEY_ID}\n")  # surrounding blanks and the newline are stripped
    secret.write_text(f"{SECRET}\n\n")
    return str(access), str(secret)
