"""Validation slots: at most `[limits] concurrent_validations` uploads are scanned and validated
at once; the others wait in line (their place is shown on the deploy page) or get 503.

The memory of all validation sandboxes together is bounded by this count times `[engine]
model_memory_mb` (each sandbox's address-space limit); `check_memory` refuses a configuration
whose product exceeds the machine's memory. Waiting is asynchronous: a queued upload holds no
worker thread, so queued uploads cannot starve the page and API handlers.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio

from mldropd.errors import Busy, ConfigError
from mldropd.settings import Settings

MB = 1024 * 1024
_TICKET = re.compile(r"[0-9a-f]{32}")


def machine_memory_mb() -> int:
    """Physical memory of the machine (or 0 when it cannot be read)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MB
    except (ValueError, OSError):
        return 0


def slot_count(settings: Settings) -> int:
    """`[limits] concurrent_validations`, or when 0 the core count, lowered until the sandboxes'
    memory limits fit in the machine's memory (at least 1)."""
    configured = settings.limits.concurrent_validations
    if configured > 0:
        return configured
    cores = os.cpu_count() or 1
    memory = machine_memory_mb()
    fit = memory // max(1, settings.engine.model_memory_mb) if memory else cores
    return max(1, min(cores, fit))


def check_memory(settings: Settings) -> None:
    """Refuse a slot count whose sandboxes together may use more than the machine's memory."""
    memory, slots = machine_memory_mb(), slot_count(settings)
    total = slots * settings.engine.model_memory_mb
    if memory and total > memory:
        raise ConfigError(
            f"[limits] concurrent_validations = {slots} sandboxes of [engine] model_memory_mb = "
            f"{settings.engine.model_memory_mb} may use {total} MB together, more than this "
            f"machine's {memory} MB: lower one of them (0 picks a count that fits)"
        )


@dataclass
class Ticket:
    """One upload's place: waiting (with how many ahead), then its stage."""

    id: str
    owner_id: int
    stage: str = "waiting"
    ahead: int = 0


class ValidationSlots:
    """A first-come, first-served line in front of `limit` validation slots."""

    def __init__(self, limit: int, wait_s: float) -> None:
        self.limit = limit
        self.wait_s = wait_s
        self._semaphore: anyio.Semaphore | None = None  # made in the event loop that uses it
        self._line: list[Ticket] = []  # waiting, oldest first
        self._tickets: dict[str, Ticket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ValidationSlots:
        """The daemon's slots; a count whose sandboxes would not fit in memory is refused."""
        check_memory(settings)
        return cls(slot_count(settings), settings.limits.validation_wait_s)

    def ticket(self, owner_id: int, ticket_id: str | None = None) -> Ticket:
        """A ticket for an upload; the page passes its own id (32 hex digits) so that it can ask
        for the progress (GET /upload-progress/<id>); anything else gets a new id."""
        valid = ticket_id is not None and _TICKET.fullmatch(ticket_id) is not None
        return Ticket(ticket_id if valid and ticket_id else uuid.uuid4().hex, owner_id)

    def progress(self, owner_id: int, ticket_id: str) -> Ticket | None:
        """The owner's ticket (None for another user's or a finished one)."""
        ticket = self._tickets.get(ticket_id)
        return ticket if ticket is not None and ticket.owner_id == owner_id else None

    def _update_line(self) -> None:
        for ahead, waiting in enumerate(self._line):
            waiting.ahead = ahead

    @asynccontextmanager
    async def slot(self, ticket: Ticket) -> AsyncIterator[Ticket]:
        """Hold a slot for the block; wait up to wait_s for one, else raise Busy (503)."""
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.limit)
        self._tickets[ticket.id] = ticket
        self._line.append(ticket)
        self._update_line()
        try:
            with anyio.move_on_after(self.wait_s) as waited:
                await self._semaphore.acquire()
        finally:
            self._line.remove(ticket)
            self._update_line()
        if waited.cancelled_caught:
            self._tickets.pop(ticket.id, None)
            raise Busy(
                f"all {self.limit} validation slots stayed busy for {self.wait_s:g} s "
                "([limits] concurrent_validations, validation_wait_s); upload the file again "
                "in a minute",
                retry_after_s=max(5, int(self.wait_s // 4)),
                field="file",
            )
        ticket.stage = "scanning"
        try:
            yield ticket
        finally:
            self._semaphore.release()
            self._tickets.pop(ticket.id, None)

    @property
    def waiting(self) -> int:
        return len(self._line)
