"""tenancy: tenant quotas, shared quota counters, hourly usage, audit log

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("requests_per_day", sa.BigInteger, nullable=True),
        sa.Column("tokens_per_day", sa.BigInteger, nullable=True),
        sa.Column("stored_bytes", sa.BigInteger, nullable=True),
        sa.Column("concurrent_jobs", sa.Integer, nullable=True),
        sa.Column("training_hours_per_month", sa.Float, nullable=True),
    )
    op.create_table(
        "quota_counters",
        sa.Column("tenant_id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("window", sa.String(16), primary_key=True),
        sa.Column("value", sa.Float, nullable=False),
    )
    op.create_table(
        "usage_hourly",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.String(36), nullable=False, index=True),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("hour", _TS, nullable=False, index=True),
        sa.Column("requests", sa.BigInteger, nullable=False),
        sa.Column("errors", sa.BigInteger, nullable=False),
        sa.Column("input_tokens", sa.BigInteger, nullable=False),
        sa.Column("output_tokens", sa.BigInteger, nullable=False),
        sa.Column("compute_s", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant_id", "model", "hour", name="uq_usage_tenant_model_hour"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", _TS, nullable=False, index=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("tenant_id", sa.String(36), nullable=True, index=True),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("object", sa.String(512), nullable=False),
        sa.Column("result", sa.Integer, nullable=False),
        sa.Column("client", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("usage_hourly")
    op.drop_table("quota_counters")
    op.drop_table("tenant_quotas")
