"""Entity keys of a feature slice: nulls and duplicates found before scoring, and the rows kept.

The scores table holds one row per entity. Before any model runs, the trusted side reads only
the key column of the slice (check_keys, one DuckDB query) and counts null keys and keys that
occur more than once, remembering for each duplicated key the position of its first and last
row in file order (the slice's files sorted by name, rows in file order; a DuckDB table in
insertion order). `[features] null_keys` and `duplicate_keys` then decide:

- "fail" (the default): the models keyed on that column fail, naming the counts and three
  example keys, and nothing is written;
- null_keys = "drop": rows without a key are not scored;
- duplicate_keys = "first" | "last": of the rows sharing a key, only the first (last) in file
  order is scored.

KeyFilter applies the decision to each record batch as it is read, by position, so it holds
only the duplicated keys (never a set of every key) and needs no state across batches beyond
checking that every duplicated key was kept once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mldropd.features import FeatureSource

DUPLICATE_POLICIES = ("fail", "first", "last")
NULL_POLICIES = ("fail", "drop")
EXAMPLES = 3


class KeyOrderError(RuntimeError):
    """The rows came in another order than the key check saw: no duplicate may slip through."""


@dataclass(eq=False)
class KeyCheck:
    """What check_keys found in one key column of a slice."""

    key: str
    rows: int
    null_rows: int = 0
    duplicate_rows: int = 0  # rows of duplicated keys beyond one each: the rows a policy drops
    # duplicated key -> (count, first position, last position), in file order
    duplicates: dict[Any, tuple[int, int, int]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        return not self.null_rows and not self.duplicates

    def examples(self) -> list[Any]:
        return list(self.duplicates)[:EXAMPLES]

    def refusal(self, slice_date: dt.date, duplicate_keys: str, null_keys: str) -> str | None:
        """The reason to fail the models keyed on this column, None when the policies allow."""
        problems = []
        if self.duplicates and duplicate_keys == "fail":
            shown = ", ".join(repr(k) for k in self.examples())
            problems.append(
                f"{len(self.duplicates):,} {self.key} values occur more than once "
                f"({self.duplicate_rows + len(self.duplicates):,} rows; e.g. {shown})"
            )
        if self.null_rows and null_keys == "fail":
            problems.append(f"{self.null_rows:,} rows have no {self.key} (null)")
        if not problems:
            return None
        fixes = []
        if self.duplicates and duplicate_keys == "fail":
            fixes.append('[features] duplicate_keys = "first" or "last"')
        if self.null_rows and null_keys == "fail":
            fixes.append('[features] null_keys = "drop"')
        return (
            f"the feature slice {slice_date} has {' and '.join(problems)}; the scores table keeps "
            f"one row per entity, so nothing was scored. Fix the feature store, or set "
            f"{' and '.join(fixes)} to score one row per key"
        )

    def note(self, duplicate_keys: str, null_keys: str) -> str | None:
        """What was done to the rows, for the run record, the report and the page."""
        parts = []
        if self.null_rows and null_keys == "drop":
            parts.append(
                f"{self.null_rows:,} rows without {self.key} not scored "
                '([features] null_keys = "drop")'
            )
        if self.duplicates and duplicate_keys in ("first", "last"):
            shown = ", ".join(repr(k) for k in self.examples())
            parts.append(
                f"{len(self.duplicates):,} duplicated {self.key} values (e.g. {shown}): "
                f"the {duplicate_keys} row of each in file order scored, "
                f"{self.duplicate_rows:,} rows not scored "
                f'([features] duplicate_keys = "{duplicate_keys}")'
            )
        return "; ".join(parts) or None

    def record(self, duplicate_keys: str, null_keys: str) -> dict[str, Any]:
        """The check as JSON for the run record and the API."""
        return {
            "key": self.key,
            "rows": self.rows,
            "null_rows": self.null_rows,
            "duplicated_keys": len(self.duplicates),
            "duplicate_rows": self.duplicate_rows,
            "examples": [_plain(k) for k in self.examples()],
            "duplicate_keys": duplicate_keys,
            "null_keys": null_keys,
            "note": self.note(duplicate_keys, null_keys),
        }

    def keep_positions(self, duplicate_keys: str) -> dict[Any, int]:
        """Duplicated key -> the position of the one row scored (first or last)."""
        if duplicate_keys not in ("first", "last"):
            return {}
        pick = 1 if duplicate_keys == "first" else 2
        return {k: v[pick] for k, v in self.duplicates.items()}


def _plain(value: Any) -> Any:
    return value if isinstance(value, str | int | float) else str(value)


def slice_files(source: FeatureSource, day: dt.date) -> list[Path]:
    """The Parquet files of a slice in read order (the local reader's order)."""
    s = source.settings
    return sorted((Path(s.path) / f"{s.date_column}={day.isoformat()}").glob("*.parquet"))


def _positions_sql(source: FeatureSource, day: dt.date, key: str) -> str:
    """SQL giving (k, pos): the key of every row of the slice and its position in file order."""
    k = source.quote(key)
    if source.settings.kind in ("parquet", "spark_table"):
        parts, offset = [], 0
        for path in slice_files(source, day):
            literal = "'" + str(path).replace("'", "''") + "'"
            parts.append(
                f"SELECT {k} AS k, file_row_number + {offset} AS pos "
                f"FROM read_parquet({literal}, file_row_number = true)"
            )
            offset += pq.ParquetFile(path).metadata.num_rows
        return " UNION ALL ".join(parts) or "SELECT NULL AS k, 0 AS pos WHERE false"
    # A DuckDB table streams in insertion order, which is rowid order.
    frm = source._from_clause(day)
    return f"SELECT {k} AS k, row_number() OVER (ORDER BY rowid) - 1 AS pos FROM {frm}"


def check_keys(source: FeatureSource, day: dt.date, key: str) -> KeyCheck:
    """Count null and duplicated keys of the slice's key column (only that column is read)."""
    positions = _positions_sql(source, day, key)
    with source.connect() as con:
        rows, nulls = con.execute(
            f"SELECT count(*), count(*) - count(k) FROM ({positions})"
        ).fetchone()  # type: ignore[misc]
        dups = con.execute(
            f"SELECT k, count(*), min(pos), max(pos) FROM ({positions}) WHERE k IS NOT NULL "
            "GROUP BY k HAVING count(*) > 1 ORDER BY min(pos)"
        ).fetchall()
    duplicates = {k: (int(n), int(first), int(last)) for k, n, first, last in dups}
    return KeyCheck(
        key=key,
        rows=int(rows),
        null_rows=int(nulls),
        duplicate_rows=sum(n - 1 for n, _, _ in duplicates.values()),
        duplicates=duplicates,
    )


class KeyFilter:
    """Rows to score of each record batch, given in read order with its global row offset."""

    def __init__(self, key: str, keep: dict[Any, int], drop_nulls: bool) -> None:
        self.key = key
        self.keep = keep  # duplicated key -> position of its one row to score
        self.drop_nulls = drop_nulls
        self._values: pa.Array | None = None
        self._kept = 0
        self._rows = 0

    @classmethod
    def from_request(cls, data: dict[str, Any]) -> KeyFilter:
        """From KeyFilter.request() (JSON keeps keys, not tuples: pairs come back as lists)."""
        return cls(data["key"], {k: int(p) for k, p in data["keep"]}, bool(data["drop_nulls"]))

    def request(self) -> dict[str, Any]:
        """JSON for the scoring process."""
        return {"key": self.key, "keep": list(self.keep.items()), "drop_nulls": self.drop_nulls}

    @property
    def active(self) -> bool:
        return bool(self.keep) or self.drop_nulls

    def mask(self, batch: pa.RecordBatch, offset: int) -> pa.Array | None:
        """Boolean mask of the rows to keep; None when every row is kept."""
        if offset != self._rows:
            raise KeyOrderError(f"batch at row {offset} follows row {self._rows}")
        self._rows += batch.num_rows
        keys = batch.column(self.key)
        keep = None
        if keys.null_count and self.drop_nulls:
            keep = np.asarray(pc.is_valid(keys))
        if self.keep:
            if self._values is None:
                self._values = pa.array(list(self.keep), type=keys.type)
            hits = np.flatnonzero(np.asarray(pc.fill_null(pc.is_in(keys, self._values), False)))
            if hits.size:
                keep = np.ones(batch.num_rows, dtype=bool) if keep is None else keep.copy()
                for i in hits:
                    chosen = self.keep[keys[int(i)].as_py()] == offset + int(i)
                    keep[i] = chosen
                    self._kept += chosen
        return None if keep is None else pa.array(keep)

    def finish(self) -> None:
        """Every duplicated key must have had its one row kept: else the orders differed."""
        if self._kept != len(self.keep):
            raise KeyOrderError(
                f"the slice was read in another order than the key check saw: {self._kept} of "
                f"{len(self.keep)} duplicated {self.key} values matched their kept row"
            )


class KeyFilters:
    """One KeyFilter per key column; gives each model's key its view of every batch."""

    def __init__(self, filters: list[KeyFilter]) -> None:
        self.filters = {f.key: f for f in filters if f.active}
        self.offset = 0

    @classmethod
    def from_request(cls, data: list[dict[str, Any]] | None) -> KeyFilters:
        return cls([KeyFilter.from_request(d) for d in data or []])

    def views(self, batch: pa.RecordBatch) -> dict[str, pa.RecordBatch]:
        """Key column -> the batch's rows to score for models keyed on it (others: all rows)."""
        views = {}
        for key, f in self.filters.items():
            mask = f.mask(batch, self.offset)
            views[key] = batch if mask is None else batch.filter(mask)
        self.offset += batch.num_rows
        return views

    def finish(self) -> None:
        for f in self.filters.values():
            f.finish()


def plan_filters(
    checks: dict[str, KeyCheck], duplicate_keys: str, null_keys: str
) -> list[dict[str, Any]]:
    """The filters the scoring step applies, as JSON (only for keys that need one)."""
    filters = [
        KeyFilter(c.key, c.keep_positions(duplicate_keys), null_keys == "drop" and c.null_rows > 0)
        for c in checks.values()
    ]
    return [f.request() for f in filters if f.active]


@dataclass
class KeyScreen:
    """The key checks of a batch: models refused, each model's record, the filters to apply."""

    rejected: dict[int, str] = field(default_factory=dict)  # model run id -> reason
    records: dict[int, dict[str, Any]] = field(default_factory=dict)  # model run id -> record
    entities: dict[int, int] = field(default_factory=dict)  # model run id -> rows scored
    filters: list[dict[str, Any]] = field(default_factory=list)


def screen_keys(
    source: FeatureSource,
    slice_date: dt.date,
    keyed: list[tuple[int, str]],
    duplicate_keys: str,
    null_keys: str,
) -> KeyScreen:
    """Check each key column the models use (model run id, key) once; apply the policies."""
    checks = {
        key: check_keys(source, slice_date, key) for key in dict.fromkeys(k for _, k in keyed)
    }
    screen = KeyScreen()
    for run_id, key in keyed:
        check = checks[key]
        screen.records[run_id] = check.record(duplicate_keys, null_keys)
        reason = check.refusal(slice_date, duplicate_keys, null_keys)
        if reason is not None:
            screen.rejected[run_id] = reason
        else:
            screen.entities[run_id] = check.rows - check.null_rows - check.duplicate_rows
    used = {checks[k] for r, k in keyed if r not in screen.rejected}
    screen.filters = plan_filters(
        {c.key: c for c in used if not c.clean}, duplicate_keys, null_keys
    )
    return screen
