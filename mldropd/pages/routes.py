"""HTML pages: sign-in, deploy + my models, model detail. Each page has a JSON twin in the API."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect, Template
from sqlmodel import Session, col, select

from mldropd.api.routes import request_run
from mldropd.api.views import dq_json, model_json, run_json
from mldropd.auth import user_for_token
from mldropd.errors import MldropdError, Unauthorized
from mldropd.records import DQResult, ModelRun, User
from mldropd.registry import delete_model, get_model, list_models, update_model
from mldropd.uploads import receive_upload


def session_user(request: Request[Any, Any, Any], state: State) -> User:
    """The signed-in user; the session ends when the user's token is rotated or disabled."""
    session = request.session or {}
    uid, token_hash = session.get("uid"), session.get("th")
    if uid is not None:
        with Session(state.daemon.engine) as s:
            user = s.get(User, uid)
        if user is not None and not user.disabled and user.token_hash == token_hash:
            return user
    raise Unauthorized("sign in with your API token")


def _safe_next(value: str | None) -> str:
    return value if value and value.startswith("/") and not value.startswith("//") else "/"


@get("/login", sync_to_thread=False)
def login_page(next: str | None = None) -> Template:
    return Template("login.html", context={"next": _safe_next(next), "error": None})


@post("/login", sync_to_thread=True)
def login(request: Request[Any, Any, Any], state: State,
          data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED)
          ) -> Template | Redirect:
    with Session(state.daemon.engine) as s:
        user = user_for_token(s, (data.get("token") or "").strip())
    if user is None:
        return Template("login.html", status_code=401, context={
            "next": _safe_next(data.get("next")),
            "error": "That token is not valid. `mldropd users add EMAIL` prints a token."})
    request.set_session({"uid": user.id, "th": user.token_hash})
    return Redirect(_safe_next(data.get("next")))


@post("/logout", sync_to_thread=False)
def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/login")


def _home_context(state: State, user: User, **extra: Any) -> dict[str, Any]:
    daemon = state.daemon
    with Session(daemon.engine) as s:
        now = daemon.now()
        models = [model_json(s, m, daemon.settings, now) for m in list_models(s, user)]
    return {"user": user, "models": models, "errors": [], "form": {}, **extra}


@get("/", sync_to_thread=True)
def home(state: State, user: User) -> Template:
    return Template("home.html", context=_home_context(state, user))


@post("/upload")
async def upload_page(request: Request[Any, Any, Any], state: State, user: User
                      ) -> Template | Redirect:
    try:
        model, _ = await receive_upload(request, state.daemon, user)
    except MldropdError as exc:
        form = await request.form()
        context = await anyio.to_thread.run_sync(lambda: _home_context(
            state, user, errors=[e.as_dict() for e in exc.errors],
            form={k: form.get(k) for k in ("email", "schedule", "name")
                  if isinstance(form.get(k), str)}))
        return Template("home.html", context=context, status_code=exc.status_code)
    return Redirect(f"/models/{model.id}")


@get("/models/{model_id:int}", sync_to_thread=True)
def model_page(state: State, user: User, model_id: int) -> Template:
    daemon = state.daemon
    with Session(daemon.engine) as s:
        model = get_model(s, user, model_id)
        data = model_json(s, model, daemon.settings, daemon.now(), detail=True)
        runs = [run_json(r) for r in s.exec(select(ModelRun).where(ModelRun.model_id == model_id)
                                             .order_by(col(ModelRun.id).desc()).limit(50))]
        dq = [dq_json(r) for r in s.exec(select(DQResult).where(DQResult.model_id == model_id)
                                         .order_by(col(DQResult.date).desc()).limit(60))]
    return Template("model.html", context={"user": user, "model": data, "runs": runs, "dq": dq})


@post("/models/{model_id:int}/run", sync_to_thread=True)
def run_now_page(state: State, user: User, model_id: int) -> Redirect:
    request_run(state.daemon, user, model_id, None)
    return Redirect(f"/models/{model_id}")


@post("/models/{model_id:int}/status", sync_to_thread=True)
def status_page(state: State, user: User, model_id: int,
                data: dict[str, str] = Body(media_type=RequestEncodingType.URL_ENCODED)
                ) -> Redirect:
    update_model(state.daemon.engine, state.daemon.settings, user, model_id,
                 {"status": data.get("status", "")})
    return Redirect(f"/models/{model_id}")


@post("/models/{model_id:int}/delete", sync_to_thread=True)
def delete_page(state: State, user: User, model_id: int) -> Redirect:
    delete_model(state.daemon.engine, state.daemon.store, user, model_id)
    return Redirect("/")


ROUTES = [login_page, login, logout, home, upload_page, model_page, run_now_page, status_page,
          delete_page]
