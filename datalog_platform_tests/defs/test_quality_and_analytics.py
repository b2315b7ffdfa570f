"""The quality and analytics layers as Dagster runs them: the checks on `datalog_parquet`, the
quality report, `hourly_device_stats` (lake + warehouse) and `device_anomalies`.

Each check passes on a clean partition and fails on one broken for it; statistics are compared
with values computed here from the raw lines; three re-materializations leave the warehouse table
and the lake with one copy of each row (SQLite and PostgreSQL warehouses); anomaly scores match
a hand-computed example. Real parts: `dg.materialize` on an ephemeral instance, a SQLite ledger,
local stores, DuckDB, the running PostgreSQL.
"""

from __future__ import annotations

import json
import shutil
import statistics
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa

from datalog_platform.core.ledger import clock, protocol, registration, swap
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import PENDING, batches, keys, lake_files
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore
from datalog_platform.core.warehouse import hourly_device_stats as stats_table
from datalog_platform.defs.analytics.assets import device_anomalies, hourly_device_stats
from datalog_platform.defs.analytics.sensors import stale_analytics_sensor
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.ingest.assets import datalog_parquet, ingest_partition
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME, partition_key
from datalog_platform.defs.quality.assets import data_quality_report
from datalog_platform.defs.quality.checks import datalog_parquet_checks
from datalog_platform.defs.registry.assets import device_registry
from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings
from datalog_platform_tests.support.lake import partition_dir
from datalog_platform_tests.support.ledger_helpers import postgres_schema, postgres_url, schema_url
from datalog_platform_tests.support.raw_data import ndjson

DAY = "2026-11-01"
REGION = "R1"
ASSETS = [
    raw_datalog_logs,
    device_registry,
    ingest_partition,
    datalog_parquet_checks,
    hourly_device_stats,
    device_anomalies,
    data_quality_report,
]


def record(device: str, utc: datetime, **values: Any) -> str:
    return json.dumps({"device_id": device, "heartbeat": utc.strftime("%Y-%m-%dT%H:%M:%SZ"), **values})


class Platform:
    """A fresh home (ledger, raw store, lake) and an ephemeral Dagster instance."""

    def __init__(self, tmp_path: Path, instance: dg.DagsterInstance, env: dict[str, str] | None = None) -> None:
        self.settings = Settings.from_env({"DATALOG_HOME": str(tmp_path / "home"), **(env or {})})
        self.instance = instance
        self.raw = LocalStore(self.settings.raw_url)
        self.lake = LocalStore(self.settings.lake_url)
        self.engine = ledger_engine(self.settings.ledger_url)
        self.resources = dict(build_definitions(self.settings).resources)
        registration.upsert_devices(self.engine, [(d, REGION) for d in ("dA", "dB", "dC")])
        instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, [REGION])

    def upload(self, key: str, *lines: str) -> None:
        self.raw.write_bytes(key, ndjson(*lines))

    def run(
        self, selection: Any, run_config: dict[str, Any] | None = None, tags: dict[str, str] | None = None
    ) -> dg.ExecuteInProcessResult:
        result = dg.materialize(
            ASSETS,
            selection=selection,
            partition_key=partition_key(DAY, REGION),
            instance=self.instance,
            resources=self.resources,
            run_config=run_config,
            raise_on_error=False,
            tags=tags,
        )
        assert result.success, [e.message for e in result.get_step_failure_events()]
        return result

    def ingest(self) -> None:
        registration.register_keys(self.engine, self.raw.list(), self.settings.tz_offset_hours, REINGEST)
        self.run([ingest_partition], tags={TRIGGER_TAG: "pending_keys_sensor"})

    def checks(self, *names: str, partition: bool = True) -> dict[str, dg.AssetCheckEvaluation]:
        """Only the checks (those named, else all), for one partition, or, without `partition`, as
        the Checks tab's "Execute all" launches them (a run without a partition)."""
        selection = (
            dg.AssetSelection.checks(*(dg.AssetCheckKey(datalog_parquet.key, name) for name in names))
            if names
            else dg.AssetSelection.checks_for_assets(datalog_parquet.key)
        )
        job = dg.define_asset_job("checks_job", selection=selection)
        defs = dg.Definitions(
            assets=ASSETS[:3], asset_checks=[datalog_parquet_checks], jobs=[job], resources=self.resources
        )
        # a run of checks only has no asset to take the partition from: the run's tags name it
        tags = {
            "dagster/partition": f"{DAY}|{REGION}",
            "dagster/partition/date": DAY,
            "dagster/partition/region": REGION,
        }
        result = defs.resolve_job_def("checks_job").execute_in_process(
            instance=self.instance, tags=tags if partition else None
        )
        assert result.success
        return {e.check_name: e for e in result.get_asset_check_evaluations()}

    def metadata(self, result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
        (event,) = [
            e.materialization
            for e in result.get_asset_materialization_events()
            if e.materialization.asset_key == dg.AssetKey(asset)
        ]
        return {k: v.value for k, v in event.metadata.items()}


@pytest.fixture
def platform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance) -> Platform:
    for name in ("DATALOG_LEDGER_URL", "DATALOG_WAREHOUSE_URL"):
        monkeypatch.delenv(name, raising=False)
    return Platform(tmp_path, instance)


UTC0 = datetime(2026, 11, 1, 2, 0)  # 10:00 local on DAY


def clean_partition(p: Platform, good: int = 20, bad: int = 0) -> None:
    lines = [record("dA", UTC0 + timedelta(minutes=i), temperature=20.0 + i) for i in range(good)]
    p.upload("dA/2026110102/a.json", *lines[: good // 2])
    p.upload("dA/2026110103/b.json", *lines[good // 2 :], *[f"broken {i}" for i in range(bad)])
    p.ingest()


def outcome(evaluation: dg.AssetCheckEvaluation) -> tuple[bool, str]:
    return evaluation.passed, evaluation.severity.value


# ---------------------------------------------------------------------------------------------
# Checks on datalog_parquet


def test_every_check_passes_on_a_clean_partition(platform: Platform) -> None:
    clean_partition(platform)
    checks = platform.checks()
    assert {name: e.passed for name, e in checks.items()} == {
        "reconciliation": True,
        "no_duplicate_records": True,
        "no_orphan_files": True,
        "quarantine_rate": True,
        "freshness": True,
    }
    assert checks["reconciliation"].metadata["lake_rows"].value == 20
    assert all(e.metadata["partition"].value == f"{DAY}|{REGION}" for e in checks.values())


def test_each_check_runs_alone_as_the_checks_tab_launches_it(platform: Platform) -> None:
    """Every check can be executed by itself: the run yields that check's result and no other."""
    clean_partition(platform)
    for name in ("freshness", "reconciliation"):
        checks = platform.checks(name)
        assert set(checks) == {name} and checks[name].passed
    graph = build_definitions(platform.settings).resolve_asset_graph()
    for key in datalog_parquet_checks.check_keys:
        assert graph.get_execution_set_asset_and_check_keys(key) == {key}


def test_a_file_written_twice_breaks_reconciliation_and_duplicates(platform: Platform) -> None:
    clean_partition(platform)
    (first, *_) = swap.live_files(platform.engine, "datalog_v2", DAY, REGION)
    copy = first.path.replace(".parquet", "-copy.parquet")
    shutil.copy(Path(platform.settings.lake_url) / first.path, Path(platform.settings.lake_url) / copy)
    with platform.engine.begin() as conn:
        row = dict(conn.execute(sa.select(lake_files).where(lake_files.c.path == first.path)).one()._mapping)
        conn.execute(sa.insert(lake_files).values({**row, "file_id": None, "path": copy}))
    checks = platform.checks()
    assert not checks["reconciliation"].passed and not checks["no_duplicate_records"].passed
    assert checks["no_duplicate_records"].metadata["duplicate_rows"].value == first.rows
    assert checks["no_orphan_files"].passed and checks["freshness"].passed


def test_stray_and_missing_files_break_the_orphan_check(platform: Platform) -> None:
    clean_partition(platform)
    lake = Path(platform.settings.lake_url)
    (first,) = swap.live_files(platform.engine, "datalog_v2", DAY, REGION)
    stray = partition_dir(lake, DAY, REGION) / "part-stray-0.parquet"
    shutil.copy(lake / first.path, stray)
    checks = platform.checks()
    assert not checks["no_orphan_files"].passed
    assert checks["no_orphan_files"].metadata["orphan_files"].value == 1
    assert checks["reconciliation"].passed and checks["no_duplicate_records"].passed  # readers use the manifest

    stray.unlink()
    (lake / first.path).unlink()
    checks = platform.checks()
    assert not checks["no_orphan_files"].passed and checks["no_orphan_files"].metadata["missing_files"].value == 1
    assert (
        not checks["reconciliation"].passed and "IOException" in checks["reconciliation"].metadata["lake_error"].value
    )


@pytest.mark.parametrize(("bad", "expected"), [(0, (True, "ERROR")), (1, (False, "WARN")), (5, (False, "ERROR"))])
def test_quarantine_rate_warns_above_one_and_fails_above_ten_percent(
    platform: Platform, bad: int, expected: tuple[bool, str]
) -> None:
    clean_partition(platform, good=20, bad=bad)  # 1 of 21 lines: 4.8 %; 5 of 25: 20 %
    assert outcome(platform.checks()["quarantine_rate"]) == expected


def test_checks_without_a_partition_check_every_partition_with_keys(platform: Platform) -> None:
    """ "Execute all" in the Checks tab launches a run without a partition: each check then covers
    every partition with keys and names the ones it failed in."""
    clean_partition(platform)
    platform.upload("dB/2026110203/c.json", record("dB", datetime(2026, 11, 2, 3, 0), temperature=21.0))
    registration.register_keys(platform.engine, platform.raw.list(), platform.settings.tz_offset_hours, REINGEST)
    assert platform.checks(partition=False)["no_orphan_files"].passed

    lake = Path(platform.settings.lake_url)
    (first,) = swap.live_files(platform.engine, "datalog_v2", DAY, REGION)
    shutil.copy(lake / first.path, partition_dir(lake, DAY, REGION) / "part-stray-0.parquet")
    checks = platform.checks(partition=False)
    assert set(checks) == {"reconciliation", "no_duplicate_records", "no_orphan_files", "quarantine_rate", "freshness"}
    orphans = {k: v.value for k, v in checks["no_orphan_files"].metadata.items()}
    assert not checks["no_orphan_files"].passed and checks["no_orphan_files"].partition is None
    assert (orphans["partitions_checked"], orphans["failed_partitions"]) == (2, [f"{DAY}|{REGION}"])
    assert all(checks[name].passed for name in checks if name != "no_orphan_files")
    assert set(platform.checks("freshness", partition=False)) == {"freshness"}


def test_pending_keys_older_than_the_set_time_fail_freshness(platform: Platform) -> None:
    clean_partition(platform)
    platform.upload("dA/2026110104/late.json", record("dA", UTC0 + timedelta(hours=2), temperature=1.0))
    registration.register_keys(platform.engine, platform.raw.list(), 8, REINGEST)
    assert platform.checks()["freshness"].passed  # pending, but only just
    with platform.engine.begin() as conn:
        conn.execute(sa.update(keys).where(keys.c.status == PENDING).values(discovered_at=datetime(2026, 1, 1)))
    freshness = platform.checks()["freshness"]
    assert not freshness.passed and freshness.metadata["pending_keys"].value == 1


def test_a_claimed_key_counts_for_freshness_on_the_clock_of_the_materializations(platform: Platform) -> None:
    """A key CLAIMED by a batch still writing is not readable yet: the check measures it from its
    discovery, like PENDING keys, and names the lag of the partition's latest commit."""
    clean_partition(platform)
    committed = platform.checks()["freshness"].metadata
    assert committed["waiting_keys"].value == 0 and committed["lag_seconds"].value == 0.0
    assert committed["last_commit_lag_oldest_seconds"].value >= committed["last_commit_lag_newest_seconds"].value >= 0

    platform.upload("dA/2026110104/late.json", record("dA", UTC0 + timedelta(hours=2), temperature=1.0))
    registration.register_keys(platform.engine, platform.raw.list(), 8, REINGEST)
    with platform.engine.begin() as conn:
        conn.execute(sa.update(keys).where(keys.c.status == PENDING).values(discovered_at=datetime(2026, 1, 1)))
    batch = protocol.claim_batch(platform.engine, DAY, REGION, 10, "a-run-still-writing", 900)
    assert batch is not None and len(batch.keys) == 1
    freshness = platform.checks()["freshness"]
    meta = {k: v.value for k, v in freshness.metadata.items()}
    assert not freshness.passed
    assert (meta["pending_keys"], meta["waiting_keys"]) == (0, 1)
    assert meta["lag_seconds"] > meta["max_age_minutes"] * 60


def test_every_ingest_materialization_carries_its_lag(platform: Platform) -> None:
    """`lag_newest_seconds` and `lag_oldest_seconds`: the commit minus the discovery of the batch's
    newest and oldest key, on the run's own date and on the neighbouring date its rows reached."""
    platform.upload("dA/2026110102/a.json", record("dA", UTC0, temperature=1.0))
    # 17:00 UTC on Nov 1 is 01:00 local on Nov 2: the row lands in the next date's directory
    platform.upload("dA/2026110115/b.json", record("dA", datetime(2026, 11, 1, 17, 0), temperature=2.0))
    registration.register_keys(platform.engine, platform.raw.list(), platform.settings.tz_offset_hours, REINGEST)
    now = clock.utcnow()
    with platform.engine.begin() as conn:
        for name, age in (("a.json", 600), ("b.json", 60)):
            stamp = now - timedelta(seconds=age)
            conn.execute(sa.update(keys).where(keys.c.key.endswith(name)).values(discovered_at=stamp))
    result = platform.run([ingest_partition], tags={TRIGGER_TAG: "pending_keys_sensor"})
    with platform.engine.connect() as conn:
        committed_at = conn.execute(sa.select(batches.c.committed_at)).scalar_one()
    expected = {
        "lag_newest_seconds": round((committed_at - (now - timedelta(seconds=60))).total_seconds(), 3),
        "lag_oldest_seconds": round((committed_at - (now - timedelta(seconds=600))).total_seconds(), 3),
    }
    lags = {
        e.materialization.partition: {
            k: v for k, v in e.materialization.metadata.items() if k in ("lag_newest_seconds", "lag_oldest_seconds")
        }
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == datalog_parquet.key
    }
    assert set(lags) == {f"{DAY}|{REGION}", f"2026-11-02|{REGION}"}
    for metadata in lags.values():
        assert {k: v.value for k, v in metadata.items()} == expected
        assert all(isinstance(v, dg.FloatMetadataValue) for v in metadata.values())  # plotted by the UI
    assert 60 <= expected["lag_newest_seconds"] < expected["lag_oldest_seconds"]


# ---------------------------------------------------------------------------------------------
# Quality report


def test_quality_report_counts_by_reason_and_scores(platform: Platform) -> None:
    lines = [record("dA", UTC0 + timedelta(minutes=i), temperature=20.0 + i) for i in range(8)]
    platform.upload("dA/2026110102/a.json", *lines, "{not json")
    platform.upload("dA/2026110103/b.json", lines[0])  # the same record again
    platform.ingest()
    meta = platform.metadata(platform.run([data_quality_report]), "data_quality_report")

    assert (meta["rows"], meta["quarantined_lines"], meta["duplicate_rows"]) == (8, 1, 1)
    assert meta["quality_score"] == pytest.approx(100 * 8 / 9, abs=0.01)
    assert meta["quarantine_rate"] == pytest.approx(1 / 9, abs=1e-6)
    assert meta["duplicate_rate"] == pytest.approx(1 / 10, abs=1e-6)
    report = meta["report"]
    assert "| pass | written | 8 |" in report and "| fail | malformed_json | 1 |" in report
    assert "| dropped | duplicate_record | 1 |" in report
    assert "| temperature | DOUBLE | new field |" in report


# ---------------------------------------------------------------------------------------------
# Hourly device statistics


def stats_lines() -> dict[str, list[str]]:
    """Two devices over two UTC hours (local 10 and 11), with missing values."""
    a2 = [record("dA", UTC0 + timedelta(minutes=m), temperature=t, humidity=h, pcv_temperature=p)
          for m, t, h, p in [(0, 20.0, 50.0, 30.0), (10, 22.5, 60.0, 31.0), (20, 24.0, None, 35.5)]]  # fmt: skip
    a3 = [record("dA", UTC0 + timedelta(hours=1, minutes=5), temperature=25.0, humidity=40.0, pcv_temperature=33.0)]
    b2 = [record("dB", UTC0 + timedelta(minutes=m), temperature=t, humidity=70.0) for m, t in [(1, 18.0), (2, 19.0)]]
    return {"dA/2026110102/a.json": a2, "dA/2026110103/a.json": a3, "dB/2026110102/b.json": b2}


def expected_stats(files: dict[str, list[str]]) -> dict[tuple[str, int], dict[str, Any]]:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for lines in files.values():
        for line in lines:
            r = json.loads(line)
            local = datetime.strptime(r["heartbeat"], "%Y-%m-%dT%H:%M:%SZ") + timedelta(hours=8)
            groups.setdefault((r["device_id"], local.hour), []).append(r)
    out = {}
    for key, records in groups.items():
        row: dict[str, Any] = {"readings": len(records)}
        for m in ("temperature", "humidity", "pcv_temperature"):
            values = [r[m] for r in records if r.get(m) is not None]
            row |= {
                f"{m}_min": min(values, default=None),
                f"{m}_max": max(values, default=None),
                f"{m}_avg": statistics.fmean(values) if values else None,
            }
        out[key] = row
    return out


def warehouse_rows(engine: sa.Engine) -> dict[tuple[str, int], dict[str, Any]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(stats_table).where(stats_table.c.ymd == DAY)).mappings().all()
    return {
        (r["device_id"], r["hh"]): {
            k: v for k, v in r.items() if k not in ("device_id", "ymd", "hh", "dstrct_code", "updated_at")
        }
        for r in rows
    }


def approx(rows: dict[Any, dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {
        k: {c: (pytest.approx(v) if isinstance(v, float) else v) for c, v in row.items()} for k, row in rows.items()
    }


@pytest.mark.parametrize("warehouse", ["sqlite", "postgresql"])
def test_hourly_stats_match_independent_values_and_reloads_are_idempotent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, instance: dg.DagsterInstance, warehouse: str
) -> None:
    for name in ("DATALOG_LEDGER_URL", "DATALOG_WAREHOUSE_URL"):
        monkeypatch.delenv(name, raising=False)
    with postgres_schema(postgres_url()) if warehouse == "postgresql" else nullcontext() as pg:
        env = {}
        if pg is not None:
            env["DATALOG_WAREHOUSE_URL"] = schema_url(postgres_url(), pg[1])
        p = Platform(tmp_path, instance, env)
        files = stats_lines()
        for key, lines in files.items():
            p.upload(key, *lines)
        p.ingest()
        expected = expected_stats(files)
        assert set(expected) == {("dA", 10), ("dA", 11), ("dB", 10)}
        w_engine = p.resources["warehouse"].get_engine()
        assert w_engine.dialect.name == warehouse

        for _ in range(3):
            result = p.run([hourly_device_stats])
            assert warehouse_rows(w_engine) == approx(expected)
            (check,) = result.get_asset_check_evaluations()
            assert check.passed and check.metadata["warehouse_rows"].value == 3
            assert len(swap.live_files(p.engine, "hourly_device_stats", DAY, REGION)) == 1
            lake_rows = p.lake.list("hourly_device_stats/")
            assert len([o for o in lake_rows if o.key.endswith(".parquet")]) == 1
        with w_engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(stats_table)).scalar_one() == 3


# ---------------------------------------------------------------------------------------------
# Anomalies


def test_anomaly_scores_match_a_hand_computed_example(platform: Platform) -> None:
    temps = {"dA": [20, 21, 21, 22, 21, 40], "dB": [5, 5, 5, 5, 5, 5], "dC": [10, 11]}
    for device, values in temps.items():
        platform.upload(
            f"{device}/2026110102/x.json",
            *[record(device, UTC0 + timedelta(minutes=i), temperature=float(t)) for i, t in enumerate(values)],
        )
    platform.ingest()
    meta = platform.metadata(platform.run([device_anomalies]), "device_anomalies")

    # dA: median 21; |x - 21| = 1, 0, 0, 1, 0, 19 -> MAD = median(0, 0, 0, 1, 1, 19) = 0.5;
    # z(40) = 0.6745 * 19 / 0.5 = 25.631, z(20) = z(22) = -/+1.349: only 40 is above 3.5
    (row,) = anomalies_in_lake(platform)
    assert row[:4] == ("dA", 40.0, 21.0, 0.5) and row[4] == pytest.approx(25.631)
    assert (meta["anomalies"], meta["devices_scored"], meta["devices_unscored"]) == (1, 1, 2)
    assert "| dB | 6 | constant_value |" in meta["unscored"] and "| dC | 2 | too_few_readings |" in meta["unscored"]

    strict = platform.run([device_anomalies], {"ops": {"device_anomalies": {"config": {"threshold": 30.0}}}})
    assert platform.metadata(strict, "device_anomalies")["anomalies"] == 0
    assert anomalies_in_lake(platform) == []


def anomalies_in_lake(p: Platform) -> list[tuple[Any, ...]]:
    files = [str(Path(p.settings.lake_url) / f.path) for f in swap.live_files(p.engine, "device_anomalies")]
    if not files:
        return []
    with duckdb.connect() as conn:
        return conn.execute(
            "SELECT device_id, temperature, median, mad, robust_z FROM read_parquet(?) ORDER BY ALL", [files]
        ).fetchall()


# ---------------------------------------------------------------------------------------------
# Analytics that follow their rows


def stale_tick(platform: Platform) -> dg.SensorResult | dg.SkipReason:
    context = dg.build_sensor_context(instance=platform.instance, resources={"ledger": platform.resources["ledger"]})
    result = stale_analytics_sensor(context)
    assert isinstance(result, (dg.SensorResult, dg.SkipReason))
    return result


def test_a_reingested_date_gets_its_analytics_again(platform: Platform) -> None:
    """The statistics of DAY are computed; then one of its objects is rewritten with another
    reading and re-ingested: the sensor requests analytics_job for DAY once, and the statistics
    computed then count the new reading."""
    files = stats_lines()
    for key, lines in files.items():
        platform.upload(key, *lines)
    platform.ingest()
    platform.run([hourly_device_stats])
    assert isinstance(stale_tick(platform), dg.SkipReason)

    key, lines = next(iter(files.items()))
    device = key.split("/")[0]
    platform.upload(key, *lines, record(device, UTC0 + timedelta(minutes=59), temperature=99.0))
    platform.ingest()

    first = stale_tick(platform)
    assert isinstance(first, dg.SensorResult)
    (request,) = first.run_requests or []
    assert str(request.partition_key) == f"{DAY}|{REGION}" and stale_analytics_sensor.job_name == "analytics_job"
    assert request.run_key == stale_tick(platform).run_requests[0].run_key  # type: ignore[union-attr]

    platform.run([hourly_device_stats])
    stats = warehouse_rows(platform.resources["warehouse"].get_engine())
    assert stats[(device, 10)]["temperature_max"] == 99.0
    assert isinstance(stale_tick(platform), dg.SkipReason)
