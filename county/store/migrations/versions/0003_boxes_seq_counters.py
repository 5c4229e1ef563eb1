"""boxes.stored and boxes.min_seq: per-box counters kept at ingest, so the seq gaps of the boxes list
read the boxes table instead of grouping every stored message on each request.

The backfill counts what is stored now: `stored` = the box's messages + what retention already deleted
(`purged`, counted at deletion), `min_seq` = the lowest seq still stored (the lowest ever is gone with a
purged row; the gap then is under-stated, as before this revision, never over-stated).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# lightweight table stubs (never import tables.py in a migration)
_boxes = sa.table("boxes", sa.column("id", sa.String), sa.column("purged", sa.BigInteger),
                  sa.column("stored", sa.BigInteger), sa.column("min_seq", sa.BigInteger))
_messages = sa.table("messages", sa.column("box", sa.String), sa.column("seq", sa.BigInteger))


def upgrade() -> None:
    with op.batch_alter_table("boxes") as batch_op:
        batch_op.add_column(sa.Column("stored", sa.BigInteger(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("min_seq", sa.BigInteger(), nullable=True))
    of_box = _messages.c.box == _boxes.c.id
    op.execute(_boxes.update().values(
        stored=sa.select(sa.func.count()).select_from(_messages).where(of_box).scalar_subquery()
        + _boxes.c.purged))
    op.execute(_boxes.update().values(
        min_seq=sa.select(sa.func.min(_messages.c.seq)).where(of_box).scalar_subquery()))


def downgrade() -> None:
    with op.batch_alter_table("boxes") as batch_op:
        batch_op.drop_column("min_seq")
        batch_op.drop_column("stored")
