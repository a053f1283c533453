"""One owner's models in one sandboxed model host, driven from the trusted side.

The host is fed the owner's columns of each batch and answers each model in order; this
class keeps each model's clock (load and every batch count against its time limit), and when
a model fails, hangs, lies or crashes the host it fails that model alone: a host that died
or was stopped is started again for the owner's other models, and the batch is sent again
for the models that had not answered it.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mldropd.engines.base import ModelTask
from mldropd.sandbox.hosts import ModelHost, Reply
from mldropd.sandbox.setup import Sandboxes

log = logging.getLogger(__name__)


def timeout_text(limit: float) -> str:
    return (
        f"the model did not finish within its time limit of {limit:.0f} s and was stopped "
        "(set params.timeout_s or [engine] model_timeout_s; [engine] max_model_timeout_s caps both)"
    )


# A batch sent to a host (every column the engine has) and the scores of its live models.
Collected = tuple[pa.RecordBatch, dict[int, np.ndarray]]


@dataclass
class _Sent:
    """A batch handed to the host, and the models asked to answer it, in order."""

    index: int
    batch: pa.RecordBatch  # every column the engine has (the keys are read from it)
    slots: list[int]
    at: float = 0.0  # when it was sent


@dataclass
class _Model:
    task: ModelTask
    used: float = 0.0  # seconds of its own code so far, measured here
    warnings: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> float:
        return self.task.timeout_s - self.used


class OwnerScorer:
    """The models of one owner, scored batch after batch in one host process at a time."""

    def __init__(
        self,
        sandboxes: Sandboxes,
        owner_id: int,
        tasks: list[ModelTask],
        memory_mb: int,
        blob_of: Callable[[ModelTask], bytes] | None = None,
    ) -> None:
        self.sandboxes = sandboxes
        self.owner_id = owner_id
        self.entity_key = tasks[0].entity_key
        self.models = {slot: _Model(task) for slot, task in enumerate(tasks)}
        self.live: list[int] = list(self.models)
        self.errors: dict[int, str] = {}
        self.memory_mb = memory_mb
        self.blob_of = blob_of or (lambda task: task.path.read_bytes())
        self.host: ModelHost | None = None
        self.columns: list[str] = []
        self.inflight: collections.deque[_Sent] = collections.deque()
        self.answered_at = 0.0  # when the host last answered (it starts the next model then)
        self.peak_mb = 0.0  # the largest peak RSS of its hosts

    # -- the host ------------------------------------------------------------------------------
    def start(self) -> None:
        """Start a host and load every live model into it (a model that breaks it fails)."""
        while self.live:
            self._close_host()
            cpu = int(sum(self.models[s].remaining for s in self.live) * 2) + 60
            host = ModelHost(
                self.sandboxes.server,
                self.sandboxes.policy(memory_mb=self.memory_mb, cpu_s=cpu),
                f"owner-{self.owner_id}",
            )
            host.start()
            self.host = host
            if self._load_all():
                self.columns = list(
                    dict.fromkeys(f for s in self.live for f in self.models[s].task.features)
                )
                return

    def _load_all(self) -> bool:
        """Load the live models; False when the host broke and must be started again."""
        assert self.host is not None
        for slot in list(self.live):
            model = self.models[slot]
            blob = self.blob_of(model.task)
            reply = self.host.load(slot, model.task.spec(), blob, model.remaining)
            model.used += reply.seconds
            if reply.kind == "loaded":
                model.warnings = _warnings(reply.value)
                continue
            self._fail(slot, _load_failure(reply, model.task.timeout_s))
            if reply.kind != "error":
                return False
        return True

    def _close_host(self) -> None:
        """End the host at once (the batches in flight stay, for the next host)."""
        if self.host is not None:
            self.host.kill()
            self._end_host()

    def close(self) -> None:
        """End the host; batches still in it when the pass broke off are not waited for."""
        if self.host is not None and self.inflight:
            self.host.kill()
        self.inflight.clear()
        self._end_host()

    def _end_host(self) -> None:
        if self.host is not None:
            how = self.host.close()
            self.peak_mb = max(self.peak_mb, self.host.peak_mb)
            log.debug("model host of owner %s ended: %s", self.owner_id, how)
            self.host = None

    # -- scoring -------------------------------------------------------------------------------
    def send(self, batch: pa.RecordBatch, index: int) -> None:
        """Hand the host the next batch (its owner's columns); the answers are read by
        collect(), oldest batch first. With one batch waiting in the host while it scores the
        one before, the host never idles while a batch is being prepared here."""
        if not self.live or self.host is None:
            return
        sent = _Sent(index, batch, list(self.live))
        self.inflight.append(sent)
        self._transmit(sent)

    def collect(self) -> Collected | None:
        """The oldest batch sent and the scores of its live models (failed ones are in
        self.errors); None when nothing is in flight."""
        if not self.inflight:
            return None
        sent = self.inflight.popleft()
        results: dict[int, np.ndarray] = {}
        todo = list(sent.slots)
        since = max(sent.at, self.answered_at)
        while todo and self.host is not None:
            slot = todo.pop(0)
            model = self.models[slot]
            reply = self.host.reply(slot, sent.batch.num_rows, since, model.remaining)
            model.used += reply.seconds
            since = self.answered_at = time.monotonic()
            if slot not in self.live:  # it failed on an earlier batch: nothing it says counts
                pass
            elif reply.kind == "scores":
                results[slot] = reply.value
            else:
                self._fail(slot, _score_failure(reply, sent.index, sent.batch.num_rows, model.task))
            if reply.kind in ("scores", "error"):
                continue
            # the host is dead or stopped: a new one for the rest, which is sent again this
            # batch (the models that had not answered it) and the batches queued behind it
            self.start()
            todo = [s for s in todo if s in self.live]
            if self.host is None:
                break
            if todo:
                self._transmit(_Sent(sent.index, sent.batch, todo))
            for later in self.inflight:
                later.slots = [s for s in later.slots if s in self.live]
                self._transmit(later)
            since = time.monotonic()
        return sent.batch, results

    def step(self, batch: pa.RecordBatch | None, index: int = -1) -> list[Collected]:
        """Send the host its next batch, then take the answers to the one before: the host
        scores batch n while batch n+1 waits in it. No batch: take every answer still due."""
        if batch is not None:
            self.send(batch, index)
        waiting = 1 if batch is not None else 0
        collected = []
        while len(self.inflight) > waiting and (got := self.collect()) is not None:
            collected.append(got)
        return collected

    def _transmit(self, sent: _Sent) -> None:
        """Send a batch to the host. A host that cannot take it is dead: collect() finds
        that out at the next answer due and blames the model whose turn it is."""
        assert self.host is not None
        if sent.slots:
            self.host.send_batch(sent.slots, sent.batch.select(self.columns))
        sent.at = time.monotonic()

    def _fail(self, slot: int, message: str) -> None:
        self.errors[slot] = message
        if slot in self.live:
            self.live.remove(slot)
        log.warning(
            "model failed: %s",
            message.splitlines()[0],
            extra={"model_run_id": self.models[slot].task.model_run_id},
        )

    @property
    def healthy(self) -> bool:
        """Its host runs and every model of it is loaded (it can serve another date)."""
        return self.host is not None and not self.errors and not self.inflight

    def rebind(self, tasks: list[ModelTask]) -> bool:
        """Serve another request's runs of the same models with the host as it is (no model is
        sent or loaded again); False when the models differ or the host is not healthy."""

        def same(task: ModelTask) -> tuple[object, ...]:
            return (task.model_id, task.model_version, task.features, task.input, task.call,
                    task.output, task.entity_key)  # fmt: skip

        if not self.healthy or [same(t) for t in tasks] != [
            same(m.task) for m in self.models.values()
        ]:
            return False
        self.models = {
            slot: _Model(task, warnings=self.models[slot].warnings)
            for slot, task in enumerate(tasks)
        }
        self.live = list(self.models)
        return True

    def fail_all(self, message: str) -> None:
        for slot in list(self.live):
            self._fail(slot, message)

    def warnings_of(self, slot: int) -> list[str]:
        return self.models[slot].warnings

    def seconds_of(self, slot: int) -> float:
        return self.models[slot].used


def _warnings(info: object) -> list[str]:
    if not isinstance(info, dict):
        return []
    found = info.get("warnings") or []
    return (
        [str(w)[:500] for w in found if isinstance(w, str)][:20] if isinstance(found, list) else []
    )


def _load_failure(reply: Reply, limit: float) -> str:
    if reply.kind == "error":
        return str(reply.value)
    if reply.kind == "timeout":
        return "loading: " + timeout_text(limit)
    if reply.kind == "violation":
        return (
            f"the model's sandbox broke the protocol while loading ({reply.value}) and was stopped"
        )
    return f"the model crashed its sandbox while loading: {reply.value}"


def _score_failure(reply: Reply, index: int, rows: int, task: ModelTask) -> str:
    if reply.kind == "error":
        return f"scoring batch {index} ({rows} rows) failed: {reply.value}"
    if reply.kind == "timeout":
        return timeout_text(task.timeout_s)
    if reply.kind == "violation":
        return (
            f"the model's sandbox broke the protocol on batch {index} ({reply.value}) and was "
            "stopped"
        )
    return f"the model crashed its sandbox on batch {index}: {reply.value}"
