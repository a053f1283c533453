"""A real SMTP server on 127.0.0.1 (aiosmtpd) that keeps what it receives."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import Envelope

from mldropd.settings import EmailSettings
from tests.support.wait import free_port


class Inbox:
    """aiosmtpd handler that keeps every envelope it receives."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"

    def messages(self) -> list[EmailMessage]:
        return [
            email.message_from_bytes(e.content, policy=email.policy.default)  # type: ignore[misc]
            for e in self.envelopes
        ]


class SmtpServer:
    """A real SMTP server that a test can stop and start again on the same port."""

    def __init__(self, **smtp_parameters: Any) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.smtp_parameters = smtp_parameters
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(
            self.inbox,
            hostname="127.0.0.1",
            port=self.port,
            ready_timeout=5.0,
            **self.smtp_parameters,
        )
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    def settings(self, tmp_path: Path, **overrides: Any) -> EmailSettings:
        values: dict[str, Any] = {
            "smtp_host": "127.0.0.1",
            "smtp_port": self.port,
            "starttls": False,
            "sender": "mldropd <reports@mldropd.example>",
            "outbox": str(tmp_path / "outbox"),
        }
        return EmailSettings(**{**values, **overrides})
