"""`raw_logs_sensor`, `reconcile_raw_keys_job` and `daily_reconciliation_schedule`: discovery as
Dagster runs it.

Covers the sensor registering new keys and reporting them as an observation on `raw_datalog_logs`
(keys and bytes found, pending and unrouted backlog, age of the oldest pending key), idempotent
re-ticks (a skip with a reason, an observation again only when the backlog moved), a late key
under an older hour inside the trailing window found by the next tick, a key older than the window
missed by the sensor but registered by the reconciliation job (and its daily schedule), and the
sensor failing clearly, instead of finding nothing, when the raw directory is missing.

Real parts only: local directories, a SQLite ledger file and a real ephemeral Dagster instance
(`dg.instance_for_test`); the sensor is evaluated with Dagster's own context builder and the job
runs in process.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_aws.s3 import S3Resource

from datalog_platform.core.discovery import DiscoveryLimits, window_start
from datalog_platform.core.ledger import clock, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import PENDING, SUCCESS, keys
from datalog_platform.core.store import LocalStore, StoreNotFoundError
from datalog_platform.defs.discovery.jobs import reconcile_raw_keys_job
from datalog_platform.defs.discovery.schedules import daily_reconciliation_schedule
from datalog_platform.defs.discovery.sensors import raw_logs_sensor
from datalog_platform.defs.resources import DiscoveryResource, LedgerResource, StoresResource
from datalog_platform_tests.support.ledger_helpers import key_statuses
from datalog_platform_tests.support.raw_data import hour_ago, raw_key

# ---------------------------------------------------------------------------------------------
# The sensor and the reconciliation job, with conftest's `resources`


def tick(instance: dg.DagsterInstance, resources: dict[str, Any], cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = raw_logs_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def observed(result: dg.SensorResult) -> dict[str, Any]:
    (event,) = result.asset_events
    assert isinstance(event, dg.AssetObservation)
    assert event.asset_key == dg.AssetKey("raw_datalog_logs")
    return {k: v.value for k, v in event.metadata.items()}


def test_sensor_registers_reports_and_is_idempotent(
    tmp_path: Path, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    assert raw_logs_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    raw = LocalStore(tmp_path / "raw")
    engine = ledger_engine(resources["ledger"].url)
    registration.upsert_devices(engine, [("devA", "R1"), ("devB", "R2")])
    now = clock.utcnow()
    written = {raw_key("devA", hour_ago(h, now)): b"{}\n" * (h + 1) for h in range(3)}
    written[raw_key("devB", hour_ago(0, now))] = b"{}\n"
    written[raw_key("devC", hour_ago(0, now))] = b"{}\n"  # not in the registry: UNROUTED
    for key, data in written.items():
        raw.write_bytes(key, data)
    raw.write_bytes("_registry/devices.csv", b"device_id,dstrct_code\n")

    first = tick(instance, resources, None)
    meta = observed(first)
    assert first.skip_reason is None
    assert meta["keys_found"] == 5
    assert meta["bytes_found"] == sum(len(d) for d in written.values())
    assert meta["keys_unrouted"] == 1 and meta["unrouted_backlog"] == 1
    assert meta["new_devices"] == 3
    assert meta["pending_backlog"] == 4
    assert 0 <= meta["oldest_pending_age_seconds"] < 60
    assert set(key_statuses(engine)) == set(written)

    # Nothing new and the same backlog: a skip with a reason, and no observation.
    second = tick(instance, resources, first.cursor)
    assert second.skip_reason is not None and "no new raw objects" in (second.skip_reason.skip_message or "")
    assert second.asset_events == []
    assert set(key_statuses(engine)) == set(written)

    # Nothing new but the backlog moved (a key was ingested): the backlog is reported again.
    with engine.begin() as conn:
        conn.execute(sa.update(keys).where(keys.c.key == raw_key("devA", hour_ago(0, now))).values(status=SUCCESS))
        conn.execute(
            sa.update(keys)
            .where(keys.c.key == raw_key("devA", hour_ago(2, now)))
            .values(discovered_at=clock.utcnow() - timedelta(hours=2))
        )
    third = tick(instance, resources, second.cursor)
    meta = observed(third)
    assert third.skip_reason is not None and "no new raw objects" in (third.skip_reason.skip_message or "")
    assert meta["keys_found"] == 0 and meta["bytes_found"] == 0
    assert meta["new_devices"] == 0 and meta["hot_devices"] == 3
    assert meta["pending_backlog"] == 3
    assert 7200 <= meta["oldest_pending_age_seconds"] < 7200 + 60
    assert set(key_statuses(engine)) == set(written)


def test_late_keys_inside_the_window_and_reconciliation(
    tmp_path: Path, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    """A late key under an older hour inside the window is found by the next tick; one older than
    the window is not, and the reconciliation job registers it."""
    raw = LocalStore(tmp_path / "raw")
    engine = ledger_engine(resources["ledger"].url)
    registration.upsert_devices(engine, [("devA", "R1")])
    now = clock.utcnow()
    raw.write_bytes(raw_key("devA", hour_ago(1, now)), b"{}")
    cursor = tick(instance, resources, None).cursor

    late = raw_key("devA", hour_ago(4, now), "late")
    too_late = raw_key("devA", hour_ago(30, now), "too-late")
    raw.write_bytes(late, b"{}")
    raw.write_bytes(too_late, b"{}")
    assert window_start(now, DiscoveryLimits().window_hours) <= hour_ago(4, now)
    result = tick(instance, resources, cursor)
    assert observed(result)["keys_found"] == 1
    assert late in key_statuses(engine) and too_late not in key_statuses(engine)
    assert tick(instance, resources, result.cursor).asset_events == []  # nothing found, nothing changed

    run = reconcile_raw_keys_job.execute_in_process(instance=instance, resources=resources)
    assert run.success
    (event,) = [e for e in run.all_events if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION]
    meta = {k: v.value for k, v in event.asset_observation_data.asset_observation.metadata.items()}
    assert meta["keys_found"] == 1 and meta["keys_listed"] == 3
    assert key_statuses(engine)[too_late] == PENDING
    assert reconcile_raw_keys_job.execute_in_process(instance=instance, resources=resources).success
    assert len(key_statuses(engine)) == 3
    assert daily_reconciliation_schedule.job_name == "reconcile_raw_keys_job"
    assert daily_reconciliation_schedule.default_status == dg.DefaultScheduleStatus.RUNNING


# ---------------------------------------------------------------------------------------------
# A raw directory that does not exist


def test_discovery_sensor_fails_clearly_when_the_raw_directory_is_missing(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The sensor lists the raw store too: a missing directory is an error there, not "nothing new"."""
    raw = tmp_path / "raw-typo"
    resources = {
        "ledger": LedgerResource(url=f"sqlite:///{tmp_path / 'ledger.db'}"),
        "stores": StoresResource(raw_url=str(raw), lake_url=str(tmp_path / "lake"), s3=S3Resource()),
        "discovery": DiscoveryResource(),
    }
    with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
        with pytest.raises(StoreNotFoundError, match="raw-typo"):
            raw_logs_sensor(ctx)
    assert not raw.exists()
