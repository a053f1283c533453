"""JSON API, /api/v1: each handler parses its input, calls one service and answers.

The services come in as dependencies (app.py: `models`, `runs`, `users`), the caller as `user`;
requests and answers are the types of mldropd.services.schemas, so the OpenAPI document shows
their fields."""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
from litestar import Request, delete, get, patch, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_204_NO_CONTENT

from mldropd.errors import Unauthorized
from mldropd.records import User
from mldropd.services import ModelService, RunService
from mldropd.services.schemas import (
    DQOut,
    ModelChanges,
    ModelDetailOut,
    ModelOut,
    RerunRequest,
    RunOut,
    RunRequest,
    RunRequestedOut,
    RunsRequest,
    RunsRequestedOut,
)
from mldropd.uploads import receive_upload

API = "/api/v1"
Models = NamedDependency[ModelService]
Runs = NamedDependency[RunService]


def bearer_user(request: Request[Any, Any, Any], state: State) -> User:
    """The user of the request's bearer token (401 without a valid one)."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized(
            "send your API token as 'Authorization: Bearer <token>' "
            "(`mldropd users add` prints one)"
        )
    user = state.services.users.by_token(token)
    if user is None:
        raise Unauthorized("the API token is not valid (or the user is disabled)")
    return user


@post(
    f"{API}/models",
    status_code=201,
    summary="Upload a model file (multipart: file, email, schedule, name)",
)
async def upload_model(
    request: Request[Any, Any, Any], state: State, user: NamedDependency[User], models: Models
) -> ModelDetailOut:
    model, _ = await receive_upload(request, state.daemon, user)
    return await anyio.to_thread.run_sync(models.get, user, model.id or 0)


@get(f"{API}/models", sync_to_thread=True, summary="The caller's models (admin: all, ?owner=)")
def list_models_route(
    user: NamedDependency[User], models: Models, owner: FromQuery[str | None] = None
) -> list[ModelOut]:
    return models.list(user, owner=owner)


@get(f"{API}/models/{{model_id:int}}", sync_to_thread=True, summary="One model with versions")
def get_model_route(
    user: NamedDependency[User], models: Models, model_id: FromPath[int]
) -> ModelDetailOut:
    return models.get(user, model_id)


@patch(
    f"{API}/models/{{model_id:int}}",
    sync_to_thread=True,
    summary="Change schedule, email, status (active/paused), version (roll back) or DQ settings",
)
def patch_model_route(
    user: NamedDependency[User],
    models: Models,
    model_id: FromPath[int],
    data: JSONBody[ModelChanges],
) -> ModelDetailOut:
    return models.update(user, model_id, data.given())


@delete(
    f"{API}/models/{{model_id:int}}",
    sync_to_thread=True,
    status_code=HTTP_204_NO_CONTENT,
    summary="Stop scheduling and remove the artifacts; scores stay",
)
def delete_model_route(
    user: NamedDependency[User], models: Models, model_id: FromPath[int]
) -> None:
    models.delete(user, model_id)


@post(
    f"{API}/models/{{model_id:int}}/runs",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary='Score now; optional body {"date": "YYYY-MM-DD"} for a past date',
)
def run_model_route(
    user: NamedDependency[User],
    runs: Runs,
    model_id: FromPath[int],
    data: JSONBody[RunRequest | None] = None,
) -> RunRequestedOut:
    (planned,) = runs.request(user, [model_id], day=data.date if data else None)
    run = planned.runs[model_id]
    return {"run_id": run.id or 0, "status": run.status, "date": planned.day.isoformat()}


@post(
    f"{API}/runs",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Score models for a date or a date range (backfill), oldest date first",
)
def backfill_route(
    user: NamedDependency[User], runs: Runs, data: JSONBody[RunsRequest]
) -> RunsRequestedOut:
    planned = runs.request(user, data.model_ids, day=data.date, first=data.first, last=data.last)
    return {"runs": [r for p in planned for r in p.requested()]}


@post(
    f"{API}/runs/rerun-failed",
    sync_to_thread=True,
    status_code=HTTP_202_ACCEPTED,
    summary="Score again every model whose latest run of a date failed",
)
def rerun_failed_route(
    user: NamedDependency[User], runs: Runs, data: JSONBody[RerunRequest]
) -> RunsRequestedOut:
    return {"runs": runs.rerun_failed(user, data.date).requested()}


@post(
    f"{API}/runs/{{run_id:int}}/publish",
    sync_to_thread=True,
    status_code=200,
    summary="Publish scores held back by the DQ gate",
)
def publish_route(user: NamedDependency[User], runs: Runs, run_id: FromPath[int]) -> RunOut:
    return runs.publish(user, run_id)


@post(
    f"{API}/runs/{{run_id:int}}/discard",
    sync_to_thread=True,
    status_code=200,
    summary="Discard scores held back by the DQ gate",
)
def discard_route(user: NamedDependency[User], runs: Runs, run_id: FromPath[int]) -> RunOut:
    return runs.discard(user, run_id)


@get(f"{API}/runs", sync_to_thread=True, summary="Model runs, newest first")
def list_runs_route(
    user: NamedDependency[User],
    runs: Runs,
    model_id: FromQuery[int | None] = None,
    date: FromQuery[dt.date | None] = None,
    limit: FromQuery[int] = 200,
) -> list[RunOut]:
    return runs.list(user, model_id=model_id, day=date, limit=limit)


@get(f"{API}/runs/{{run_id:int}}", sync_to_thread=True, summary="One model run")
def get_run_route(user: NamedDependency[User], runs: Runs, run_id: FromPath[int]) -> RunOut:
    return runs.get(user, run_id)


@get(f"{API}/models/{{model_id:int}}/dq", sync_to_thread=True, summary="DQ results by date")
def model_dq_route(
    user: NamedDependency[User], models: Models, model_id: FromPath[int]
) -> list[DQOut]:
    return models.dq_history(user, model_id)


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
