"""Background I/O of the local engine, so reading and writing overlap with the models' work.

A reader thread streams the slice's union columns as Arrow record batches through a small
bounded queue; a writer thread appends each model's scores to its Parquet file. At most a few
batches are in flight, so memory is bounded by the batch size, not by the size of the slice.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mldropd.features import FeatureSource
from mldropd.settings import FeatureSettings

PART_FILE = "part-0.parquet"
_CONSTANT_COLUMNS = ["model_id", "model_version", "run_id", "scored_at"]


def scores_schema(key_type: pa.DataType, entity_key: str) -> pa.Schema:
    """Columns of a scores partition file (dt and model are in the path)."""
    return pa.schema(
        [
            (entity_key, key_type),
            ("score", pa.float64()),
            ("model_id", pa.int64()),
            ("model_version", pa.int64()),
            ("run_id", pa.int64()),
            ("scored_at", pa.timestamp("us", tz="UTC")),
        ]
    )


def open_scores_file(path: Path, key_type: pa.DataType, entity_key: str) -> pq.ParquetWriter:
    """A scores file; dictionary encoding only where it pays (the constant columns)."""
    return pq.ParquetWriter(
        path, scores_schema(key_type, entity_key), use_dictionary=_CONSTANT_COLUMNS
    )


# -- reading -----------------------------------------------------------------------------------
def read_batches(
    settings: FeatureSettings, day: dt.date, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """The slice's columns in record batches of at most batch_rows rows, in file order."""
    if settings.kind == "parquet":
        folder = Path(settings.path) / f"{settings.date_column}={day.isoformat()}"
        return _parquet_batches(sorted(folder.glob("*.parquet")), columns, batch_rows)
    return _duckdb_batches(FeatureSource(settings), day, columns, batch_rows)


def _parquet_batches(
    files: list[Path], columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """pyarrow reads whole row groups (columns decoded in parallel), cut into batches of exactly
    batch_rows rows (the last one shorter), across row-group and file boundaries.

    Measured faster than DuckDB's Arrow reader and, unlike Polars' streaming batches, it never
    reads ahead of the consumer, so peak memory does not grow with the slice. Full batches, not
    a short remainder at every row-group end (131,072-row groups at 100,000-row batches gave 16
    batches per million rows instead of 10), cut the models' per-call overhead by a third."""
    schema: pa.Schema | None = None
    carry: pa.Table | None = None  # rows read but not yet handed out (fewer than batch_rows)
    for path in files:
        pf = pq.ParquetFile(path)
        groups: list[int] = []
        rows = carry.num_rows if carry is not None else 0
        for index in range(pf.num_row_groups):
            groups.append(index)
            rows += pf.metadata.row_group(index).num_rows
            if rows < batch_rows and index < pf.num_row_groups - 1:
                continue
            table = _plain(pf.read_row_groups(groups, columns=columns, use_threads=True))
            schema = schema or table.schema
            if table.schema != schema:  # files of one slice written with other types
                table = table.cast(schema)
            if carry is not None:  # first complete the batch begun by the previous read
                need = batch_rows - carry.num_rows
                head, table = pa.concat_tables([carry, table.slice(0, need)]), table.slice(need)
                carry = None  # no longer keeps the previous read's whole table alive
                if head.num_rows < batch_rows:
                    carry, groups, rows = head, [], head.num_rows
                    continue
                yield _one_batch(head)
                del head
            start = 0
            while table.num_rows - start >= batch_rows:
                yield _one_batch(table.slice(start, batch_rows))
                start += batch_rows
            carry = table.slice(start) if start < table.num_rows else None
            groups, rows = [], carry.num_rows if carry is not None else 0
    if carry is not None:
        yield _one_batch(carry)


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """The table as one record batch: zero-copy within one chunk, one copy across chunks."""
    batches = table.to_batches()
    if len(batches) == 1:
        return batches[0]
    return table.combine_chunks().to_batches()[0]


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns decoded, so models see the same values DuckDB would give them."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            table = table.set_column(i, f.name, table.column(i).cast(f.type.value_type))
    return table


def _duckdb_batches(
    source: FeatureSource, day: dt.date, columns: list[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    with source.connect() as con:
        yield from con.sql(source.select_sql(day, columns)).to_arrow_reader(batch_rows)


class _End:
    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Prefetch:
    """Runs a batch iterator in a reader thread, `depth` batches ahead of the consumer."""

    def __init__(self, batches: Iterator[pa.RecordBatch], depth: int = 2) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(batches,), name="mldropd-reader", daemon=True
        )
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator[pa.RecordBatch]) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
        except BaseException as exc:  # handed to the consumer, raised in its thread
            self._put(_End(exc))
            return
        self._put(_End())

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        while True:
            item = self._queue.get()
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            yield item

    def close(self) -> None:
        """Stop the reader (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.2)
        self._thread.join()


# -- writing -----------------------------------------------------------------------------------
class Output:
    """One model run's scores file in its staging folder, as it is being written."""

    def __init__(
        self, model_run_id: int, model_id: int, model_version: int, entity_key: str, out_dir: Path
    ) -> None:
        self.model_run_id, self.model_id, self.model_version = model_run_id, model_id, model_version
        self.entity_key, self.out_dir = entity_key, out_dir
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.failed = False

    def close(self, key_type: pa.DataType | None) -> None:
        """Finish the file; an empty slice still gets an (empty) partition file."""
        if self.writer is None and key_type is not None and not self.failed:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self.writer = open_scores_file(self.out_dir / PART_FILE, key_type, self.entity_key)
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class ScoreWriter:
    """Appends scores to each model's Parquet file in a writer thread, in submission order."""

    def __init__(self, scored_at: dt.datetime, depth: int = 16) -> None:
        self._stamp = int(scored_at.timestamp() * 1_000_000)
        self._queue: queue.Queue[tuple[str, Output, Any, Any] | None] = queue.Queue(depth)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="mldropd-writer", daemon=True)
        self._thread.start()

    def write(self, out: Output, keys: pa.Array, scores: np.ndarray) -> None:
        """Queue one batch of scores (blocks while the queue is full: memory stays bounded)."""
        self._queue.put(("write", out, keys, scores))

    def discard(self, out: Output) -> None:
        """The model failed: close and delete its file once its queued writes are done."""
        out.failed = True
        self._queue.put(("discard", out, None, None))

    def check(self) -> None:
        """Raise in the caller's thread if a write failed (not a model's fault)."""
        if self.error is not None:
            raise RuntimeError(f"writing scores failed: {self.error}") from self.error

    def stop(self) -> None:
        """Write everything queued, then end the thread."""
        self._queue.put(None)
        self._thread.join()

    def finish(self) -> None:
        """stop(), then raise if a write failed."""
        self.stop()
        self.check()

    def _run(self) -> None:
        actions: dict[str, Callable[..., None]] = {"write": self._append, "discard": self._drop}
        while (item := self._queue.get()) is not None:
            if self.error is not None:
                continue  # keep draining so producers never block; the caller raises
            kind, out, keys, scores = item
            try:
                actions[kind](out, keys, scores)
            except BaseException as exc:
                self.error = exc

    def _drop(self, out: Output, _keys: Any, _scores: Any) -> None:
        if out.writer is not None:
            out.writer.close()
            out.writer = None
        Path(out.out_dir, PART_FILE).unlink(missing_ok=True)

    def _append(self, out: Output, keys: pa.Array, scores: np.ndarray) -> None:
        if out.failed:  # failed after this batch was queued
            return
        n = len(keys)
        if out.writer is None:
            out.out_dir.mkdir(parents=True, exist_ok=True)
            out.writer = open_scores_file(out.out_dir / PART_FILE, keys.type, out.entity_key)
        columns = [keys, pa.array(scores, pa.float64()), *self._constant(out, n)]
        out.writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=out.writer.schema))
        out.rows += n

    def _constant(self, out: Output, n: int) -> list[pa.Array]:
        values = [out.model_id, out.model_version, out.model_run_id]
        arrays = [pa.array(np.full(n, v, dtype=np.int64)) for v in values]
        stamp = pa.array(np.full(n, self._stamp, dtype=np.int64))
        return [*arrays, stamp.cast(pa.timestamp("us", tz="UTC"))]
