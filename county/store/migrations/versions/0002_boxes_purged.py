"""boxes.purged: how many envelopes of each box retention deleted, so their seq gaps are not "missing".

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("boxes") as batch_op:
        batch_op.add_column(sa.Column("purged", sa.BigInteger(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("boxes") as batch_op:
        batch_op.drop_column("purged")
