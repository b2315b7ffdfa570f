"""The `datalog` commands called in this process (`cli.main([...])`): `devices load` reading CSV as
spreadsheets write it (standard quoting, a UTF-8 byte-order mark), refusing a row with an empty
value and loading nothing, `ledger status --json` on a ledger that does not exist yet, `ledger
release` of HELD keys, and `datalog dagster-home` writing the instance's dagster.yaml (consolidated
event log, one run per partition at a time) and leaving an existing one alone. The same commands
in child processes are in e2e/test_cli_commands.py.

Real parts only: DATALOG_HOME in tmp_path (no other DATALOG_*/DAGSTER_* variable), a SQLite ledger
file there, CSV files, and the Dagster instance opened from the dagster.yaml the command wrote.
"""

from __future__ import annotations

import codecs
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from datalog_platform import cli
from datalog_platform.core.ledger import protocol, registration, versions
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.schema import HELD, PENDING, SUCCESS
from datalog_platform.core.store import ObjectInfo
from datalog_platform_tests.support import cli_helpers, ledger_helpers
from datalog_platform_tests.support.cli_helpers import sqlite_url
from datalog_platform_tests.support.ledger_helpers import device_table, seed_registry


@pytest.fixture
def inproc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For `cli.main([...])` in this process: DATALOG_HOME in tmp_path, no other DATALOG_*/DAGSTER_*."""
    for name in list(os.environ):
        if name.startswith(("DATALOG_", "DAGSTER_")):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    monkeypatch.setenv("DATALOG_HOME", str(home))
    return home


def test_devices_load_reads_standard_csv_quoting(
    inproc_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv_file = cli_helpers.write_csv(
        tmp_path / "devices.csv",
        'device_id,dstrct_code\r\n"dev:1",BRCB\r\n"unit.7","KPCS"\r\nplain,SMRD\r\n',
    )
    # `ledger status` on a ledger that does not exist yet: an empty report, not an error.
    assert cli.main(["ledger", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"by_status": {}, "by_region": {}, "rows": 0}

    assert cli.main(["devices", "load", str(csv_file)]) == 0
    assert "3 new" in capsys.readouterr().out
    assert device_table(sqlite_url(inproc_home)) == {"dev:1": "BRCB", "unit.7": "KPCS", "plain": "SMRD"}


def test_devices_load_rejects_an_empty_value_and_loads_nothing(
    inproc_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    seed_registry(sqlite_url(inproc_home), [("old", "BRCB")])
    bad = cli_helpers.write_csv(tmp_path / "bad.csv", "device_id,dstrct_code\nnew1,BRCB\nnew2,\n")
    assert cli.main(["devices", "load", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("datalog: ") and "line 3" in err, err
    assert device_table(sqlite_url(inproc_home)) == {"old": "BRCB"}


def test_devices_load_accepts_a_utf8_bom(inproc_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Excel's "CSV UTF-8" export starts the file with a byte-order mark; the header is still
    device_id,dstrct_code and must be read as such."""
    csv_file = tmp_path / "excel.csv"
    csv_file.write_bytes(codecs.BOM_UTF8 + b"device_id,dstrct_code\r\nd1,BRCB\r\n")
    code = cli.main(["devices", "load", str(csv_file)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert device_table(sqlite_url(inproc_home)) == {"d1": "BRCB"}


def test_dagster_home_gets_one_event_log_and_one_run_per_partition(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`datalog dagster-home` prepares the instance the CLI and `make ui` share: a consolidated
    event log, a run queue that never runs two runs of one partition at once and is read every
    second, and sensors ticking on threads. An existing dagster.yaml is left as it is."""
    monkeypatch.setenv("DATALOG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli.main(["dagster-home"]) == 0
    home = tmp_path / "home" / "dagster"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        assert queue.tag_concurrency_limits == [
            {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
        ]
        assert type(instance.event_log_storage).__name__ == "ConsolidatedSqliteEventLogStorage"
        assert instance.run_coordinator.dequeue_interval_seconds == 1
        assert instance.get_sensor_settings()["use_threads"] is True
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    assert cli.main(["dagster-home"]) == 0
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


def test_ledger_release_lets_held_versions_be_ingested(inproc_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A new version of an ingested key, held by the `quarantine` policy, is PENDING again after
    `datalog ledger release` (scoped by region: another region's key stays HELD)."""
    engine = ledger_engine(sqlite_url(inproc_home))
    registration.upsert_devices(engine, [("d1", "BRCB"), ("d2", "KPCS")])
    names = ["d1/2026110100/a.json", "d2/2026110100/b.json"]
    registration.register_keys(engine, [ObjectInfo(n, 10, "v1") for n in names], 8, versions.QUARANTINE)
    for region in ("BRCB", "KPCS"):
        batch = protocol.claim_batch(engine, "2026-11-01", region, 10, None, 60)
        assert batch is not None
        outcomes = [KeyOutcome(k.key_id, SUCCESS, version=k.version) for k in batch.keys]
        protocol.commit_batch(engine, batch.batch_id, outcomes, [], 0, 0)
    registration.register_keys(engine, [ObjectInfo(n, 20, "v2") for n in names], 8, versions.QUARANTINE)
    assert set(ledger_helpers.key_statuses(engine).values()) == {HELD}

    assert cli.main(["ledger", "release", "--region", "BRCB"]) == 0
    assert capsys.readouterr().out.startswith("released 1 HELD key(s) in region BRCB: PENDING")
    assert ledger_helpers.key_statuses(engine) == {names[0]: PENDING, names[1]: HELD}
