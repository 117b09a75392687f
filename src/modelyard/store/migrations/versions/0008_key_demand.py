"""key demand: what each server of a cluster was asked of each rate-limited API key

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_demand",
        sa.Column("server_id", sa.String(160), primary_key=True),
        sa.Column("demand", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_key_demand_updated_at", "key_demand", ["updated_at"])


def downgrade() -> None:
    op.drop_index("ix_key_demand_updated_at", table_name="key_demand")
    op.drop_table("key_demand")
