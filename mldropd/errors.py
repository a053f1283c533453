"""Domain errors. Each carries a message a user can act on; app.py maps them to HTTP once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one field of an upload or request."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class MldropdError(Exception):
    """Base of every error the daemon reports to a user."""

    status_code = 400

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def errors(self) -> list[FieldError]:
        return [FieldError(self.field, self.message)]


class ConfigError(MldropdError):
    """The configuration is wrong; start-up stops."""


class ValidationFailed(MldropdError):
    """One or more problems with an input; every problem is listed."""

    status_code = 422

    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in problems))
        self.problems = problems

    @property
    def errors(self) -> list[FieldError]:
        return self.problems


class NotFound(MldropdError):
    status_code = 404


class Unauthorized(MldropdError):
    status_code = 401


class QuotaExceeded(MldropdError):
    status_code = 409


class Conflict(MldropdError):
    status_code = 409


class TooLarge(MldropdError):
    status_code = 413


class Unavailable(MldropdError):
    """A dependency (store, SMTP, database) cannot be reached."""

    status_code = 503


class Busy(Unavailable):
    """Every validation slot stayed taken: try again after `retry_after_s` (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after_s: int, field: str = "") -> None:
        super().__init__(message, field=field)
        self.retry_after_s = retry_after_s
