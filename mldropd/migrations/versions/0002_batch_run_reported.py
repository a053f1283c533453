"""batch_run.reported: owners' reports enqueued

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 05:17:50.188496
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("batch_run", schema=None) as batch_op:
        # server_default: rows of batches run before this revision count as reported.
        batch_op.add_column(
            sa.Column("reported", sa.Boolean(), nullable=False, server_default=sa.true())
        )


def downgrade() -> None:
    with op.batch_alter_table("batch_run", schema=None) as batch_op:
        batch_op.drop_column("reported")
