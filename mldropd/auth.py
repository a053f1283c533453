"""Users and API tokens: tokens are random, shown once, stored only as SHA-256 hashes."""

from __future__ import annotations

import hashlib
import os
import secrets
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from mldropd.contract import check_email
from mldropd.db import session_scope
from mldropd.errors import Conflict, ValidationFailed
from mldropd.records import User


def hash_token(token: str) -> str:
    # Tokens carry 256 random bits, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return "mld_" + secrets.token_urlsafe(32)


def create_user(
    engine: Engine, email: str, *, admin: bool = False, quota: int | None = None
) -> tuple[User, str]:
    """Create a user; return it with its API token (the only time the token is seen)."""
    email = email.strip().lower()
    problems = check_email(email, "email")
    if problems:
        raise ValidationFailed(problems)
    token = new_token()
    with session_scope(engine) as s:
        if s.exec(select(User).where(User.email == email)).first() is not None:
            raise Conflict(f"user {email} exists already", field="email")
        user = User(email=email, is_admin=admin, quota=quota, token_hash=hash_token(token))
        s.add(user)
    return user, token


def rotate_token(engine: Engine, email: str) -> str:
    """Give a user a new token (the old one stops working)."""
    token = new_token()
    with session_scope(engine) as s:
        user = s.exec(select(User).where(User.email == email.strip().lower())).one()
        user.token_hash = hash_token(token)
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
