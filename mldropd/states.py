"""Run and model-run states, and the transitions allowed between them (one place)."""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """State of one batch run (one date, one or more models)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # every model of the batch succeeded
    FAILED = "failed"  # at least one model failed


class ModelRunStatus(StrEnum):
    """State of one model scored on one date in one attempt."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"  # not attempted, with a reason (e.g. beyond the catch-up window)


class Phase(StrEnum):
    """Where a running model run's batch is (mldropd.batch.progress records it)."""

    WAITING_FOR_DATA = "waiting_for_data"  # the feature slice is late; the sensor waits
    STARTING = "starting"  # model files fetched, keys checked, sandbox hosts or Spark started
    READING = "reading"  # the models are loaded; the first batch of the slice is being read
    SCORING = "scoring"  # batches are being scored: rows_done counts up to rows_total
    WRITING = "writing"  # every batch is scored; the score files are being closed
    DQ = "dq"  # data-quality checks, one model after the other, then publishing
    REPORT = "report"  # the owners' report emails are being queued

    @property
    def text(self) -> str:
        """The phase in words, as pages and the terminal show it."""
        return {Phase.WAITING_FOR_DATA: "waiting for data", Phase.DQ: "DQ"}.get(self, self.value)


class Trigger(StrEnum):
    """Who asked for a run."""

    SCHEDULE = "schedule"
    RETRY = "retry"
    CATCHUP = "catchup"
    MANUAL = "manual"
    BACKFILL = "backfill"


class ModelStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"


class DQStatus(StrEnum):
    OK = "ok"
    WARN = "warn"
    ALERT = "alert"


class OutboxStatus(StrEnum):
    """State of one e-mail in the outbox (mldropd.notify.outbox)."""

    PENDING = "pending"  # waiting for its (next) delivery attempt
    SENT = "sent"
    KEPT = "kept"  # written to the outbox folder as an .eml file (no SMTP server configured)
    FAILED = "failed"  # given up after its last attempt


class SweepStatus(StrEnum):
    """What the sweep did with one date."""

    PLANNED = "planned"
    SKIPPED = "skipped"  # missed while the daemon was down, older than the catch-up window


_RUN_TRANSITIONS: dict[RunStatus, set[RunStatus]] = {
    RunStatus.PENDING: {RunStatus.RUNNING, RunStatus.FAILED},
    # RUNNING -> PENDING: the worker died and the run is re-queued.
    RunStatus.RUNNING: {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.PENDING},
    RunStatus.SUCCEEDED: set(),
    RunStatus.FAILED: set(),
}

_MODEL_RUN_TRANSITIONS: dict[ModelRunStatus, set[ModelRunStatus]] = {
    ModelRunStatus.PENDING: {ModelRunStatus.RUNNING, ModelRunStatus.FAILED, ModelRunStatus.SKIPPED},
    ModelRunStatus.RUNNING: {
        ModelRunStatus.SUCCEEDED,
        ModelRunStatus.FAILED,
        ModelRunStatus.PENDING,
    },
    # SUCCEEDED -> FAILED: its scores were discarded at the DQ publish gate.
    ModelRunStatus.SUCCEEDED: {ModelRunStatus.FAILED},
    ModelRunStatus.FAILED: set(),
    ModelRunStatus.SKIPPED: set(),
}


class IllegalTransition(RuntimeError):
    pass


def check_run_transition(old: str, new: str) -> RunStatus:
    """Return the new run status, or raise if the move is not allowed."""
    if RunStatus(new) not in _RUN_TRANSITIONS[RunStatus(old)]:
        raise IllegalTransition(f"run cannot go from {old} to {new}")
    return RunStatus(new)


def check_model_run_transition(old: str, new: str) -> ModelRunStatus:
    """Return the new model-run status, or raise if the move is not allowed."""
    if ModelRunStatus(new) not in _MODEL_RUN_TRANSITIONS[ModelRunStatus(old)]:
        raise IllegalTransition(f"model run cannot go from {old} to {new}")
    return ModelRunStatus(new)
