"""The platform running itself under a real `dagster-daemon`: no run is launched by hand.

One daemon serves the module (starting it, and the sensors' fixed 30 s / 10 s intervals, are the
expensive part). Before it starts: DAGSTER_HOME is prepared by `datalog dagster-home` (consolidated
event log, run queue of 2 with one run per partition), the device registry is loaded with `datalog
devices load`, and a dead writer is staged: a batch claimed with a 2 s lease (no run), its write
intent recorded and a stray `part-{batch_id}-0.parquet` holding duplicate rows left in its
partition. Once every sensor has ticked (they are RUNNING by default; nothing toggles them), new raw
files for two datasets are uploaded at the same moment:

- "upload": 3 devices x 2 hours, three date x region partitions, checked by
  `test_new_uploads_reach_the_lake_without_a_manual_trigger` (every (source_file, seq) exactly once,
  every key SUCCESS, the runs launched by `pending_keys_sensor` with partition tags; the latency
  from upload to committed Parquet is reported, not asserted: benchmarks/latency.py measures it);
- "crash": 1 device x 2 hours of 20,000 rows in a partition of its own, whose first run is SIGKILLed
  while its batch is WRITING in the ledger, checked by `test_killed_run_is_recovered_exactly_once`.
  That test uploads these files itself, so it is already watching when the sensor launches the run
  (a run of a few files finishes within seconds now that its steps share one process).

`test_dead_writer_is_taken_over_by_expired_lease_sensor` checks the staged dead writer; each test
also passes on its own.

`test_run_orphaned_by_a_daemon_crash_does_not_block_its_partition` runs two daemons of its own, one
after the other: the first is SIGKILLed with its whole process group (code server, run worker, steps)
while a run's batch is WRITING, the second must get the partition ingested again. Left alone, the
orphaned run would stay STARTED forever (DefaultRunLauncher has no worker health check and
DAGSTER_HOME has no run monitoring) and `pending_keys_sensor` would count it as a run in progress,
so the keys that `expired_lease_sensor` hands back would never be requested again; the sensor marks
such a run failed when it takes its batch over.

Real parts only: `dagster-daemon run -w workspace.yaml` in its own process group (its code server,
run workers and step processes included), the `datalog` command in child processes, a local raw
store and lake under a temporary DATALOG_HOME, the SQLite ledger, the Dagster instance in
DAGSTER_HOME (runs, tags, sensor ticks), /proc for the process tree and DuckDB reading the Parquet
files. Nothing is mocked. The daemon's process group is SIGTERMed, then SIGKILLed, at teardown.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
import sqlalchemy as sa

from datalog_platform.core.generate import device_registry, generate, log_lines, registry_csv
from datalog_platform.core.ledger import claims, clock, protocol, raw_keys, registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import ABORTED, SUCCESS, WRITING
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore
from datalog_platform.settings import Settings
from datalog_platform_tests.support.cli_helpers import run_ok, write_csv
from datalog_platform_tests.support.daemon_helpers import (
    BIN,
    WORKSPACE,
    Daemon,
    kill_tree,
    partition_runs,
    poll,
    run_worker_pid,
    sensor_states,
    sensor_ticks,
    service_env,
    start_daemon,
    wait_gone,
)
from datalog_platform_tests.support.lake import batch_files, partition_dir, partition_row_ids
from datalog_platform_tests.support.ledger_helpers import batch_row, batch_rows, key_rows
from datalog_platform_tests.support.raw_data import RowId, is_raw_log, ndjson, raw_records

log = logging.getLogger(__name__)

TZ_OFFSET_HOURS = 8
LEASE_SECONDS = 15
SENSORS = ("raw_logs_sensor", "pending_keys_sensor", "batch_recovery_sensor", "expired_lease_sensor")
TRIGGER = "pending_keys_sensor"
# How long the test waits for the upload to be committed (at most 30 s until discovery, 10 s until the
# run request, then the run queue, 2 at a time, and the runs): a deadline for a hung daemon, not a target.
UPLOAD_DEADLINE_SECONDS = 240.0
DEAD_DEVICE, DEAD_REGION = "dev09000", "KPCS"


@dataclass(frozen=True)
class Dataset:
    """Raw files of one upload and the (source_file, seq) pairs the lake must hold for them."""

    name: str
    keys: frozenset[str]
    expected: tuple[RowId, ...]
    partitions: frozenset[tuple[str, str]]  # (local date, region)

    @property
    def partition_keys(self) -> set[str]:
        return {f"{d}|{r}" for d, r in self.partitions}


@dataclass(frozen=True)
class DeadWriter:
    batch: claims.Batch
    dataset: Dataset
    stray_file: Path


@dataclass
class Platform:
    home: Path
    settings: Settings
    raw: LocalStore
    lake: Path
    engine: sa.Engine  # the test's own reader of the ledger
    instance: dg.DagsterInstance
    daemon: Daemon
    dead: DeadWriter
    upload: Dataset
    regions: dict[str, str]
    uploaded_at: datetime  # naive UTC, as the ledger stores times
    uploaded_monotonic: float

    def upload_crash(self) -> Dataset:
        """The crash test's files, uploaded when that test is already watching the ledger. They go to
        a device the ledger knows (dev00000 of the upload), so they are filed under hours of the
        discovery window, which a tick lists for every known device; older hours of a known device
        are found only by the daily reconcile. The two hours fall on one local date."""
        start = clock.utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
        if local_date(start) != local_date(start + timedelta(hours=1)):
            start -= timedelta(hours=1)
        keys = upload(
            self.raw,
            lambda: generate(self.raw, devices=1, hours=2, rows=20_000, seed=12, start=start, bad_file_share=0),
        )
        return dataset("crash", self.raw, keys, self.regions)

    def state(self) -> str:
        """Ledger, batches and runs as they are now, for a failure message."""
        with self.engine.connect() as conn:
            counts = conn.execute(sa.text("SELECT part_date, dstrct_code, status, count(*) FROM keys GROUP BY 1, 2, 3"))
            keys_text = "\n".join(f"  keys {d} {r} {s}: {n}" for d, r, s, n in counts)
        batch_text = "\n".join(
            f"  batch {b['batch_id'][:8]} {b['part_date']} {b['dstrct_code']} {b['status']} run={b['run_id']}"
            for b in batch_rows(self.engine)
        )
        runs = self.instance.get_runs(filters=dg.RunsFilter(job_name="ingest_partition_job"))
        run_text = "\n".join(
            f"  run {r.run_id[:8]} {r.tags.get('dagster/partition')} {r.status.value} {r.tags.get('datalog/trigger')}"
            for r in runs
        )
        return f"--- ledger\n{keys_text}\n{batch_text}\n--- runs\n{run_text}"


def clean_env(home: Path, dagster_home: Path) -> dict[str, str]:
    """Exactly what the daemon and the CLI get: nothing of the test process's DATALOG_*/DAGSTER_*."""
    return service_env(home, dagster_home, TZ_OFFSET_HOURS, DATALOG_LEASE_SECONDS=str(LEASE_SECONDS))


def local_date(hour: datetime) -> str:
    return raw_keys.local_date(hour, TZ_OFFSET_HOURS)


def dataset(name: str, raw: LocalStore, keys: set[str], regions: dict[str, str]) -> Dataset:
    expected = tuple(sorted(r for r in raw_records(raw) if r[0] in keys))
    partitions = set()
    for key in keys:
        parsed = raw_keys.parse_raw_key(key)
        assert parsed is not None, key
        partitions.add((local_date(parsed.hour), regions[parsed.device_id]))
    return Dataset(name, frozenset(keys), expected, frozenset(partitions))


def upload(raw: LocalStore, write: Callable[[], object]) -> set[str]:
    """Run `write` against the raw store and return the raw log keys it added."""
    before = {o.key for o in raw.list()}
    write()
    return {o.key for o in raw.list() if is_raw_log(o.key)} - before


def stage_dead_writer(
    settings: Settings, raw: LocalStore, lake: Path, day: datetime, regions: dict[str, str]
) -> DeadWriter:
    """A writer that claimed a batch, recorded its intent, wrote part of a file and died: the batch
    stays WRITING with a 2 s lease that nobody renews."""

    def write() -> None:
        for hour in (day, day + timedelta(hours=1)):
            lines = log_lines(DEAD_DEVICE, hour, 20, random.Random(hour.hour), bad=False)
            raw.write_bytes(f"{DEAD_DEVICE}/{hour:%Y%m%d%H}/log.json", ndjson(*lines))

    keys = upload(raw, write)
    data = dataset("dead writer", raw, keys, regions)
    engine = ledger_engine(settings.ledger_url)
    found = registration.register_keys(engine, raw.list(f"{DEAD_DEVICE}/"), TZ_OFFSET_HOURS, REINGEST)
    assert found.registered == len(keys), found
    (part_date, region) = next(iter(data.partitions))
    batch = protocol.claim_batch(engine, part_date, region, 1000, None, lease_seconds=2)
    assert batch is not None and len(batch.keys) == len(keys), batch
    target = partition_dir(Path(), part_date, region).as_posix()
    protocol.record_intent(engine, batch.batch_id, [target])
    stray = lake / target / f"part-{batch.batch_id}-0.parquet"
    stray.parent.mkdir(parents=True, exist_ok=True)
    first = sorted(keys)[0]
    conn = duckdb.connect(":memory:")
    try:  # rows the real batch will write again: left in place they would be duplicates
        conn.execute(
            f"COPY (SELECT '{DEAD_DEVICE}' AS device_id, i::BIGINT AS seq, '{first}' AS source_file "
            f"FROM range(5) t(i)) TO '{stray}' (FORMAT parquet)"
        )
    finally:
        conn.close()
    return DeadWriter(batch, data, stray)


@pytest.fixture(scope="module")
def daemon_platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    home = tmp_path_factory.mktemp("daemon")
    dagster_home = home / "dagster_home"
    env = clean_env(home, dagster_home)
    settings = Settings.from_env(env)

    printed = run_ok(env, "dagster-home").stdout.strip()
    assert Path(printed) == dagster_home.resolve(), printed
    config = (dagster_home / "dagster.yaml").read_text()
    assert "ConsolidatedSqliteEventLogStorage" in config and "max_concurrent_runs" in config, config

    regions = dict(device_registry(3)) | {DEAD_DEVICE: DEAD_REGION}
    csv_path = write_csv(home / "registry.csv", registry_csv(sorted(regions.items())).decode())
    run_ok(env, "devices", "load", str(csv_path))

    raw, lake = LocalStore(settings.raw_url), Path(settings.lake_url)
    today = clock.utcnow().replace(hour=0, minute=0, second=0, microsecond=0)
    dead = stage_dead_writer(settings, raw, lake, today - timedelta(days=6), regions)

    engine = sa.create_engine(settings.ledger_url, connect_args={"timeout": 30})
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    daemon: Daemon | None = None
    try:
        daemon = start_daemon(BIN, WORKSPACE, env, home / "daemon.log")
        # Every sensor ticks with nobody starting it: RUNNING is their default status.
        poll(
            lambda: all(sensor_ticks(instance, name, limit=1) for name in SENSORS),
            timeout=120,
            what=f"a first tick of each of {SENSORS}",
            daemon=daemon,
            detail=lambda: f"stored sensor states: {sensor_states(instance)}",
        )
        # Upload right after raw_logs_sensor's first tick: the next one is a minute away, so no
        # listing can catch a device half uploaded.
        upload_keys = upload(
            raw,
            lambda: generate(
                raw, devices=3, hours=2, rows=20, seed=11, start=today - timedelta(days=10), bad_file_share=0
            ),
        )
        uploaded_at, uploaded_monotonic = clock.utcnow(), time.monotonic()
        yield Platform(
            home=home,
            settings=settings,
            raw=raw,
            lake=lake,
            engine=engine,
            instance=instance,
            daemon=daemon,
            dead=dead,
            upload=dataset("upload", raw, upload_keys, regions),
            regions=regions,
            uploaded_at=uploaded_at,
            uploaded_monotonic=uploaded_monotonic,
        )
    finally:
        survivors = daemon.stop() if daemon is not None else []
        instance.dispose()
        engine.dispose()
        ledger_engine(settings.ledger_url).dispose()
        assert not survivors, f"processes of the daemon's group survived SIGKILL: {survivors}"


def lake_ids(daemon_platform: Platform, data: Dataset) -> list[RowId] | None:
    """The lake's rows of a dataset's partitions that come from its keys; None while a file is
    half written (another run may be writing the same partition)."""
    try:
        ids = [i for d, r in sorted(data.partitions) for i in partition_row_ids(daemon_platform.lake, d, r)]
    except duckdb.Error:
        return None
    return sorted(i for i in ids if i[0] in data.keys)


def all_success(daemon_platform: Platform, data: Dataset) -> dict[str, dict[str, Any]] | None:
    """The dataset's ledger rows once every key is SUCCESS and no run of its partitions is still
    going (a run commits its batch a moment before it ends), else None."""
    rows = key_rows(daemon_platform.engine, data.keys)
    if len(rows) != len(data.keys) or any(r["status"] != SUCCESS for r in rows.values()):
        return None
    for partition in data.partition_keys:
        if not all(r.is_finished for r in partition_runs(daemon_platform.instance, partition)):
            return None
    return rows


def test_dead_writer_is_taken_over_by_expired_lease_sensor(daemon_platform: Platform) -> None:
    dead = daemon_platform.dead
    batch_id = dead.batch.batch_id
    ((part_date, region),) = dead.dataset.partitions
    rows = poll(
        lambda: all_success(daemon_platform, dead.dataset),
        timeout=150,
        what="the dead writer's keys to be taken over and ingested",
        daemon=daemon_platform.daemon,
        detail=daemon_platform.state,
    )
    batch = batch_row(daemon_platform.engine, batch_id)
    assert batch["status"] == ABORTED, batch
    assert batch["error"].startswith("lease expired"), batch
    assert not dead.stray_file.exists(), "the dead writer's stray file is still in the lake"
    assert batch_files(daemon_platform.lake, batch_id) == []
    for key, row in rows.items():
        assert row["batch_id"] != batch_id and row["attempts"] == 1, (key, row)
    # Only the sensor can have taken it over: no run existed before its keys were PENDING again.
    reasons = [t.skip_reason or "" for t in sensor_ticks(daemon_platform.instance, "expired_lease_sensor")]
    assert any(r.startswith("recovered 1 batch") for r in reasons), reasons
    runs = partition_runs(daemon_platform.instance, f"{part_date}|{region}")
    assert runs, daemon_platform.state()
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), daemon_platform.state()
    assert all(r.tags.get("datalog/trigger") == TRIGGER for r in runs), [r.tags for r in runs]
    assert lake_ids(daemon_platform, dead.dataset) == list(dead.dataset.expected)


def test_killed_run_is_recovered_exactly_once(
    daemon_platform: Platform, record_property: Callable[[str, object], None]
) -> None:
    data = daemon_platform.upload_crash()
    ((part_date, region),) = data.partitions

    def writing() -> dict[str, Any] | None:
        return next(
            (
                b
                for b in batch_rows(daemon_platform.engine, part_date, region)
                if b["status"] == WRITING and b["run_id"]
            ),
            None,
        )

    victim = poll(
        writing,
        timeout=200,
        interval=0.1,
        what=f"a run of {part_date}|{region} to claim a batch (WRITING)",
        daemon=daemon_platform.daemon,
        detail=daemon_platform.state,
    )
    batch_id, run_id = victim["batch_id"], victim["run_id"]
    worker = poll(
        lambda: run_worker_pid(daemon_platform.instance, run_id), timeout=10, interval=0.1, what="RUN_START's pid"
    )
    killed = kill_tree(worker, daemon_platform.daemon.pgid)
    at_kill = batch_row(daemon_platform.engine, batch_id)
    assert at_kill["status"] == WRITING, f"the run finished its batch before the kill: {at_kill}"
    files_at_kill = batch_files(daemon_platform.lake, batch_id)
    assert wait_gone(killed, timeout=10) == [], f"killed processes still alive: {killed}"

    def recovered() -> dict[str, dict[str, Any]] | None:
        if batch_row(daemon_platform.engine, batch_id)["status"] != ABORTED:
            return None
        return all_success(daemon_platform, data)

    rows = poll(
        recovered,
        timeout=180,
        what=f"batch {batch_id} to be aborted and its keys ingested by a later run",
        daemon=daemon_platform.daemon,
        detail=daemon_platform.state,
    )
    run = daemon_platform.instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.FAILURE, run
    batch = batch_row(daemon_platform.engine, batch_id)
    # batch_recovery_sensor (run failed) or expired_lease_sensor (lease lapsed), whichever came first
    assert batch["error"].startswith((f"run {run_id} failed", "lease expired")), batch
    assert batch_files(daemon_platform.lake, batch_id) == [], "files of the aborted batch are still in the lake"
    for key, row in rows.items():
        assert row["batch_id"] != batch_id and row["attempts"] == 1, (key, row)
    runs = partition_runs(daemon_platform.instance, f"{part_date}|{region}")
    later = runs[[r.run_id for r in runs].index(run_id) + 1 :]
    assert any(r.status == dg.DagsterRunStatus.SUCCESS for r in later), daemon_platform.state()
    assert all(r.tags.get("datalog/trigger") == TRIGGER for r in runs), [r.tags for r in runs]
    assert lake_ids(daemon_platform, data) == list(data.expected)
    record_property("killed_pids", len(killed))
    record_property("batch_files_at_kill", len(files_at_kill))
    record_property("target_dirs_at_kill", str(at_kill["target_dirs"]))
    record_property("aborted_by", "batch_recovery_sensor" if batch["error"].startswith("run ") else "expired_lease")
    log.info(
        "killed %s (%d processes) with batch %s WRITING; aborted: %s", run_id, len(killed), batch_id, batch["error"]
    )


def test_new_uploads_reach_the_lake_without_a_manual_trigger(
    daemon_platform: Platform, record_property: Callable[[str, object], None]
) -> None:
    data = daemon_platform.upload
    remaining = UPLOAD_DEADLINE_SECONDS - (time.monotonic() - daemon_platform.uploaded_monotonic)
    rows = poll(
        lambda: all_success(daemon_platform, data) if lake_ids(daemon_platform, data) == list(data.expected) else None,
        timeout=max(remaining, 1),
        what=f"every uploaded row in the lake within {UPLOAD_DEADLINE_SECONDS:.0f}s of the upload",
        daemon=daemon_platform.daemon,
        detail=daemon_platform.state,
    )
    assert len(data.expected) == 3 * 2 * 20 and len(data.partitions) == 3

    # Latency: upload -> committed Parquet (the commit makes the files part of the dataset).
    committed = max(r["done_at"] for r in rows.values())
    discovered = max(r["discovered_at"] for r in rows.values())
    latency = (committed - daemon_platform.uploaded_at).total_seconds()
    assert committed > daemon_platform.uploaded_at, (latency, daemon_platform.state())

    runs = [r for p in sorted(data.partition_keys) for r in partition_runs(daemon_platform.instance, p)]
    assert {r.tags["dagster/partition"] for r in runs} == data.partition_keys
    for run in runs:
        assert run.status == dg.DagsterRunStatus.SUCCESS, daemon_platform.state()
        assert run.tags.get("datalog/trigger") == TRIGGER, run.tags
        assert run.tags.get("dagster/sensor_name") == TRIGGER, run.tags
        date, region = run.tags["dagster/partition"].split("|")
        assert run.tags.get("dagster/partition/date") == date and run.tags.get("dagster/partition/region") == region
    # Nothing was launched by hand: every run of the instance came from the sensor.
    all_runs = daemon_platform.instance.get_runs()
    assert all(r.tags.get("datalog/trigger") == TRIGGER for r in all_runs), [r.tags for r in all_runs]
    # Sensors were never toggled: their stored state is the one declared in code (RUNNING).
    states = sensor_states(daemon_platform.instance)
    assert all(states.get(name) == "DECLARED_IN_CODE" for name in SENSORS), states

    first_created = min(daemon_platform.instance.get_run_record_by_id(r.run_id).create_timestamp for r in runs)
    breakdown = {
        "upload_to_discovered_s": round((discovered - daemon_platform.uploaded_at).total_seconds(), 1),
        "upload_to_first_run_created_s": round(first_created.timestamp() - _epoch(daemon_platform.uploaded_at), 1),
        "upload_to_committed_s": round(latency, 1),
    }
    for name, value in breakdown.items():
        record_property(name, value)
    log.info("upload -> queryable Parquet: %s", breakdown)


def _epoch(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


def test_run_orphaned_by_a_daemon_crash_does_not_block_its_partition(tmp_path: Path) -> None:
    """The daemon and everything under it (code server, run worker, steps) die at once while a
    run's batch is WRITING; a new daemon starts. The lapsed lease hands the keys back, and the
    partition must be ingested again: the orphaned run, left STARTED, must not hold it forever."""
    home = tmp_path / "home"
    env = clean_env(home, home / "dagster_home")
    settings = Settings.from_env(env)
    run_ok(env, "dagster-home")
    run_ok(env, "devices", "load", str(write_csv(tmp_path / "registry.csv", registry_csv(device_registry(1)).decode())))
    raw = LocalStore(settings.raw_url)
    start = clock.utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=4)
    keys = upload(raw, lambda: generate(raw, devices=1, hours=2, rows=20, seed=13, start=start, bad_file_share=0))
    data = dataset("orphan", raw, keys, dict(device_registry(1)))
    ((part_date, region),) = data.partitions
    partition = f"{part_date}|{region}"
    engine = sa.create_engine(settings.ledger_url, connect_args={"timeout": 30})
    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    daemons: list[Daemon] = []
    try:
        daemons.append(start_daemon(BIN, WORKSPACE, env, tmp_path / "daemon-1.log"))
        victim = poll(
            lambda: next((b for b in batch_rows(engine) if b["status"] == WRITING and b["run_id"]), None),
            timeout=120,
            interval=0.1,
            what="a run to claim a batch (WRITING)",
            daemon=daemons[0],
        )
        crashed = daemons[0].crash()  # SIGKILL to the whole group: nothing gets to clean up
        assert crashed == [], crashed
        assert batch_row(engine, victim["batch_id"])["status"] == WRITING
        daemons.append(start_daemon(BIN, WORKSPACE, env, tmp_path / "daemon-2.log"))
        daemon = daemons[1]

        def state() -> str:
            run = instance.get_run_by_id(victim["run_id"])
            ticks = sensor_ticks(instance, "pending_keys_sensor", limit=3)
            return (
                f"orphaned run {victim['run_id']}: {run.status.value if run else None}; "
                f"batch {batch_row(engine, victim['batch_id'])['status']}; "
                f"keys {sorted((r['status'], r['attempts']) for r in key_rows(engine, keys).values())}; "
                f"pending_keys_sensor ticks: {[t.skip_reason for t in ticks]}"
            )

        aborted = poll(
            lambda: batch_row(engine, victim["batch_id"])["status"] == ABORTED,
            timeout=150,
            what="expired_lease_sensor to take over the orphaned batch",
            daemon=daemon,
            detail=state,
        )
        assert aborted
        taken_over = time.time()

        def next_decision() -> str | None:
            """Once pending_keys_sensor has looked at the handed-back keys: "requested", or the
            reason it requested nothing."""
            if any(r.run_id != victim["run_id"] for r in partition_runs(instance, partition)):
                return "requested"
            for tick in sensor_ticks(instance, "pending_keys_sensor", limit=3):
                if tick.timestamp > taken_over and tick.skip_reason:
                    return tick.skip_reason
            return None

        decision = poll(next_decision, timeout=60, what="pending_keys_sensor's next tick", daemon=daemon, detail=state)
        assert decision == "requested", (
            "the keys handed back by the lapsed lease get no new run: the orphaned run is still "
            f"{instance.get_run_by_id(victim['run_id']).status.value} and pending_keys_sensor says {decision!r}\n"
            + state()
        )
        poll(
            lambda: (
                all(r.is_finished for r in partition_runs(instance, partition))
                and all(r["status"] == SUCCESS for r in key_rows(engine, keys).values())
            ),
            timeout=120,
            what="the partition to be ingested by a new run",
            daemon=daemon,
            detail=state,
        )
        assert partition_row_ids(Path(settings.lake_url), part_date, region) == list(data.expected)
    finally:
        survivors = [pid for d in daemons for pid in d.stop()]
        instance.dispose()
        engine.dispose()
        assert not survivors, f"processes of a daemon's group survived SIGKILL: {survivors}"
