"""The end-to-end flow once more with the S3 store, on a moto S3 server in a child process:
upload -> run -> scores -> DQ, artifacts in the bucket, `store check`, versions, and outages
(the endpoint goes away mid-test: uploads answer 503 naming it, nothing is recorded)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from mldropd.settings import Settings, load_settings
from mldropd.store.base import sha256_file
from tests.support.cli import mldropd
from tests.support.e2e import upload_run_scores_dq_report
from tests.support.home import today
from tests.support.http import bearer, upload
from tests.support.s3 import BUCKET, admin_client, key_files, start_child_server, stop_child
from tests.support.wait import free_port

ANN = "ann@example.com"
STORAGE = """
[storage]
kind = "s3"
bucket = "{bucket}"
prefix = "{prefix}"
endpoint_url = "{url}"
access_key_file = "{access}"
secret_key_file = "{secret}"
[limits]
versions_kept = 2
"""


class TcpProxy:
    """A TCP forwarder on 127.0.0.1 in front of the S3 server. Stopping it takes the endpoint
    away (connections refused) while the server keeps its objects, so a test can look at the
    bucket afterwards."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> TcpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked on it (Linux)
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            self._open.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed by stop()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """An S3 server of the test's own, which it may stop."""
    proc, url = start_child_server(tmp_path / "own-server.log")
    try:
        admin_client(url).create_bucket(Bucket=BUCKET)
        yield proc, url
    finally:
        stop_child(proc)


@pytest.fixture
def proxy(moto_url: str) -> Iterator[TcpProxy]:
    p = TcpProxy(moto_url).start()
    yield p
    p.stop()


@pytest.fixture
def endpoint(request: pytest.FixtureRequest, moto_url: str) -> str:
    """The endpoint the daemon talks to: the S3 server, or (param "proxy") the proxy to it."""
    which = getattr(request, "param", None)
    if which == "proxy":
        return request.getfixturevalue("proxy").url  # type: ignore[no-any-return]
    if which == "own-server":
        return request.getfixturevalue("own_server")[1]  # type: ignore[no-any-return]
    return moto_url


@pytest.fixture
def settings(home: Path, endpoint: str, tmp_path: Path) -> Settings:
    """The conftest home (features, database, outbox folder), with artifacts in the bucket."""
    access, secret = key_files(tmp_path)
    prefix = f"e2e-{uuid.uuid4().hex[:8]}"  # tests share the bucket, not the objects
    with open(home / "config.toml", "a") as f:
        f.write(
            STORAGE.format(bucket=BUCKET, prefix=prefix, url=endpoint, access=access, secret=secret)
        )
    return load_settings(home / "config.toml", env={})


def bucket_objects(url: str, prefix: str) -> dict[str, bytes]:
    """Every object under the prefix, read straight from the S3 server (not through mldropd)."""
    s3 = admin_client(url)
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix + "/").get("Contents", [])
    return {
        o["Key"][len(prefix) + 1 :]: s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()
        for o in listed
    }


def test_e2e_flow_with_the_s3_store(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    model_files: dict[str, Path],
    moto_url: str,
    home: Path,
) -> None:
    # The same flow and assertions as with the local store: upload, two runs, exact scores,
    # DQ, report. The batch job fetched the model from the bucket and checked its sha256.
    upload_run_scores_dq_report(live_client, settings, make_user, model_files)
    assert not Path(settings.storage.path).exists()  # nothing went to the local folder

    prefix = settings.storage.prefix
    objects = bucket_objects(moto_url, prefix)
    folder = "users/1/models/1/v1"  # ids, never names (docs/storage-email.md)
    assert sorted(objects) == [f"{folder}/manifest.json", f"{folder}/model.dill"]
    digest = sha256_file(model_files["lgbm"])
    assert hashlib.sha256(objects[f"{folder}/model.dill"]).hexdigest() == digest
    manifest = json.loads(objects[f"{folder}/manifest.json"])
    assert manifest["sha256"] == digest and manifest["uploaded_by"] == ANN
    assert manifest["size"] == model_files["lgbm"].stat().st_size
    assert manifest["contract"]["features"] == [f"f{i:02d}" for i in range(12)]

    clean = mldropd(home, "store", "check", "-v")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert f"store: S3 {moto_url} bucket {BUCKET}/{prefix}" in clean.stdout
    assert f"ok       {folder}/model.dill (model 1 churn_lgbm v1, " in clean.stdout

    # Someone overwrites the object: the store check and the batch job both notice.
    s3 = admin_client(moto_url)
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/{folder}/model.dill", Body=b"not the model")
    s3.put_object(Bucket=BUCKET, Key=f"{prefix}/users/1/models/99/v1/model.dill", Body=b"?")
    found = mldropd(home, "store", "check")
    assert found.returncode == 1
    assert (
        f"BAD      {folder}/model.dill (model 1 churn_lgbm v1): the object has 13 bytes"
        in found.stdout
    )
    assert "ORPHAN   users/1/models/99/v1/model.dill (no database row points at it)" in found.stdout
    rerun = mldropd(home, "run", "--model", "1", "--date", today().isoformat())
    assert rerun.returncode == 1
    assert "does not match its sha256" in rerun.stdout and folder in rerun.stdout

    # Deleting the model removes its objects from the bucket, and only those.
    token = make_user("admin@example.com", admin=True)
    assert live_client.delete("/api/v1/models/1", headers=bearer(token)).status_code == 204
    assert sorted(bucket_objects(moto_url, prefix)) == ["users/1/models/99/v1/model.dill"]


def test_versions_kept_in_the_bucket(
    live_client: TestClient[Any],
    settings: Settings,
    make_user: Callable[..., str],
    small_model: Path,
    moto_url: str,
) -> None:
    token = make_user(ANN)
    for version in (1, 2, 3):
        response = upload(live_client, token, small_model, name="churn")
        assert response.status_code == 201 and response.json()["version"] == version
    detail = live_client.get(
        f"/api/v1/models/{response.json()['id']}", headers=bearer(token)
    ).json()
    assert [v["version"] for v in detail["versions"]] == [3, 2]  # versions_kept = 2
    assert sorted(bucket_objects(moto_url, settings.storage.prefix)) == [
        f"users/1/models/{response.json()['id']}/v{n}/{name}"
        for n in (2, 3)
        for name in ("manifest.json", "model.dill")
    ]


@pytest.mark.parametrize("endpoint", ["proxy"], indirect=True)
def test_outage_answers_503_naming_the_endpoint_and_records_nothing(
    live_client: TestClient[Any],
    settings: Settings,
    proxy: TcpProxy,
    moto_url: str,
    make_user: Callable[..., str],
    small_model: Path,
) -> None:
    token = make_user(ANN)
    prefix = settings.storage.prefix
    assert settings.storage.endpoint_url == proxy.url
    assert live_client.get("/readyz").status_code == 200
    assert upload(live_client, token, small_model, name="before").status_code == 201

    proxy.stop()  # the S3 endpoint goes away
    unreachable = f"S3 store {proxy.url} bucket '{BUCKET}' is unreachable"
    ready = live_client.get("/readyz")
    assert ready.status_code == 503
    assert unreachable in ready.json()["checks"]["store"]
    assert ready.json()["checks"]["database"] == "ok"
    started = time.monotonic()
    refused = upload(live_client, token, small_model, name="during")
    assert refused.status_code == 503, refused.text
    message = refused.json()["errors"][0]["message"]
    assert unreachable in message
    assert "Check [storage] endpoint_url and that the server is running." in message
    assert time.monotonic() - started < 60
    names = [m["name"] for m in live_client.get("/api/v1/models", headers=bearer(token)).json()]
    assert names == ["before"]
    assert _count(settings, "SELECT count(*) FROM model_version") == 1
    before = ["users/1/models/1/v1/manifest.json", "users/1/models/1/v1/model.dill"]
    assert sorted(bucket_objects(moto_url, prefix)) == before

    proxy.start()  # back on the same port: the daemon recovers by itself
    assert live_client.get("/readyz").status_code == 200
    assert upload(live_client, token, small_model, name="during").status_code == 201

    # The object is written before the row; when the database write fails, it is removed.
    _execute(
        settings,
        "CREATE TRIGGER refuse BEFORE INSERT ON model_version "
        "BEGIN SELECT RAISE(ABORT, 'database is full'); END",
    )
    failed = upload(live_client, token, small_model, name="after")
    assert failed.status_code == 500
    during = ["users/1/models/2/v1/manifest.json", "users/1/models/2/v1/model.dill"]
    assert sorted(bucket_objects(moto_url, prefix)) == before + during  # nothing of "after"
    listed = live_client.get("/api/v1/models", headers=bearer(token)).json()
    assert sorted(m["name"] for m in listed) == ["before", "during"]
    assert _count(settings, "SELECT count(*) FROM model_version") == 2


@pytest.mark.parametrize("endpoint", ["own-server"], indirect=True)
def test_server_stopped_mid_test(
    live_client: TestClient[Any],
    settings: Settings,
    own_server: tuple[subprocess.Popen[str], str],
    make_user: Callable[..., str],
    small_model: Path,
) -> None:
    proc, url = own_server
    token = make_user(ANN)
    assert upload(live_client, token, small_model, name="before").status_code == 201
    stop_child(proc)  # the S3 server itself stops
    unreachable = f"S3 store {url} bucket '{BUCKET}' is unreachable"
    ready = live_client.get("/readyz")
    assert ready.status_code == 503 and unreachable in ready.json()["checks"]["store"]
    refused = upload(live_client, token, small_model, name="during")
    assert refused.status_code == 503 and unreachable in refused.json()["errors"][0]["message"]
    names = [m["name"] for m in live_client.get("/api/v1/models", headers=bearer(token)).json()]
    assert names == ["before"]
    assert _count(settings, "SELECT count(*) FROM model_version") == 1


def _execute(settings: Settings, sql: str) -> None:
    db = sqlite3.connect(settings.database.path, timeout=30)
    try:
        with db:
            db.execute(sql)
    finally:
        db.close()


def _count(settings: Settings, sql: str) -> int:
    db = sqlite3.connect(settings.database.path, timeout=30)
    try:
        return int(db.execute(sql).fetchone()[0])
    finally:
        db.close()
