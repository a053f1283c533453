"""The S3 artifact store: any S3-compatible server (MinIO in production, AWS S3), through boto3.

Keys are stored under ``<prefix>/<key>`` in one bucket. Files are streamed in both directions
(multipart above 8 MB), so memory stays flat whatever the size of a model. Every failure to
reach or use the server becomes ``Unavailable`` (HTTP 503) with a message that names the
endpoint and the bucket and says what to check; a missing object becomes ``NotFound``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from mldropd.errors import ConfigError, NotFound, Unavailable
from mldropd.settings import StorageSettings
from mldropd.store.base import ArtifactStore

MB = 1024 * 1024

# An outage must be reported in seconds, not minutes: short timeouts and one retry. With these
# values a server that refuses connections is reported in about a second, and one that
# accepts connections but never answers in about 2 x READ_TIMEOUT_S.
CONNECT_TIMEOUT_S = 3
READ_TIMEOUT_S = 5
TOTAL_ATTEMPTS = 2

MULTIPART_CHUNK = 8 * MB
# Memory bound of a transfer: about MAX_CONCURRENCY parts in flight, each read from / written
# to disk in small pieces, plus at most MAX_IO_QUEUE chunks of 256 KB waiting for the disk.
MAX_CONCURRENCY = 4
MAX_IO_QUEUE = 16
DELETE_BATCH = 1000

_MISSING_KEY_CODES = {"404", "NoSuchKey", "NotFound"}
_MISSING_BUCKET_CODES = {"NoSuchBucket"}
_CREDENTIAL_CODES = {
    "403",
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "InvalidSecurity",
    "AuthorizationHeaderMalformed",
    "AccountProblem",
    "AllAccessDisabled",
}


def _read_secret(setting: str, path: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise ConfigError(
            f"[storage] {setting} = {path} cannot be read: {exc.strerror or exc}. "
            "Create the file or fix the path."
        ) from None
    if not value:
        raise ConfigError(f"[storage] {setting} = {path} is empty. Put the key in the file.")
    return value


def _error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def _root_cause(exc: BaseException) -> BaseException:
    """The botocore error behind a boto3 wrapper (S3UploadFailedError, RetriesExceededError)."""
    seen: set[int] = set()
    current: BaseException = exc
    while id(current) not in seen:
        seen.add(id(current))
        inner = getattr(current, "last_exception", None)
        if not isinstance(inner, BaseException):
            inner = current.__cause__ or current.__context__
        if inner is None or not isinstance(inner, BotoCoreError | ClientError | Boto3Error):
            break
        current = inner
    return current


# What the S3 client can raise when the server is down, refuses us, or misbehaves.
_S3_ERRORS = (BotoCoreError, ClientError, Boto3Error)


class S3Store(ArtifactStore):
    """Model files in an S3 bucket, under ``<prefix>/<key>``."""

    def __init__(self, settings: StorageSettings) -> None:
        if not settings.bucket:
            raise ConfigError("[storage] bucket must be set when kind = 's3'")
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/")
        self.endpoint_url = settings.endpoint_url.strip()
        self.region = settings.region or None

        credentials: dict[str, str] = {}
        if settings.access_key_file or settings.secret_key_file:
            if not (settings.access_key_file and settings.secret_key_file):
                raise ConfigError(
                    "[storage] access_key_file and secret_key_file must be set together "
                    "(or both left empty to use the standard AWS credential chain)"
                )
            credentials = {
                "aws_access_key_id": _read_secret("access_key_file", settings.access_key_file),
                "aws_secret_access_key": _read_secret("secret_key_file", settings.secret_key_file),
            }
        self._credentials_hint = (
            "[storage] access_key_file and secret_key_file"
            if credentials
            else "the AWS credentials (environment, ~/.aws or instance role)"
        )

        config = Config(
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=READ_TIMEOUT_S,
            retries={"total_max_attempts": TOTAL_ATTEMPTS, "mode": "standard"},
            signature_version="s3v4",
            s3={"addressing_style": "path"},  # MinIO serves buckets as paths, not subdomains
            # Checksums only where S3 requires them: S3-compatible servers differ in their
            # support of the newer default ones. Integrity is checked by sha256 end to end.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            max_pool_connections=max(10, MAX_CONCURRENCY * 2),
        )
        # A session of our own: the default session is shared and not thread-safe to set up.
        session = boto3.session.Session()
        try:
            self.client = session.client(
                "s3",
                endpoint_url=self.endpoint_url or None,
                region_name=self.region,
                config=config,
                **credentials,
            )
        except (BotoCoreError, ValueError) as exc:
            raise ConfigError(
                f"[storage] S3 client cannot be set up for endpoint "
                f"{self.endpoint_url or 'AWS'} region {self.region}: {exc}"
            ) from None
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_CHUNK,
            multipart_chunksize=MULTIPART_CHUNK,
            max_concurrency=MAX_CONCURRENCY,
            max_io_queue=MAX_IO_QUEUE,
            num_download_attempts=TOTAL_ATTEMPTS,
            use_threads=True,
        )

    # ---- keys --------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The URL the client talks to (the AWS regional endpoint when none is configured)."""
        return self.endpoint_url or str(self.client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        parts = key.split("/")
        if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"artifact key {key!r} is not a clean relative path")
        return f"{self.prefix}/{key}" if self.prefix else key

    def _relative(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    def _scope(self, prefix: str) -> tuple[str, str]:
        """(S3 listing prefix, exact key) for a store-relative folder or key prefix.

        Like the local store, a prefix names a folder (or one object): "u/m" covers "u/m" and
        "u/m/..." but not "u/mx/...".
        """
        clean = prefix.strip("/")
        if not clean:
            return (f"{self.prefix}/" if self.prefix else ""), ""
        full = self._key(clean)
        return full, full

    # ---- errors ------------------------------------------------------------------------------

    def _unavailable(self, exc: BaseException, action: str) -> Unavailable:
        cause = _root_cause(exc)
        code = _error_code(cause)
        where = f"S3 store {self.endpoint} bucket '{self.bucket}'"
        detail = str(cause) or type(cause).__name__
        if code in _MISSING_BUCKET_CODES or (action == "check" and code in _MISSING_KEY_CODES):
            message = (
                f"{where} does not exist ({action}): {detail}. "
                "Create the bucket or fix [storage] bucket."
            )
        elif code in _CREDENTIAL_CODES or isinstance(
            cause, NoCredentialsError | PartialCredentialsError
        ):
            message = (
                f"{where} refused access ({action}): {detail}. "
                f"Check {self._credentials_hint} and the bucket's policy."
            )
        elif isinstance(cause, BotoConnectionError | HTTPClientError | ReadTimeoutError):
            message = (
                f"{where} is unreachable ({action}): {detail}. "
                "Check [storage] endpoint_url and that the server is running."
            )
        else:
            message = (
                f"{where} failed ({action}): {detail}. "
                "Check [storage] endpoint_url, bucket and region, and the server's health."
            )
        return Unavailable(message)

    def _missing(self, key: str, action: str) -> NoReturn:
        """A 404 on an object: NotFound, unless it is the bucket that is missing.

        HEAD answers carry no body, so a missing bucket and a missing key look alike.
        """
        self._check_bucket(action)
        raise NotFound(f"artifact {key} is missing from {self.describe()}") from None

    def _check_bucket(self, action: str) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _S3_ERRORS as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                exc = ClientError(
                    {"Error": {"Code": "NoSuchBucket", "Message": "The bucket does not exist"}},
                    "HeadBucket",
                )
            raise self._unavailable(exc, action) from None

    # ---- ArtifactStore -----------------------------------------------------------------------

    def put_file(self, key: str, src: Path) -> None:
        full = self._key(key)
        if not Path(src).is_file():
            raise FileNotFoundError(f"no file {src} to store as {key}")
        try:
            # Streams from disk; multipart above MULTIPART_CHUNK. The object appears only when
            # the upload completes (a failed multipart upload is aborted by boto3).
            self.client.upload_file(str(src), self.bucket, full, Config=self._transfer)
        except _S3_ERRORS as exc:
            raise self._unavailable(exc, f"put {key}") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._key(key)
        try:
            self.client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except _S3_ERRORS as exc:
            raise self._unavailable(exc, f"put {key}") from None

    def get_file(self, key: str, dest: Path) -> None:
        full = self._key(key)
        dest = Path(dest)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".tmp-{dest.name}-")
        os.close(fd)
        try:
            try:
                self.client.download_file(self.bucket, full, tmp, Config=self._transfer)
            except _S3_ERRORS as exc:
                if _error_code(_root_cause(exc)) in _MISSING_KEY_CODES:
                    self._missing(key, f"get {key}")
                raise self._unavailable(exc, f"get {key}") from None
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get_bytes(self, key: str) -> bytes:
        full = self._key(key)
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=full)
            with response["Body"] as body:
                return body.read()
        except _S3_ERRORS as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                self._missing(key, f"get {key}")
            raise self._unavailable(exc, f"get {key}") from None

    def exists(self, key: str) -> bool:
        full = self._key(key)
        try:
            self.client.head_object(Bucket=self.bucket, Key=full)
        except _S3_ERRORS as exc:
            if _error_code(exc) in _MISSING_KEY_CODES:
                self._check_bucket(f"exists {key}")
                return False
            raise self._unavailable(exc, f"exists {key}") from None
        return True

    def _objects(self, prefix: str, action: str) -> Iterator[list[str]]:
        """Pages of full keys under prefix (at most 1000 a page)."""
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                yield [item["Key"] for item in page.get("Contents", [])]
        except _S3_ERRORS as exc:
            raise self._unavailable(exc, action) from None

    def _in_scope(self, full: str, listing: str, exact: str) -> bool:
        if exact:
            return full == exact or full.startswith(exact + "/")
        return full.startswith(listing)

    def delete_prefix(self, prefix: str) -> None:
        listing, exact = self._scope(prefix)
        action = f"delete {prefix or 'everything'}"
        for page in self._objects(listing, action):
            keys = [k for k in page if self._in_scope(k, listing, exact)]
            for start in range(0, len(keys), DELETE_BATCH):
                batch = keys[start : start + DELETE_BATCH]
                try:
                    response: dict[str, Any] = self.client.delete_objects(
                        Bucket=self.bucket,
                        Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                    )
                except _S3_ERRORS as exc:
                    raise self._unavailable(exc, action) from None
                errors = response.get("Errors") or []
                if errors:
                    first = errors[0]
                    failure = ClientError(
                        {
                            "Error": {
                                "Code": first.get("Code", ""),
                                "Message": (
                                    f"{len(errors)} object(s) not deleted, e.g. "
                                    f"{first.get('Key')}: {first.get('Message', '')}"
                                ),
                            }
                        },
                        "DeleteObjects",
                    )
                    raise self._unavailable(failure, action)

    def list(self, prefix: str = "") -> list[str]:
        listing, exact = self._scope(prefix)
        if exact:
            listing = exact + "/"  # objects inside the folder, as the local store lists them
        keys: list[str] = []
        for page in self._objects(listing, f"list {prefix or 'everything'}"):
            keys.extend(self._relative(k) for k in page if k.startswith(listing))
        return sorted(keys)

    def check(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except _S3_ERRORS as exc:
            raise self._unavailable(exc, "check") from None

    def describe(self) -> str:
        return f"S3 {self.endpoint_url or 'AWS'} bucket {self.bucket}/{self.prefix}"
