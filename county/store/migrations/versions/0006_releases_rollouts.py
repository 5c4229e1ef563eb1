"""release_files, releases, rollouts: signed agent updates uploaded to the county and rolled out in waves
(issue 17, county/rollout.py, docs/updates.md).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "release_files",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_release_files")),
    )
    op.create_table(
        "releases",
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("manifest", sa.Text(), nullable=False),
        sa.Column("manifest_sha256", sa.String(64), nullable=False),
        sa.Column("arch", sa.String(32), nullable=False),
        sa.Column("python", sa.String(16), nullable=False),
        sa.Column("min_from", sa.String(32), nullable=False),
        sa.Column("wheels", sa.JSON(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("uploaded_by", sa.String(64), nullable=False),
        sa.Column("uploaded_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_releases")),
    )
    op.create_table(
        "rollouts",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("version", sa.String(32), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("boxes", sa.JSON(), nullable=False),
        sa.Column("pilot", sa.Integer(), nullable=False),
        sa.Column("wave_size", sa.Integer(), nullable=False),
        sa.Column("max_failure_pct", sa.Integer(), nullable=False),
        sa.Column("wave_timeout_s", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("waves", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("rev", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_by", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
    )


def downgrade() -> None:
    op.drop_table("rollouts")
    op.drop_table("releases")
    op.drop_table("release_files")
