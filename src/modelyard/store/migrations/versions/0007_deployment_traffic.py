"""deployment traffic: what each server of a cluster counted of a deployment's traffic

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployment_traffic",
        sa.Column("deployment_id", sa.String(36), sa.ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("server_id", sa.String(160), primary_key=True),
        sa.Column("figures", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_deployment_traffic_updated_at", "deployment_traffic", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_deployment_traffic_updated_at", table_name="deployment_traffic")
    op.drop_table("deployment_traffic")
