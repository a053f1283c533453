"""Shared batch buffers between the trusted side and a model host (mldropd.sandbox.shm)."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from mldropd.sandbox.shm import BatchRing, HostBuffers


def _batch(rows: int, seed: int = 0) -> pa.RecordBatch:
    rng = np.random.default_rng(seed)
    return pa.record_batch({"x": rng.standard_normal(rows), "k": np.arange(rows)})


def test_the_host_reads_what_was_put_and_buffers_are_reused() -> None:
    ring, host = BatchRing("test"), HostBuffers()
    try:
        sent = []
        for seed in range(4):  # two in flight at a time, as the engine sends them
            index, length, fd = ring.put(_batch(1000, seed), answers=1)
            if fd is not None:
                host.adopt(index, os.dup(fd))
            sent.append((index, length, seed))
            if len(sent) == 2:
                first, length0, seed0 = sent.pop(0)
                assert host.batch(first, length0).equals(_batch(1000, seed0))
                ring.answered()
        assert len(ring.buffers) == 2  # the two buffers served all four batches
    finally:
        ring.close()


def test_a_buffer_grows_for_a_larger_batch_and_is_shared_again() -> None:
    ring, host = BatchRing("test"), HostBuffers()
    try:
        index, length, fd = ring.put(_batch(10), answers=1)
        assert fd is not None
        host.adopt(index, os.dup(fd))
        ring.answered()
        again, length, fd = ring.put(_batch(5000, 1), answers=1)
        assert again == index and fd is not None  # grew: the host must map it anew
        host.adopt(again, os.dup(fd))
        assert host.batch(again, length).equals(_batch(5000, 1))
    finally:
        ring.close()


def test_the_host_cannot_resize_a_buffer_under_the_trusted_mapping() -> None:
    """Attack: shrink the shared file so that the trusted side's next write faults (SIGBUS
    would end the batch job), or grow it to take memory. The size is sealed."""
    ring = BatchRing("test")
    try:
        index, _length, fd = ring.put(_batch(1000), answers=1)
        assert fd is not None
        theirs = os.dup(fd)  # what the host receives
        try:
            for size in (0, 1 << 30):
                with pytest.raises(PermissionError):
                    os.ftruncate(theirs, size)
        finally:
            os.close(theirs)
        ring.answered()
        ring.put(_batch(1000, 1), answers=1)  # the trusted side writes again, unharmed
    finally:
        ring.close()


def test_a_buffer_is_written_again_only_after_every_model_has_answered() -> None:
    """A host reads a batch once per model: until the last of them has answered, its buffer
    holds that batch, and the next batch goes into another one."""
    ring = BatchRing("test")
    try:
        first, _, _ = ring.put(_batch(100), answers=2)
        ring.answered()  # one of its two models
        second, _, _ = ring.put(_batch(100, 1), answers=1)
        assert second != first, "a batch was written over one a model has still to read"
        ring.answered()  # the first batch's other model
        ring.answered()  # the second batch's one
        assert ring.put(_batch(100, 2), answers=1)[0] == first  # free again: reused
        assert len(ring.buffers) == 2
    finally:
        ring.close()
