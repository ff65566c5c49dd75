"""The database schema's history as Alembic migrations: `env.py` runs them on the connection
that app/jobs/migrate.py hands over (never a URL from an .ini file), `versions/` holds one
revision per schema change, and app/jobs/tables.py mirrors the result for queries. They run
through `svd-server db upgrade`, or by themselves when `serve` opens a SQLite database."""
