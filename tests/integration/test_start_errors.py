"""A database `svd-server serve` cannot use stops it at start with one line and exit 2, as
`svd-server worker` does: before the port is bound, without a traceback."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from app.child_process import free_port
from tests.helpers import ROOT, fresh_postgres_database

SCHEMA_NOT_CURRENT = ("cannot start: the database schema is not current: "
                      "run `svd-server db upgrade`")


@pytest.fixture
def unmigrated_postgres_url():
    """A fresh PostgreSQL database nobody migrated (the session's `postgres_url` is migrated
    by `pg`), dropped at the end."""
    with fresh_postgres_database("svd_test_unmigrated") as url:
        yield url


def test_serve_on_a_schema_not_current_says_one_line_and_exits_2(tmp_path,
                                                                 unmigrated_postgres_url):
    """As `svd-server worker` says it (that one imports the model's code first: ~20 s)."""
    port = free_port()
    env = {**os.environ, "SVD_DATABASE_URL": unmigrated_postgres_url, "SVD_MODEL": "tiny",
           "SVD_WORKERS": "0", "SVD_HOST": "127.0.0.1", "SVD_PORT": str(port),
           "SVD_DATA_DIR": str(tmp_path / "data"), "PYTHONUNBUFFERED": "1"}
    env.pop("SVD_API_KEYS", None)
    run = subprocess.run([sys.executable, "-m", "app.cli", "serve"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "Traceback" not in output, output
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].endswith(SCHEMA_NOT_CURRENT), output
    assert "listening on" not in output and "Started server process" not in output, output
