"""The OpenAPI document as the API really answers: bearer auth and `{"errors": [...]}` errors.

Litestar documents its own error shape (`status_code`, `detail`) for 400s; mldropd answers every
error as `{"errors": [{"field", "message"}]}` (app.py), so the document says that instead, for
each status an API route can give.
"""

from __future__ import annotations

from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Reference,
    Schema,
    SecurityScheme,
)

API = "/api/v1/"
ERRORS = Schema(
    type=OpenAPIType.OBJECT,
    required=["errors"],
    properties={
        "errors": Schema(
            type=OpenAPIType.ARRAY,
            items=Schema(
                type=OpenAPIType.OBJECT,
                required=["field", "message"],
                properties={
                    "field": Schema(type=OpenAPIType.STRING),
                    "message": Schema(type=OpenAPIType.STRING),
                },
            ),
        )
    },
)
WHY = {
    "400": "The request is malformed (e.g. not JSON)",
    "401": "No valid API token (or the user is disabled)",
    "404": "Not found, or not yours (another user's objects are never revealed)",
    "409": "Conflicts with the current state (quota reached, run in progress, nothing held)",
    "413": "The file is larger than [limits] max_upload_mb",
    "422": "Every problem with the request's values, each with its field",
}


def _statuses(method: str, path: str) -> list[str]:
    codes = ["400", "401", "404", "422"]
    if method != "get":
        codes.append("409")
    if method == "post" and path == API + "models":
        codes.append("413")
    return codes


def document_errors(app: Litestar) -> None:
    """Declare bearer auth and the error responses on every /api/v1 operation."""
    document = app.openapi_schema
    components = document.components
    if not isinstance(components, Components):
        components = document.components = Components()
    components.schemas = {**(components.schemas or {}), "Errors": ERRORS}
    components.security_schemes = {
        **(components.security_schemes or {}),
        "bearer": SecurityScheme(type="http", scheme="bearer", description="mld_... API token"),
    }
    for path, item in (document.paths or {}).items():
        if not path.startswith(API):
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            operation = getattr(item, method, None)
            if operation is None:
                continue
            operation.security = [{"bearer": []}]
            responses = operation.responses = dict(operation.responses or {})
            for code in _statuses(method, path):
                responses[code] = OpenAPIResponse(
                    description=WHY[code],
                    content={
                        "application/json": OpenAPIMediaType(
                            schema=Reference(ref="#/components/schemas/Errors")
                        )
                    },
                )
