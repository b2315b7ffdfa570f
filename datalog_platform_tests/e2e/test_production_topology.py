"""The production deployment, end to end on this machine: deploy/dagster.yaml and deploy/workspace.yaml
as shipped, Dagster's storage in PostgreSQL, the code location served over gRPC, nothing launched by hand.

Two topologies run side by side (starting them and the sensors' fixed 30 s / 10 s intervals are the
expensive part, so they wait together). Each has its own Dagster database on the test server, its own
ledger schema, a gRPC code server (`dagster code-server start`, checked with the image's health check
command), `dagster-daemon run -w WORKSPACE`; the first also `dagster-webserver -w WORKSPACE`:

- "local": raw store and lake are local directories;
- "s3": raw store and lake are prefixes of a bucket on moto's S3 server, with the S3 endpoint and
  credentials given to the code server only.

Once each sensor has ticked, raw files are dropped into both raw stores. They must land exactly once
with no manual trigger. As soon as `pending_keys_sensor` has requested the local runs (and added the
regions as partitions), a backfill of the same 4 local partitions is posted through the webserver
(the UI's GraphQL mutation): each partition then has a sensor run and a backfill run in the queue at
once. Dagster's own tables in PostgreSQL (`runs`, `run_tags`, `event_logs`) then show every run and
its events, runs of different partitions running at the same time and no two runs of one partition
overlapping; the backfill completes and the lake still holds every record once.

`test_cli_records_its_runs_in_postgresql`: `datalog ingest` and `datalog ledger status` with a
DAGSTER_HOME holding deploy/dagster.yaml record and report through PostgreSQL.

Real parts only: PostgreSQL at DATALOG_TEST_POSTGRES_URL (databases and schemas created here and
dropped afterwards; skipped with that reason when unset), moto's S3 server on 127.0.0.1, the Dagster
executables of the virtualenv in their own process groups (SIGTERMed, then SIGKILLed at teardown),
the `datalog` command in child processes, DuckDB reading the Parquet lake.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from datalog_platform.core.generate import device_registry, generate, registry_csv
from datalog_platform.core.ledger import clock, raw_keys
from datalog_platform.core.ledger.schema import COMMITTED, REBUILD, SUCCESS, batches
from datalog_platform.core.store import LocalStore, ObjectStore, S3Access, S3Store
from datalog_platform_tests.support.cli_helpers import json_of, run_cli, run_ok, write_csv
from datalog_platform_tests.support.daemon_helpers import BACKFILL_STATUS, LAUNCH_BACKFILL, graphql, poll, sensor_ticks
from datalog_platform_tests.support.lake import lake_rows, row_ids
from datalog_platform_tests.support.ledger_helpers import key_rows
from datalog_platform_tests.support.production import (
    DAGSTER_YAML,
    Topology,
    event_counts,
    most_at_once,
    overlapping_pairs,
    production_topology,
    run_records,
)
from datalog_platform_tests.support.raw_data import RowId, is_raw_log, raw_records
from datalog_platform_tests.support.s3 import REGION, s3_client_for

TZ_OFFSET_HOURS = 8
SENSORS = ("raw_logs_sensor", "pending_keys_sensor", "batch_recovery_sensor", "expired_lease_sensor")
TRIGGER = "pending_keys_sensor"
DEVICES = 2  # regions BRCB and KPCS
ROWS = 20
AWS_SECRET = "moto-secret-for-the-code-server"
BACKFILL_GOING = ("REQUESTED", "CANCELING", "FAILING")
# as event_logs.dagster_event_type stores them
RUN_START = dg.DagsterEventType.RUN_START.value
RUN_SUCCESS = dg.DagsterEventType.RUN_SUCCESS.value


@dataclass
class Case:
    name: str
    topology: Topology
    raw: ObjectStore
    lake_uri: str
    access: S3Access | None
    keys: set[str]
    expected: list[RowId]
    partitions: set[str]  # DATE|REGION
    backfill_id: str | None = None

    def lake_ids(self) -> list[RowId]:
        return row_ids(lake_rows(self.lake_uri, self.access))

    def ledger_rows(self) -> dict[str, dict[str, Any]]:
        engine = sa.create_engine(self.topology.ledger_url)
        try:
            return key_rows(engine, self.keys)
        finally:
            engine.dispose()

    def landed(self) -> bool:
        """Every dropped key SUCCESS in the ledger, the backfill (if any) done and every run finished."""
        self.topology.require_running()
        rows = self.ledger_rows()
        if len(rows) != len(self.keys) or any(r["status"] != SUCCESS for r in rows.values()):
            return False
        if self.backfill_id is not None and self.backfill_status() in BACKFILL_GOING:
            return False
        return all(r.is_finished for r in self.topology.instance.get_runs())

    def backfill_status(self) -> str:
        """The backfill's status as the webserver reports it (the UI's query)."""
        assert self.topology.web_port is not None and self.backfill_id is not None
        answer = graphql(self.topology.web_port, BACKFILL_STATUS, {"id": self.backfill_id})
        status = answer["partitionBackfillOrError"]
        assert status["__typename"] == "PartitionBackfill", status
        return str(status["status"])

    def state(self) -> str:
        statuses = sorted((k, r["status"]) for k, r in self.ledger_rows().items())
        runs = [(r.tags.get("dagster/partition"), r.status.value) for r in self.topology.instance.get_runs()]
        return f"--- {self.name}: keys {statuses}\nruns {runs}\n{self.topology.logs()}"


@dataclass
class Production:
    local: Case
    s3: Case


def start_of_hour(days_ago: int, hour: int) -> datetime:
    day = clock.utcnow().replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=days_ago)
    return day + timedelta(hours=hour)


def drop_files(raw: ObjectStore, hours: int, seed: int, start: datetime) -> set[str]:
    """Clean logs of the 2 devices for `hours` hours from `start`; from UTC 15:00, two hours span
    two local dates at +8."""
    before = {o.key for o in raw.list()}
    generate(raw, devices=DEVICES, hours=hours, rows=ROWS, seed=seed, start=start, bad_file_share=0, gzip_share=0)
    return {o.key for o in raw.list() if is_raw_log(o.key)} - before


def partitions_of(keys: set[str]) -> set[str]:
    regions = dict(device_registry(DEVICES))
    found = set()
    for key in keys:
        parsed = raw_keys.parse_raw_key(key)
        assert parsed is not None, key
        found.add(f"{raw_keys.local_date(parsed.hour, TZ_OFFSET_HOURS)}|{regions[parsed.device_id]}")
    return found


def launch_backfill(topology: Topology, partitions: list[str]) -> str:
    """A backfill (a rebuild) of claimed_key_batches and datalog_parquet for `partitions`, posted to
    the webserver as the UI does; its id."""
    assert topology.web_port is not None
    selection = [{"path": ["claimed_key_batches"]}, {"path": ["datalog_parquet"]}]
    params = {"partitionNames": partitions, "assetSelection": selection, "title": "rebuild the new partitions"}
    launched = graphql(topology.web_port, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    return str(launched["backfillId"])


def sensor_requested(case: Case) -> bool:
    """pending_keys_sensor has requested a run for each of the case's partitions."""
    case.topology.require_running()
    runs = case.topology.instance.get_runs(filters=dg.RunsFilter(tags={"dagster/sensor_name": TRIGGER}))
    return {r.tags.get("dagster/partition") for r in runs} >= case.partitions


def load_registry(topology: Topology) -> None:
    csv_path = write_csv(topology.home / "registry.csv", registry_csv(device_registry(DEVICES)).decode())
    run_ok(topology.code_env, "devices", "load", str(csv_path))


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[Production]:
    root = tmp_path_factory.mktemp("production")
    client = s3_client_for(moto_server)
    bucket = f"production-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=bucket)
    s3_settings = {
        "DATALOG_RAW_URL": f"s3://{bucket}/raw",
        "DATALOG_LAKE_URL": f"s3://{bucket}/lake",
        "DATALOG_S3_ENDPOINT_URL": moto_server,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_REGION": REGION,
    }
    access = S3Access(REGION, moto_server, "testing", AWS_SECRET)
    lease = {"DATALOG_LEASE_SECONDS": "15"}
    with (
        production_topology(root / "local", TZ_OFFSET_HOURS, webserver=True, **lease) as local,
        production_topology(root / "s3", TZ_OFFSET_HOURS, webserver=False, **lease, **s3_settings) as s3,
    ):
        (local.home / "raw").mkdir()  # a local raw store must exist before discovery lists it
        for topology in (local, s3):
            load_registry(topology)
            topology.start_code_server()
        for topology in (local, s3):
            topology.start_services()
        for topology in (local, s3):
            poll(
                lambda t=topology: all(sensor_ticks(t.instance, name, limit=1) for name in SENSORS),
                timeout=120,
                what=f"a first tick of each of {SENSORS}",
                daemon=topology.daemon,
            )
        # Dropped right after raw_logs_sensor's first tick: the next listing is a minute away.
        local_raw = LocalStore(local.home / "raw")
        s3_raw = S3Store(bucket, "raw/", client, access)
        cases = []
        for name, topology, raw, lake_uri, case_access, hours, seed, days in (
            ("local", local, local_raw, str(local.home / "lake"), None, 2, 21, 10),
            ("s3", s3, s3_raw, f"s3://{bucket}/lake", access, 1, 22, 12),
        ):
            keys = drop_files(raw, hours, seed, start_of_hour(days, 15))
            expected = sorted(r for r in raw_records(raw) if r[0] in keys)
            cases.append(Case(name, topology, raw, lake_uri, case_access, keys, expected, partitions_of(keys)))
        production = Production(*cases)
        local_case = production.local
        poll(lambda: sensor_requested(local_case), 240, "the local runs to be requested", detail=local_case.state)
        local_case.backfill_id = launch_backfill(local, sorted(local_case.partitions))
        yield production


def assert_landed_once(case: Case) -> list[Any]:
    """Wait until the case's files have landed; check the lake, the ledger and the run records."""
    poll(case.landed, timeout=300, what=f"the {case.name} files to land", interval=2, detail=case.state)
    assert case.lake_ids() == case.expected  # every record exactly once
    assert len(case.expected) == len(case.keys) * ROWS

    records = run_records(case.topology.dagster_pg_url)
    assert all(r.status == "SUCCESS" for r in records), [(r.partition, r.status) for r in records]
    assert all(r.start is not None and r.end is not None and r.start < r.end for r in records)
    # apart from the backfill, nothing was launched by hand: every run came from the sensor
    sensor_runs = [r for r in records if "dagster/backfill" not in r.tags]
    assert {r.job_name for r in sensor_runs} == {"ingest_partition_job"}
    assert {r.partition for r in sensor_runs} == case.partitions
    assert {r.tags.get("datalog/trigger") for r in sensor_runs} == {TRIGGER}
    assert {r.tags.get("dagster/sensor_name") for r in sensor_runs} == {TRIGGER}
    events = event_counts(case.topology.dagster_pg_url, [r.run_id for r in records])
    for r in records:
        counts = events.get(r.run_id, {})
        assert counts.get(RUN_START) == 1 and counts.get(RUN_SUCCESS) == 1, (r.partition, counts)
        # claimed_key_batches and datalog_parquet, at least
        assert counts.get("ASSET_MATERIALIZATION", 0) >= 2, (r.partition, counts)
    assert overlapping_pairs(records) == []
    return records


def test_files_dropped_in_a_local_raw_store_land_once(production: Production) -> None:
    assert len(production.local.partitions) == 4  # two local dates x two regions
    assert_landed_once(production.local)


def test_files_dropped_in_s3_land_once(production: Production) -> None:
    case = production.s3
    assert len(case.partitions) == 2  # one local date x two regions
    assert_landed_once(case)
    # the S3 credentials reached the code server by name only: they are in no run record
    engine = sa.create_engine(case.topology.dagster_pg_url)
    try:
        with engine.connect() as conn:
            for table in ("runs", "event_logs", "run_tags"):
                hits = conn.execute(
                    sa.text(f"SELECT count(*) FROM {table} WHERE CAST({table} AS text) LIKE :needle"),
                    {"needle": f"%{AWS_SECRET}%"},
                ).scalar_one()
                assert hits == 0, f"the AWS secret is stored in Dagster's {table}"
    finally:
        engine.dispose()


def test_backfill_through_the_webserver_shares_the_run_queue_with_the_sensor(
    production: Production, record_property: Callable[[str, object], None]
) -> None:
    case = production.local
    records = assert_landed_once(case)
    topology = case.topology
    assert case.backfill_status() in ("COMPLETED", "COMPLETED_SUCCESS")
    chosen = sorted(case.partitions)
    assert len(chosen) == 4
    backfill_runs = [r for r in records if r.tags.get("dagster/backfill") == case.backfill_id]
    assert sorted(r.partition for r in backfill_runs) == chosen
    assert {r.status for r in backfill_runs} == {"SUCCESS"}
    # the run queue of deploy/dagster.yaml: partitions side by side, never more than its limit,
    # and a partition's sensor run and backfill run one after the other (assert_landed_once)
    at_once = most_at_once([(r.start, r.end) for r in records if r.start is not None and r.end is not None])
    queue = topology.instance.get_concurrency_config().run_queue_config
    assert queue is not None
    assert 2 <= at_once <= queue.max_concurrent_runs, (at_once, queue.max_concurrent_runs)
    record_property("most_runs_at_once", at_once)
    record_property("runs", len(records))

    engine = sa.create_engine(topology.ledger_url)
    try:
        with engine.connect() as conn:
            rebuilt = conn.execute(
                sa.select(batches.c.part_date, batches.c.dstrct_code, batches.c.status).where(
                    batches.c.kind == REBUILD, batches.c.run_id.in_([r.run_id for r in backfill_runs])
                )
            ).all()
    finally:
        engine.dispose()
    assert sorted(f"{d}|{r}" for d, r, _ in rebuilt) == chosen
    assert {s for _, _, s in rebuilt} == {COMMITTED}
    assert case.lake_ids() == case.expected  # ingested, then rebuilt: every record still once


def test_cli_records_its_runs_in_postgresql(tmp_path: Path) -> None:
    """`datalog ingest` and `datalog ledger status` with DAGSTER_HOME holding deploy/dagster.yaml."""
    home = tmp_path / "home"
    with production_topology(home, TZ_OFFSET_HOURS, webserver=False) as topology:
        env = topology.code_env
        assert (topology.dagster_home / "dagster.yaml").read_bytes() == DAGSTER_YAML.read_bytes()
        raw = LocalStore(home / "raw")
        keys = drop_files(raw, 1, 23, start_of_hour(9, 15))
        load_registry(topology)
        proc = run_cli(env, "ingest", "--json")
        assert proc.returncode == 0, proc.stderr[-4000:]
        summary = json_of(proc)
        assert summary["failed_runs"] == [] and summary["keys"] == len(keys) == DEVICES
        status = json_of(run_ok(env, "ledger", "status", "--json"))
        assert status["by_status"] == {SUCCESS: len(keys)} and status["rows"] == len(keys) * ROWS

        records = [r for r in run_records(topology.dagster_pg_url) if r.job_name == "ingest_partition_job"]
        assert len(records) == summary["runs"] == len(partitions_of(keys))
        assert {r.tags.get("datalog/trigger") for r in records} == {"cli"}
        assert {r.status for r in records} == {"SUCCESS"}
        events = event_counts(topology.dagster_pg_url, [r.run_id for r in records])
        assert all(events[r.run_id].get(RUN_SUCCESS) == 1 for r in records), events
        # the CLI left DAGSTER_HOME as deployed: no SQLite storage beside it
        assert not list(topology.dagster_home.rglob("*.db")), list(topology.dagster_home.rglob("*.db"))
