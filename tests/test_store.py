"""One store test-suite, run against the local-folder store and the S3 store on a real S3 server.

The S3 server is moto's ``ThreadedMotoServer``. The shared one runs in a child process: an
in-process server would allocate every uploaded byte in this process, and the streaming test
measures this process's memory with tracemalloc. The outage tests start their own server
(in-process, as the brief of issue 6 says) and stop it.
"""

from __future__ import annotations

import json
import os
import socket
import time
import tracemalloc
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mldropd.errors import ConfigError, NotFound, Unavailable
from mldropd.settings import StorageSettings
from mldropd.store import make_store
from mldropd.store.base import (
    ArtifactStore,
    artifact_key,
    manifest_key,
    model_prefix,
    sha256_file,
)
from mldropd.store.local import LocalStore
from mldropd.store.s3 import S3Store
from tests.support.s3 import (
    BUCKET,
    KEY_ID,
    SECRET,
    admin_client,
    key_files,
    start_inprocess_server,
    stop_inprocess_server,
)

MB = 1024 * 1024
OUTAGE_LIMIT_S = 15.0


def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Leave boto3's standard credential chain empty."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def _env_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _no_ambient_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)


def _s3_settings(url: str, **overrides: str) -> StorageSettings:
    values = {"kind": "s3", "bucket": BUCKET, "prefix": "mldropd", "endpoint_url": url}
    values.update(overrides)
    return StorageSettings(**values)


def _make_store(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ArtifactStore:
    if kind == "local":
        return LocalStore(tmp_path / "artifacts")
    url = request.getfixturevalue("moto_url")
    prefix = f"run-{uuid.uuid4().hex[:8]}/mldropd"  # tests share the bucket, not the objects
    if kind == "s3-env-credentials":
        _env_credentials(monkeypatch, tmp_path)
        return S3Store(_s3_settings(url, prefix=prefix))
    _no_ambient_credentials(monkeypatch, tmp_path)  # so only the key files can work
    access, secret = key_files(tmp_path)
    return S3Store(_s3_settings(url, prefix=prefix, access_key_file=access, secret_key_file=secret))


# The S3 variants talk to moto_url, a child process: they are in the slow tier.
S3_SLOW = pytest.mark.slow


@pytest.fixture(
    params=[
        "local",
        pytest.param("s3-env-credentials", marks=S3_SLOW),
        pytest.param("s3-key-files", marks=S3_SLOW),
    ]
)
def store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ArtifactStore:
    return _make_store(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=["local", pytest.param("s3-env-credentials", marks=S3_SLOW)])
def big_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ArtifactStore:
    """For the slow cases: the credential variant does not change them."""
    return _make_store(request.param, request, tmp_path, monkeypatch)


def _random_file(path: Path, size_mb: int) -> Path:
    with open(path, "wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(MB))
    return path


USER, OTHER = 7, 12  # user ids: folders are named by ids, never by e-mail (issue 15)
M1, M10, M = 1, 10, 3  # model ids


# ---- the shared suite ----------------------------------------------------------------------


def test_put_file_get_file_round_trip(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "upload.dill"
    src.write_bytes(os.urandom(300_000))
    key = artifact_key(USER, 4, 1)
    assert key == "users/7/models/4/v1/model.dill"

    store.put_file(key, src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    dest = out_dir / "model.dill"
    store.get_file(key, dest)

    assert sha256_file(dest) == sha256_file(src)
    assert store.exists(key)
    assert store.list() == [key]
    assert sorted(p.name for p in out_dir.iterdir()) == ["model.dill"]  # no temp files left


def test_put_file_replaces(store: ArtifactStore, tmp_path: Path) -> None:
    key = artifact_key(USER, 4, 2)
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"first")
    second.write_bytes(b"second version")
    store.put_file(key, first)
    store.put_file(key, second)
    dest = tmp_path / "got"
    dest.write_bytes(b"stale")  # get_file overwrites an existing file
    store.get_file(key, dest)
    assert dest.read_bytes() == b"second version"


def test_put_bytes_get_bytes(store: ArtifactStore) -> None:
    key = manifest_key(artifact_key(USER, 4, 1))
    assert key == "users/7/models/4/v1/manifest.json"
    manifest = json.dumps({"sha256": "ab" * 32, "uploaded_by": "ann@example.com"}).encode()
    store.put_bytes(key, manifest)
    assert store.get_bytes(key) == manifest
    store.put_bytes(key, b"{}")
    assert store.get_bytes(key) == b"{}"
    store.put_bytes("empty/object", b"")
    assert store.get_bytes("empty/object") == b""


def test_exists(store: ArtifactStore) -> None:
    key = artifact_key(OTHER, M, 3)
    assert not store.exists(key)
    store.put_bytes(key, b"x")
    assert store.exists(key)
    assert not store.exists(model_prefix(OTHER, M).rstrip("/"))  # a folder is not an object
    assert not store.exists(artifact_key(OTHER, M, 4))


def _fill(store: ArtifactStore) -> list[str]:
    keys = [
        artifact_key(USER, M1, 1),
        manifest_key(artifact_key(USER, M1, 1)),
        artifact_key(USER, M1, 2),
        artifact_key(USER, M10, 1),  # shares the text prefix "1" but is another model
        artifact_key(OTHER, M1, 1),
    ]
    for key in keys:
        store.put_bytes(key, key.encode())
    return sorted(keys)


def test_list_with_prefixes_and_relative_keys(store: ArtifactStore) -> None:
    keys = _fill(store)
    ann, bob = f"users/{USER}/models", f"users/{OTHER}/models"
    assert store.list() == keys
    assert store.list("") == keys
    assert store.list(f"{ann}/1/") == [
        f"{ann}/1/v1/manifest.json",
        f"{ann}/1/v1/model.dill",
        f"{ann}/1/v2/model.dill",
    ]
    assert store.list(f"{ann}/1") == store.list(f"{ann}/1/")  # a folder, not a text prefix
    assert store.list(model_prefix(USER, M10)) == [f"{ann}/10/v1/model.dill"]
    assert store.list(f"{ann}/") == [k for k in keys if k.startswith(f"{ann}/")]
    assert store.list("users/1") == []  # users/1 is a folder: not users/12
    assert store.list(bob) == [f"{bob}/1/v1/model.dill"]
    assert store.list("nobody@nowhere/") == []
    for key in keys:  # every listed key can be read back as it is
        assert store.get_bytes(key) == key.encode()


def test_delete_prefix_removes_only_that_prefix(store: ArtifactStore) -> None:
    keys = _fill(store)
    ann = f"users/{USER}/models"
    store.delete_prefix(model_prefix(USER, M1))
    remaining = [k for k in keys if not k.startswith(f"{ann}/1/")]
    assert store.list() == remaining
    assert store.exists(artifact_key(USER, M10, 1))

    store.delete_prefix(f"{ann}/10/v1/model.dill")  # one object
    assert store.list() == [artifact_key(OTHER, M1, 1)]
    store.delete_prefix("nobody@nowhere/")  # nothing there: no error
    store.delete_prefix(f"users/{OTHER}")
    assert store.list() == []


def test_delete_prefix_more_than_one_batch(big_store: ArtifactStore) -> None:
    """More than 1000 objects: listing pages and delete batches both roll over."""
    store = big_store
    many = [f"{model_prefix(USER, 99)}v1/part-{i:04d}" for i in range(1010)]
    keep = artifact_key(USER, "keep", 1)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda k: store.put_bytes(k, b"."), [*many, keep]))
    assert len(store.list(model_prefix(USER, 99))) == 1010
    store.delete_prefix(model_prefix(USER, 99))
    assert store.list() == [keep]


def test_get_missing_key_raises_not_found(store: ArtifactStore, tmp_path: Path) -> None:
    key = artifact_key(USER, "ghost", 1)
    dest = tmp_path / "out" / "model.dill"
    dest.parent.mkdir()
    with pytest.raises(NotFound, match="ghost/v1/model.dill"):
        store.get_file(key, dest)
    with pytest.raises(NotFound):
        store.get_bytes(key)
    assert list(dest.parent.iterdir()) == []  # neither the file nor a temp file


def test_key_escaping_the_store_is_refused(store: ArtifactStore) -> None:
    with pytest.raises(ValueError):
        store.put_bytes("../outside", b"x")


def test_streaming_large_file_keeps_memory_flat(big_store: ArtifactStore, tmp_path: Path) -> None:
    store = big_store
    src = _random_file(tmp_path / "big.dill", 60)
    dest = tmp_path / "big-copy.dill"
    key = artifact_key(USER, 99, 1)
    was_tracing = tracemalloc.is_tracing()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        store.put_file(key, src)
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        store.get_file(key, dest)
        get_peak = tracemalloc.get_traced_memory()[1]
    finally:
        if not was_tracing:
            tracemalloc.stop()
    assert put_peak < 20 * MB, f"put_file peaked at {put_peak / MB:.1f} MB"
    assert get_peak < 20 * MB, f"get_file peaked at {get_peak / MB:.1f} MB"
    assert dest.stat().st_size == 60 * MB
    assert sha256_file(dest) == sha256_file(src)
    if isinstance(store, S3Store):  # 60 MB went up as multipart: 8 parts of 8 MB
        head = store.client.head_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}")
        assert head["ETag"].strip('"').endswith("-8")


# ---- S3 only -------------------------------------------------------------------------------


def test_s3_objects_live_under_the_prefix(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_credentials(monkeypatch, tmp_path)
    prefix = f"run-{uuid.uuid4().hex[:8]}/deep/"  # slashes around the prefix are ignored
    store = S3Store(_s3_settings(moto_url, prefix=prefix))
    key = artifact_key(USER, "churn", 1)
    store.put_bytes(key, b"x")
    listed = admin_client(moto_url).list_objects_v2(Bucket=BUCKET, Prefix=prefix.rstrip("/"))
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}{key}"]
    assert store.list() == [key]
    assert store.describe() == f"S3 {moto_url} bucket {BUCKET}/{prefix.strip('/')}"


def test_s3_empty_prefix_uses_bucket_root(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_credentials(monkeypatch, tmp_path)
    bucket = f"bare-{uuid.uuid4().hex[:8]}"
    admin_client(moto_url).create_bucket(Bucket=bucket)
    store = S3Store(_s3_settings(moto_url, bucket=bucket, prefix=""))
    key = artifact_key(USER, "churn", 1)
    store.put_bytes(key, b"x")
    assert [
        o["Key"] for o in admin_client(moto_url).list_objects_v2(Bucket=bucket)["Contents"]
    ] == [key]
    assert store.list() == [key]
    store.delete_prefix("")
    assert store.list() == []
    assert store.describe() == f"S3 {moto_url} bucket {bucket}/"


def test_make_store_builds_s3_store(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_credentials(monkeypatch, tmp_path)
    store = make_store(_s3_settings(moto_url))
    assert isinstance(store, S3Store)
    store.check()


def test_s3_without_credentials_is_unavailable(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ambient_credentials(monkeypatch, tmp_path)
    store = S3Store(_s3_settings(moto_url))
    with pytest.raises(Unavailable, match="refused access") as caught:
        store.check()
    assert moto_url in caught.value.message
    assert "credentials" in caught.value.message


def test_s3_key_file_problems_are_config_errors(moto_url: str, tmp_path: Path) -> None:
    access, secret = key_files(tmp_path)
    with pytest.raises(ConfigError, match="access_key_file"):
        S3Store(
            _s3_settings(
                moto_url, access_key_file=str(tmp_path / "missing"), secret_key_file=secret
            )
        )
    with pytest.raises(ConfigError, match="set together"):
        S3Store(_s3_settings(moto_url, access_key_file=access))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="secret_key_file .* is empty"):
        S3Store(_s3_settings(moto_url, access_key_file=access, secret_key_file=str(empty)))


def test_s3_missing_bucket_is_unavailable_not_not_found(
    moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _env_credentials(monkeypatch, tmp_path)
    store = S3Store(_s3_settings(moto_url, bucket="no-such-bucket"))
    for call in (
        store.check,
        lambda: store.get_file("u/m/v1/model.dill", tmp_path / "x"),
        lambda: store.get_bytes("u/m/v1/manifest.json"),
        lambda: store.exists("u/m/v1/model.dill"),
        lambda: store.put_bytes("u/m/v1/manifest.json", b"{}"),
        lambda: store.list(),
    ):
        with pytest.raises(Unavailable, match="no-such-bucket' does not exist") as caught:
            call()
        assert moto_url in caught.value.message
        assert "[storage] bucket" in caught.value.message
    assert not (tmp_path / "x").exists()


@pytest.mark.slow  # waits out the client's timeouts by design
def test_s3_outage_is_reported_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop the server mid-test: every call answers Unavailable naming the endpoint, fast."""
    _env_credentials(monkeypatch, tmp_path)
    server, url = start_inprocess_server()
    try:
        admin_client(url).create_bucket(Bucket="outage")
        store = S3Store(_s3_settings(url, bucket="outage"))
        src = tmp_path / "model.dill"
        src.write_bytes(os.urandom(100_000))
        store.put_file("u/m/v1/model.dill", src)  # works while the server is up
        store.check()
    finally:
        stop_inprocess_server(server)

    calls = {
        "check": store.check,
        "put_file": lambda: store.put_file("u/m/v2/model.dill", src),
        "put_bytes": lambda: store.put_bytes("u/m/v2/manifest.json", b"{}"),
        "get_file": lambda: store.get_file("u/m/v1/model.dill", tmp_path / "back.dill"),
        "get_bytes": lambda: store.get_bytes("u/m/v1/model.dill"),
        "exists": lambda: store.exists("u/m/v1/model.dill"),
        "list": store.list,
        "delete_prefix": lambda: store.delete_prefix("u/"),
    }
    for name, call in calls.items():
        started = time.monotonic()
        with pytest.raises(Unavailable) as caught:
            call()
        elapsed = time.monotonic() - started
        assert elapsed < OUTAGE_LIMIT_S, f"{name} took {elapsed:.1f} s to report the outage"
        message = caught.value.message
        assert f"S3 store {url} bucket 'outage' is unreachable" in message, (name, message)
        assert "Check [storage] endpoint_url and that the server is running." in message
        assert caught.value.status_code == 503
    assert not (tmp_path / "back.dill").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.dill"]  # no temp files


@pytest.mark.slow  # waits out the client's timeouts by design
def test_s3_hung_server_is_reported_within_the_timeouts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that accepts connections but never answers: the read timeout ends the wait."""
    _env_credentials(monkeypatch, tmp_path)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections queue in the backlog and are never served
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        store = S3Store(_s3_settings(url))
        started = time.monotonic()
        with pytest.raises(Unavailable, match="is unreachable") as caught:
            store.check()
        elapsed = time.monotonic() - started
    assert elapsed < OUTAGE_LIMIT_S, f"check took {elapsed:.1f} s"
    assert url in caught.value.message
