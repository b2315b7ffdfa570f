"""The Dagster definitions as the code location exposes them, loaded in this process.

Covers the shape of the Definitions object (the external raw asset, the registry, the ingest pair and
the analytics assets with their date x region MultiPartitionsDefinition, the ingest job and its
checks, owners, tags and code references, the resources), that `build_definitions` wires the
resources from the settings it is given, the date partitions running from the start date to
today's local date whatever the UTC offset, and the daily compaction and analytics schedules (cron,
time zone, and the partition the analytics tick asks for). Materializing the ingest assets is in
test_ingest_assets.py; `dagster definitions validate` in e2e/test_code_location_validates.py.

Real parts only: the platform's definitions and settings, a SQLite ledger file in tmp_path and a
real ephemeral Dagster instance (`dg.instance_for_test`) for the schedule's tick. Nothing is mocked.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import ObjectInfo
from datalog_platform.definitions import defs
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME, date_range, date_region_partitions
from datalog_platform.defs.resources import LedgerResource, StoresResource
from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings

DAY = "2026-11-01"
REGION = "BRCB"  # dev00000's region in the generator's registry


def test_definitions_object_shape() -> None:
    """Assets, partitions, the job and the resources are what the UI and the CLI rely on."""
    settings = Settings.from_env()
    partitions = date_region_partitions(settings.partitions_start_date, settings.tz_offset_hours)
    graph = defs.resolve_asset_graph()
    raw, claimed, parquet = (
        graph.get(dg.AssetKey(name)) for name in ("raw_datalog_logs", "claimed_key_batches", "datalog_parquet")
    )
    registry = graph.get(dg.AssetKey("device_registry"))
    analytics = {dg.AssetKey(n) for n in ("hourly_device_stats", "device_anomalies", "data_quality_report")}
    assert graph.get_all_asset_keys() == {raw.key, registry.key, claimed.key, parquet.key, *analytics}
    for key in analytics:
        assert graph.get(key).parent_keys == {parquet.key}
        assert graph.get(key).partitions_def == partitions
    assert registry.is_materializable and registry.partitions_def is None

    assert raw.is_external and not raw.is_materializable
    assert raw.partitions_def is None
    assert claimed.is_materializable and parquet.is_materializable
    assert claimed.parent_keys == {raw.key, registry.key}
    assert parquet.parent_keys == {claimed.key}

    for node in (claimed, parquet):
        pdef = node.partitions_def
        assert isinstance(pdef, dg.MultiPartitionsDefinition)
        dims = {d.name: d.partitions_def for d in pdef.partitions_defs}
        assert set(dims) == {"date", "region"}
        assert isinstance(dims["date"], dg.DailyPartitionsDefinition)
        assert isinstance(dims["region"], dg.DynamicPartitionsDefinition)
        assert dims["region"].name == REGION_PARTITIONS_NAME
        assert pdef == partitions

    job = defs.resolve_job_def("ingest_partition_job")
    assert job.partitions_def == partitions
    assert set(job.asset_layer.executable_asset_keys) == {claimed.key, parquet.key}

    checks = {c.name for c in job.asset_layer.asset_graph.asset_check_keys}
    assert checks == {"reconciliation", "no_duplicate_records", "no_orphan_files", "quarantine_rate", "freshness"}
    # What a Dagster user looks for on an asset: owners, tags, the code that defines it, and the
    # sensor that feeds the raw asset.
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.owners == ["team:data-platform"] and "layer" in node.tags, key
        assert node.is_external or "dagster/code_references" in node.metadata, key
    assert defs.resolve_sensor_def("raw_logs_sensor").asset_selection.resolve(graph) == {raw.key}
    assert set(defs.resources) >= {"ledger", "stores", "duckdb", "warehouse", "quality"}
    assert isinstance(defs.resources["ledger"], LedgerResource)
    assert isinstance(defs.resources["stores"], StoresResource)


def test_build_definitions_uses_the_settings_it_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`build_definitions(settings)` wires the stores and the ledger from `settings`, even when the
    process environment names a different ledger (the URL may still travel as an EnvVar, but it
    must resolve to the ledger the caller asked for)."""
    given = f"sqlite:///{tmp_path / 'given.db'}"
    monkeypatch.setenv("DATALOG_LEDGER_URL", f"sqlite:///{tmp_path / 'from_env.db'}")
    settings = Settings.from_env(
        {
            "DATALOG_HOME": str(tmp_path / "home"),
            "DATALOG_LEDGER_URL": given,
            "DATALOG_RAW_URL": str(tmp_path / "raw"),
            "DATALOG_LAKE_URL": str(tmp_path / "lake"),
        }
    )
    built = build_definitions(settings)
    with dg.build_resources({"ledger": built.resources["ledger"], "stores": built.resources["stores"]}) as res:
        assert res.stores.raw_url == str(tmp_path / "raw")
        assert res.stores.lake_url == str(tmp_path / "lake")
        assert res.ledger.url == given


# ---------------------------------------------------------------------------------------------
# Schedules and date partitions


def test_daily_compaction_schedule_requests_the_compaction_job() -> None:
    schedule = defs.resolve_schedule_def("daily_compaction_schedule")
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert schedule.job_name == "compact_lake_job" and schedule.cron_schedule == "30 4 * * *"
    with dg.build_schedule_context() as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.job_name in (None, "compact_lake_job")


def test_date_partitions_run_from_the_start_date_to_todays_local_date(tmp_path: Path) -> None:
    """The dates are local calendar dates (UTC + offset), fixed when the definitions are built from
    their settings: today's is listed, tomorrow's is not."""
    for offset in (-5, 0, 8, 14):
        settings = Settings.from_env(
            {
                "DATALOG_HOME": str(tmp_path),
                "DATALOG_TZ_OFFSET_HOURS": str(offset),
                "DATALOG_PARTITIONS_START_DATE": "2026-01-01",
            }
        )
        built = build_definitions(settings).resolve_asset_graph().get(dg.AssetKey("datalog_parquet")).partitions_def
        assert isinstance(built, dg.MultiPartitionsDefinition)
        dates = next(d.partitions_def for d in built.partitions_defs if d.name == "date")
        today = (datetime.now(UTC) + timedelta(hours=offset)).date().isoformat()
        assert dates.get_first_partition_key() == "2026-01-01"
        assert dates.get_last_partition_key() == today, offset
        assert date_range(settings.partitions_start_date, settings.tz_offset_hours) == ("2026-01-01", today)


def test_daily_analytics_schedule_runs_at_local_half_past_one_for_the_day_that_ended(
    tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The cron and the day it asks for use the same offset, the one the definitions were built with."""
    settings = Settings.from_env({"DATALOG_HOME": str(tmp_path / "home"), "DATALOG_TZ_OFFSET_HOURS": "8"})
    engine = ledger_engine(settings.ledger_url)
    registration.upsert_devices(engine, [("dev00000", REGION)])
    registration.register_keys(
        engine, [ObjectInfo("dev00000/2026110103/a.json", 10)], 8, REINGEST
    )  # 11:00 local on DAY
    built = build_definitions(settings)
    schedule = built.resolve_schedule_def("daily_analytics_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("30 1 * * *", "Etc/GMT-8")
    tick_time = datetime(2026, 11, 2, 1, 30, tzinfo=ZoneInfo("Etc/GMT-8"))
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, [REGION])
    with dg.build_schedule_context(
        instance=instance,
        scheduled_execution_time=tick_time,
        resources=dict(built.resources),
        repository_def=built.get_repository_def(),
    ) as context:
        (request,) = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == f"{DAY}|{REGION}" and request.run_key == f"analytics:{DAY}:{REGION}"


def test_credentials_from_the_environment_reach_dagster_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ledger URL read from the process environment reaches Dagster as an EnvVar (the UI shows its
    name, never the password), and so does the warehouse URL that defaults to it."""
    monkeypatch.setenv("DATALOG_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DATALOG_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.delenv("DATALOG_WAREHOUSE_URL", raising=False)
    built = build_definitions(Settings.from_env())
    assert built.resources["ledger"].url == dg.EnvVar("DATALOG_LEDGER_URL")
    assert built.resources["warehouse"].url == dg.EnvVar("DATALOG_LEDGER_URL")
    assert isinstance(built.resources["warehouse"].url, dg.EnvVar)

    monkeypatch.setenv("DATALOG_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'warehouse.db'}")
    assert build_definitions(Settings.from_env()).resources["warehouse"].url == dg.EnvVar("DATALOG_WAREHOUSE_URL")
