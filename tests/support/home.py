"""The shape of the test home: its feature data and its config.toml."""

from __future__ import annotations

import datetime as dt

N_ENTITIES = 3000
N_FEATURES = 12
DAYS = 3

CONFIG = """\
[server]
host = "127.0.0.1"
port = {port}
[features]
path = "features"
[engine]
batch_rows = 1000
validate_timeout_s = 90
model_memory_mb = 4096
[dq]
av_max_rows = 2000
[scheduler]
retry_delay = 2
catchup_days = 2
"""


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()
