"""Web security: response headers (CSP and friends), server-side sessions, trusted-proxy sign-in.

Sessions live in files under `<work_dir>/sessions` (Litestar's FileStore); the browser holds only
a random session id. Signing out deletes the file, so a copied cookie stops working; a session
unused for `server.session_idle_minutes` expires; signing in always starts a new id.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders, State
from litestar.enums import ScopeType
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.stores.file import FileStore
from litestar.types import ASGIApp, Empty, Message, Receive, Scope, ScopeSession, Send
from litestar.utils.dataclass import extract_dataclass_items

from mldropd.records import User
from mldropd.settings import Settings

log = logging.getLogger(__name__)

# Only the daemon's own files: no inline script or style, no other origin, no framing.
CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "object-src 'none'",
    ]
)
HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
# Litestar's OpenAPI viewers (/schema/swagger, ...) load their scripts from a CDN: no CSP there.
_NO_CSP = "/schema"


class SecurityHeaders:
    """ASGI wrapper adding CSP, nosniff, X-Frame-Options and Referrer-Policy to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        with_csp = not (path == _NO_CSP or path.startswith(_NO_CSP + "/"))

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableScopeHeaders.from_message(message)
                for name, value in HEADERS:
                    headers[name.decode()] = value.decode()
                if with_csp:
                    headers["content-security-policy"] = CSP
            await send(message)

        await self.app(scope, receive, sending)


# ---- server-side sessions ------------------------------------------------------------------

_NEW_ID = "mldropd.new_session_id"  # scope key: give this response's session a fresh id
_LOADED = "mldropd.session_loaded"  # scope key: the session as it was read, serialized


class SessionBackend(ServerSideSessionBackend):
    """Litestar's server-side sessions, with three changes.

    No session file or cookie for anonymous requests; a session is written back only when the
    request changed it (so a request racing a sign-out cannot bring the session back); and
    sign-in moves the session to a new id (no fixation of an id planted in the browser).
    """

    def get_session_id(self, connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        fresh = connection.scope.get(_NEW_ID)
        return str(fresh) if fresh else super().get_session_id(connection)

    async def load_from_connection(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> dict[str, Any]:
        data = await super().load_from_connection(connection)
        connection.scope[_LOADED] = self.serialize_data(data) if data else None  # type: ignore[literal-required]
        return data

    async def store_in_message(
        self,
        scope_session: ScopeSession,
        message: Message,
        connection: ASGIConnection[Any, Any, Any, Any],
    ) -> None:
        sent = connection.cookies.get(self.config.key)
        sent = sent if sent and sent != "null" else None
        store = self.config.get_store_from_app(connection.scope["app"])
        headers = MutableScopeHeaders.from_message(message)
        if scope_session is Empty or not scope_session:
            if sent is not None:  # signed out, or an unknown/expired id: forget it everywhere
                await self.delete(sent, store)
                headers.add("Set-Cookie", self._cookie("", max_age=0))
            return
        fresh = connection.scope.get(_NEW_ID)
        if fresh and sent is not None:
            await self.delete(sent, store)
        session_id = self.get_session_id(connection)
        data = self.serialize_data(scope_session)
        if fresh or data != connection.scope.get(_LOADED):
            await self.set(session_id, data, store)
        # The cookie's lifetime follows the store's: both restart at every request.
        headers.add("Set-Cookie", self._cookie(session_id))

    def _cookie(self, value: str, **overrides: Any) -> str:
        params = dict(
            extract_dataclass_items(self.config, exclude_none=True, include=Cookie.__dict__.keys())
        )
        params.update(overrides)
        return Cookie(value=value, key=self.config.key, **params).to_header(header="")


@dataclass
class SessionConfig(ServerSideSessionConfig):
    _backend_class = SessionBackend


def session_config(settings: Settings, exclude: list[str]) -> tuple[SessionConfig, FileStore]:
    """The session middleware's config and its file store (`<work_dir>/sessions`, mode 0700)."""
    folder = Path(settings.server.work_dir) / "sessions"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)  # session files hold user ids; only the daemon reads them
    config = SessionConfig(
        key="session",
        max_age=settings.server.session_idle_minutes * 60,
        renew_on_access=True,
        httponly=True,
        samesite="lax",
        secure=settings.server.secure_cookies,
        exclude=exclude,
        store="sessions",
    )
    return config, FileStore(folder)


def start_session(request: Request[Any, Any, Any], data: dict[str, Any]) -> None:
    """Sign-in: store data in a session with a new id (the old one, if any, is deleted)."""
    request.scope[_NEW_ID] = secrets.token_hex(32)  # type: ignore[literal-required]
    request.set_session(data)


async def prune_sessions(request: Request[Any, Any, Any]) -> None:
    """Delete expired session files (expiry is otherwise noticed only when one is read)."""
    store = request.app.stores.get("sessions")
    if isinstance(store, FileStore):
        await store.delete_expired()


# ---- trusted-proxy sign-in -----------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _networks(
    entries: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def is_trusted(host: str, proxies: list[str]) -> bool:
    """True if host (the TCP peer) is one of the trusted proxy addresses or networks."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in net for net in _networks(tuple(proxies)))


def proxy_user(request: Request[Any, Any, Any], state: State) -> User | None:
    """The enabled user a trusted proxy names in `server.trusted_user_header`, if any.

    The header is believed only when the TCP peer is in `server.trusted_proxies`; from any
    other address it is ignored (and the request signs in like any other).
    """
    server = state.settings.server
    if not server.trusted_user_header:
        return None
    email = (request.headers.get(server.trusted_user_header) or "").strip().lower()
    if not email:
        return None
    client = request.scope.get("client")
    peer = client[0] if client else ""
    if not is_trusted(peer, server.trusted_proxies):
        log.debug("ignored %s from untrusted %s", server.trusted_user_header, peer)
        return None
    return state.services.users.by_email(email)
