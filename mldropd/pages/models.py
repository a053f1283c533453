"""My models (table), model detail, and the actions: run now, pause/resume, roll back, delete.

Each page answers HTMX requests with its partial from the same handler; actions answer HTMX
with 204 and an event that makes the live regions refresh themselves."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, URLEncodedBody
from litestar.response import Template

from mldropd.errors import FieldError, MldropdError, NotFound, ValidationFailed
from mldropd.pages.context import detail_context, model_rows, page_number
from mldropd.pages.web import after_action, error_response, page_or_partial
from mldropd.records import User
from mldropd.services import ModelService, RunService

Models = NamedDependency[ModelService]
Runs = NamedDependency[RunService]


@get("/models", sync_to_thread=True)
def models_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    models: Models,
    page: FromQuery[str | None] = None,
) -> Template:
    rows, pager = model_rows(models, user, page_number(page))
    context = {
        "user": user,
        "page": "models",
        "models": rows,
        "pager": pager,
        "busy": any(r["busy"] for r in rows),
    }
    return page_or_partial(request, "models.html", "_models_table.html", context)


@get("/models/{model_id:int}", sync_to_thread=True)
def model_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    state: State,
    models: Models,
    model_id: FromPath[int],
) -> Template:
    try:
        context = detail_context(models, user, model_id, state.settings)
    except NotFound as exc:
        return error_response(request, user, exc, "Model not found", "/models")
    context.update(user=user, page="models")
    return page_or_partial(request, "model.html", "_model_detail.html", context)


def _act(
    request: Request[Any, Any, Any],
    user: User,
    model_id: int,
    next_: str | None,
    action: Any,
    done: str = "",
) -> Response[Any] | Template:
    """Run an action; errors become the flash partial (HTMX) or an error page."""
    back = f"/models/{model_id}"
    try:
        action()
    except MldropdError as exc:
        return error_response(request, user, exc, "That did not work", next_ or back)
    return after_action(request, done or back, next_)


@post("/models/{model_id:int}/run", sync_to_thread=True)
def run_now_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    runs: Runs,
    model_id: FromPath[int],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any] | Template:
    return _act(request, user, model_id, data.get("next"), lambda: runs.request(user, [model_id]))


@post("/models/{model_id:int}/status", sync_to_thread=True)
def status_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    models: Models,
    model_id: FromPath[int],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any] | Template:
    change = {"status": data.get("status", "")}
    return _act(
        request, user, model_id, data.get("next"), lambda: models.update(user, model_id, change)
    )


def _version(data: dict[str, str]) -> int:
    value = data.get("version", "")
    if not value.isdigit():
        raise ValidationFailed([FieldError("version", "choose a version to roll back to")])
    return int(value)


@post("/models/{model_id:int}/version", sync_to_thread=True)
def version_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    models: Models,
    model_id: FromPath[int],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any] | Template:
    """Roll back (or forward) to a stored version: ModelService.update({"version"})."""
    return _act(
        request,
        user,
        model_id,
        data.get("next"),
        lambda: models.update(user, model_id, {"version": _version(data)}),
    )


@post("/models/{model_id:int}/delete", sync_to_thread=True)
def delete_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    models: Models,
    model_id: FromPath[int],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any] | Template:
    return _act(
        request, user, model_id, data.get("next"), lambda: models.delete(user, model_id), "/models"
    )


@post("/models/{model_id:int}/runs/{run_id:int}/{action:str}", sync_to_thread=True)
def gate_page(
    request: Request[Any, Any, Any],
    user: NamedDependency[User],
    runs: Runs,
    model_id: FromPath[int],
    run_id: FromPath[int],
    action: FromPath[str],
    data: URLEncodedBody[dict[str, str]],
) -> Response[Any] | Template:
    """Publish anyway or discard the scores of a run held back by the DQ gate."""
    gate = {"publish": runs.publish, "discard": runs.discard}.get(action)
    if gate is None:
        raise NotFound(f"no action {action!r} on runs")
    return _act(
        request, user, model_id, data.get("next"), lambda: gate(user, run_id, model_id=model_id)
    )


ROUTES = [models_page, model_page, run_now_page, status_page, version_page, delete_page, gate_page]
