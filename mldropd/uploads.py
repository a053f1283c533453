"""Receive an uploaded model file: size-limited, streamed to a private temporary file (hashed on
the way), then handed to the intake (mldropd/intake.py); every attempt is audited."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from litestar import Request
from litestar.datastructures import UploadFile
from litestar.exceptions import HTTPException

from mldropd import intake
from mldropd.errors import FieldError, MldropdError, TooLarge, ValidationFailed
from mldropd.intake import Attempt, UploadForm
from mldropd.records import Model, ModelVersion, User

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
    """Parse the multipart form, store the file in a temporary place, register it; a refused
    attempt is audited before its error goes back to the caller."""
    attempt = Attempt()
    try:
        return await _receive(request, daemon, user, attempt)
    except MldropdError as exc:
        await anyio.to_thread.run_sync(intake.record_refusal, daemon.engine, user, attempt, exc)
        raise


async def _receive(
    request: Request[Any, Any, Any], daemon: Daemon, user: User, attempt: Attempt
) -> tuple[Model, ModelVersion]:
    limit_mb = daemon.settings.limits.max_upload_mb
    limit = limit_mb * _CHUNK
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _CHUNK:
        attempt.size = int(declared)
        raise _too_large(limit_mb)  # refuse before reading the body
    try:
        form = await request.form()
    except HTTPException as exc:
        if exc.status_code == 413:  # the body outgrew the app's limit while it was read
            raise _too_large(limit_mb) from None
        raise
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ValidationFailed(
            [
                FieldError(
                    "file", "no file was sent: add the model file as the multipart field 'file'"
                )
            ]
        )
    attempt.filename = upload.filename or "model.dill"
    fields = UploadForm(
        filename=attempt.filename,
        email=_text(form.get("email")),
        schedule=_text(form.get("schedule")),
        name=_text(form.get("name")),
    )
    ticket = daemon.validations.ticket(user.id or 0, _text(form.get("ticket")))
    work = Path(daemon.settings.server.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="upload-", dir=work) as tmp:
        path = Path(tmp) / "model.dill"
        digest = hashlib.sha256()
        with open(path, "wb") as out:
            while chunk := await upload.read(_CHUNK):
                attempt.size += len(chunk)
                if attempt.size > limit:
                    raise _too_large(limit_mb)
                digest.update(chunk)
                out.write(chunk)
        await upload.close()
        attempt.sha256 = digest.hexdigest()
        return await intake.register(daemon, user, path, fields, attempt, ticket)


def _text(value: Any) -> str | None:
    """A form value with surrounding spaces removed; newlines, NUL and the like stay, so that
    the checks refuse them (a name or e-mail is matched whole)."""
    if isinstance(value, str) and value.strip():
        return value.strip(" ")
    return None
