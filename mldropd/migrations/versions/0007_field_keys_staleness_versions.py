"""model_run.key_check, model_run.stale_slice, model_version.warnings

What a run did about null/duplicated keys and old slices; library-version warnings of a version.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 12:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_run", schema=None) as batch_op:
        batch_op.add_column(sa.Column("key_check", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("stale_slice", sa.String(), nullable=True))
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.add_column(sa.Column("warnings", sa.JSON(), server_default="[]", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("model_version", schema=None) as batch_op:
        batch_op.drop_column("warnings")
    with op.batch_alter_table("model_run", schema=None) as batch_op:
        batch_op.drop_column("stale_slice")
        batch_op.drop_column("key_check")
