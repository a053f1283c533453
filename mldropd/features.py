"""The feature store: find the slice for a date and read only the columns the models need."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mldropd.settings import FeatureSettings

if TYPE_CHECKING:  # the web process lists slice dates without loading DuckDB or Arrow
    import duckdb
    import pyarrow as pa

_PATH_KINDS = ("parquet", "spark_table")  # read as <path>/<date_column>=YYYY-MM-DD/*.parquet
_PARTITION_RE = re.compile(r"^(?P<key>[^=]+)=(?P<date>\d{4}-\d{2}-\d{2})$")


class FeatureSourceError(Exception):
    """The feature store cannot be read; the message says what to fix."""


@dataclass(frozen=True)
class Slice:
    """The feature partition used to score a run date."""

    run_date: dt.date
    date: dt.date

    @property
    def staleness_days(self) -> int:
        return (self.run_date - self.date).days


class FeatureSource:
    """Hive-partitioned Parquet (`<path>/<date_column>=YYYY-MM-DD/*.parquet`) or a DuckDB table.

    kind = spark_table: the Spark engine scores from the catalog table; everything else here
    (dates, columns, samples, DQ) reads the table's files at `path`, so no Spark runs outside
    the batch job's scoring step.
    """

    def __init__(self, settings: FeatureSettings) -> None:
        self.settings = settings

    def quote(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    # -- dates -------------------------------------------------------------------------------
    def available_dates(self) -> list[dt.date]:
        """Every date that has a slice, ascending."""
        s = self.settings
        if s.kind in _PATH_KINDS:
            root = Path(s.path)
            if not root.is_dir():
                raise FeatureSourceError(
                    f"feature folder {root} does not exist; set [features] path"
                )
            dates = []
            for child in root.iterdir():
                m = _PARTITION_RE.match(child.name)
                if (
                    child.is_dir()
                    and m
                    and m["key"] == s.date_column
                    and any(child.glob("*.parquet"))
                ):
                    dates.append(dt.date.fromisoformat(m["date"]))
            return sorted(dates)
        with self._connect() as con:
            rows = con.execute(
                f"SELECT DISTINCT CAST({self.quote(s.date_column)} AS DATE) FROM "
                f"{self.quote(s.table)} ORDER BY 1"
            ).fetchall()
        return [r[0] for r in rows]

    def slice_for(self, run_date: dt.date) -> Slice | None:
        """The slice for run_date: its own, else the latest older one within max_staleness_days."""
        oldest = run_date - dt.timedelta(days=self.settings.max_staleness_days)
        candidates = [d for d in self.available_dates() if oldest <= d <= run_date]
        return Slice(run_date, candidates[-1]) if candidates else None

    def latest(self) -> dt.date | None:
        dates = self.available_dates()
        return dates[-1] if dates else None

    def describe_missing(self, run_date: dt.date) -> str:
        """Plain words for a missing slice, naming the partition expected."""
        s = self.settings
        where = (
            f"{Path(s.path) / f'{s.date_column}={run_date.isoformat()}'}"
            if s.kind in _PATH_KINDS
            else f"{s.table} where {s.date_column} = {run_date.isoformat()}"
        )
        latest = self.latest()
        return (
            f"no feature slice for {run_date} (expected {where}); the latest slice is "
            f"{latest or 'none'} and [features] max_staleness_days is "
            f"{s.max_staleness_days}"
        )

    # -- reading -----------------------------------------------------------------------------
    def _connect(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        if self.settings.kind == "duckdb":
            if not Path(self.settings.path).is_file():
                raise FeatureSourceError(f"DuckDB file {self.settings.path} does not exist")
            return duckdb.connect(self.settings.path, read_only=True)
        return duckdb.connect()

    def _from_clause(self, day: dt.date) -> str:
        s = self.settings
        if s.kind in _PATH_KINDS:
            pattern = str(Path(s.path) / f"{s.date_column}={day.isoformat()}" / "*.parquet")
            return f"read_parquet({_sql_str(pattern)})"
        # A date object formatted by isoformat() is safe to inline.
        return (
            f"{self.quote(s.table)} WHERE CAST({self.quote(s.date_column)} AS DATE) = "
            f"DATE '{day.isoformat()}'"
        )

    def columns(self, day: dt.date) -> list[str]:
        """Column names of the slice of `day` (without the partition key)."""
        frm = self._from_clause(day)
        with self._connect() as con:
            names = [d[0] for d in con.execute(f"SELECT * FROM {frm} LIMIT 0").description]
        return [n for n in names if n != self.settings.date_column]

    def select_sql(self, day: dt.date, columns: list[str], limit: int | None = None) -> str:
        """SQL selecting only the given columns of the slice (DuckDB reads no other column)."""
        frm = self._from_clause(day)
        cols = ", ".join(self.quote(c) for c in columns)
        sql = f"SELECT {cols} FROM {frm}"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return sql

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection able to run select_sql (one per job: results are streamed)."""
        return self._connect()

    def read(self, day: dt.date, columns: list[str], limit: int | None = None) -> pa.Table:
        """The given columns of the slice, as one Arrow table (for samples and DQ)."""
        with self._connect() as con:
            return con.sql(self.select_sql(day, columns, limit)).to_arrow_table()

    def count(self, day: dt.date) -> int:
        frm = self._from_clause(day)
        with self._connect() as con:
            row = con.execute(f"SELECT count(*) FROM {frm}").fetchone()
        return int(row[0]) if row else 0


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
