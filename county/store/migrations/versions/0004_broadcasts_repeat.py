"""broadcasts.repeat: the `repeat` rule of a recurring broadcast (docs/broadcast.md), kept so a broadcast held
for review is signed with it when approved, and shown on the broadcast page. NULL = a one-shot broadcast.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("broadcasts") as batch_op:
        batch_op.add_column(sa.Column("repeat", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("broadcasts") as batch_op:
        batch_op.drop_column("repeat")
