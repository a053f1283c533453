"""Sign in with the API token (a server-side session; see mldropd/security.py) and sign out."""

from __future__ import annotations

from typing import Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, URLEncodedBody
from litestar.response import Redirect, Template

from mldropd.errors import Unauthorized
from mldropd.pages.web import safe_next
from mldropd.records import User
from mldropd.security import proxy_user, prune_sessions, start_session

BAD_TOKEN = "That token is not valid. `mldropd users add EMAIL` prints a token."


def session_user(request: Request[Any, Any, Any], state: State) -> User:
    """The signed-in user; the session ends when the user's token is rotated or disabled.

    Behind a trusted SSO proxy (server.trusted_user_header), the user the proxy names.
    """
    proxied = proxy_user(request, state)
    if proxied is not None:
        return proxied
    session = request.session or {}
    user: User | None = state.services.users.signed_in(session.get("uid"), session.get("th"))
    if user is None:
        raise Unauthorized("sign in with your API token")
    return user


@get("/login", sync_to_thread=True)
def login_page(
    request: Request[Any, Any, Any], state: State, next: FromQuery[str | None] = None
) -> Template | Redirect:
    try:
        session_user(request, state)
    except Unauthorized:
        return Template("login.html", context={"next": safe_next(next), "error": None})
    return Redirect(safe_next(next), status_code=303)


@post("/login")
async def login(
    request: Request[Any, Any, Any], state: State, data: URLEncodedBody[dict[str, str]]
) -> Template | Redirect:
    user = await anyio.to_thread.run_sync(state.services.users.by_token, data.get("token") or "")
    if user is None:
        return Template(
            "login.html",
            status_code=401,
            context={"next": safe_next(data.get("next")), "error": BAD_TOKEN},
        )
    await prune_sessions(request)  # sign-ins are rare: a good moment to drop expired sessions
    start_session(request, {"uid": user.id, "th": user.token_hash})
    return Redirect(safe_next(data.get("next")), status_code=303)


@post("/logout", sync_to_thread=False)
def logout(request: Request[Any, Any, Any]) -> Redirect:
    request.clear_session()
    return Redirect("/login", status_code=303)


ROUTES = [login_page, login, logout]
