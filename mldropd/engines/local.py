"""Local engine: the trusted batch job reads the slice once, sandboxed hosts score it.

The reader streams the union of the due models' columns as Arrow record batches (a reader
thread, mldropd.engines.local_io); each owner's models run in their own sandboxed model host
(mldropd.engines.owner), fed only that owner's columns through shared memory
(mldropd.sandbox.shm); the owners' hosts score a batch in parallel, each with its next batch
already waiting in it, while the one after is read; the scores come back as checked float64
arrays and the trusted writer thread appends them, with the entity keys it kept, to each
model's Parquet file.
Memory is bounded by the batch size, not by the table. No host ever opens the feature store,
the scores table or anything else of mldropd's.
"""

from __future__ import annotations

import contextlib
import logging
import resource
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pyarrow as pa

from mldropd.batch.keys import KeyFilters
from mldropd.engines.base import ModelTask, Outcome, Progress, ScoringRequest
from mldropd.engines.local_io import Output, Prefetch, ScoreWriter, read_batches
from mldropd.engines.owner import Collected, OwnerScorer
from mldropd.sandbox.forkserver import ForkServerError
from mldropd.sandbox.setup import Sandboxes

log = logging.getLogger(__name__)


class LocalEngine:
    """Scores in this process's reader and writer threads and in sandboxed model hosts."""

    name = "local"

    def __init__(self, sandboxes: Sandboxes, memory_mb: int, *, keep_hosts: bool = False) -> None:
        self.sandboxes = sandboxes
        self.memory_mb = memory_mb
        self.host_peaks_mb: dict[int, float] = {}  # owner -> peak RSS of its host, last score()
        # keep_hosts: a job scoring several dates (a backfill) loads each owner's models once;
        # the hosts wait between dates and end with close().
        self.keep_hosts = keep_hosts
        self._kept: dict[tuple[int, str], OwnerScorer] = {}

    def close(self) -> None:
        """End the hosts kept between requests."""
        for owner in self._kept.values():
            with contextlib.suppress(Exception):
                owner.close()
        self._kept.clear()

    def _owners(self, request: ScoringRequest) -> list[OwnerScorer]:
        """One scorer per owner (and entity key: the key policies may keep other rows per key);
        a kept one when it holds the same models and is healthy, else a new one."""
        groups: dict[tuple[int, str], list[ModelTask]] = defaultdict(list)
        for task in request.tasks:
            groups[(task.owner_id, task.entity_key)].append(task)
        owners = []
        for key, tasks in groups.items():
            kept = self._kept.pop(key, None)
            if kept is not None and kept.rebind(tasks):
                owners.append(kept)
                continue
            if kept is not None:
                kept.close()
            owners.append(OwnerScorer(self.sandboxes, key[0], tasks, self.memory_mb))
        for stale in self._kept.values():  # owners this request does not need
            stale.close()
        self._kept.clear()
        return owners

    def score(
        self,
        request: ScoringRequest,
        *,
        heartbeat: Callable[[], None],
        progress: Progress | None = None,
        observe: Callable[[pa.RecordBatch], None] | None = None,
    ) -> dict[int, Outcome]:
        owners = self._owners(request)
        keys = KeyFilters.from_request(list(request.key_filters))
        outputs = {
            t.model_run_id: Output(
                t.model_run_id, t.model_id, t.model_version, t.entity_key, t.out_dir
            )
            for t in request.tasks
        }
        # The reader starts at once: the first batches are read while the hosts load models.
        batches = Prefetch(
            read_batches(request.features, request.slice_date, request.columns, request.batch_rows)
        )
        pool = ThreadPoolExecutor(max_workers=len(owners), thread_name_prefix="mldropd-owner")
        writer = ScoreWriter(request.scored_at)
        rows = 0
        key_types: dict[str, pa.DataType] = {}
        try:
            _start_all(pool, owners)
            if progress is not None:  # the models are loaded; the first batch is being read
                progress("reading", {})
            for index, read in enumerate(batches):
                rows += read.num_rows
                for key in {t.entity_key for t in request.tasks}:
                    key_types.setdefault(key, read.schema.field(key).type)
                views = keys.views(read)  # the rows each key's models score (one per entity)
                steps = {}
                for o in owners:
                    view = views.get(o.entity_key, read)
                    batch = view if o.live and view.num_rows else None
                    if batch is not None or o.inflight:
                        steps[o] = pool.submit(o.step, batch, index)
                if observe is not None:  # while the hosts score
                    observe(read)
                _write_scores(steps, outputs, writer)
                _discard_failed(owners, outputs, writer)
                writer.check()
                heartbeat()
                if progress is not None:
                    progress("scoring", {i: o.rows for i, o in outputs.items() if not o.failed})
            # the batches still in the hosts
            _write_scores(
                {o: pool.submit(o.step, None) for o in owners if o.inflight}, outputs, writer
            )
            _discard_failed(owners, outputs, writer)
            writer.check()
            keys.finish()
            if progress is not None:
                progress("writing", {i: o.rows for i, o in outputs.items() if not o.failed})
        except BaseException:
            writer.stop()
            raise
        finally:
            batches.close()
            pool.shutdown(wait=True, cancel_futures=True)
            for owner in owners:
                if self.keep_hosts and owner.healthy:
                    self._kept[(owner.owner_id, owner.entity_key)] = owner
                    continue
                with contextlib.suppress(Exception):
                    owner.close()
        writer.finish()
        _discard_failed(owners, outputs, writer)
        outcomes: dict[int, Outcome] = {}
        for owner in owners:
            for slot, model in owner.models.items():
                run_id = model.task.model_run_id
                if slot in owner.errors:
                    outcomes[run_id] = Outcome(error=owner.errors[slot])
                    continue
                out = outputs[run_id]
                out.close(key_types.get(model.task.entity_key) or _key_type(request, model.task))
                outcomes[run_id] = Outcome(
                    rows=out.rows, seconds=owner.seconds_of(slot), warnings=owner.warnings_of(slot)
                )
        self.host_peaks_mb = {o.owner_id: o.peak_mb for o in owners}
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        log.info(
            "local engine: %d rows, %d owner(s), peak RSS: this process %.0f MB, hosts %.0f MB",
            rows,
            len(owners),
            peak_mb,
            max(self.host_peaks_mb.values(), default=0.0),
        )
        return outcomes


def _write_scores(
    steps: dict[OwnerScorer, Future[list[Collected]]],
    outputs: dict[int, Output],
    writer: ScoreWriter,
) -> None:
    for owner, step in steps.items():
        for view, results in step.result():
            for slot, scores in results.items():
                task = owner.models[slot].task
                writer.write(outputs[task.model_run_id], _keys(view, task), scores)


def _start_all(pool: ThreadPoolExecutor, owners: list[OwnerScorer]) -> None:
    """Start every owner's host in parallel; an owner whose host cannot start fails alone."""
    started = {o: pool.submit(o.start) for o in owners if o.host is None}
    for owner, future in started.items():
        try:
            future.result()
        except ForkServerError as exc:
            owner.fail_all(f"the model's sandbox could not be started: {exc}")


def _keys(batch: pa.RecordBatch, task: ModelTask) -> pa.Array:
    return batch.column(batch.schema.get_field_index(task.entity_key))


def _discard_failed(
    owners: list[OwnerScorer], outputs: dict[int, Output], writer: ScoreWriter
) -> None:
    for owner in owners:
        for slot in owner.errors:
            out = outputs[owner.models[slot].task.model_run_id]
            if not out.failed:
                writer.discard(out)


def _key_type(request: ScoringRequest, task: ModelTask) -> pa.DataType:
    """The key column's type when the slice had no rows at all (for the empty file)."""
    from mldropd.features import FeatureSource

    with FeatureSource(request.features).connect() as con:
        sql = FeatureSource(request.features).select_sql(request.slice_date, [task.entity_key], 0)
        return con.sql(sql).to_arrow_table().schema.field(0).type
