"""Users and API tokens: tokens are random, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mldropd import audit
from mldropd.contract import check_email
from mldropd.db import session_scope
from mldropd.errors import Conflict, FieldError, NotFound, ValidationFailed
from mldropd.pickle_scan import UNRESOLVED, is_dangerous
from mldropd.records import PickleAllowance, User


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "mld_" + secrets.token_urlsafe(32)


def create_user(
    engine: Engine,
    email: str,
    *,
    admin: bool = False,
    quota: int | None = None,
    actor: str = "",
) -> tuple[User, str]:
    """Create a user; return it with its API token (the only time the token is seen)."""
    email = email.strip(" ").lower()  # a newline or NUL stays, and is refused
    problems = check_email(email, "email")
    if problems:
        raise ValidationFailed(problems)
    token = new_token()
    with session_scope(engine) as s:
        if s.exec(select(User).where(User.email == email)).first() is not None:
            raise Conflict(f"user {email} exists already", field="email")
        user = User(email=email, is_admin=admin, quota=quota, token_hash=hash_token(token))
        s.add(user)
        audit.record(s, actor, "user.add", f"user:{email}", admin=admin, quota=quota)
    return user, token


def rotate_token(engine: Engine, email: str, *, actor: str = "") -> str:
    """Give a user a new token (the old one, and every web session, stops working)."""
    token = new_token()
    with session_scope(engine) as s:
        user = _user(s, email)
        user.token_hash = hash_token(token)
        audit.record(s, actor, "user.rotate_token", f"user:{user.email}")
    return token


def user_for_token(session: Session, token: str) -> User | None:
    """The enabled user holding token, if any."""
    if not token:
        return None
    user = session.exec(select(User).where(User.token_hash == hash_token(token))).first()
    return user if user is not None and not user.disabled else None


def load_secret_key(path: str) -> bytes:
    """The 32-byte session key; created with mode 0600 on first start."""
    key_file = Path(path)
    if not key_file.exists():
        key_file.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return bytes.fromhex(key_file.read_text().strip())[:32]


# ---- account administration (the CLI's `mldropd users ...`) ----------------------------------


def _user(session: Session, email: str) -> User:
    address = email.strip().lower()
    user = session.exec(select(User).where(User.email == address)).first()
    if user is None:
        raise NotFound(f"no user {address}", field="email")
    return user


def set_disabled(engine: Engine, email: str, disabled: bool, *, actor: str = "") -> User:
    """Disable a user (token, sessions and proxy sign-in refused everywhere) or enable again."""
    with session_scope(engine) as s:
        user = _user(s, email)
        user.disabled = disabled
        action = "user.disable" if disabled else "user.enable"
        audit.record(s, actor, action, f"user:{user.email}")
    return user


def set_admin(engine: Engine, email: str, admin: bool, *, actor: str = "") -> User:
    """Give or take admin rights (admins see and change every user's models)."""
    with session_scope(engine) as s:
        user = _user(s, email)
        user.is_admin = admin
        audit.record(s, actor, "user.set_admin", f"user:{user.email}", admin=admin)
    return user


_GLOBAL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def allow_global(
    engine: Engine, email: str, name: str, *, actor: str = "", revoke: bool = False
) -> User:
    """Allow (or stop allowing) one refused pickle global, by exact name, in a user's uploads."""
    name = name.strip()
    if not _GLOBAL_NAME.fullmatch(name) or name == UNRESOLVED:
        raise ValidationFailed(
            [FieldError("name", f"{name!r} is not an exact dotted name such as posix.getcwd")]
        )
    if not revoke and not is_dangerous(name):
        raise ValidationFailed(
            [FieldError("name", f"{name} is not refused by the scan; there is nothing to allow")]
        )
    actor = actor or audit.cli_actor()
    with session_scope(engine) as s:
        user = _user(s, email)
        row = s.exec(
            select(PickleAllowance).where(
                PickleAllowance.user_id == user.id, PickleAllowance.name == name
            )
        ).first()
        if revoke and row is not None:
            s.delete(row)
        elif not revoke and row is None:
            s.add(PickleAllowance(user_id=user.id or 0, name=name, allowed_by=actor))
        action = "user.revoke_global" if revoke else "user.allow_global"
        audit.record(s, actor, action, f"user:{user.email}", name=name)
    return user


def allowed_globals(session: Session, user_id: int | None) -> frozenset[str]:
    """The refused pickle globals an admin allowed for this user."""
    rows = session.exec(select(PickleAllowance.name).where(PickleAllowance.user_id == user_id))
    return frozenset(rows)
