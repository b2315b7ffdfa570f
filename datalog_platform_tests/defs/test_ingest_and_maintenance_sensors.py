"""The ingest sensor and schedule (defs/ingest) and the maintenance sensors (defs/maintenance):
`pending_keys_sensor`, `hourly_ingest_schedule`, `batch_recovery_sensor` (run failure) and
`expired_lease_sensor`.

Covers run keys (stable for the same backlog; new after new keys, keys handed back by a failed
batch, or a key seen in a new version, each time it is), partitions with a queued/running run or
an already-run backlog skipped, region dynamic partitions requested with the runs, the per-tick
cap, SkipReason texts, out-of-range dates, the schedule producing the same requests (and its
default STOPPED, the sensors' default RUNNING), the
recovery sensor aborting a WRITING batch of a really failed run (files deleted, keys PENDING with
attempts + 1, or FAILED at the limit), and the lease sensor taking over a crashed writer's batch
once its lease lapsed while leaving a live one alone.

Real parts only: real Dagster instances (`dg.instance_for_test`), sensors and schedules evaluated
with Dagster's own context builders, a real `ingest_partition_job` run that fails in process, a
SQLite ledger in a temp file and the running PostgreSQL named by DATALOG_TEST_POSTGRES_URL
(conftest's `ledger_url` and `engine`: a fresh schema per test, skipped with a visible reason when
unset), and a local directory as the lake.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from dagster_aws.s3 import S3Resource

from datalog_platform.core.backlog import ingestible_backlog
from datalog_platform.core.ledger import protocol, registration, stats
from datalog_platform.core.ledger.outcomes import KeyOutcome
from datalog_platform.core.ledger.schema import ABORTED, CLAIMED, FAILED, PENDING, SUCCESS, WRITING, batches, keys
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo
from datalog_platform.defs.constants import TRIGGER_TAG
from datalog_platform.defs.ingest.schedules import hourly_ingest_schedule
from datalog_platform.defs.ingest.sensors import BACKLOG_TAG, backlog_runs, pending_keys_sensor
from datalog_platform.defs.maintenance.sensors import batch_recovery_sensor, expired_lease_sensor
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME
from datalog_platform.defs.resources import LedgerResource, StoresResource
from datalog_platform.defs.wiring import build_definitions
from datalog_platform.settings import Settings

TZ = 8
DAY = "2026-11-01"
NEXT_DAY = "2026-11-02"
DEVICES = [("dev001", "BRCB"), ("dev002", "KPCS"), ("dev003", "ZZTOP")]


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


@pytest.fixture
def registered_devices(engine: sa.Engine) -> None:
    """DEVICES in the registry of conftest's `engine` (on `ledger_url`: SQLite, then PostgreSQL)."""
    registration.upsert_devices(engine, DEVICES)


def register(engine: sa.Engine, *names: str) -> None:
    """Register raw keys `{device}/{YYYYMMDDHH}/{name}` (UTC hour; local date = hour + 8h)."""
    registration.register_keys(engine, [ObjectInfo(name, 10, "etag") for name in names], TZ, REINGEST)


def tick(instance: dg.DagsterInstance, ledger_url: str, max_runs: int = 20) -> dg.SensorResult | dg.SkipReason:
    ledger = LedgerResource(url=ledger_url, max_runs_per_tick=max_runs)
    context = dg.build_sensor_context(instance=instance, resources={"ledger": ledger})
    result = pending_keys_sensor(context)
    assert isinstance(result, (dg.SensorResult, dg.SkipReason))
    return result


def run_keys(result: dg.SensorResult | dg.SkipReason) -> dict[str, str]:
    """partition key -> run key of the requested runs."""
    assert isinstance(result, dg.SensorResult), result
    return {str(r.partition_key): str(r.run_key) for r in result.run_requests or []}


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus, tags: dict[str, str]) -> None:
    instance.add_run(dg.DagsterRun(job_name="ingest_partition_job", run_id=str(uuid.uuid4()), status=status, tags=tags))


# ---------------------------------------------------------------------------------------------
# Pending-keys sensor


@pytest.mark.usefixtures("registered_devices")
def test_a_rewritten_key_gets_a_run_each_time_it_is_rewritten(
    instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str
) -> None:
    """A key ingested, then seen in a new version, is pending again with a backlog it never had:
    the sensor requests a run of its partition under a new run key, and again for the next
    version, though the count, ids and attempts of the pending keys are the same each time."""
    name = "dev001/2026110100/a.json"
    seen: list[str] = []
    for etag in ("v1", "v2", "v3"):
        registration.register_keys(engine, [ObjectInfo(name, 10, etag)], TZ, REINGEST)
        (run_key,) = run_keys(tick(instance, ledger_url)).values()
        assert run_key not in seen
        seen.append(run_key)
        add_run(instance, dg.DagsterRunStatus.SUCCESS, {BACKLOG_TAG: run_key, "dagster/partition": f"{DAY}|BRCB"})
        batch = protocol.claim_batch(engine, DAY, "BRCB", 10, "a-run", 60)
        assert batch is not None
        (key,) = batch.keys
        protocol.commit_batch(engine, batch.batch_id, [KeyOutcome(key.key_id, SUCCESS, version=key.version)], [], 0, 0)
        assert isinstance(tick(instance, ledger_url), dg.SkipReason)


@pytest.mark.usefixtures("registered_devices")
def test_run_keys_follow_the_backlog(
    instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str, tmp_path: Path
) -> None:
    """The same pending keys give the same run keys tick after tick; a new key changes its
    partition's run key only; keys handed back by an aborted batch (attempts + 1) change it again."""
    register(engine, "dev001/2026110100/a.json", "dev001/2026110101/b.json", "dev002/2026110100/c.json")
    brcb, kpcs = f"{DAY}|BRCB", f"{DAY}|KPCS"

    first = run_keys(tick(instance, ledger_url))
    assert set(first) == {brcb, kpcs}
    assert all(run_key.startswith(f"{partition}:") for partition, run_key in first.items())
    assert run_keys(tick(instance, ledger_url)) == first

    register(engine, "dev001/2026110102/d.json")
    second = run_keys(tick(instance, ledger_url))
    assert second[kpcs] == first[kpcs]
    assert second[brcb] != first[brcb]

    batch = protocol.claim_batch(engine, DAY, "BRCB", 10, "a-run", 60)
    assert batch is not None and len(batch.keys) == 3
    assert set(run_keys(tick(instance, ledger_url))) == {kpcs}  # nothing PENDING in BRCB while claimed
    assert protocol.abort_batch(engine, LocalStore(tmp_path / "lake"), batch.batch_id, "boom", 3)
    third = run_keys(tick(instance, ledger_url))
    assert third[kpcs] == first[kpcs]
    assert third[brcb] not in {first[brcb], second[brcb]}
    assert registration.partition_fingerprints(engine)[(DAY, "BRCB")] == third[brcb].split(":", 1)[1]

    result = tick(instance, ledger_url)
    assert isinstance(result, dg.SensorResult)
    for request in result.run_requests or []:
        assert request.tags[TRIGGER_TAG] == "pending_keys_sensor"
        assert request.tags[BACKLOG_TAG] == request.run_key


@pytest.mark.usefixtures("registered_devices")
def test_partitions_with_a_run_in_progress_or_already_run_are_skipped(
    instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str
) -> None:
    """A starting or started run of the partition claims its keys: no second run. A backlog whose run
    already finished (e.g. failed before claiming) is not requested again every tick."""
    register(engine, "dev001/2026110100/a.json", "dev002/2026110100/c.json", "dev001/2026110200/e.json")
    first = run_keys(tick(instance, ledger_url))
    assert set(first) == {f"{DAY}|BRCB", f"{DAY}|KPCS", f"{NEXT_DAY}|BRCB"}

    add_run(instance, dg.DagsterRunStatus.STARTED, {"dagster/partition": f"{DAY}|BRCB"})
    add_run(instance, dg.DagsterRunStatus.STARTING, {"dagster/partition": f"{DAY}|KPCS"})
    assert set(run_keys(tick(instance, ledger_url))) == {f"{NEXT_DAY}|BRCB"}

    add_run(
        instance,
        dg.DagsterRunStatus.FAILURE,
        {"dagster/partition": f"{NEXT_DAY}|BRCB", BACKLOG_TAG: first[f"{NEXT_DAY}|BRCB"]},
    )
    skipped = tick(instance, ledger_url)
    assert isinstance(skipped, dg.SkipReason)
    assert "2 partition(s) already have a run in progress" in str(skipped.skip_message)
    assert "1 partition(s) already had a run for the same pending keys" in str(skipped.skip_message)

    # A run of another partition, or a finished run of this one, does not block it.
    register(engine, "dev001/2026110201/f.json")
    assert set(run_keys(tick(instance, ledger_url))) == {f"{NEXT_DAY}|BRCB"}


@pytest.mark.usefixtures("registered_devices")
def test_new_regions_are_requested_as_dynamic_partitions(
    instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str
) -> None:
    register(engine, "dev001/2026110100/a.json", "dev003/2026110100/z.json")
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, ["BRCB"])
    result = tick(instance, ledger_url)
    assert isinstance(result, dg.SensorResult)
    assert set(run_keys(result)) == {f"{DAY}|BRCB", f"{DAY}|ZZTOP"}
    requests = result.dynamic_partitions_requests or []
    assert [(type(r), r.partitions_def_name, list(r.partition_keys)) for r in requests] == [
        (dg.AddDynamicPartitionsRequest, REGION_PARTITIONS_NAME, ["ZZTOP"])
    ]

    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, ["ZZTOP"])
    again = tick(instance, ledger_url)
    assert isinstance(again, dg.SensorResult)
    assert not again.dynamic_partitions_requests


@pytest.mark.usefixtures("registered_devices")
def test_one_tick_requests_at_most_the_cap(instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str) -> None:
    """Oldest dates first, at most DATALOG_MAX_RUNS_PER_TICK runs; the rest wait and the summary says so."""
    register(engine, *[f"dev001/202611{day:02d}00/a.json" for day in range(1, 6)])
    assert Settings.from_env({"DATALOG_MAX_RUNS_PER_TICK": "2"}).max_runs_per_tick == 2
    assert set(run_keys(tick(instance, ledger_url, max_runs=2))) == {"2026-11-01|BRCB", "2026-11-02|BRCB"}

    plan = backlog_runs(instance, engine, "test", max_runs=2, dates=("2020-01-01", "2026-11-30"))
    assert plan.deferred == 3
    assert "3 more partition(s) wait for a later tick (at most 2 per tick)" in plan.summary()
    assert Settings.from_env({}).max_runs_per_tick == 20


@pytest.mark.usefixtures("registered_devices")
def test_skip_reasons_and_out_of_range_dates(instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str) -> None:
    """Nothing pending: a SkipReason that says so. Keys dated before the partitions' start date or
    after the last date partition get no run, and the reason counts them."""
    empty = tick(instance, ledger_url)
    assert isinstance(empty, dg.SkipReason)
    assert empty.skip_message == "no pending keys in any date x region partition"

    register(engine, "dev001/2019010100/old.json", "dev002/2099010100/future.json")
    out = tick(instance, ledger_url)
    assert isinstance(out, dg.SkipReason)
    assert "2 pending key(s) are dated outside the date partitions" in str(out.skip_message)
    assert ingestible_backlog(engine, "2020-01-01", "2098-12-31")[1] == 2

    register(engine, "dev001/2026110100/a.json")
    assert set(run_keys(tick(instance, ledger_url))) == {f"{DAY}|BRCB"}


# ---------------------------------------------------------------------------------------------
# Hourly schedule and default statuses


@pytest.mark.usefixtures("registered_devices")
def test_schedule_requests_the_same_runs(instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str) -> None:
    register(engine, "dev001/2026110100/a.json", "dev003/2026110100/z.json", "dev002/2026110200/c.json")
    sensor_result = tick(instance, ledger_url)
    assert isinstance(sensor_result, dg.SensorResult)
    scheduled = datetime(2026, 11, 2, 5, 0, tzinfo=UTC)
    with dg.build_schedule_context(
        instance=instance, scheduled_execution_time=scheduled, resources={"ledger": LedgerResource(url=ledger_url)}
    ) as context:
        requests = hourly_ingest_schedule(context)
        with protocol_all_done(engine):
            idle = hourly_ingest_schedule(context)
    assert isinstance(requests, list)

    from_sensor = {str(r.partition_key): r for r in sensor_result.run_requests or []}
    from_schedule = {str(r.partition_key): r for r in requests}
    assert set(from_schedule) == set(from_sensor) == {f"{DAY}|BRCB", f"{DAY}|ZZTOP", f"{NEXT_DAY}|KPCS"}
    for partition, request in from_schedule.items():
        assert request.run_key == f"{scheduled.isoformat()}:{from_sensor[partition].run_key}"
        assert request.tags[BACKLOG_TAG] == from_sensor[partition].tags[BACKLOG_TAG]
        assert request.tags[TRIGGER_TAG] == "hourly_ingest_schedule"
    # Schedules cannot return dynamic partition requests: the regions were added to the instance.
    assert set(instance.get_dynamic_partitions(REGION_PARTITIONS_NAME)) == {"BRCB", "KPCS", "ZZTOP"}
    assert isinstance(idle, dg.SkipReason)
    assert idle.skip_message == "no pending keys in any date x region partition"


class protocol_all_done:  # noqa: N801 - reads as a statement in the test
    """Marks every PENDING key SUCCESS for the duration of the block, then PENDING again."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def __enter__(self) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(keys).where(keys.c.status == PENDING).values(status="SUCCESS"))

    def __exit__(self, *exc: object) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.update(keys).where(keys.c.status == "SUCCESS").values(status=PENDING))


def test_default_statuses_and_wiring() -> None:
    """The sensors start RUNNING with the code location, the schedule STOPPED (one cadence at a time)."""
    wired = build_definitions(Settings.from_env())
    assert {s.name for s in wired.sensors} == {
        "raw_logs_sensor",
        "pending_keys_sensor",
        "batch_recovery_sensor",
        "expired_lease_sensor",
        "stale_analytics_sensor",
    }
    assert pending_keys_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert wired.resolve_sensor_def("stale_analytics_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    assert wired.resolve_sensor_def("stale_analytics_sensor").job_name == "analytics_job"
    assert pending_keys_sensor.minimum_interval_seconds == 10
    assert batch_recovery_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert expired_lease_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert hourly_ingest_schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert hourly_ingest_schedule.cron_schedule == "0 * * * *"
    assert wired.resolve_sensor_def("pending_keys_sensor").job_name == "ingest_partition_job"
    assert wired.resolve_sensor_def("batch_recovery_sensor") is not None
    assert wired.resolve_sensor_def("expired_lease_sensor") is not None
    assert wired.resolve_schedule_def("hourly_ingest_schedule").job_name == "ingest_partition_job"


# ---------------------------------------------------------------------------------------------
# Batch recovery after a failed run


@pytest.mark.parametrize(("attempts_before", "expected_status"), [(0, PENDING), (2, FAILED)])
@pytest.mark.usefixtures("registered_devices")
def test_recovery_sensor_aborts_the_failed_runs_writing_batch(
    instance: dg.DagsterInstance,
    engine: sa.Engine,
    ledger_url: str,
    tmp_path: Path,
    attempts_before: int,
    expected_status: str,
) -> None:
    """A real run claims a batch, then its ingest step fails before `ingest_batch` (an
    invalid DuckDB memory limit), so the batch stays WRITING. Files it may have written are placed
    under its recorded target directory. The failure sensor aborts it at once: files deleted, keys
    PENDING with attempts + 1 (FAILED when that reaches DATALOG_MAX_ATTEMPTS = 3), the step's error kept."""
    register(engine, "dev001/2026110100/a.json", "dev001/2026110101/b.json")
    with engine.begin() as conn:
        conn.execute(sa.update(keys).values(attempts=attempts_before))
    settings = Settings.from_env(
        {
            "DATALOG_HOME": str(tmp_path / "home"),
            "DATALOG_LEDGER_URL": ledger_url,
            "DATALOG_LAKE_URL": str(tmp_path / "lake"),
            "DATALOG_MAX_ATTEMPTS": "3",
        }
    )
    built = build_definitions(settings)
    instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, ["BRCB"])
    result = built.resolve_job_def("ingest_partition_job").execute_in_process(
        instance=instance,
        partition_key=f"{DAY}|BRCB",
        run_config={"ops": {"ingest_partition": {"config": {"ram_limit": "lots"}}}},
        tags={TRIGGER_TAG: "pending_keys_sensor"},
        raise_on_error=False,
    )
    assert not result.success
    run_id = result.run_id

    assert len(stats.writing_batches_of_run(engine, run_id)) == 1
    batch_id = stats.writing_batches_of_run(engine, run_id)[0]
    target = f"datalog_v2/hiveperiod={DAY}/dstrct_code=BRCB"
    protocol.record_intent(engine, batch_id, [target])
    lake = LocalStore(settings.lake_url)
    lake.write_bytes(f"{target}/part-{batch_id}-0.parquet", b"partial")
    lake.write_bytes(f"{target}/part-other-batch-0.parquet", b"committed by someone else")
    # keys that failed twice before are retried one a batch, before their last attempt
    claimed = {k.key_id for k in key_list(engine) if k.status == CLAIMED}
    assert len(claimed) == (2 if attempts_before == 0 else 1)
    assert stats.writing_batches_of_run(engine, "another-run") == []

    resources = {"ledger": built.resources["ledger"], "stores": built.resources["stores"]}
    outcome = evaluate_recovery(instance, result, resources)
    assert outcome is None

    assert [o.key for o in lake.list(target)] == [f"{target}/part-other-batch-0.parquet"]
    rows = [k for k in key_list(engine) if k.key_id in claimed]
    assert {r.status for r in rows} == {expected_status}
    assert {r.attempts for r in rows} == {attempts_before + 1}
    for row in rows:
        assert run_id in row.error and "ingest_partition" in row.error and "memory size" in row.error
    with engine.connect() as conn:
        assert conn.execute(sa.select(batches.c.status).where(batches.c.batch_id == batch_id)).scalar_one() == ABORTED
    assert stats.writing_batches_of_run(engine, run_id) == []

    # A second evaluation for the same run finds nothing left to do and changes nothing.
    again = evaluate_recovery(instance, result, resources)
    assert isinstance(again, dg.SkipReason)
    assert again.skip_message == f"run {run_id} left no WRITING batch"
    assert [(r.status, r.attempts) for r in key_list(engine) if r.key_id in claimed] == [
        (r.status, r.attempts) for r in rows
    ]
    assert WRITING not in batch_statuses(engine)


def evaluate_recovery(
    instance: dg.DagsterInstance, result: dg.ExecuteInProcessResult, resources: dict[str, object]
) -> dg.SkipReason | None:
    """Evaluate the failure sensor for the failed run, as the daemon does (resources opened in scope)."""
    with dg.build_run_status_sensor_context(
        sensor_name="batch_recovery_sensor",
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources=resources,
    ) as context:
        return batch_recovery_sensor(context.for_run_failure())


def key_list(engine: sa.Engine) -> list[sa.Row]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(keys).order_by(keys.c.key_id)).all())


def batch_statuses(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(batches.c.status)).scalars())


# ---------------------------------------------------------------------------------------------
# Lease expiry: batches of crashed processes


@pytest.mark.usefixtures("registered_devices")
def test_expired_lease_sensor_takes_over_a_crashed_writers_batch(
    instance: dg.DagsterInstance, engine: sa.Engine, ledger_url: str, tmp_path: Path
) -> None:
    """A writer that died after writing its files leaves its batch WRITING; once the lease lapses,
    a tick of the sensor deletes the files and hands the keys back, with no run involved. A batch
    whose lease still runs is left alone."""
    register(engine, "dev001/2026110100/a.json", "dev002/2026110100/b.json")
    lake = LocalStore(tmp_path / "lake")
    crashed = protocol.claim_batch(engine, DAY, "BRCB", 10, "crashed-run", 60)
    alive = protocol.claim_batch(engine, DAY, "KPCS", 10, "live-run", 600)
    assert crashed is not None and alive is not None
    for batch, region in ((crashed, "BRCB"), (alive, "KPCS")):
        target = f"datalog_v2/hiveperiod={DAY}/dstrct_code={region}"
        protocol.record_intent(engine, batch.batch_id, [target])
        lake.write_bytes(f"{target}/part-{batch.batch_id}-0.parquet", b"written before the crash")
    with engine.begin() as conn:
        conn.execute(
            sa.update(batches).where(batches.c.batch_id == crashed.batch_id).values(lease_until=datetime(2000, 1, 1))
        )
    resources = {
        "ledger": LedgerResource(url=ledger_url),
        "stores": StoresResource(raw_url=str(tmp_path / "raw"), lake_url=str(tmp_path / "lake"), s3=S3Resource()),
    }

    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = expired_lease_sensor(context)

    assert isinstance(result, dg.SkipReason) and "recovered 1 batch" in str(result.skip_message)
    assert [obj.key.rsplit("/", 1)[1] for obj in lake.list()] == [f"part-{alive.batch_id}-0.parquet"]
    with engine.connect() as conn:
        statuses = dict(conn.execute(sa.select(batches.c.batch_id, batches.c.status)).all())
        key_rows = {r.key: (r.status, r.attempts) for r in conn.execute(sa.select(keys)).all()}
    assert statuses == {crashed.batch_id: ABORTED, alive.batch_id: WRITING}
    assert key_rows == {"dev001/2026110100/a.json": (PENDING, 1), "dev002/2026110100/b.json": (CLAIMED, 0)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        again = expired_lease_sensor(context)
    assert isinstance(again, dg.SkipReason) and again.skip_message == "no batch with a lapsed lease"
