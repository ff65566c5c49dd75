"""Webhook target and delivery state per job.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("webhook_url", sa.Text))
        batch.add_column(sa.Column("webhook_status", sa.String(16)))
        batch.add_column(sa.Column("webhook_attempts", sa.Integer))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("webhook_attempts")
        batch.drop_column("webhook_status")
        batch.drop_column("webhook_url")
