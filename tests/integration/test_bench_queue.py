"""scripts/bench.py queue --quick runs end to end on PostgreSQL: worker processes, a report."""
from __future__ import annotations

import pytest

from tests.helpers import PG_ADMIN_URL, run_bench, skip_or_fail

pytestmark = pytest.mark.slow


def _databases() -> set[str]:
    """The databases at PG_ADMIN_URL; skip (fail under CI=true) without PostgreSQL."""
    from sqlalchemy import create_engine, text

    from app.jobs.tables import sqlalchemy_url
    engine = create_engine(sqlalchemy_url(PG_ADMIN_URL), connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as c:
            return set(c.execute(text("SELECT datname FROM pg_database")).scalars())
    except Exception as exc:  # noqa: BLE001
        skip_or_fail(f"no PostgreSQL at {PG_ADMIN_URL}: {exc.__class__.__name__}")
    finally:
        engine.dispose()


@pytest.mark.timeout(330)
def test_bench_queue_quick_writes_its_numbers(tmp_path):
    _databases()
    _, res = run_bench(tmp_path, "queue", "--database-url", PG_ADMIN_URL, timeout=300)
    assert res["config"]["workers"] == 4 and res["config"]["jobs"] == 200
    assert res["duplicates"] == 0, res
    assert res["claimed_twice"] == 0 and res["attempts_not_1"] == 0, res
    assert res["lost"] == 0, res
    assert res["finish_false"] == 0, res
    assert res["throughput"]["jobs_per_s"] > 0
    assert res["throughput"]["succeeded_rows"] == 200
    for phase in ("latency_notify", "latency_poll"):
        lat = res[phase]
        assert lat["finished_unique"] == lat["jobs"] == 50, lat
        assert lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]
    assert set(res["pass"]) == {"jobs_per_s", "duplicates", "lost", "finish_false", "errors",
                                "p99_notify"}
    name = res["config"]["database"]
    assert name.startswith("svd_bench_") and name not in _databases()   # dropped
