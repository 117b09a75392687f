"""Storage: the metadata database (SQLAlchemy + Alembic) and the artifact store."""
