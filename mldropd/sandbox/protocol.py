"""Frames between the trusted side and a sandboxed model host, on a connected socket pair.

A frame is a 13-byte header (kind, slot, length) and `length` bytes. The trusted side sends
LOAD (a model's spec and dill bytes) and BATCH (the slots to score and where the record batch
is: a shared buffer's index and the batch's length, mldropd.sandbox.shm; a frame that brings a
new buffer carries its file descriptor); the host answers every LOAD with LOADED or ERROR and
every slot of a BATCH, in order, with SCORES or ERROR. The trusted side may send the next BATCH
before the answers to the last one are in: the host reads frames in order, so it finds its
next batch waiting when it is done with one.

The host is untrusted: the trusted side reads a header first and refuses a kind it did not
expect, a slot it did not ask for, or a length above what that kind may carry (scores: exactly
8 bytes a row of the batch) before it reads a byte of the body (ProtocolError).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from typing import Any

import numpy as np

HEADER = struct.Struct("!BIQ")
# trusted -> host
LOAD, BATCH = 1, 3
# host -> trusted
LOADED, SCORES, ERROR = 17, 18, 19
KIND_NAMES = {
    LOAD: "LOAD",
    BATCH: "BATCH",
    LOADED: "LOADED",
    SCORES: "SCORES",
    ERROR: "ERROR",
}

MAX_LOADED = 256 * 1024  # a contract summary with its meta, or load warnings
MAX_ERROR = 8 * 1024  # an error message (the host truncates longer ones)
_SPEC_LEN = struct.Struct("!I")


class ProtocolError(Exception):
    """The host sent something it may not send (wrong kind, slot or size, or not JSON)."""


class HostGone(Exception):
    """The host's end of the socket closed (it exited, crashed or was killed)."""


def send_frame(
    sock: socket.socket, kind: int, slot: int, *parts: bytes | memoryview, fd: int | None = None
) -> None:
    """One frame whose body is the parts, in order (no copy of large parts); a file
    descriptor, if any, travels with the header's first byte (recv_header_fds)."""
    length = sum(len(memoryview(p).cast("B")) for p in parts)
    header = HEADER.pack(kind, slot, length)
    sent = socket.send_fds(sock, [header], [fd]) if fd is not None else 0
    sock.sendall(header[sent:])
    for part in parts:
        sock.sendall(part)


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    """Fill view from the socket (raises HostGone at end of stream)."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise HostGone("the model host closed its end of the channel")
        got += n


def recv_header(sock: socket.socket) -> tuple[int, int, int]:
    buf = bytearray(HEADER.size)
    recv_exact(sock, memoryview(buf))
    kind, slot, length = HEADER.unpack(buf)
    return int(kind), int(slot), int(length)


def recv_header_fds(sock: socket.socket) -> tuple[int, int, int, list[int]]:
    """A header and the file descriptors that came with it (the host's side)."""
    msg, fds, _flags, _addr = socket.recv_fds(sock, HEADER.size, 4)
    if not msg:
        for fd in fds:
            os.close(fd)
        raise HostGone("the other side closed the channel")
    buf = bytearray(msg)
    if len(buf) < HEADER.size:
        rest = bytearray(HEADER.size - len(buf))
        recv_exact(sock, memoryview(rest))
        buf += rest
    kind, slot, length = HEADER.unpack(buf)
    return int(kind), int(slot), int(length), list(fds)


def recv_body(sock: socket.socket, length: int) -> bytearray:
    buf = bytearray(length)
    recv_exact(sock, memoryview(buf))
    return buf


# -- trusted side: what a reply may be ---------------------------------------------------------
def expect_reply(sock: socket.socket, slot: int, *, rows: int | None) -> tuple[str, Any]:
    """Read the reply for `slot`: ("scores", float64 array of `rows`), ("loaded", dict) or
    ("error", text). rows=None: a reply to LOAD. Anything else raises ProtocolError."""
    kind, got_slot, length = recv_header(sock)
    name = KIND_NAMES.get(kind, f"unknown kind {kind}")
    if got_slot != slot:
        raise ProtocolError(f"sent {name} for slot {got_slot} while slot {slot} was due")
    if kind == ERROR:
        if length > MAX_ERROR:
            raise ProtocolError(f"an error message of {length} bytes (at most {MAX_ERROR})")
        return "error", recv_body(sock, length).decode("utf-8", "replace")
    if rows is None:
        if kind != LOADED:
            raise ProtocolError(f"sent {name} where LOADED or ERROR was due")
        if length > MAX_LOADED:
            raise ProtocolError(f"a load report of {length} bytes (at most {MAX_LOADED})")
        try:
            info = json.loads(recv_body(sock, length))
        except ValueError:
            raise ProtocolError("a load report that is not JSON") from None
        if not isinstance(info, dict):
            raise ProtocolError("a load report that is not a JSON object")
        return "loaded", info
    if kind != SCORES:
        raise ProtocolError(f"sent {name} where SCORES or ERROR was due")
    if length != 8 * rows:
        raise ProtocolError(
            f"sent {length} bytes of scores for a batch of {rows} rows ({8 * rows} expected)"
        )
    scores = np.empty(rows, dtype=np.float64)
    recv_exact(sock, scores.data.cast("B"))
    return "scores", scores


# -- bodies ------------------------------------------------------------------------------------
def load_body(spec: dict[str, Any], blob: bytes | memoryview) -> tuple[bytes, bytes | memoryview]:
    data = json.dumps(spec).encode()
    return _SPEC_LEN.pack(len(data)) + data, blob


def split_load(body: bytearray) -> tuple[dict[str, Any], memoryview]:
    (n,) = _SPEC_LEN.unpack_from(body)
    view = memoryview(body)
    return json.loads(bytes(view[4 : 4 + n])), view[4 + n :]


_WHERE = struct.Struct("!IQ")  # a shared buffer's index, the batch's length in it


def batch_body(slots: list[int], buffer: int, length: int) -> bytes:
    return struct.pack(f"!I{len(slots)}I", len(slots), *slots) + _WHERE.pack(buffer, length)


def split_batch(body: bytearray) -> tuple[list[int], int, int]:
    """The slots to score, the buffer holding the batch and its length."""
    (n,) = struct.unpack_from("!I", body)
    slots = list(struct.unpack_from(f"!{n}I", body, 4))
    buffer, length = _WHERE.unpack_from(body, 4 + 4 * n)
    return slots, int(buffer), int(length)
