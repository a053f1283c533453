"""Score step: run the sandboxed scoring child and keep every model's failure to itself.

The child scores all models in one pass over the slice. It reports which model it is working
on, so when the child hangs past a model's time limit or dies (segfault, os._exit, memory
limit), that model is failed with a clear message and the child is started again for the
models that are left.
"""

from __future__ import annotations

import collections
import json
import logging
import selectors
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mldropd import sandbox

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    """What became of one model in the score step."""

    rows: int | None = None
    seconds: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _drain(stream: Any, tail: collections.deque[str], batch_id: int) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        log.debug("scorer output: %s", line, extra={"run_id": batch_id})


def score_models(
    request: dict[str, Any],
    *,
    timeouts: dict[int, float],
    memory_mb: int,
    work_dir: Path,
    batch_id: int,
    heartbeat: Callable[[], None] = lambda: None,
) -> dict[int, Outcome]:
    """Score request["models"] (dicts for ModelTask) and return an outcome per model run id."""
    outcomes: dict[int, Outcome] = {}
    remaining = list(request["models"])
    round_no = 0
    while remaining:
        round_no += 1
        for task in remaining:  # a new round rewrites every remaining model from scratch
            part = Path(task["out_dir"], "part-0.parquet")
            part.unlink(missing_ok=True)
        req_path = work_dir / f"score-request-{round_no}.json"
        req_path.write_text(json.dumps({**request, "models": remaining}))
        crashed_in, ended = _one_round(
            req_path,
            remaining,
            outcomes,
            timeouts,
            memory_mb,
            work_dir / f"scorer-{round_no}",
            batch_id,
            heartbeat,
        )
        remaining = [t for t in remaining if t["model_run_id"] not in outcomes]
        if ended or crashed_in is None:
            for task in remaining:  # the child stopped outside any model's code
                outcomes[task["model_run_id"]] = Outcome(error=ended or "scoring stopped")
            break
    return outcomes


def _one_round(
    req_path: Path,
    tasks: list[dict[str, Any]],
    outcomes: dict[int, Outcome],
    timeouts: dict[int, float],
    memory_mb: int,
    private_dir: Path,
    batch_id: int,
    heartbeat: Callable[[], None],
) -> tuple[int | None, str | None]:
    """Run the child once. Returns (model run it died in, error when it failed outside models)."""
    proc = sandbox.start(
        sandbox.python_argv("mldropd.jobs.score_models", str(req_path)),
        memory_mb=memory_mb,
        private_dir=private_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    tail: collections.deque[str] = collections.deque(maxlen=60)
    drainer = threading.Thread(target=_drain, args=(proc.stderr, tail, batch_id), daemon=True)
    drainer.start()
    assert proc.stdout is not None
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    used: dict[int, float] = collections.defaultdict(float)
    current: tuple[int, float] | None = None
    buffer = b""
    end_seen = False
    try:
        while True:
            heartbeat()
            if current is not None:
                run_id, since = current
                limit = timeouts.get(run_id, 1800.0)
                if used[run_id] + time.monotonic() - since > limit:
                    sandbox.kill_group(proc)
                    outcomes[run_id] = Outcome(
                        error=(
                            f"the model did not finish within its time limit of {limit:.0f} s "
                            "(set params.timeout_s or [engine] model_timeout_s) and was stopped"
                        )
                    )
                    log.warning(
                        "model timed out", extra={"run_id": batch_id, "model_run_id": run_id}
                    )
                    return run_id, None
            if not selector.select(timeout=0.5):
                continue
            chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
            if not chunk:
                break
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                event = json.loads(line)
                kind, run_id = event["event"], event.get("model_run_id")
                now = time.monotonic()
                if kind == "start":
                    current = (run_id, now)
                elif kind == "done" and current is not None:
                    used[run_id] += now - current[1]
                    current = None
                elif kind == "failed":
                    outcomes[run_id] = Outcome(error=event["error"])
                    current = None
                elif kind == "finished":
                    outcomes[run_id] = Outcome(rows=event["rows"], seconds=event["seconds"])
                elif kind == "end":
                    end_seen = True
    finally:
        selector.close()
        proc.wait()
        drainer.join(timeout=5)
    if proc.returncode == 0 and end_seen:
        return None, None
    how = sandbox.ChildResult(proc.returncode, False, 0.0, "\n".join(tail)).describe(0, memory_mb)
    if current is not None:
        run_id = current[0]
        outcomes[run_id] = Outcome(error=f"the model crashed the scoring process: {how}")
        log.warning("model crashed its process", extra={"run_id": batch_id, "model_run_id": run_id})
        return run_id, None
    detail = "\n".join(list(tail)[-8:])
    return None, f"the scoring process failed outside any model: {how}\n{detail}".strip()
