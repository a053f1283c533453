"""Who may see what, checked here and nowhere else.

A caller is a signed-in user (records.User), who sees and changes their own models and runs, an
admin, who sees everyone's, or the command line (CLI), which acts as an admin and is audited as
`cli:<os user>`. Another user's model or run answers exactly as one that does not exist
(NotFound with the same words), never "forbidden": ids reveal nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlmodel import Session, col, select

from mldropd.audit import cli_actor
from mldropd.errors import NotFound
from mldropd.records import Model, ModelRun, User

MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger id cannot exist (and cannot be bound)


class Caller(Protocol):
    """Whoever asks a service for something: a records.User, or CLI."""

    @property
    def id(self) -> int | None: ...

    @property
    def email(self) -> str: ...  # what the audit log names

    @property
    def is_admin(self) -> bool: ...


@dataclass(frozen=True)
class CommandLine:
    """The command line: every model, audited as the operating-system user who ran it."""

    email: str
    id: int | None = None
    is_admin: bool = True


def cli() -> CommandLine:
    """The caller of a `mldropd ...` command."""
    return CommandLine(cli_actor())


def may_see(caller: Caller, model: Model) -> bool:
    return caller.is_admin or model.owner_id == caller.id


def model_of(session: Session, caller: Caller, model_id: int) -> Model:
    """The caller's model (any model for an admin); another user's model is not found."""
    model = session.get(Model, model_id) if 0 < model_id <= MAX_ID else None
    if model is None or not may_see(caller, model):
        raise NotFound(f"model {model_id} not found")
    return model


def models_of(session: Session, caller: Caller, model_ids: list[int]) -> list[Model]:
    """The caller's models of these ids, in that order (each checked as model_of does)."""
    return [model_of(session, caller, model_id) for model_id in dict.fromkeys(model_ids)]


def run_of(session: Session, caller: Caller, run_id: int, model_id: int | None = None) -> ModelRun:
    """A run of one of the caller's models (of `model_id`'s, when given); else not found."""
    run = session.get(ModelRun, run_id) if 0 < run_id <= MAX_ID else None
    model = session.get(Model, run.model_id) if run is not None else None
    if (
        run is None
        or model is None
        or not may_see(caller, model)
        or (model_id is not None and run.model_id != model_id)
    ):
        raise NotFound(f"run {run_id} not found")
    return run


def visible(query: Any, caller: Caller, owner: str | None = None) -> Any:
    """Restrict a query on Model to the caller's models; an admin sees all, or one owner's."""
    if not caller.is_admin:
        return query.where(Model.owner_id == caller.id)
    if owner:
        return query.join(User, col(User.id) == Model.owner_id).where(User.email == owner.lower())
    return query


def owned_model_ids(caller: Caller) -> Any:
    """A subquery of the caller's model ids (None for an admin: every model)."""
    if caller.is_admin:
        return None
    return select(Model.id).where(Model.owner_id == caller.id)


def require_admin(caller: Caller, what: str) -> None:
    """Admin-only things do not exist for anyone else."""
    if not caller.is_admin:
        raise NotFound(f"{what} not found")
