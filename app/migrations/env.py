"""Alembic environment: the connection comes from app.jobs.migrate, never from a .ini URL."""
from alembic import context

from app.jobs.tables import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
