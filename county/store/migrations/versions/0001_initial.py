"""The initial county schema: every table of county/store/tables.py as of issue 12.

Frozen: written out here (not imported from tables.py), so later changes to tables.py need their own
migration, and tests/test_county_store.py fails until they have one.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('alarms',
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('wearer', sa.String(length=64), nullable=True),
    sa.Column('device', sa.String(length=64), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('pos', sa.JSON(), nullable=True),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='new', nullable=False),
    sa.Column('acked_by', sa.String(length=64), nullable=True),
    sa.Column('acked_at', sa.BigInteger(), nullable=True),
    sa.Column('assigned_to', sa.String(length=64), nullable=True),
    sa.Column('assigned_by', sa.String(length=64), nullable=True),
    sa.Column('assigned_at', sa.BigInteger(), nullable=True),
    sa.Column('resolved_by', sa.String(length=64), nullable=True),
    sa.Column('resolved_at', sa.BigInteger(), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('escalated_at', sa.BigInteger(), nullable=True),
    sa.Column('escalations', sa.Integer(), server_default='0', nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarms'))
    )
    op.create_index(op.f('ix_alarms_assigned_to_state'), 'alarms', ['assigned_to', 'state'])
    op.create_index(op.f('ix_alarms_box_ts'), 'alarms', ['box', 'ts'])
    op.create_index(op.f('ix_alarms_state_ts'), 'alarms', ['state', 'ts'])
    op.create_table('audit',
    sa.Column('seq', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=64), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('target', sa.Text(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('prev_hash', sa.String(length=64), nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('seq', name=op.f('pk_audit'))
    )
    op.create_table('boxes',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), server_default='unknown', nullable=False),
    sa.Column('state_ts', sa.BigInteger(), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('groups', sa.JSON(), nullable=True),
    sa.Column('first_seen', sa.BigInteger(), nullable=False),
    sa.Column('last_seen', sa.BigInteger(), nullable=True),
    sa.Column('last_seq', sa.BigInteger(), nullable=True),
    sa.Column('backlog', sa.Integer(), nullable=True),
    sa.Column('heartbeat', sa.JSON(), nullable=True),
    sa.Column('heartbeat_ts', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_boxes'))
    )
    op.create_table('broadcasts',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=24), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('class', sa.String(length=16), nullable=False),
    sa.Column('level', sa.Integer(), nullable=True),
    sa.Column('title', sa.Text(), nullable=True),
    sa.Column('text', sa.Text(), nullable=True),
    sa.Column('audio_mime', sa.String(length=64), nullable=True),
    sa.Column('audio_sha256', sa.String(length=64), nullable=True),
    sa.Column('audio', sa.LargeBinary(), nullable=True),
    sa.Column('volume', sa.Integer(), nullable=True),
    sa.Column('start', sa.BigInteger(), nullable=True),
    sa.Column('end', sa.BigInteger(), nullable=True),
    sa.Column('exp', sa.BigInteger(), nullable=True),
    sa.Column('targets', sa.JSON(), nullable=False),
    sa.Column('boxes', sa.JSON(), nullable=False),
    sa.Column('token', sa.Text(), nullable=True),
    sa.Column('approved_by', sa.String(length=64), nullable=True),
    sa.Column('approved_at', sa.BigInteger(), nullable=True),
    sa.Column('cancelled_by', sa.String(length=64), nullable=True),
    sa.Column('cancelled_at', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_broadcasts'))
    )
    op.create_index(op.f('ix_broadcasts_created_at'), 'broadcasts', ['created_at'])
    op.create_table('camera_periods',
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('camera', sa.String(length=64), nullable=False),
    sa.Column('period_from', sa.BigInteger(), nullable=False),
    sa.Column('period_to', sa.BigInteger(), nullable=False),
    sa.Column('seconds', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('box', 'camera', 'period_from', name=op.f('pk_camera_periods'))
    )
    op.create_index(op.f('ix_camera_periods_period_from'), 'camera_periods', ['period_from'])
    op.create_table('camera_states',
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('camera', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('since', sa.BigInteger(), nullable=True),
    sa.Column('updated', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('box', 'camera', name=op.f('pk_camera_states'))
    )
    op.create_table('fence_pushes',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('fences', sa.JSON(), nullable=False),
    sa.Column('assign', sa.JSON(), nullable=False),
    sa.Column('targets', sa.JSON(), nullable=False),
    sa.Column('boxes', sa.JSON(), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fence_pushes'))
    )
    op.create_table('fences',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('feature', sa.JSON(), nullable=False),
    sa.Column('crs', sa.String(length=8), server_default='WGS84', nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fences'))
    )
    op.create_table('messages',
    sa.Column('id', sa.String(length=160), nullable=False),
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('class', sa.String(length=16), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('raw', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_messages'))
    )
    op.create_index(op.f('ix_messages_box_seq'), 'messages', ['box', 'seq'])
    op.create_index(op.f('ix_messages_class_received'), 'messages', ['class', 'received'])
    op.create_table('positions',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('wearer', sa.String(length=64), nullable=False),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lon', sa.Float(), nullable=False),
    sa.Column('acc_m', sa.Float(), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_positions'))
    )
    op.create_index(op.f('ix_positions_ts'), 'positions', ['ts'])
    op.create_index(op.f('ix_positions_wearer_ts'), 'positions', ['wearer', 'ts'])
    op.create_table('positions_latest',
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('wearer', sa.String(length=64), nullable=False),
    sa.Column('device', sa.String(length=64), nullable=True),
    sa.Column('lat', sa.Float(), nullable=False),
    sa.Column('lon', sa.Float(), nullable=False),
    sa.Column('acc_m', sa.Float(), nullable=True),
    sa.Column('fix_ts', sa.BigInteger(), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('box', 'wearer', name=op.f('pk_positions_latest'))
    )
    op.create_table('quarantine',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('received', sa.BigInteger(), nullable=False),
    sa.Column('topic', sa.Text(), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_quarantine'))
    )
    op.create_index(op.f('ix_quarantine_received'), 'quarantine', ['received'])
    op.create_table('receipts',
    sa.Column('cmd', sa.String(length=64), nullable=False),
    sa.Column('box', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('envelope', sa.String(length=160), nullable=False),
    sa.PrimaryKeyConstraint('cmd', 'box', name=op.f('pk_receipts'))
    )
    op.create_table('sessions',
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('user', sa.String(length=64), nullable=False),
    sa.Column('csrf', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_sessions'))
    )
    op.create_index(op.f('ix_sessions_expires_at'), 'sessions', ['expires_at'])
    op.create_table('users',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=16), nullable=False),
    sa.Column('scope', sa.String(length=64), nullable=True),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('display_name', sa.Text(), nullable=True),
    sa.Column('phone', sa.String(length=32), nullable=True),
    sa.Column('disabled', sa.Boolean(), server_default='0', nullable=False),
    sa.Column('created_at', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_users'))
    )


def downgrade() -> None:
    op.drop_table('users')
    op.drop_index(op.f('ix_sessions_expires_at'), table_name='sessions')
    op.drop_table('sessions')
    op.drop_table('receipts')
    op.drop_index(op.f('ix_quarantine_received'), table_name='quarantine')
    op.drop_table('quarantine')
    op.drop_table('positions_latest')
    op.drop_index(op.f('ix_positions_wearer_ts'), table_name='positions')
    op.drop_index(op.f('ix_positions_ts'), table_name='positions')
    op.drop_table('positions')
    op.drop_index(op.f('ix_messages_class_received'), table_name='messages')
    op.drop_index(op.f('ix_messages_box_seq'), table_name='messages')
    op.drop_table('messages')
    op.drop_table('fences')
    op.drop_table('fence_pushes')
    op.drop_table('camera_states')
    op.drop_index(op.f('ix_camera_periods_period_from'), table_name='camera_periods')
    op.drop_table('camera_periods')
    op.drop_index(op.f('ix_broadcasts_created_at'), table_name='broadcasts')
    op.drop_table('broadcasts')
    op.drop_table('boxes')
    op.drop_table('audit')
    op.drop_index(op.f('ix_alarms_state_ts'), table_name='alarms')
    op.drop_index(op.f('ix_alarms_box_ts'), table_name='alarms')
    op.drop_index(op.f('ix_alarms_assigned_to_state'), table_name='alarms')
    op.drop_table('alarms')
