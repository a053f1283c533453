"""model_run progress: phase, rows done of total, rate, time left, a backfill's dates;
batch_run.phase

What a running model run's batch is doing, as the batch job counts it (mldropd.batch.progress).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 14:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"  # the lead chains 0006..0009 when merging
branch_labels = None
depends_on = None

_COLUMNS: list[sa.Column[Any]] = [
    sa.Column("phase", sa.String(), nullable=True),
    sa.Column("rows_done", sa.Integer(), nullable=True),
    sa.Column("rows_total", sa.Integer(), nullable=True),
    sa.Column("rows_per_s", sa.Float(), nullable=True),
    sa.Column("eta_s", sa.Float(), nullable=True),
    sa.Column("progress_at", sa.DateTime(), nullable=True),
    sa.Column("dates_done", sa.Integer(), nullable=True),
    sa.Column("dates_total", sa.Integer(), nullable=True),
]


def upgrade() -> None:
    with op.batch_alter_table("model_run", schema=None) as batch_op:
        for column in _COLUMNS:
            batch_op.add_column(column)
    with op.batch_alter_table("batch_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("phase", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batch_run", schema=None) as batch_op:
        batch_op.drop_column("phase")
    with op.batch_alter_table("model_run", schema=None) as batch_op:
        for column in reversed(_COLUMNS):
            batch_op.drop_column(column.name)
