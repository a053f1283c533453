"""JSON API, /api/v1: thin handlers that parse, call the registry or daemon, and answer."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import anyio
from litestar import Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody, QueryParameter
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT
from sqlmodel import Session, col, select

from mldropd import audit
from mldropd.services.views import RunOut, dq_json, model_json, model_list, run_json
from mldropd.batch.gate import discard_held, publish_held
from mldropd.daemon import Daemon
from mldropd.db import session_scope
from mldropd.errors import FieldError, NotFound, Unauthorized, ValidationFailed
from mldropd.records import DQResult, Model, ModelRun, User
from mldropd.registry import MAX_ID, delete_model, get_model, update_model
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
    return state.daemon


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
    state: State, user: NamedDependency[User], owner: FromQuery[str | None] = None
) -> list[dict[str, Any]]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        now = daemon.now()
        return model_list(s, user, daemon.settings, now, owner=owner)


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
    state: State,
    user: NamedDependency[User],
    model_id: FromPath[int],
    data: JSONBody[dict[str, Any]],
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
    _audit_runs(daemon, user, "run.request", {model_id: covered[model_id]})
    return covered[model_id]


def _audit_runs(daemon: Daemon, user: User, action: str, covered: dict[int, ModelRun]) -> None:
    """One audit event per model whose scoring was asked for."""
    with session_scope(daemon.engine) as s:
        for model_id, run in covered.items():
            audit.record(
                s,
                user.email,
                action,
                f"model:{model_id}",
                run_id=run.id,
                date=run.date,
                trigger=run.trigger,
            )


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
    data: JSONBody[dict[str, Any] | None] = None,
) -> dict[str, Any]:
    daemon = _daemon(state)
    day = parse_date(data["date"]) if data and data.get("date") else None
    run = request_run(daemon, user, model_id, day)
    return {"run_id": run.id, "status": run.status, "date": run.date.isoformat()}


def _range(data: dict[str, Any], today: dt.date) -> list[dt.date]:
    """The dates of a run request: "date", or "from" and "to" (inclusive, at most a year)."""
    if data.get("from"):
        start = parse_date(data["from"], "from")
        end = parse_date(data["to"], "to") if data.get("to") else today
        if end < start:
            raise ValidationFailed([FieldError("to", f"{end} is before {start}")])
        if (end - start).days > 366:
            raise ValidationFailed([FieldError("from", "a backfill covers at most 367 days")])
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    else:
        days = [parse_date(data["date"]) if data.get("date") else today]
    if days[-1] > today:
        raise ValidationFailed([FieldError("to", f"{days[-1]} is in the future")])
    return days


@post(
    f"{API}/runs",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Score models for a date or a date range (backfill), oldest date first",
)
def backfill_route(
    state: State, user: NamedDependency[User], data: JSONBody[dict[str, Any]]
) -> dict[str, Any]:
    daemon = _daemon(state)
    ids = data.get("model_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ValidationFailed([FieldError("model_ids", "give the ids of the models to score")])
    days = _range(data, daemon.today())
    with Session(daemon.engine) as s:
        models = [get_model(s, user, i) for i in ids]
    runs = []
    for day in days:
        trigger = Trigger.MANUAL if day == daemon.today() else Trigger.BACKFILL
        _, covered = daemon.run_models(day, models, trigger, force=True)
        _audit_runs(daemon, user, "run.request", covered)
        runs += [
            {"run_id": r.id, "model_id": m, "date": day.isoformat(), "status": r.status}
            for m, r in covered.items()
        ]
    return {"runs": runs}


@post(
    f"{API}/runs/rerun-failed",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Score again every model whose latest run of a date failed",
)
def rerun_failed_route(
    state: State, user: NamedDependency[User], data: JSONBody[dict[str, Any]]
) -> dict[str, Any]:
    daemon = _daemon(state)
    day = parse_date(data.get("date"))
    with Session(daemon.engine) as s:
        query = select(ModelRun).where(ModelRun.date == day).order_by(col(ModelRun.id))
        owned = _owned_model_ids(s, user)
        if owned is not None:
            query = query.where(col(ModelRun.model_id).in_(owned))
        latest = {r.model_id: r for r in s.exec(query)}
        failed = [m for m, r in latest.items() if r.status == "failed"]
        models = list(s.exec(select(Model).where(col(Model.id).in_(failed))))
    if not models:
        return {"runs": []}
    _, covered = daemon.run_models(day, models, Trigger.MANUAL)
    _audit_runs(daemon, user, "run.rerun_failed", covered)
    return {
        "runs": [
            {"run_id": r.id, "model_id": m, "date": day.isoformat(), "status": r.status}
            for m, r in covered.items()
        ]
    }


@post(
    f"{API}/runs/{{run_id:int}}/publish",
    sync_to_thread=True,
    status_code=200,
    summary="Publish scores held back by the DQ gate",
)
def publish_route(state: State, user: NamedDependency[User], run_id: FromPath[int]) -> RunOut:
    daemon = _daemon(state)
    return run_json(publish_held(daemon.engine, daemon.settings, user, run_id))


@post(
    f"{API}/runs/{{run_id:int}}/discard",
    sync_to_thread=True,
    status_code=200,
    summary="Discard scores held back by the DQ gate",
)
def discard_route(state: State, user: NamedDependency[User], run_id: FromPath[int]) -> RunOut:
    daemon = _daemon(state)
    return run_json(discard_held(daemon.engine, daemon.settings, user, run_id))


def _owned_model_ids(s: Session, user: User) -> list[int] | None:
    if user.is_admin:
        return None
    return list(s.exec(select(Model.id).where(Model.owner_id == user.id)))  # type: ignore[arg-type]


@get(f"{API}/runs", sync_to_thread=True, summary="Model runs, newest first")
def list_runs_route(
    state: State,
    user: NamedDependency[User],
    model_id: FromQuery[int | None] = None,
    day: Annotated[str | None, QueryParameter(name="date")] = None,
    limit: FromQuery[int] = 200,
) -> list[RunOut]:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        if model_id is not None and not 0 < model_id <= MAX_ID:
            return []  # no such model can exist
        query = select(ModelRun).order_by(col(ModelRun.id).desc()).limit(max(1, min(limit, 1000)))
        owned = _owned_model_ids(s, user)
        if owned is not None:
            query = query.where(col(ModelRun.model_id).in_(owned))
        if model_id is not None:
            query = query.where(ModelRun.model_id == model_id)
        if day:
            query = query.where(ModelRun.date == parse_date(day))
        return [run_json(r) for r in s.exec(query)]


@get(f"{API}/runs/{{run_id:int}}", sync_to_thread=True, summary="One model run")
def get_run_route(state: State, user: NamedDependency[User], run_id: FromPath[int]) -> RunOut:
    daemon = _daemon(state)
    with Session(daemon.engine) as s:
        run = s.get(ModelRun, run_id) if 0 < run_id <= MAX_ID else None
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
    backfill_route,
    rerun_failed_route,
    publish_route,
    discard_route,
    list_runs_route,
    get_run_route,
    model_dq_route,
]
