"""Litestar's validation errors (a request body, query or path value of the wrong JSON type) in
mldropd's words: `{"field", "message"}` naming the field and what to send instead.

Litestar decodes request bodies into the Structs of mldropd.services.schemas with msgspec and
names the body itself "data"; an unknown or a missing field is only named inside msgspec's
message ("Object contains unknown field `owner`"), so it is read from there.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.exceptions import HTTPException

_UNKNOWN = re.compile(r"Object contains unknown field `(?P<name>[^`]+)`")
_MISSING = re.compile(r"Object missing required field `(?P<name>[^`]+)`")
_BODY = "data"  # Litestar's name of the request body


def _fields_taken(request: Request[Any, Any, Any]) -> list[str]:
    """The field names of the route's request body, when it is a Struct."""
    data = getattr(request.route_handler, "parsed_data_field", None)
    body = getattr(data, "annotation", None)
    if isinstance(body, type) and issubclass(body, msgspec.Struct):
        return sorted(f.encode_name for f in msgspec.structs.fields(body))
    return []


def _one(request: Request[Any, Any, Any], error: dict[str, Any], detail: str) -> dict[str, str]:
    key = str(error.get("key", "")).replace("[...]", "")  # a value inside a dict: the dict's key
    message = str(error.get("message", detail))
    if message.startswith("Invalid RFC3339 encoded date"):
        return {"field": key, "message": "not a date: send YYYY-MM-DD"}
    if error.get("source") != "body":
        return {"field": key, "message": message}
    parent = "" if key == _BODY else key
    if found := _UNKNOWN.fullmatch(message):
        name = ".".join(filter(None, [parent, found["name"]]))
        taken = [] if parent else _fields_taken(request)
        hint = f"; send only {', '.join(taken)}" if taken else ""
        return {"field": name, "message": f"`{name}` is not a field of this request{hint}"}
    if found := _MISSING.fullmatch(message):
        name = ".".join(filter(None, [parent, found["name"]]))
        return {"field": name, "message": f"`{name}` is required"}
    return {"field": key, "message": message}


def field_errors(request: Request[Any, Any, Any], exc: HTTPException) -> list[dict[str, str]]:
    """The problems Litestar found in a request, one per field."""
    extra = exc.extra if isinstance(exc.extra, list) else []
    return [_one(request, e, str(exc.detail)) for e in extra if isinstance(e, dict)]
