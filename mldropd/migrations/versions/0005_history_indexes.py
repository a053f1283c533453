"""composite indexes for a model's newest runs and DQ results; partial index of busy runs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 07:52:00.315832
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dq_result", schema=None) as batch_op:
        batch_op.create_index(
            "ix_dq_result_history", ["model_id", "date", "id", "psi"], unique=False
        )

    with op.batch_alter_table("model_run", schema=None) as batch_op:
        batch_op.create_index(
            "ix_model_run_busy",
            ["model_id"],
            unique=False,
            sqlite_where=sa.text("status IN ('pending', 'running')"),
        )
        batch_op.create_index("ix_model_run_model_date", ["model_id", "date", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("model_run", schema=None) as batch_op:
        batch_op.drop_index("ix_model_run_model_date")
        batch_op.drop_index(
            "ix_model_run_busy", sqlite_where=sa.text("status IN ('pending', 'running')")
        )

    with op.batch_alter_table("dq_result", schema=None) as batch_op:
        batch_op.drop_index("ix_dq_result_history")
