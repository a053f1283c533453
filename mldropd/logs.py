"""Logging: one line per event, with run_id / model_id / date / user fields when they apply.

Text lines by default, JSON lines with `[server] log_format = "json"`; the daemon and the batch
job (whose output the daemon relays) both call configure(). Credentials never reach the log: no
code logs them, and every line is scrubbed of token-, bearer- and cookie-shaped text on the way
out, in case a library or an exception message carries one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any

FIELDS = (
    "run_id",
    "model_run_id",
    "model_id",
    "user",
    "date",
    "method",
    "path",
    "status",
    "ms",
)
_IN_TEXT = ("run_id", "model_run_id", "model_id", "user", "date")  # the rest is in the message
ACCESS_KEY = "mldropd.access"  # scope key where the request's user is noted for the access log
access_log = logging.getLogger("mldropd.access")

_SECRETS = [
    (re.compile(r"mld_[A-Za-z0-9_-]{8,}"), "mld_<redacted>"),  # API tokens
    (re.compile(r"(?i)(bearer\s+)\S+"), r"\1<redacted>"),
    (re.compile(r"(?i)\b(session|csrftoken|token|password|secret)=[^;&\s]+"), r"\1=<redacted>"),
]


def redact(text: str) -> str:
    """text with anything shaped like a token, bearer credential or cookie value replaced."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


_BLANK = logging.LogRecord("", 0, "", 0, "", (), None)
_STANDARD = set(vars(_BLANK)) | {"message", "asctime", "taskName"}  # not `extra=` fields


def _timestamp(record: logging.LogRecord) -> str:
    moment = dt.datetime.fromtimestamp(record.created, dt.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = f"{_timestamp(record)} {record.levelname:<7} {record.name}: {record.getMessage()}"
        extras = " ".join(f"{k}={getattr(record, k)}" for k in _IN_TEXT if hasattr(record, k))
        if extras:
            line += f" [{extras}]"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return redact(line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "event": redact(record.getMessage()),
        }
        data.update({k: getattr(record, k) for k in FIELDS if hasattr(record, k)})
        for key, value in vars(record).items():  # any other `extra=` field, e.g. outbox_id
            if key not in _STANDARD and key not in data and not key.startswith("_"):
                data[key] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            data["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(data, default=str)


def _log_uncaught(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    logging.getLogger("mldropd").critical("uncaught exception", exc_info=(kind, exc, tb))


def _log_uncaught_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is not SystemExit and args.exc_value is not None:
        logging.getLogger("mldropd").critical(
            "uncaught exception in thread %s",
            args.thread.name if args.thread else "?",
            exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        )


def configure(log_format: str = "text", level: str = "INFO") -> None:
    """Send every log line (warnings and uncaught exceptions too) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("apscheduler.executors.default", "apscheduler.scheduler", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # So that a JSON log stays one JSON object per line, whatever goes wrong.
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_thread


job_log = logging.getLogger("mldropd.batch.job")


def relay_line(line: str, run_id: int | None = None) -> None:
    """Pass one line of a child process's output (the batch job's) into this process's log.

    The job's own log events arrive already formatted and go through as they are; anything else
    it printed (a library's warning, the JVM's output under Spark) becomes an event of
    `mldropd.batch.job` with the run id, so a JSON log stays one JSON object per line.
    """
    text = line.rstrip("\n")
    if not text:
        return
    handler = logging.getLogger().handlers[:1]
    as_json = bool(handler) and isinstance(handler[0].formatter, JsonFormatter)
    if not as_json:
        sys.stderr.write(redact(text) + "\n")
        return
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        sys.stderr.write(text + "\n")  # the job's formatter has scrubbed it already
    else:
        job_log.info("%s", text, extra={} if run_id is None else {"run_id": run_id})


# -- access log ----------------------------------------------------------------------------------
Scope = MutableMapping[str, Any]
ASGIApp = Callable[..., Awaitable[None]]  # litestar's app or another wrapper of it


def note_user(scope: MutableMapping[str, Any], email: str) -> None:
    """Tell the access log who made the request (called once the user is authenticated)."""
    note = scope.get(ACCESS_KEY)
    if note is not None:
        note["user"] = email


class AccessLog:
    """ASGI wrapper: one line per HTTP request with method, path, status, ms and user.

    The query string, headers and cookies are never logged: they are where credentials travel.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Any]],
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        note: dict[str, Any] = {"status": 500}
        scope[ACCESS_KEY] = note

        async def sending(message: Any) -> None:
            if message.get("type") == "http.response.start":
                note["status"] = message.get("status", 500)
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            fields = {
                "method": scope.get("method", ""),
                "path": scope.get("path", ""),
                "status": note["status"],
                "ms": round((time.perf_counter() - started) * 1000, 1),
            }
            if "user" in note:
                fields["user"] = note["user"]
            access_log.info(
                "%s %s %s %.1f ms",
                fields["method"],
                fields["path"],
                fields["status"],
                fields["ms"],
                extra=fields,
            )
