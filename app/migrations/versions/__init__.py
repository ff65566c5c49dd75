"""One Alembic revision per schema change, numbered in order (0001_jobs, 0002_owner_index,
...), each with its upgrade and downgrade. A change to the schema is a new revision here,
and app/jobs/tables.py follows it (tests/unit/test_store.py checks that the two agree)."""
