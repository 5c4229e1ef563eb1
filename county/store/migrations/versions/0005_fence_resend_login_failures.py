"""fence_pushes.token / exp: the signed geofence.set kept, so a push is sent again to the boxes that did not
answer (POST /api/v1/fences/push/{id}/resend) as a broadcast is; login_failures: failed logins in the
database, so several server instances share one login rate limit.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fence_pushes") as batch_op:
        batch_op.add_column(sa.Column("token", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("exp", sa.BigInteger(), nullable=True))
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(300), nullable=False),
        sa.Column("ts", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index(op.f("ix_login_failures_key_ts"), "login_failures", ["key", "ts"])
    op.create_index(op.f("ix_login_failures_ts"), "login_failures", ["ts"])


def downgrade() -> None:
    op.drop_table("login_failures")
    with op.batch_alter_table("fence_pushes") as batch_op:
        batch_op.drop_column("exp")
        batch_op.drop_column("token")
