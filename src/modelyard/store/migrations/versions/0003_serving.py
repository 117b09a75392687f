"""serving: deployments (weighted routes, shadow, serving settings, rollback policy)

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", sa.String(36), sa.ForeignKey("tenants.id", ondelete="RESTRICT"), nullable=False, index=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("routes", sa.JSON, nullable=False),
        sa.Column("shadow", sa.JSON, nullable=True),
        sa.Column("serving", sa.JSON, nullable=False),
        sa.Column("rollback", sa.JSON, nullable=True),
        sa.Column("events", sa.JSON, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=False),
        sa.UniqueConstraint("tenant_id", "name", name="uq_deployments_tenant_name"),
    )


def downgrade() -> None:
    op.drop_table("deployments")
