"""`datalog ledger requeue` in a child process: FAILED keys of one region back to PENDING.

Covers the count the command prints, exit code 2 with a clear message (and nothing changed) for
SUCCESS keys, whose objects have not changed, and for a malformed --since. The ledger holds
`ledger_helpers.REQUEUE_LAYOUT`: keys in every status. `registration.requeue` itself is in
unit/test_ledger_requeue.py.

Real parts only: the `datalog` command run by a child Python process against a SQLite ledger file
under DATALOG_HOME, read back by this process.
"""

from __future__ import annotations

from pathlib import Path

from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import FAILED, PENDING
from datalog_platform_tests.support import cli_helpers
from datalog_platform_tests.support.ledger_helpers import fill_requeue_layout, requeue_states


def test_requeue_command(tmp_path: Path) -> None:
    """In a child process: the count printed; SUCCESS refused with exit 2 and nothing changed."""
    home = tmp_path / "home"
    env = cli_helpers.cli_env(home)
    engine = ledger_engine(cli_helpers.sqlite_url(home))
    fill_requeue_layout(engine)
    before = requeue_states(engine)

    refused = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "SUCCESS")
    assert refused.returncode == 2, cli_helpers.describe(refused)
    assert "SUCCESS keys cannot be requeued" in refused.stderr and "have not changed" in refused.stderr
    assert requeue_states(engine) == before

    bad_date = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "FAILED", "--since", "03/11/2026")
    assert bad_date.returncode == 2, cli_helpers.describe(bad_date)
    assert "not a date (YYYY-MM-DD)" in bad_date.stderr
    assert requeue_states(engine) == before

    done = cli_helpers.run_cli(env, "ledger", "requeue", "--status", "FAILED", "--region", "BRCB")
    assert done.returncode == 0, cli_helpers.describe(done)
    assert "requeued 2 FAILED key(s) in region BRCB" in done.stdout
    assert {
        k: v[0] for k, v in requeue_states(engine).items() if k.startswith("dev001/") and before[k][0] == FAILED
    } == {
        "dev001/2026110100/a.json": PENDING,
        "dev001/2026110300/b.json": PENDING,
    }
    assert requeue_states(engine)["dev002/2026110300/c.json"][0] == FAILED
    engine.dispose()
