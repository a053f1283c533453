"""DQ samples: the rows of a slice whose entity key has the smallest deterministic hash.

Every model of a batch and both sides of the comparison use the same rule, so one sample of the
current slice serves all the batch's models, and the reference sample holds (mostly) the same
entities as the current one. The rule depends only on the key values, never on how the rows were
split into batches or in which order the batches came, so the batch job's one streaming read of
the slice (`KeySample.add` on each record batch) draws the same sample as `sample_slice`.

`SampleStore` keeps the sample a batch drew of its slice, so the next day's DQ, whose reference
that slice is, does not read it again: each slice is then read once, by its scoring.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from numpy.typing import NDArray

from mldropd.engines.local_io import read_batches  # the scoring engine's reader
from mldropd.features import FeatureSource

log = logging.getLogger(__name__)

HASH_SEED = 0
READ_BATCH_ROWS = 131_072  # rows per record batch when this module reads a slice itself


def key_hash(keys: pa.Array | pa.ChunkedArray) -> NDArray[np.uint64]:
    """Return a deterministic 64-bit hash of each key (integer and string keys)."""
    if pa.types.is_dictionary(keys.type):  # polars would hash the categories' codes
        keys = keys.cast(keys.type.value_type)
    # Polars hashes int32 and int64, and string, large_string and string_view, alike, with a
    # fixed seed: the same value gets the same hash in every process of one polars version.
    series = pl.from_arrow(keys)
    assert isinstance(series, pl.Series)
    return series.hash(HASH_SEED).to_numpy()


class KeySample:
    """Streaming collector of the at most max_rows rows with the smallest key hashes.

    The sample is every row whose hash group fits: a row is kept when the number of rows with a
    hash at most its own is at most max_rows (rows sharing a hash, i.e. duplicate keys, are kept
    or dropped together). That set is a property of the slice alone, so it is the same whatever
    the batch boundaries; rows come out ordered by hash. Memory stays below about 2 x max_rows
    rows plus one batch: rows that can no longer be in the sample are dropped as they arrive.
    """

    def __init__(self, key: str, columns: Sequence[str], max_rows: int) -> None:
        if max_rows < 1:
            raise ValueError(f"a DQ sample needs max_rows >= 1, got {max_rows}")
        self.key = key
        self.columns = list(dict.fromkeys([key, *columns]))
        self.max_rows = max_rows
        self.rows_seen = 0
        self._tables: list[pa.Table] = []
        self._hashes: list[NDArray[np.uint64]] = []
        self._buffered = 0
        self._limit: np.uint64 | None = None  # rows with a hash >= this can never be kept
        self._schema: pa.Schema | None = None

    @property
    def buffered_rows(self) -> int:
        """Rows held now (at most about 2 x max_rows plus one batch)."""
        return self._buffered

    def add(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Take the rows of one batch that may belong to the sample."""
        missing = [c for c in self.columns if c not in batch.schema.names]
        if missing:
            raise ValueError(
                f"the batch given to the DQ sample lacks {', '.join(missing)}; read the "
                "entity key and every column of the sample"
            )
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        table = table.select(self.columns)
        if self._schema is None:
            self._schema = table.schema
        self.rows_seen += table.num_rows
        hashes = key_hash(table.column(self.key))
        if self._limit is not None:
            keep = hashes < self._limit
            if not keep.all():
                table, hashes = table.filter(pa.array(keep)), hashes[keep]
        if table.num_rows == 0:
            return
        self._tables.append(table)
        self._hashes.append(hashes)
        self._buffered += table.num_rows
        if self._buffered > 2 * self.max_rows:
            self._prune()

    def _prune(self) -> None:
        """Keep only the rows that can still be in the sample, ordered by hash."""
        table = pa.concat_tables(self._tables) if len(self._tables) > 1 else self._tables[0]
        hashes = np.concatenate(self._hashes) if len(self._hashes) > 1 else self._hashes[0]
        order = np.argsort(hashes, kind="stable")  # ties keep arrival (= slice) order
        if len(order) > self.max_rows:
            cutoff = hashes[order[self.max_rows]]
            # The row at position max_rows and everything hashing at or above it is out; so is
            # its whole hash group, which would not fit.
            order = order[: np.searchsorted(hashes[order], cutoff, side="left")]
            self._limit = cutoff if self._limit is None else min(self._limit, cutoff)
        self._tables = [table.take(pa.array(order))]
        self._hashes = [hashes[order]]
        self._buffered = len(order)

    def table(self) -> pa.Table:
        """The sample: key first, then the columns, ordered by key hash."""
        if not self._tables:
            if self._schema is None:
                return pa.table({c: pa.array([], type=pa.null()) for c in self.columns})
            return self._schema.empty_table()
        self._prune()
        return self._tables[0]


def sample_slice(
    source: FeatureSource,
    day: dt.date,
    key: str,
    columns: Sequence[str],
    max_rows: int,
) -> pa.Table:
    """The same sample as KeySample, drawn by one streaming read of the slice of `day`."""
    sample = KeySample(key, columns, max_rows)
    for batch in read_batches(source.settings, day, sample.columns, READ_BATCH_ROWS):
        sample.add(batch)
    return sample.table()


class SampleStore:
    """The DQ samples of recent slices, one Arrow file per slice date and entity key.

    A sample is stored as the batch drew it (during its scoring read, or by reading the slice),
    over the union of that batch's model features, and serves as the reference sample of a later
    batch when it has every column that batch needs and was drawn with the same max_rows. The
    features are then those the reference scores were computed from, even if the slice was
    rewritten since. Writes are atomic (a temporary file renamed), so a crash leaves the old file
    or the new one; a sample that cannot be read is sampled again from its slice. Samples of
    slices more than keep_days older than the newest one written are removed.
    """

    def __init__(self, root: str | Path, keep_days: int) -> None:
        self.root = Path(root)
        self.keep_days = keep_days

    def path(self, day: dt.date, key: str) -> Path:
        """The file of a slice date and key (the key's name hashed: no user text in paths)."""
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        return self.root / f"dt={day.isoformat()}" / f"key-{digest}.arrow"

    def save(self, day: dt.date, key: str, sample: pa.Table, max_rows: int) -> None:
        """Keep the sample of the slice of `day` (drawn with max_rows); prune old slices."""
        target = self.path(day, key)
        target.parent.mkdir(parents=True, exist_ok=True)
        meta = {b"mldropd.key": key.encode(), b"mldropd.max_rows": str(max_rows).encode()}
        table = sample.replace_schema_metadata({**(sample.schema.metadata or {}), **meta})
        partial = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with pa.OSFile(str(partial), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        os.replace(partial, target)
        self._prune(day)

    def load(
        self, day: dt.date, key: str, columns: Sequence[str], max_rows: int
    ) -> pa.Table | None:
        """The stored sample of the slice of `day` with these columns, else None."""
        path = self.path(day, key)
        try:
            with pa.memory_map(str(path)) as source:
                table = pa.ipc.open_file(source).read_all()
        except FileNotFoundError:
            return None
        except (OSError, pa.ArrowException):  # damaged: sampled again from the slice
            log.warning("DQ sample %s unreadable; the slice is read instead", path, exc_info=True)
            return None
        meta = table.schema.metadata or {}
        wanted = list(dict.fromkeys([key, *columns]))
        if (
            meta.get(b"mldropd.key") != key.encode()
            or meta.get(b"mldropd.max_rows") != str(max_rows).encode()
            or not set(wanted) <= set(table.column_names)
        ):
            return None
        return table.select(wanted).replace_schema_metadata(None)

    def _prune(self, newest: dt.date) -> None:
        """Remove the samples of slices more than keep_days older than `newest`."""
        oldest = newest - dt.timedelta(days=self.keep_days)
        for folder in self.root.glob("dt=*"):
            try:
                day = dt.date.fromisoformat(folder.name[3:])
            except ValueError:
                continue
            if day < oldest:
                shutil.rmtree(folder, ignore_errors=True)
