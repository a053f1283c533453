"""The model host: the only place model code runs. Untrusted once a model is loaded.

Forked by the sandbox fork server and confined (mldropd.sandbox.confine) before it reads its
first frame; it talks only over its channel socket (mldropd.sandbox.protocol): it loads the
models it is sent as dill bytes, reports a model's contract when asked (validation), and scores
the Arrow record batches it is sent, answering every model of a batch in order. It opens no
file of mldropd's, and nothing it says is believed without a check on the trusted side.
"""

from __future__ import annotations

import socket
import traceback
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from mldropd import libversions
from mldropd.libversions import unpickling_warnings
from mldropd.modelcall import (
    check_scores,
    describe_model_error,
    predict,
    to_input,
)
from mldropd.sandbox import protocol as p
from mldropd.sandbox import shm
from mldropd.text import with_article

_MAX_TEXT = 4000


@dataclass
class _Model:
    pipeline: Any
    features: list[str]
    input: str
    call: str
    output: str


def load_advice(exc: BaseException) -> str:
    """Why unpickling failed, in words a data scientist can act on."""
    if isinstance(exc, ModuleNotFoundError):
        return (
            f"the model needs the module '{exc.name}', which is not installed where models run. "
            "Functions from your own modules are stored by reference: define them in the "
            "notebook and save with dill.dump(obj, f, recurse=True), or ask an admin to install "
            "the package."
        )
    if isinstance(exc, NameError):
        return f"loading the model failed: {describe_model_error(exc)}"
    if isinstance(exc, EOFError | ValueError | IndexError):
        return f"the file is truncated or corrupt ({type(exc).__name__}: {exc}); save it again"
    if isinstance(exc, MemoryError):
        return "loading the model ran out of memory"
    return f"loading the model failed: {type(exc).__name__}: {exc}"


def _load(sock: socket.socket, slot: int, body: bytearray, models: dict[int, _Model]) -> None:
    import dill

    spec, blob = p.split_load(body)
    try:
        with unpickling_warnings() as caught:
            obj = dill.loads(blob)
    except BaseException as exc:  # the model's own code failed while loading
        _error(sock, slot, load_advice(exc))
        return
    del blob, body
    try:
        notes = libversions.check(obj, caught)
    except Exception:  # inspecting the object ran its code and failed: no warnings then
        notes = list(caught)
    if spec.get("contract"):
        _report_contract(sock, slot, obj, notes, models)
        return
    if not isinstance(obj, dict) or "pipeline" not in obj:
        _error(sock, slot, f"the file holds {with_article(type(obj).__name__)}, not a model object")
        return
    models[slot] = _Model(
        obj["pipeline"], spec["features"], spec["input"], spec["call"], spec["output"]
    )
    _send_json(sock, p.LOADED, slot, {"warnings": notes})


def _report_contract(
    sock: socket.socket, slot: int, obj: Any, notes: list[str], models: dict[int, _Model]
) -> None:
    """Validation: the object's contract as plain data (the trusted side checks it again)."""
    from mldropd.contract import check_model_object

    try:
        summary, problems = check_model_object(obj)
    except Exception as exc:  # a property of the model raised while being inspected
        _error(sock, slot, f"inspecting the model object failed: {type(exc).__name__}: {exc}")
        return
    if summary is None:
        _send_json(sock, p.LOADED, slot, {"ok": False, "errors": [e.as_dict() for e in problems]})
        return
    models[slot] = _Model(
        obj["pipeline"], summary.features, summary.input, summary.call, summary.output
    )
    _send_json(sock, p.LOADED, slot, {"ok": True, "summary": summary.as_dict(), "warnings": notes})


def _score(
    sock: socket.socket,
    batch: pa.RecordBatch,
    slots: list[int],
    models: dict[int, _Model],
    inputs: ThreadPoolExecutor,
) -> None:
    """Every asked model on the batch, in order; the next model's input is built meanwhile."""
    live = [s for s in slots if s in models]
    upcoming = _submit(inputs, batch, models[live[0]]) if live else None
    for slot in slots:
        model = models.get(slot)
        if model is None:
            _error(sock, slot, "this model was not loaded in this process")
            continue
        assert upcoming is not None
        current, after = upcoming, live.index(slot) + 1
        upcoming = _submit(inputs, batch, models[live[after]]) if after < len(live) else None
        try:
            scores = predict(model.pipeline, current.result(), model.call, model.output)
            check_scores(scores, batch.num_rows)
        except BaseException as exc:  # the model's own failure, or a wrong answer: it fails alone
            _error(sock, slot, describe_model_error(exc))
            # A failed model is done for the run: the batches already queued here skip it at
            # once (they answer "not loaded"), so it cannot hang its owner's other models there.
            del models[slot]
            continue
        data = np.ascontiguousarray(scores, dtype=np.float64)  # a column of predict_proba
        p.send_frame(sock, p.SCORES, slot, data.data.cast("B"))


def _submit(inputs: ThreadPoolExecutor, batch: pa.RecordBatch, model: _Model) -> Future[Any]:
    return inputs.submit(to_input, batch, model.features, model.input)


def _error(sock: socket.socket, slot: int, text: str) -> None:
    data = text[:_MAX_TEXT].encode("utf-8", "replace")[: p.MAX_ERROR]
    p.send_frame(sock, p.ERROR, slot, data)


def _send_json(sock: socket.socket, kind: int, slot: int, value: dict[str, Any]) -> None:
    import json

    data = json.dumps(value, default=str).encode()
    if len(data) > p.MAX_LOADED:
        _error(sock, slot, f"the model's description is {len(data)} bytes; keep `meta` small")
        return
    p.send_frame(sock, kind, slot, data)


def serve(sock: socket.socket) -> int:
    """Answer frames until the trusted side closes the channel."""
    models: dict[int, _Model] = {}
    buffers = shm.HostBuffers()
    inputs = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mldropd-input")
    try:
        while True:
            try:
                kind, slot, length, fds = p.recv_header_fds(sock)
                body = p.recv_body(sock, length)
            except p.HostGone:
                return 0
            if kind == p.LOAD:
                _load(sock, slot, body, models)
            elif kind == p.BATCH:
                slots, index, size = p.split_batch(body)
                if fds:
                    buffers.adopt(index, fds[0])
                _score(sock, buffers.batch(index, size), slots, models, inputs)
            else:
                raise ValueError(f"unexpected frame kind {kind}")
    except BrokenPipeError:
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        inputs.shutdown(wait=False, cancel_futures=True)
