"""The deploy page: the drop zone form, the upload that answers with a model card or the
errors, and the schedule preview."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, QueryParameter
from litestar.response import Redirect, Template

from mldropd.daemon import Daemon
from mldropd.errors import FieldError, MldropdError, TooLarge
from mldropd.pages import schedule
from mldropd.pages.context import dry_run_chart
from mldropd.pages.web import is_htmx
from mldropd.records import User
from mldropd.services import ModelService
from mldropd.uploads import receive_upload

FORM_FIELDS = ("email", "schedule", "name")  # shown next to their input; the rest by the file


def _split(errors: list[FieldError]) -> tuple[list[dict[str, str]], dict[str, list[str]]]:
    """Errors about the file or model object, and errors by form field."""
    by_field: dict[str, list[str]] = {f: [] for f in FORM_FIELDS}
    other = []
    for e in errors:
        if e.field in by_field:
            by_field[e.field].append(e.message)
        else:
            other.append(e.as_dict())
    return other, by_field


def _deploy_context(
    daemon: Daemon,
    models: ModelService,
    user: User,
    form: dict[str, str] | None = None,
    errors: list[FieldError] | None = None,
) -> dict[str, Any]:
    form = {"email": user.email, "schedule": "daily", "name": "", **(form or {})}
    count = models.count(user)
    other, by_field = _split(errors or [])
    return {
        "user": user,
        "page": "deploy",
        "form": form,
        "parts": schedule.parts(form["schedule"]),
        "weekdays": schedule.WEEKDAYS,
        "errors": other,
        "field_errors": by_field,
        "preview": schedule.preview(form["schedule"], daemon.settings, daemon.now()),
        "max_mb": daemon.settings.limits.max_upload_mb,
        "model_count": count,
    }


@get("/", sync_to_thread=True)
def deploy_page(
    state: State, user: NamedDependency[User], models: NamedDependency[ModelService]
) -> Template:
    return Template("deploy.html", context=_deploy_context(state.daemon, models, user))


def _card_context(models: ModelService, user: User, model_id: int) -> dict[str, Any]:
    model = models.get(user, model_id)
    current = next(v for v in model["versions"] if v["version"] == model["version"])
    return {
        "model": model,
        "dry_run": current["dry_run"],
        "chart": dry_run_chart(current["dry_run"], "Dry-run scores on a sample"),
    }


@post("/upload")
async def upload_page(
    request: Request[Any, Any, Any],
    state: State,
    user: NamedDependency[User],
    models: NamedDependency[ModelService],
) -> Template | Redirect:
    """Drop zone (HTMX): the model card or the errors partial; plain form: redirect or page."""
    daemon: Daemon = state.daemon
    try:
        model, _ = await receive_upload(request, daemon, user)
    except MldropdError as exc:
        if is_htmx(request):
            other, by_field = _split(exc.errors)
            return Template(
                "_upload_errors.html",
                status_code=exc.status_code,
                context={"errors": other, "field_errors": by_field, "oob": True},
            )
        form: dict[str, str] = {}
        if not isinstance(exc, TooLarge):  # a too-large body is refused unread
            data = await request.form()
            form = {k: v for k in FORM_FIELDS if isinstance(v := data.get(k), str) and v}
        context = await anyio.to_thread.run_sync(
            _deploy_context, daemon, models, user, form, exc.errors
        )
        return Template("deploy.html", context=context, status_code=exc.status_code)
    if not is_htmx(request):
        return Redirect(f"/models/{model.id}", status_code=303)
    context = await anyio.to_thread.run_sync(_card_context, models, user, model.id or 0)
    return Template("_model_card.html", context=context, status_code=201)


@get("/schedule-preview", sync_to_thread=False)
def schedule_preview(
    state: State,
    user: NamedDependency[User],
    schedule_text: Annotated[str, QueryParameter(name="schedule")] = "daily",
) -> Template:
    """The schedule in words and its first run date (a fragment for the deploy form)."""
    daemon: Daemon = state.daemon
    return Template(
        "_schedule_preview.html",
        context={"preview": schedule.preview(schedule_text, daemon.settings, daemon.now())},
    )


@get("/upload-progress/{ticket_id:str}", sync_to_thread=False)
def upload_progress(
    state: State, user: NamedDependency[User], ticket_id: FromPath[str]
) -> dict[str, Any]:
    """Where the caller's upload stands: waiting for a validation slot (and how many uploads
    are ahead), scanning or validating; "checking" before and after (polled by dropzone.js)."""
    ticket = state.daemon.validations.progress(user.id or 0, ticket_id)
    if ticket is None:
        return {"stage": "checking", "ahead": 0}
    return {"stage": ticket.stage, "ahead": ticket.ahead}


ROUTES = [deploy_page, upload_page, schedule_preview, upload_progress]
