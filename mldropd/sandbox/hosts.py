"""The trusted side's handle on one sandboxed model host: start it, load models into it, send it
batches and take back scores, with every clock kept here.

Nothing the host sends is believed: replies are read through mldropd.sandbox.protocol (kind,
slot and size checked before the body is read) and a reply that does not come within the
model's remaining time limit ends the host. Whatever goes wrong is turned into a plain sentence
naming the model and what to do.
"""

from __future__ import annotations

import collections
import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from mldropd.sandbox import protocol as p
from mldropd.sandbox import shm
from mldropd.sandbox.forkserver import Forked, ForkServer, describe_status
from mldropd.sandbox.policy import Policy

_IO_TIMEOUT_S = 120.0  # to hand a batch or a model file to the host (it only has to read)
_TAIL_LINES, _TAIL_LINE_CHARS = 40, 400


@dataclass
class Reply:
    """What became of one request to the host."""

    kind: str  # loaded | scores | error | timeout | crashed | violation
    value: Any = None  # the info dict, the scores array, or the message
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.kind in ("loaded", "scores")


class ModelHost:
    """One model host process (one owner's models)."""

    def __init__(self, server: ForkServer, policy: Policy, label: str) -> None:
        self.server = server
        self.policy = policy
        self.label = label
        self.sock: socket.socket | None = None
        self.proc: Forked | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=_TAIL_LINES)
        self.peak_mb = 0.0  # the host's peak RSS, known once it has ended
        self._drain: threading.Thread | None = None
        self.ring = shm.BatchRing(label)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        err_r, err_w = os.pipe()
        try:
            self.proc = self.server.sandbox(self.policy, theirs.fileno(), err_w)
        finally:
            theirs.close()
            os.close(err_w)
        self.sock = ours
        self._drain = threading.Thread(
            target=self._read_stderr, args=(err_r,), name=f"host-stderr-{self.label}", daemon=True
        )
        self._drain.start()

    def _read_stderr(self, fd: int) -> None:
        """Keep the last lines a model printed (bounded whatever it prints)."""
        partial = b""
        with open(fd, "rb", buffering=0) as stream:
            while chunk := stream.read(65536):
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()[-_TAIL_LINE_CHARS:]
                for line in lines[-_TAIL_LINES:]:
                    self.tail.append(line[:_TAIL_LINE_CHARS].decode("utf-8", "replace"))
        if partial:
            self.tail.append(partial.decode("utf-8", "replace"))

    def kill(self) -> None:
        """End the host and everything it started."""
        if self.proc is not None:
            self.proc.kill()

    def close(self) -> str:
        """Close the channel, wait for the host to end; return how it ended, in words."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.close()
            self.sock = None
        self.ring.close()
        if self.proc is None:
            return "not started"
        status = self.proc.wait(timeout=10)
        if status is None:
            self.proc.kill()
            status = self.proc.wait(timeout=10)
        self.peak_mb = self.proc.maxrss_kb / 1024
        self.proc.close()
        if self._drain is not None:
            self._drain.join(timeout=5)
        return describe_status(status, self.policy.limits.memory_mb)

    # -- requests ------------------------------------------------------------------------------
    def load(self, slot: int, spec: dict[str, Any], blob: bytes, limit_s: float) -> Reply:
        """Send one model; wait for LOADED/ERROR within limit_s."""
        started = time.monotonic()
        head, body = p.load_body(spec, blob)
        sent = self._send(p.LOAD, slot, head, body)
        if sent is not None:
            return sent
        return self._reply(slot, None, started, limit_s)

    def send_batch(self, slots: list[int], batch: pa.RecordBatch) -> Reply | None:
        """One record batch for the given models (None when sent). It goes through a shared
        buffer; it may be sent before the answers to the batches before it are read."""
        buffer, length, fd = self.ring.put(batch, answers=len(slots))
        return self._send(p.BATCH, 0, p.batch_body(slots, buffer, length), fd=fd)

    def reply(self, slot: int, rows: int, since: float, limit_s: float) -> Reply:
        """The scores of `slot` for the oldest batch not fully answered (the clock started at
        `since`)."""
        reply = self._reply(slot, rows, since, limit_s)
        self.ring.answered()
        return reply

    def _send(self, kind: int, slot: int, *parts: Any, fd: int | None = None) -> Reply | None:
        assert self.sock is not None
        self.sock.settimeout(_IO_TIMEOUT_S)
        try:
            p.send_frame(self.sock, kind, slot, *parts, fd=fd)
        except TimeoutError:  # a frame may be half sent: the channel is of no use any more
            self.kill()
            return Reply("timeout", f"did not read its input within {_IO_TIMEOUT_S:.0f} s")
        except OSError:
            return Reply("crashed", self._crash_text())
        return None

    def _reply(self, slot: int, rows: int | None, since: float, limit_s: float) -> Reply:
        assert self.sock is not None
        remaining = limit_s - (time.monotonic() - since)
        try:
            if remaining <= 0:
                raise TimeoutError
            self.sock.settimeout(remaining)
            kind, value = p.expect_reply(self.sock, slot, rows=rows)
        except TimeoutError:
            self.kill()
            return Reply("timeout", limit_s, time.monotonic() - since)
        except p.ProtocolError as exc:
            self.kill()
            return Reply("violation", str(exc), time.monotonic() - since)
        except (p.HostGone, OSError):
            return Reply("crashed", self._crash_text(), time.monotonic() - since)
        return Reply(kind, value, time.monotonic() - since)

    def _crash_text(self) -> str:
        """How the host died, with the last lines it printed."""
        assert self.proc is not None
        status = self.proc.wait(timeout=10)
        how = describe_status(status, self.policy.limits.memory_mb)
        tail = "\n".join(list(self.tail)[-8:])
        return f"{how}\n{tail}".strip()
