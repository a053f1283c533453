"""Record batches handed to a model host through shared memory instead of the socket.

The trusted side writes each batch (an Arrow IPC stream: schema and one batch) into one of a
few memfd buffers it owns, once, and sends the host a small BATCH frame naming the buffer and
the length; the first time a buffer is used (or after it grew) the frame carries its file
descriptor and the host maps it read-only, once. So a batch costs one copy on the trusted side
and none on the way: the socket carried every byte twice through the kernel and the host
zeroed a fresh buffer for it, per batch and per owner.

A buffer's size is sealed before its descriptor leaves (F_SEAL_SHRINK | F_SEAL_GROW |
F_SEAL_SEAL): the host may write into its own input, which only spoils its own scores, but it
can neither shrink the file under the trusted side's mapping (which would kill the batch job
with SIGBUS at its next write) nor grow it. The trusted side never reads a buffer back. A
buffer is written again only after the host has answered every model of the batch it held.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import mmap
import os
from dataclasses import dataclass, field

import pyarrow as pa

_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL
_GROWTH = 1.25  # a buffer that must grow gets this much headroom (the next batch may be larger)


def stream_size(batch: pa.RecordBatch) -> int:
    """Bytes of the IPC stream holding this batch (computed without writing it)."""
    sink = pa.MockOutputStream()
    _write(sink, batch)
    return int(sink.size())


def _write(sink: pa.NativeFile, batch: pa.RecordBatch) -> None:
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)


@dataclass
class _Buffer:
    fd: int
    size: int
    view: mmap.mmap
    shared: bool = False  # the host has its descriptor already


@dataclass
class BatchRing:
    """The trusted side's buffers for one host, and the answers still due to each batch in
    them (oldest first: the host answers in order)."""

    name: str
    buffers: list[_Buffer] = field(default_factory=list)
    # [buffer, answers still due] of the batches sent and not fully answered
    due: collections.deque[list[int]] = field(default_factory=collections.deque)

    def put(self, batch: pa.RecordBatch, answers: int) -> tuple[int, int, int | None]:
        """Write the batch, which `answers` models will answer, into a free buffer: (its index,
        the length, the descriptor to send along when the host does not have it yet, else
        None)."""
        size = stream_size(batch)
        busy = {index for index, _ in self.due}
        index = next((i for i in range(len(self.buffers)) if i not in busy), None)
        if index is None:
            index = len(self.buffers)
            self.buffers.append(self._new(size))
        elif self.buffers[index].size < size:
            self._drop(self.buffers[index])
            self.buffers[index] = self._new(int(size * _GROWTH))
        buffer = self.buffers[index]
        _write(pa.FixedSizeBufferWriter(pa.py_buffer(buffer.view)), batch)
        self.due.append([index, answers])
        fd = None if buffer.shared else buffer.fd
        buffer.shared = True
        return index, size, fd

    def answered(self) -> None:
        """The host answered one model of the oldest batch; once every model has, its buffer
        may be written again."""
        if self.due:
            self.due[0][1] -= 1
            if self.due[0][1] <= 0:
                self.due.popleft()

    def close(self) -> None:
        for buffer in self.buffers:
            self._drop(buffer)
        self.buffers.clear()
        self.due.clear()

    def _new(self, size: int) -> _Buffer:
        fd = os.memfd_create(f"mldropd-{self.name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            view = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        return _Buffer(fd, size, view)

    @staticmethod
    def _drop(buffer: _Buffer) -> None:
        with contextlib.suppress(BufferError):  # a batch still written from it: freed by GC
            buffer.view.close()
        os.close(buffer.fd)


class HostBuffers:
    """The host's read-only mappings of the trusted side's buffers, by index."""

    def __init__(self) -> None:
        self.views: dict[int, mmap.mmap] = {}

    def adopt(self, index: int, fd: int) -> None:
        """Map a buffer that is new or grew (the old mapping goes once nothing uses it)."""
        try:
            size = os.fstat(fd).st_size
            self.views[index] = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        finally:
            os.close(fd)

    def batch(self, index: int, length: int) -> pa.RecordBatch:
        """The batch in buffer `index` (zero copy: its columns point into the mapping)."""
        view = self.views[index]
        data = pa.py_buffer(view).slice(0, length)
        return pa.ipc.open_stream(data).read_next_batch()
