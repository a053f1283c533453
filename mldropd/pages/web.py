"""Small helpers shared by the page handlers: HTMX detection, safe redirects, error pages."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response
from litestar.response import Redirect, Template

from mldropd.errors import MldropdError
from mldropd.records import User

CHANGED = "models-changed"  # the event that makes tables and detail views refresh themselves


def is_htmx(request: Request[Any, Any, Any]) -> bool:
    """True for requests sent by htmx (or by the drop zone script), which get partials.

    A history restore (the back button after hx-push-url) needs the whole page.
    """
    headers = request.headers
    return (
        headers.get("hx-request") == "true" and headers.get("hx-history-restore-request") != "true"
    )


def page_or_partial(
    request: Request[Any, Any, Any], page: str, partial: str, context: dict[str, Any]
) -> Template:
    """The full page, or its partial for HTMX; caches must keep the two apart (Vary)."""
    name = partial if is_htmx(request) else page
    return Template(name, context=context, headers={"Vary": "HX-Request"})


def safe_next(value: str | None, default: str = "/") -> str:
    """A local path to go to after an action; anything else falls back to default."""
    ok = value and value.startswith("/") and not value.startswith("//") and "\\" not in value
    return value if ok else default  # type: ignore[return-value]


def after_action(
    request: Request[Any, Any, Any], default: str, next_: str | None = None
) -> Response[Any]:
    """HTMX: 204 and an event the page's live regions listen to (or a redirect); else 303."""
    if is_htmx(request):
        target = safe_next(next_, "") if next_ else ""
        headers = {"HX-Redirect": target} if target else {"HX-Trigger": CHANGED}
        return Response(content=b"", status_code=204, headers=headers)
    return Redirect(safe_next(next_, default), status_code=303)


def error_response(
    request: Request[Any, Any, Any], user: User | None, exc: MldropdError, title: str, back: str
) -> Template:
    """A domain error as HTML: the flash partial for HTMX, a full error page otherwise."""
    context = {
        "user": user,
        "title": title,
        "errors": [e.as_dict() for e in exc.errors],
        "back": back,
        "status": exc.status_code,
    }
    name = "_flash.html" if is_htmx(request) else "error.html"
    return Template(name, context=context, status_code=exc.status_code)
