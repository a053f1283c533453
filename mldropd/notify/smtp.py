"""Hand one message to the SMTP server: plain, STARTTLS or implicit TLS, optional login."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path

from mldropd.settings import EmailSettings

log = logging.getLogger(__name__)


class SmtpError(Exception):
    """Sending failed; the message names the server and the cause in plain words."""


def server_name(settings: EmailSettings) -> str:
    """The server as people read it in errors and logs: 'SMTP server host:port'."""
    return f"SMTP server {settings.smtp_host}:{settings.smtp_port}"


def _password(settings: EmailSettings) -> str:
    if not settings.password_file:
        raise SmtpError(
            f"[email] username is set ({settings.username}) but password_file is empty; "
            "point password_file at a file holding the SMTP password"
        )
    try:
        return Path(settings.password_file).read_text().strip()
    except OSError as exc:
        raise SmtpError(
            f"cannot read the SMTP password file {settings.password_file}: {exc.strerror or exc}"
        ) from None


def _describe(exc: BaseException) -> str:
    # smtplib's response errors carry (code, bytes); show them as "535 Authentication failed".
    if isinstance(exc, smtplib.SMTPResponseException):
        text = exc.smtp_error
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        return f"{exc.smtp_code} {text}".strip()
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return "recipients refused: " + ", ".join(
            f"{rcpt} ({code} {msg.decode('utf-8', 'replace') if isinstance(msg, bytes) else msg})"
            for rcpt, (code, msg) in exc.recipients.items()
        )
    return str(exc) or type(exc).__name__


def _connect(settings: EmailSettings, timeout: float) -> smtplib.SMTP:
    where = server_name(settings)
    try:
        if settings.ssl:
            return smtplib.SMTP_SSL(
                settings.smtp_host,
                settings.smtp_port,
                timeout=timeout,
                context=ssl.create_default_context(),
            )
        return smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=timeout)
    except (OSError, smtplib.SMTPException) as exc:
        raise SmtpError(f"{where} unreachable: {_describe(exc)}") from exc


def _quit(client: smtplib.SMTP) -> None:
    # The message is already accepted: a failing QUIT must not turn it into a retry (duplicate).
    try:
        client.quit()
    except (OSError, smtplib.SMTPException):
        pass
    finally:
        client.close()


def send(message: EmailMessage, settings: EmailSettings, timeout: float = 10.0) -> None:
    """Send one message; raise SmtpError naming host:port and the cause on any failure."""
    if not settings.smtp_host:
        raise SmtpError("no SMTP server configured ([email] smtp_host is empty)")
    where = server_name(settings)
    password = _password(settings) if settings.username else None
    client = _connect(settings, timeout)
    step = "greeting"
    try:
        step = "EHLO"
        client.ehlo()
        if settings.starttls and not settings.ssl:
            if not client.has_extn("starttls"):
                raise SmtpError(
                    f"{where} does not offer STARTTLS; set [email] starttls = false for a plain "
                    "relay, or ssl = true (usually port 465) for implicit TLS"
                )
            step = "STARTTLS"
            client.starttls(context=ssl.create_default_context())
            client.ehlo()
        if settings.username and password is not None:
            step = "login"
            try:
                client.login(settings.username, password)
            except smtplib.SMTPAuthenticationError as exc:
                raise SmtpError(
                    f"{where} rejected the login of {settings.username}: {_describe(exc)}"
                ) from exc
        step = "sending"
        refused = client.send_message(message)
    except SmtpError:
        client.close()
        raise
    except (OSError, smtplib.SMTPException) as exc:
        client.close()
        raise SmtpError(f"{where} failed during {step}: {_describe(exc)}") from exc
    _quit(client)
    if refused:
        # Some recipients got it, some did not: report, but do not resend to the others.
        log.warning(
            "SMTP server refused some recipients",
            extra={"smtp_server": where, "refused": sorted(refused)},
        )
    log.debug("message handed to SMTP server", extra={"smtp_server": where, "to": message["To"]})
