"""`claimed_key_batches` + `datalog_parquet` (the ingest step) materialized for one date x region
partition through the same code path the Dagster UI and the sensors use, and the compaction job.

Covers a partition materialized as the pending-keys sensor launches it (materialization metadata,
a second materialization for the neighbouring date its rows reached, the Parquet rows in the lake,
the keys and the batch in the ledger, and a rerun with nothing pending that claims and writes
nothing), a backfill run rebuilding its partition, a person's run (no trigger tag) registering
undiscovered raw objects and rebuilding the partition complete, the refusal to run one asset of
the pair without the other, and `compact_lake_job` merging a crowded directory.

Real parts only: a real ephemeral Dagster instance (`dg.instance_for_test`, a temp directory),
`dg.materialize` and `execute_in_process`, a SQLite ledger file, local directories as raw store and
lake, the platform's generator and in-memory DuckDB. Nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from datalog_platform.core.generate import generate
from datalog_platform.core.ledger import raw_keys, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import COMMITTED, PENDING, SUCCESS, batches
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.discovery.assets import raw_datalog_logs
from datalog_platform.defs.ingest.assets import claimed_key_batches, datalog_parquet, ingest_partition
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME, partition_key
from datalog_platform.defs.registry.assets import device_registry
from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings
from datalog_platform_tests.support.lake import lake_rows, local_files, partition_dir, row_ids
from datalog_platform_tests.support.ledger_helpers import key_table
from datalog_platform_tests.support.raw_data import ndjson, raw_log_keys, raw_records

DAY = "2026-11-01"
NEXT_DAY = "2026-11-02"
REGION = "BRCB"  # dev00000's region in the generator's registry
# A late upload of dev00000: filed under 15:00 UTC (23:00 local, DAY) but its records are from
# 16:xx UTC, so they belong to the local date NEXT_DAY.
LATE_KEY = "dev00000/2026110115/late.json"
LATE_LINES = [
    f'{{"device_id":"dev00000","heartbeat":"2026-11-01T16:{10 * i:02d}:00Z","temperature":20.5,"seq":{100 + i}}}'
    for i in range(3)
]


# ---------------------------------------------------------------------------------------------
# Materializing a partition the way the UI launches it


# The tag a sensor, a schedule or the command line puts on its runs: such a run is incremental.
AUTOMATED = {TRIGGER_TAG: "pending_keys_sensor"}


def materialize(
    instance: dg.DagsterInstance,
    resources: dict[str, object],
    part_date: str,
    region: str,
    tags: dict[str, str] | None = None,
    key_limit: int | None = None,
    selection: list[dg.AssetSpec] | None = None,
) -> dg.ExecuteInProcessResult:
    """Materialize the ingest step for one partition, by default as the pending-keys sensor
    launches it (`tags`); `selection` defaults to both of its assets."""
    config = {"ops": {"ingest_partition": {"config": {"key_limit_per_run": key_limit}}}} if key_limit else None
    return dg.materialize(
        [raw_datalog_logs, device_registry, ingest_partition],
        selection=[spec.key for spec in selection or [claimed_key_batches, datalog_parquet]],
        partition_key=partition_key(part_date, region),
        instance=instance,
        resources=resources,
        raise_on_error=False,
        tags=AUTOMATED if tags is None else tags,
        run_config=config,
    )


def test_partition_materializes_as_the_sensor_launches_it(
    tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DATALOG_LEDGER_URL", raising=False)  # the ledger must come from the settings
    home = tmp_path / "home"
    settings = Settings.from_env(
        {
            "DATALOG_HOME": str(home),
            "DATALOG_TZ_OFFSET_HOURS": "8",
        }
    )
    tz = settings.tz_offset_hours
    assert raw_keys.local_date(raw_keys.parse_raw_key(LATE_KEY).hour, tz) == DAY, "test data assumes UTC+8"  # type: ignore[union-attr]
    raw = LocalStore(settings.raw_url)
    summary = generate(raw, devices=3, hours=2, rows=20, seed=1)
    raw.write_bytes(LATE_KEY, ndjson(*LATE_LINES))
    engine = ledger_engine(settings.ledger_url)
    registration.upsert_devices(engine, summary.devices)
    registration.register_keys(engine, raw.list(), tz, REINGEST)
    regions = registration.known_regions(engine)
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, regions)
    resources = dict(build_definitions(settings).resources)

    expected_all = raw_records(raw)
    brcb_keys = {k for k in raw_log_keys(raw) if k.startswith("dev00000/")}
    expected = sorted(r for r in expected_all if r[0] in brcb_keys)
    expected_late = sorted(r for r in expected if r[0] == LATE_KEY)
    assert len(brcb_keys) == 3 and len(expected_late) == 3

    result = materialize(instance, resources, DAY, REGION)
    assert result.success, [e.message for e in result.get_step_failure_events()]

    # Metadata on the partition's own materialization, and one for the neighbouring date.
    mats = {
        (e.materialization.asset_key.to_user_string(), e.materialization.partition): e.materialization
        for e in result.get_asset_materialization_events()
    }
    own = mats[("datalog_parquet", f"{DAY}|{REGION}")]
    meta = {k: v.value for k, v in own.metadata.items()}
    assert meta["rows"] == len(expected)
    assert meta["rows_to_own_date"] == len(expected) - len(expected_late)
    assert meta["keys"] == len(brcb_keys)
    assert meta["quarantined_lines"] == 0
    lake_dir = partition_dir(Path(settings.lake_url), DAY, REGION)
    assert Path(str(meta["path"])) == lake_dir
    assert any(lake_dir.glob("*.parquet"))
    neighbour = mats[("datalog_parquet", f"{NEXT_DAY}|{REGION}")]
    assert neighbour.metadata["rows"].value == len(expected_late)
    claimed = mats[("claimed_key_batches", f"{DAY}|{REGION}")]
    assert claimed.metadata["keys"].value == len(brcb_keys)
    assert instance.get_materialized_partitions(dg.AssetKey("datalog_parquet")) == {
        f"{DAY}|{REGION}",
        f"{NEXT_DAY}|{REGION}",
    }

    # The lake holds exactly the partition's generated records, each in its own local date.
    rows = lake_rows(settings.lake_url)
    assert row_ids(rows) == expected
    by_day = {str(r["hiveperiod"]) for r in rows if r["source_file"] == LATE_KEY}
    assert by_day == {NEXT_DAY}
    assert {r["dstrct_code"] for r in rows} == {REGION}

    # The ledger: this partition's keys SUCCESS with their batch committed, every other key pending.
    table = key_table(settings.ledger_url)
    assert {k for k, r in table.items() if r["status"] == SUCCESS} == brcb_keys
    assert {r["status"] for k, r in table.items() if k not in brcb_keys} == {PENDING}
    with engine.connect() as conn:
        batch_rows = conn.execute(sa.select(batches.c.status, batches.c.run_id)).all()
    assert [(b.status, b.run_id) for b in batch_rows] == [(COMMITTED, result.run_id)]

    # Nothing pending any more: the run succeeds, claims nothing, writes nothing.
    before = local_files(Path(settings.lake_url))
    again = materialize(instance, resources, DAY, REGION)
    assert again.success
    assert again.get_asset_materialization_events() == []
    assert local_files(Path(settings.lake_url)) == before
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(batches)).scalar_one() == 1
    assert key_table(settings.ledger_url) == table


# ---------------------------------------------------------------------------------------------
# Backfills rebuild; the compaction job merges files


def one_file_per_key(tmp_path: Path, instance: dg.DagsterInstance) -> tuple[Settings, dict[str, object], list]:
    """REGION's three keys of DAY ingested by three runs (one file each); returns the settings,
    the resources and the records the lake must hold for REGION."""
    settings = Settings.from_env({"DATALOG_HOME": str(tmp_path / "home")})
    raw = LocalStore(settings.raw_url)
    summary = generate(raw, devices=3, hours=3, rows=20, seed=2)
    engine = ledger_engine(settings.ledger_url)
    registration.upsert_devices(engine, summary.devices)
    registration.register_keys(engine, raw.list(), settings.tz_offset_hours, REINGEST)
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, registration.known_regions(engine))
    resources = dict(build_definitions(settings).resources)
    for _ in range(3):
        assert materialize(instance, resources, DAY, REGION, key_limit=1).success
    expected = sorted(r for r in raw_records(raw) if r[0].startswith("dev00000/"))
    return settings, resources, expected


def day_files(settings: Settings) -> set[str]:
    lake_dir = partition_dir(Path(settings.lake_url), DAY, REGION)
    return {p.name for p in lake_dir.glob("*.parquet")}


def test_a_backfill_run_rebuilds_its_partition(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    settings, resources, expected = one_file_per_key(tmp_path, instance)
    old = day_files(settings)
    assert len(old) == 3

    result = materialize(instance, resources, DAY, REGION, tags={"dagster/backfill": "abcdefgh"})

    assert result.success, [e.message for e in result.get_step_failure_events()]
    own = next(
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == dg.AssetKey("datalog_parquet")
        and e.materialization.partition == f"{DAY}|{REGION}"
    )
    meta = {k: v.value for k, v in own.metadata.items()}
    assert meta["run_kind"] == "rebuild" and meta["launched_by"] == "backfill"
    assert meta["keys"] == 3 and meta["files_replaced"] == 3
    new = day_files(settings)
    assert new.isdisjoint(old) and new == {f"part-{meta['batch_id']}-0.parquet"}
    assert row_ids(lake_rows(settings.lake_url)) == expected

    # an ordinary run of the same partition claims nothing: the rebuild held no pending key back
    again = materialize(instance, resources, DAY, REGION)
    assert again.success and again.get_asset_materialization_events() == []


def test_compaction_job_merges_crowded_directories(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    settings, resources, expected = one_file_per_key(tmp_path, instance)
    job = build_definitions(settings).resolve_job_def("compact_lake_job")
    config = {"ops": {"compact_lake": {"config": {"min_files": 3}}}}

    untouched = job.execute_in_process(run_config=config, instance=instance, resources=resources)
    assert untouched.success and len(day_files(settings)) == 3  # 3 files is not more than 3

    config["ops"]["compact_lake"]["config"]["min_files"] = 2
    result = job.execute_in_process(run_config=config, instance=instance, resources=resources)

    assert result.success
    (merged,) = day_files(settings)
    observations = [
        e.event_specific_data.asset_observation
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_OBSERVATION
    ]
    (seen,) = observations
    assert seen.asset_key == dg.AssetKey("datalog_parquet") and seen.partition == f"{DAY}|{REGION}"
    assert (seen.metadata["files_before"].value, seen.metadata["files_after"].value) == (3, 1)
    assert merged == f"part-{seen.metadata['compacted_by'].value}-0.parquet"
    assert row_ids(lake_rows(settings.lake_url)) == expected


def test_one_asset_of_the_pair_cannot_run_without_the_other(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """The claim and the write are one step: a run of datalog_parquet alone (which would write with
    a batch it did not claim) is refused before it starts; the UI runs both instead."""
    settings, resources, expected = one_file_per_key(tmp_path, instance)
    for alone in (datalog_parquet, claimed_key_batches):
        with pytest.raises(dg.DagsterInvalidDefinitionError) as refused:
            materialize(instance, resources, DAY, REGION, tags={}, selection=[alone])
        assert "subset" in str(refused.value.__cause__)
    assert row_ids(lake_rows(settings.lake_url)) == expected


def test_a_person_materializing_a_partition_rebuilds_it_complete(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A run launched by a person (no trigger tag) registers the partition's raw objects that
    discovery has not seen yet, reprocesses every key and replaces the old files: afterwards the
    partition holds every raw record of its keys exactly once."""
    settings, resources, _ = one_file_per_key(tmp_path, instance)
    raw = LocalStore(settings.raw_url)
    raw.write_bytes(LATE_KEY, ndjson(*LATE_LINES))  # uploaded, never discovered
    old = day_files(settings)

    result = materialize(instance, resources, DAY, REGION, tags={})

    assert result.success, [e.message for e in result.get_step_failure_events()]
    mats = {
        (e.materialization.asset_key.to_user_string(), e.materialization.partition): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    claim = {k: v.value for k, v in mats[("claimed_key_batches", f"{DAY}|{REGION}")].items()}
    assert (claim["run_kind"], claim["launched_by"], claim["keys_registered"], claim["keys"]) == (
        "rebuild",
        "person",
        1,
        4,
    )
    own = {k: v.value for k, v in mats[("datalog_parquet", f"{DAY}|{REGION}")].items()}
    assert own["run_kind"] == "rebuild" and own["files_replaced"] == 3
    assert day_files(settings).isdisjoint(old)
    expected = sorted(r for r in raw_records(raw) if r[0].startswith("dev00000/"))
    rows = lake_rows(settings.lake_url)
    assert row_ids(rows) == expected
    assert own["dagster/row_count"] == sum(1 for r in rows if str(r["hiveperiod"]) == DAY)
    late = mats[("datalog_parquet", f"{NEXT_DAY}|{REGION}")]
    assert late["dagster/row_count"].value == len(LATE_LINES)

    # a second Materialize rebuilds again and changes nothing in what the partition holds
    assert materialize(instance, resources, DAY, REGION, tags={}).success
    assert row_ids(lake_rows(settings.lake_url)) == expected


def test_a_run_with_an_object_gone_says_so(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    """A raw object deleted between its discovery and its run: the run succeeds with the other
    objects, its materialization counts the missing one and its log names it and what to do."""
    settings = Settings.from_env({"DATALOG_HOME": str(tmp_path / "home"), "DATALOG_TZ_OFFSET_HOURS": "8"})
    raw = LocalStore(settings.raw_url)
    summary = generate(raw, devices=1, hours=2, rows=20, seed=1, bad_file_share=0.0)
    engine = ledger_engine(settings.ledger_url)
    registration.upsert_devices(engine, summary.devices)
    registration.register_keys(engine, raw.list(), settings.tz_offset_hours, REINGEST)
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, registration.known_regions(engine))
    gone, kept = sorted(raw_log_keys(raw))
    raw.delete([gone])

    result = materialize(instance, dict(build_definitions(settings).resources), DAY, REGION)
    assert result.success, [e.message for e in result.get_step_failure_events()]

    (own,) = [
        e.materialization
        for e in result.get_asset_materialization_events()
        if e.materialization.asset_key == datalog_parquet.key
    ]
    meta = {k: v.value for k, v in own.metadata.items()}
    assert (meta["keys"], meta["missing_keys"], meta["rows"]) == (2, 1, 20)
    warnings = [e.message for e in instance.all_logs(result.run_id) if "gone from the raw store" in e.message]
    assert warnings and "MISSING" in warnings[0] and "datalog ledger requeue --status MISSING" in warnings[0]
    assert {k: r["status"] for k, r in key_table(settings.ledger_url).items()} == {gone: "MISSING", kept: SUCCESS}
    assert {r["source_file"] for r in lake_rows(settings.lake_url)} == {kept}
