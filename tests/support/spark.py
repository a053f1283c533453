"""A local Spark session (local[2]) made the way the batch job makes one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mldropd.settings import EngineSettings


def start_session(warehouse: Path) -> Any:
    """A local[2] session with a private warehouse folder; the caller stops it."""
    from mldropd.engines.spark import get_session

    conf = {
        "spark.sql.shuffle.partitions": "2",
        "spark.ui.enabled": "false",
        "spark.sql.warehouse.dir": str(warehouse),
    }
    return get_session(EngineSettings(spark_master="local[2]", spark_conf=conf))
