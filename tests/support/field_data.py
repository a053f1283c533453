"""Feature stores as real teams write them, with the key problems they really have.

Pandas/polars/Spark/DuckDB writers, string categoricals, nullable integers, string and int64
keys; some keys duplicated (the copies carry other feature values, so "first" and "last" give
different scores) and some null.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl

ROWS = 3000
DUPLICATED = 50  # keys with extra rows
NULLS = 10  # rows without a key


def frame(day: dt.date, *, int_keys: bool = False, seed: int = 3) -> pd.DataFrame:
    """One slice: ROWS + duplicate rows + NULLS null-key rows, in file order."""
    rng = np.random.default_rng(seed + day.toordinal())
    keys: list[Any] = [i * 7 + 1 if int_keys else f"C{i:05d}" for i in range(ROWS)]
    # Duplicates: copies of 50 keys, some early and some late, with other feature values.
    copies = [keys[i] for i in rng.choice(ROWS, DUPLICATED, replace=False)]
    copies += copies[:7]  # seven keys three times
    all_keys = keys + copies + [None] * NULLS
    order = rng.permutation(len(all_keys))
    n = len(all_keys)
    data = pd.DataFrame(
        {
            "entity_id": pd.array(
                [all_keys[i] for i in order], dtype="Int64" if int_keys else "string"
            ),
            "f00": rng.random(n),  # the test models score f00: a row's score names the row
            "f01": rng.normal(size=n),
            "segment": pd.Categorical(rng.choice(["retail", "smb", "corporate"], n)),
            "tenure": pd.array(
                [None if x < 0.05 else int(x * 100) for x in rng.random(n)], dtype="Int64"
            ),
        }
    )
    return data


def write_pandas_hive(root: Path, days: list[dt.date], **kw: Any) -> None:
    """pandas, two files per date (the duplicates span files)."""
    for day in days:
        data = frame(day, **kw)
        folder = root / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        half = len(data) // 2
        data.iloc[:half].to_parquet(folder / "part-00000.parquet", index=False)
        data.iloc[half:].to_parquet(folder / "part-00001.parquet", index=False)


def write_polars_hive(root: Path, days: list[dt.date], **kw: Any) -> None:
    """polars, with the partition column inside the files too (as polars writes it by hand)."""
    for day in days:
        data = pl.from_pandas(frame(day, **kw)).with_columns(pl.lit(day.isoformat()).alias("dt"))
        folder = root / f"dt={day}"
        folder.mkdir(parents=True, exist_ok=True)
        data.write_parquet(folder / "0.parquet", row_group_size=700)


def write_duckdb(path: Path, days: list[dt.date], date_type: str, **kw: Any) -> None:
    """A DuckDB table `features` whose date column is DATE, VARCHAR or TIMESTAMP."""
    import duckdb

    parts = []
    for day in days:
        data = frame(day, **kw)
        data["dt"] = {
            "DATE": day,
            "VARCHAR": day.isoformat(),
            "TIMESTAMP": dt.datetime.combine(day, dt.time(0, 0)),
        }[date_type]
        data["segment"] = data["segment"].astype(str)
        parts.append(data)
    whole = pd.concat(parts, ignore_index=True)  # noqa: F841  (read by DuckDB below)
    with duckdb.connect(str(path)) as con:
        con.execute(
            f"CREATE TABLE features AS SELECT * REPLACE (CAST(dt AS {date_type}) AS dt) FROM whole"
        )


def expected_scores(data: pd.DataFrame, policy: str) -> dict[Any, float]:
    """Key -> the f00 of the row a policy keeps (file order)."""
    kept = data.dropna(subset=["entity_id"]).drop_duplicates("entity_id", keep=policy)
    return dict(zip(kept["entity_id"].tolist(), kept["f00"].tolist(), strict=True))
