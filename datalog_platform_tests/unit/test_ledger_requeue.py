"""`datalog ledger requeue` and `registration.requeue`: FAILED or QUARANTINED keys back to PENDING.

Covers the status, region and date filters (attempts reset, error and batch cleared, other keys
untouched), the refusal of SUCCESS (it would duplicate rows), UNROUTED and other statuses, and the
command in a child process: the count it prints, exit code 2 with a clear message for SUCCESS, and
a malformed --since.

Real parts only: a SQLite ledger in a temp file and the running PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (a fresh schema per test, skipped with a visible reason when unset), and
the `datalog` command run by a child Python process against a SQLite ledger under DATALOG_HOME.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import FAILED, PENDING, QUARANTINED, SUCCESS, UNROUTED, keys
from datalog_platform.core.store import ObjectInfo
from datalog_platform_tests.support import cli_helpers

TZ = 8
DEVICES = [("dev001", "BRCB"), ("dev002", "KPCS")]
# key -> (status it is put in, attempts); local dates: 2026110100 -> 2026-11-01, 2026110300 -> 2026-11-03
LAYOUT = {
    "dev001/2026110100/a.json": (FAILED, 3),
    "dev001/2026110300/b.json": (FAILED, 3),
    "dev002/2026110300/c.json": (FAILED, 3),
    "dev001/2026110300/d.json": (QUARANTINED, 0),
    "dev002/2026110100/e.json": (QUARANTINED, 0),
    "dev001/2026110300/f.json": (SUCCESS, 0),
    "dev001/2026110300/g.json": (PENDING, 1),
}


@pytest.fixture
def layout(engine: sa.Engine) -> None:
    """conftest's `engine` (SQLite, then PostgreSQL) holding LAYOUT, plus one UNROUTED key."""
    fill(engine)


def fill(engine: sa.Engine) -> None:
    registration.upsert_devices(engine, DEVICES)
    objects = [ObjectInfo(key, 10, "etag") for key in [*LAYOUT, "unknown/2026110300/u.json"]]
    registration.register_keys(engine, objects, TZ)
    with engine.begin() as conn:
        for key, (status, attempts) in LAYOUT.items():
            conn.execute(
                sa.update(keys)
                .where(keys.c.key == key)
                .values(
                    status=status,
                    attempts=attempts,
                    error=None if status in (PENDING, SUCCESS) else f"{status.lower()}: boom",
                    batch_id="b" * 36 if status != PENDING else None,
                    rows=5 if status == SUCCESS else 0,
                )
            )


def table(engine: sa.Engine) -> dict[str, tuple[str, int, str | None, str | None]]:
    with engine.connect() as conn:
        return {
            r.key: (r.status, r.attempts, r.error, r.batch_id)
            for r in conn.execute(sa.select(keys.c.key, keys.c.status, keys.c.attempts, keys.c.error, keys.c.batch_id))
        }


@pytest.mark.usefixtures("layout")
def test_requeue_filters_by_status_region_and_date(engine: sa.Engine) -> None:
    before = table(engine)
    assert registration.requeue(engine, FAILED, region="BRCB", since="2026-11-02") == 1
    after = table(engine)
    assert after["dev001/2026110300/b.json"] == (PENDING, 0, None, None)
    assert {k: v for k, v in after.items() if k != "dev001/2026110300/b.json"} == {
        k: v for k, v in before.items() if k != "dev001/2026110300/b.json"
    }

    assert registration.requeue(engine, FAILED) == 2
    assert registration.requeue(engine, FAILED) == 0
    assert registration.requeue(engine, QUARANTINED, since="2026-11-01", region="KPCS") == 1
    assert table(engine)["dev002/2026110100/e.json"] == (PENDING, 0, None, None)
    assert table(engine)["dev001/2026110300/d.json"][0] == QUARANTINED

    final = table(engine)
    assert final["dev001/2026110300/f.json"] == before["dev001/2026110300/f.json"]  # SUCCESS untouched
    assert final["dev001/2026110300/g.json"] == (PENDING, 1, None, None)  # already PENDING: untouched
    # The requeued keys are ingestible again: the partitions' backlog grew.
    assert {(p.part_date, p.dstrct_code, p.keys) for p in registration.pending_partitions(engine)} == {
        ("2026-11-01", "BRCB", 1),
        ("2026-11-03", "BRCB", 2),
        ("2026-11-03", "KPCS", 1),
        ("2026-11-01", "KPCS", 1),
    }


@pytest.mark.parametrize(
    ("status", "message"),
    [(SUCCESS, "would duplicate"), (UNROUTED, "not 'UNROUTED'"), (PENDING, "not 'PENDING'")],
)
@pytest.mark.usefixtures("layout")
def test_requeue_refuses_other_statuses(engine: sa.Engine, status: str, message: str) -> None:
    before = table(engine)
    with pytest.raises(ValueError, match=message):
        registration.requeue(engine, status)
    assert table(engine) == before


def test_requeue_command(tmp_path: Path) -> None:
    """In a child process: the count printed; SUCCESS refused with exit 2 and nothing changed."""
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    engine = ledger_engine(f"sqlite:///{home / 'ledger.db'}")
    fill(engine)
    before = table(engine)

    refused = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "SUCCESS")
    assert refused.returncode == 2, cli_helpers.describe(refused)
    assert "SUCCESS keys cannot be requeued" in refused.stderr and "duplicate" in refused.stderr
    assert table(engine) == before

    bad_date = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "FAILED", "--since", "03/11/2026")
    assert bad_date.returncode == 2, cli_helpers.describe(bad_date)
    assert "not a date (YYYY-MM-DD)" in bad_date.stderr
    assert table(engine) == before

    done = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "FAILED", "--region", "BRCB")
    assert done.returncode == 0, cli_helpers.describe(done)
    assert "requeued 2 FAILED key(s) in region BRCB" in done.stdout
    assert {k: v[0] for k, v in table(engine).items() if k.startswith("dev001/") and before[k][0] == FAILED} == {
        "dev001/2026110100/a.json": PENDING,
        "dev001/2026110300/b.json": PENDING,
    }
    assert table(engine)["dev002/2026110300/c.json"][0] == FAILED
    engine.dispose()
