"""Optional per-request output options: frame rate, noise augmentation, container format.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("output_fps", sa.Integer))
        batch.add_column(sa.Column("noise_aug_strength", sa.Float))
        batch.add_column(sa.Column("output_format", sa.String(8)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("output_format")
        batch.drop_column("noise_aug_strength")
        batch.drop_column("output_fps")
