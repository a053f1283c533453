"""create_app(settings): routes, templates, sessions, CSRF, error mapping, and the daemon's
lifespan (database, runner, scheduler)."""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypedDict

import anyio
from litestar import Litestar, MediaType, Request, Response, Router, get
from litestar.config.csrf import CSRFConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.template.config import TemplateConfig

from mldropd import __version__, logs, metrics
from mldropd.api.admin import ROUTES as ADMIN_ROUTES
from mldropd.api.openapi import document_errors
from mldropd.api.routes import ROUTES as API_ROUTES
from mldropd.api.routes import bearer_user
from mldropd.api.validation import field_errors
from mldropd.auth import load_secret_key
from mldropd.daemon import Daemon
from mldropd.errors import Busy, MldropdError, Unauthorized
from mldropd.pages.routes import ROUTES as PAGE_ROUTES
from mldropd.pages.routes import session_user
from mldropd.records import User
from mldropd.security import SecurityHeaders, session_config
from mldropd.services import ModelService, RunService, Services, UserService
from mldropd.settings import Settings

log = logging.getLogger(__name__)
# web/ installs as the package mldropd.web (a package-dir mapping): find it by that name
WEB_DIR = Path(str(importlib.resources.files("mldropd.web")))
_NO_CSRF = ["/api/", "/healthz", "/readyz", "/metrics", "/schema"]


def _errors_response(status: int, errors: list[dict[str, str]]) -> Response[Any]:
    return Response({"errors": errors}, status_code=status, media_type=MediaType.JSON)


def _is_page(request: Request[Any, Any, Any]) -> bool:
    return not any(request.url.path.startswith(p) for p in _NO_CSRF)


def on_domain_error(request: Request[Any, Any, Any], exc: MldropdError) -> Response[Any]:
    """Every domain error becomes {"errors": [...]} with its status; pages redirect to sign-in."""
    if isinstance(exc, Unauthorized) and _is_page(request):
        return Redirect(f"/login?next={request.url.path}")
    response = _errors_response(exc.status_code, [e.as_dict() for e in exc.errors])
    if isinstance(exc, Busy):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def on_http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    detail = exc.detail
    if exc.status_code == 413:
        limit = request.app.state.settings.limits.max_upload_mb
        detail = f"the file is larger than the limit of {limit} MB ([limits] max_upload_mb)"
    errors = field_errors(request, exc) or [{"field": "", "message": detail}]
    # A wrong value of a named field (body, query or path) is 422, like the API's own checks;
    # a body that is not even JSON stays 400.
    named = bool(errors) and all(e["field"] for e in errors)
    status = 422 if isinstance(exc, ValidationException) and named else exc.status_code
    return _errors_response(status, errors)


def on_unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """A bug: log the traceback for the operator, answer without internals."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _errors_response(
        500,
        [
            {
                "field": "",
                "message": (
                    "internal error in mldropd; the operator finds the details in the daemon log"
                ),
            }
        ],
    )


class HealthOut(TypedDict):
    status: str  # "ok"
    version: str


class ReadyOut(TypedDict):
    status: str  # "ok", or "unavailable" (503)
    checks: dict[str, str]  # each dependency: "ok", or what is wrong
    sandbox: dict[str, Any]  # the sandbox's layers on this machine


@get("/healthz", sync_to_thread=False, include_in_schema=True, summary="Liveness")
def healthz() -> HealthOut:
    return {"status": "ok", "version": __version__}


@get("/readyz", summary="Readiness: database, store, scheduler, features, disk, sandbox")
async def readyz(state: State) -> Response[ReadyOut]:
    checks = await anyio.to_thread.run_sync(state.daemon.readiness)
    ok = all(v == "ok" for v in checks.values())
    body: ReadyOut = {"status": "ok" if ok else "unavailable", "checks": checks,
                      "sandbox": state.daemon.sandbox_layers()}  # fmt: skip
    return Response(body, status_code=200 if ok else 503)


@get(
    "/metrics",
    media_type="text/plain; version=0.0.4",
    sync_to_thread=True,
    summary="Prometheus metrics",
)
def metrics_route(state: State) -> str:
    return metrics.render(state.daemon)


def _api_user(request: Request[Any, Any, Any], state: State) -> User:
    user = bearer_user(request, state)
    logs.note_user(request.scope, user.email)  # type: ignore[arg-type]
    return user


def _page_user(request: Request[Any, Any, Any], state: State) -> User:
    user = session_user(request, state)
    logs.note_user(request.scope, user.email)  # type: ignore[arg-type]
    return user


# The services, as handlers' dependencies: `models: NamedDependency[ModelService]` and so on.
def _models(state: State) -> ModelService:
    return state.services.models


def _runs(state: State) -> RunService:
    return state.services.runs


def _users(state: State) -> UserService:
    return state.services.users


SERVICES = {
    "models": Provide(_models, sync_to_thread=False),
    "runs": Provide(_runs, sync_to_thread=False),
    "users": Provide(_users, sync_to_thread=False),
}


def _template_filters(engine: JinjaTemplateEngine) -> None:
    """Filters the templates share with the reports and the terminal: durations and rates in
    human units, a run's phase in words."""
    from mldropd.states import Phase
    from mldropd.text import duration, per_second

    engine.engine.filters["duration"] = duration
    engine.engine.filters["per_second"] = per_second
    engine.engine.filters["phase"] = lambda value: Phase(value).text


def create_app(settings: Settings, daemon: Daemon | None = None) -> Litestar:
    """The web app; the daemon starts with the app and stops with it."""
    daemon = daemon or Daemon(settings)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(daemon.start)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(daemon.stop)

    secret = load_secret_key(settings.server.secret_key_file)
    # Server-side sessions: sign-out deletes the session, idle ones expire (mldropd/security.py).
    sessions, session_store = session_config(settings, exclude=_NO_CSRF + ["/static"])
    api = Router(
        path="/",
        route_handlers=[*API_ROUTES, *ADMIN_ROUTES],
        dependencies={"user": Provide(_api_user, sync_to_thread=True), **SERVICES},
    )
    pages = Router(
        path="/",
        route_handlers=PAGE_ROUTES,
        dependencies={"user": Provide(_page_user, sync_to_thread=True), **SERVICES},
        include_in_schema=False,
    )
    app = Litestar(
        route_handlers=[
            api,
            pages,
            healthz,
            readyz,
            metrics_route,
            create_static_files_router(
                path="/static", directories=[WEB_DIR / "static"], include_in_schema=False
            ),
        ],
        lifespan=[lifespan],
        state=State({"daemon": daemon, "settings": settings, "services": Services.of(daemon)}),
        middleware=[sessions.middleware],
        stores={"sessions": session_store},
        csrf_config=CSRFConfig(
            secret=secret.hex(),
            exclude=_NO_CSRF + ["/static"],
            cookie_httponly=False,
            cookie_samesite="lax",
            cookie_secure=settings.server.secure_cookies,
        ),
        template_config=TemplateConfig(
            directory=WEB_DIR / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=_template_filters,
        ),
        exception_handlers={
            MldropdError: on_domain_error,
            HTTPException: on_http_error,
            Exception: on_unexpected_error,
        },
        openapi_config=OpenAPIConfig(title="mldropd", version=__version__),
        logging_config=None,  # mldropd.logs configures logging once, for the whole process
        request_max_body_size=settings.limits.max_upload_mb * 1024 * 1024 + (1 << 20),
    )
    document_errors(app)
    app.asgi_handler = SecurityHeaders(app.asgi_handler)
    if settings.server.access_log:  # outermost, so 404s and redirects are logged too
        app.asgi_handler = logs.AccessLog(app.asgi_handler)  # type: ignore[assignment]
    return app
