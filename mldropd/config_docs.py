"""docs/configuration.md, generated from the settings declarations.

    python -m mldropd.config_docs > docs/configuration.md      (or: make docs)

tests/test_docs.py fails when the page is stale, so a new setting is documented by declaring it
(with its help text) in mldropd/settings.py and running `make docs`.
"""

from __future__ import annotations

import json
import sys

from mldropd.settings import ENV_PREFIX, describe, describe_sections

INTRO = """\
# Configuration

<!-- Generated from mldropd/settings.py by `make docs` (python -m mldropd.config_docs); do not
edit by hand: tests/test_docs.py fails when this page and the declarations differ. -->

One TOML file, `config.toml` (`--config FILE`, else `$MLDROPD_CONFIG`, else `./config.toml`);
`config.example.toml` lists every key with its default and a comment, and a test keeps it
complete. Precedence: defaults < the file < `MLDROPD_<SECTION>__<KEY>` environment variables
(e.g. `MLDROPD_SERVER__PORT=8081`) < the `serve --host/--port` flags. A list takes
comma-separated text in the environment, a table a JSON object. Relative paths are relative to
the config file. Secrets are never values: point a `*_file` key at a file instead. A wrong or
unknown key stops start-up with a message naming it:

```
Error: configuration error: unknown key 'batch_row' in [engine] (/srv/mldropd/config.toml); \
known keys: default, spark_master, ...
```

`mldropd check-config` prints every effective value with where it came from
([operations](operations.md#configuration))."""

# Where each section's behaviour is explained in full.
SEE_ALSO = {
    "server": "[security](security.md), [operations](operations.md#logs)",
    "storage": "[storage and email](storage-email.md#where-model-files-live)",
    "features": "[Spark](spark.md#feature-source-kind--spark_table) for `spark_table`",
    "scores": "[the scores table](scores-and-dq.md#the-scores-table)",
    "scheduler": "[reliability](reliability.md)",
    "sandbox": "[security](security.md#the-trust-model-in-plain-words)",
    "engine": (
        "[Spark](spark.md#enabling-it), [security](security.md#the-trust-model-in-plain-words)"
    ),
    "dq": "[data quality](scores-and-dq.md#data-quality)",
    "email": "[report email](storage-email.md#report-email-smtp-relay-and-the-outbox)",
    "limits": "[quotas and versions](storage-email.md#quotas-of-active-models)",
}

# What a table of keys cannot say.
NOTES = {
    "features": (
        '`kind = "parquet"`: a hive-partitioned dataset'
        " `<path>/<date_column>=YYYY-MM-DD/*.parquet`."
        ' `kind = "duckdb"`: a table in a DuckDB file with a date column. `kind = "spark_table"`:'
        " a Spark catalog table (Spark engine only). The slice for date D is the partition D, else"
        " the latest one at most `max_staleness_days` older; otherwise the batch waits for it"
        " ([the sensor](reliability.md))."
    ),
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    """The whole page, from settings.describe() and describe_sections()."""
    sections = describe_sections()
    lines = [INTRO]
    current = None
    for section, key, default, help_text in describe():
        if section != current:
            current = section
            about = sections.get(section, "")
            if section in SEE_ALSO:
                about += f" See {SEE_ALSO[section]}."
            lines += ["", f"## [{section}]", ""] + ([about.strip(), ""] if about else [])
            if section in NOTES:
                lines += [NOTES[section], ""]
            lines += ["| key | default | environment variable | meaning |", "|---|---|---|---|"]
        variable = f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
        value = _cell(json.dumps(default))
        lines.append(f"| `{key}` | `{value}` | `{variable}` | {_cell(help_text)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
