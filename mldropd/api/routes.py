"""JSON API, /api/v1: thin handlers that parse, call the registry or daemon, and answer."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
from litestar import Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, Parameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlmodel import Session, col, select

from mldropd.api.views import dq_json, model_json, run_json
from mldropd.daemon import Daemon
from mldropd.errors import FieldError, NotFound, Unauthorized, ValidationFailed
from mldropd.records import DQResult, Model, ModelRun, User
from mldropd.registry import delete_model, get_model, list_models, update_model
from mldropd.states import Trigger
from mldropd.uploads import receive_upload

API = "/api/v1"


def bearer_user(request: Request[Any, Any, Any], state: State) -> User:
    """The user of the request's bearer token (401 without a valid one)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send your API token as 'Authorization: Bearer <token>' "
            "(`mldropd users add` prints one)"
        )
    from mldropd.auth import user_for_token

    with Session(state.daemon.engine) as s:
        user = user_for_token(s, token.strip())
    if user is None:
        raise Unauthorized("the API token is not valid (or the user is disabled)")
    return user


def _daemon(state: State) -> Daemon:
    return state.daemon  # type: ignore[no-any-return]


@post(
    f"{API}/models",
    status_code=201,
    summary="Upload a model file (multipart: file, email, schedule, name)",
)
async def upload_model(
    request: Request[Any, Any, Any], state: State, user: NamedDependency[User]
) -> dict[str, Any]:
    daemon = _daemon(state)
    model, _ = await receive_upload(request, daemon, user)
    return await anyio.to_thread.run_sync(_model_detail, daemon, user, model.id)


def _model_detail(daemon: Daemon, user: User, model_id: int | None) -> dict[str, Any]:
    with Session(daemon.engine) as s:
        model = get_model(s, user, model_id or 0)
        return model_json(s, model, daemon.settings, daemon.now(), detail=True)


@get(f"{API}/models", sync_to_thread=True, summary="The caller's models (admin: all)")
def list_models_route(
    state: State, user: NamedDependency[User], owner: str | None = None
) -> list[dict[str, Any]]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        now = daemon.now()
        return [model_json(s, m, daemon.settings, now) for m in list_models(s, user, owner)]


@get(f"{API}/models/{{model_id:int}}", sync_to_thread=True, summary="One model with versions")
def get_model_route(
    state: State, user: NamedDependency[User], model_id: FromPath[int]
) -> dict[str, Any]:
    return _model_detail(_daemon(state), user, model_id)


@patch(
    f"{API}/models/{{model_id:int}}",
    sync_to_thread=True,
    summary="Change schedule, email, status (active/paused) or version (roll back)",
)
def patch_model_route(
    state: State, user: NamedDependency[User], model_id: FromPath[int], data: dict[str, Any]
) -> dict[str, Any]:
    daemon = _daemon(state)
    update_model(daemon.engine, daemon.settings, user, model_id, data)
    return _model_detail(daemon, user, model_id)


@delete(
    f"{API}/models/{{model_id:int}}",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
    summary="Stop scheduling and remove the artifacts; scores stay",
)
def delete_model_route(state: State, user: NamedDependency[User], model_id: FromPath[int]) -> None:
    daemon = _daemon(state)
    delete_model(daemon.engine, daemon.store, user, model_id)


def parse_date(value: Any, field: str = "date") -> dt.date:
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise ValidationFailed(
            [FieldError(field, f"{value!r} is not a date (YYYY-MM-DD)")]
        ) from None


def request_run(daemon: Daemon, user: User, model_id: int, day: dt.date | None) -> ModelRun:
    """Score one model now, for today or a past date; joins a run already in progress."""
    today = daemon.today()
    if day is not None and day > today:
        raise ValidationFailed(
            [FieldError("date", f"{day} is in the future; scores are made for today or past dates")]
        )
    with Session(daemon.engine) as s:
        model = get_model(s, user, model_id)
    trigger = Trigger.MANUAL if day in (None, today) else Trigger.BACKFILL
    _, covered = daemon.run_models(day or today, [model], trigger, force=True)
    return covered[model_id]


@post(
    f"{API}/models/{{model_id:int}}/runs",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary='Score now; optional body {"date": "YYYY-MM-DD"} for a past date',
)
def run_model_route(
    state: State,
    user: NamedDependency[User],
    model_id: FromPath[int],
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    daemon = _daemon(state)
    day = parse_date(data["date"]) if data and data.get("date") else None
    run = request_run(daemon, user, model_id, day)
    return {"run_id": run.id, "status": run.status, "date": run.date.isoformat()}


def _owned_model_ids(s: Session, user: User) -> list[int] | None:
    if user.is_admin:
        return None
    return list(s.exec(select(Model.id).where(Model.owner_id == user.id)))  # type: ignore[arg-type]


@get(f"{API}/runs", sync_to_thread=True, summary="Model runs, newest first")
def list_runs_route(
    state: State,
    user: NamedDependency[User],
    model_id: int | None = None,
    day: str | None = Parameter(query="date", default=None),
    limit: int = 200,
) -> list[dict[str, Any]]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        query = select(ModelRun).order_by(col(ModelRun.id).desc()).limit(min(limit, 1000))
        owned = _owned_model_ids(s, user)
        if owned is not None:
            query = query.where(col(ModelRun.model_id).in_(owned))
        if model_id is not None:
            query = query.where(ModelRun.model_id == model_id)
        if day:
            query = query.where(ModelRun.date == parse_date(day))
        return [run_json(r) for r in s.exec(query)]


@get(f"{API}/runs/{{run_id:int}}", sync_to_thread=True, summary="One model run")
def get_run_route(
    state: State, user: NamedDependency[User], run_id: FromPath[int]
) -> dict[str, Any]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        run = s.get(ModelRun, run_id)
        if run is None:
            raise NotFound(f"run {run_id} not found")
        try:
            get_model(s, user, run.model_id)
        except NotFound:
            raise NotFound(f"run {run_id} not found") from None
        return run_json(run)


@get(f"{API}/models/{{model_id:int}}/dq", sync_to_thread=True, summary="DQ results by date")
def model_dq_route(
    state: State, user: NamedDependency[User], model_id: FromPath[int]
) -> list[dict[str, Any]]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        get_model(s, user, model_id)
        rows = s.exec(
            select(DQResult)
            .where(DQResult.model_id == model_id)
            .order_by(col(DQResult.date), col(DQResult.id))
        )
        return [dq_json(r) for r in rows]


ROUTES = [
    upload_model,
    list_models_route,
    get_model_route,
    patch_model_route,
    delete_model_route,
    run_model_route,
    list_runs_route,
    get_run_route,
    model_dq_route,
]
