"""`registration.requeue`: FAILED or QUARANTINED keys back to PENDING.

Covers the status, region and date filters (attempts reset, error and batch cleared, other keys
untouched, the partitions' backlog grown), and the refusal of SUCCESS (nothing to ingest again),
UNROUTED and other statuses. The ledger holds `ledger_helpers.REQUEUE_LAYOUT`: keys in every
status. The `datalog ledger requeue` command is in e2e/test_cli_requeue.py.

Real parts only: a SQLite ledger in a temp file and the running PostgreSQL named by
DATALOG_TEST_POSTGRES_URL (conftest's `engine`: a fresh schema per test, skipped with a visible
reason when unset).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.schema import FAILED, PENDING, QUARANTINED, SUCCESS, UNROUTED
from datalog_platform_tests.support.ledger_helpers import fill_requeue_layout, requeue_states


@pytest.fixture
def layout(engine: sa.Engine) -> None:
    """conftest's `engine` (SQLite, then PostgreSQL) holding REQUEUE_LAYOUT, plus one UNROUTED key."""
    fill_requeue_layout(engine)


@pytest.mark.usefixtures("layout")
def test_requeue_filters_by_status_region_and_date(engine: sa.Engine) -> None:
    before = requeue_states(engine)
    assert registration.requeue(engine, FAILED, region="BRCB", since="2026-11-02") == 1
    after = requeue_states(engine)
    assert after["dev001/2026110300/b.json"] == (PENDING, 0, None, None)
    assert {k: v for k, v in after.items() if k != "dev001/2026110300/b.json"} == {
        k: v for k, v in before.items() if k != "dev001/2026110300/b.json"
    }

    assert registration.requeue(engine, FAILED) == 2
    assert registration.requeue(engine, FAILED) == 0
    assert registration.requeue(engine, QUARANTINED, since="2026-11-01", region="KPCS") == 1
    assert requeue_states(engine)["dev002/2026110100/e.json"] == (PENDING, 0, None, None)
    assert requeue_states(engine)["dev001/2026110300/d.json"][0] == QUARANTINED

    final = requeue_states(engine)
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
    [(SUCCESS, "have not changed"), (UNROUTED, "not 'UNROUTED'"), (PENDING, "not 'PENDING'")],
)
@pytest.mark.usefixtures("layout")
def test_requeue_refuses_other_statuses(engine: sa.Engine, status: str, message: str) -> None:
    before = requeue_states(engine)
    with pytest.raises(ValueError, match=message):
        registration.requeue(engine, status)
    assert requeue_states(engine) == before
