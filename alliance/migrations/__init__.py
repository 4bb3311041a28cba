"""Alembic migrations of the catalog; `alliance catalog upgrade` applies them."""
