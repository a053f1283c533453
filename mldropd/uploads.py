"""Receive an uploaded model file: size-limited, streamed to a private temporary file, then
handed to the registry in a worker thread (validation starts a child process)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Request
from litestar.datastructures import UploadFile

from mldropd.errors import FieldError, TooLarge, ValidationFailed
from mldropd.records import Model, ModelVersion, User
from mldropd.registry import UploadForm, register_upload

if TYPE_CHECKING:
    from mldropd.daemon import Daemon

_CHUNK = 1 << 20


def _too_large(limit_mb: int) -> TooLarge:
    return TooLarge(
        f"the file is larger than the limit of {limit_mb} MB ([limits] max_upload_mb)", field="file"
    )


async def receive_upload(
    request: Request[Any, Any, Any], daemon: Daemon, user: User
) -> tuple[Model, ModelVersion]:
    """Parse the multipart form, store the file in a temporary place, register it."""
    limit_mb = daemon.settings.limits.max_upload_mb
    limit = limit_mb * _CHUNK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _CHUNK:
        raise _too_large(limit_mb)  # refuse before reading the body
    form = await request.form()
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ValidationFailed(
            [
                FieldError(
                    "file", "no file was sent: add the model file as the multipart field 'file'"
                )
            ]
        )
    fields = UploadForm(
        filename=upload.filename or "model.dill",
        email=_text(form.get("email")),
        schedule=_text(form.get("schedule")),
        name=_text(form.get("name")),
    )
    work = Path(daemon.settings.server.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=work) as tmp:
        path = Path(tmp) / "model.dill"
        size = 0
        with open(path, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                size += len(chunk)
                if size > limit:
                    raise _too_large(limit_mb)
                out.write(chunk)
        await upload.close()
        return await anyio.to_thread.run_sync(
            register_upload,
            daemon.engine,
            daemon.store,
            daemon.settings,
            user,
            path,
            fields,
            daemon.sandboxes(),
        )


def _text(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None
