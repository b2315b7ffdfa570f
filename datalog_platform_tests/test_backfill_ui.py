"""A backfill of 2 dates x 2 regions launched through the GraphQL API the Dagster UI uses, run by a
real daemon: every partition is rebuilt, each row once, the old files gone.

Before the services start, `datalog ingest` fills the lake (two devices in two regions, 26 hours:
two local dates), so each partition has files to replace. Then `dagster-webserver` and
`dagster-daemon` run on the same DAGSTER_HOME (prepared by `datalog dagster-home`: two runs at once,
one per partition), the test posts the UI's `launchPartitionBackfill` mutation over HTTP and waits
for the backfill to complete.

Real parts only: both services in their own process groups, the `datalog` command in child
processes, a local raw store and lake, the SQLite ledger, the Dagster instance in DAGSTER_HOME and
DuckDB reading the Parquet files. Nothing is mocked.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from datalog_platform.generate import device_registry, generate, registry_csv
from datalog_platform.ledger.schema import COMMITTED, REBUILD, batches
from datalog_platform.resources.store import LocalStore
from datalog_platform.settings import Settings
from datalog_platform_tests.cli_helpers import run_ok, write_csv
from datalog_platform_tests.daemon_helpers import Daemon, partition_row_ids, poll, start_daemon, start_webserver

REPO = Path(__file__).resolve().parents[1]
WORKSPACE = REPO / "workspace.yaml"
BIN = Path(sys.executable).parent
START = datetime(2026, 10, 5, 0, 0)  # UTC; at +8 the 26 hours cover 2026-10-05 08:00 to 2026-10-06 09:00
DATES = ("2026-10-05", "2026-10-06")

LAUNCH = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on Error { message }
  }
}"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.loads(response.read())
    assert "errors" not in body, body
    return body["data"]


def answering(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def directory_of(lake: Path, part_date: str, region: str) -> Path:
    return lake / "datalog_v2" / f"hiveperiod={part_date}" / f"dstrct_code={region}"


def test_backfill_launched_through_graphql_rebuilds_each_partition(tmp_path: Path) -> None:
    home, dagster_home = tmp_path / "home", tmp_path / "dagster_home"
    env = {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DATALOG_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "DATALOG_TZ_OFFSET_HOURS": "8",
    }
    settings = Settings.from_env(env)
    run_ok(env, "dagster-home")
    registry = device_registry(2)
    regions = sorted({region for _, region in registry})
    assert len(regions) == 2
    run_ok(env, "devices", "load", str(write_csv(tmp_path / "registry.csv", registry_csv(registry).decode())))
    raw = LocalStore(settings.raw_url)
    generate(raw, devices=2, hours=26, rows=10, seed=5, start=START, bad_file_share=0)
    run_ok(env, "ingest")
    lake = Path(settings.lake_url)
    partitions = [(d, r) for d in DATES for r in regions]
    before = {p: sorted(partition_row_ids(lake, *p)) for p in partitions}
    old_files = {p: set(directory_of(lake, *p).glob("*.parquet")) for p in partitions}
    assert all(before.values()) and all(old_files.values())

    port = free_port()
    services: list[Daemon] = []
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    engine = sa.create_engine(settings.ledger_url, connect_args={"timeout": 30})
    try:
        services.append(start_webserver(BIN, WORKSPACE, env, tmp_path / "webserver.log", port))
        services.append(start_daemon(BIN, WORKSPACE, env, tmp_path / "daemon.log"))
        poll(lambda: answering(port), timeout=180, what="the webserver to answer", daemon=services[0])

        launched = graphql(
            port,
            LAUNCH,
            {
                "params": {
                    "partitionNames": [f"{d}|{r}" for d, r in partitions],
                    "assetSelection": [{"path": ["claimed_key_batches"]}, {"path": ["datalog_parquet"]}],
                    "title": "rebuild two days",
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        def finished() -> str | None:
            status = graphql(port, STATUS, {"id": backfill_id})["partitionBackfillOrError"]
            assert status["__typename"] == "PartitionBackfill", status
            return status["status"] if status["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

        final = poll(finished, timeout=420, what=f"backfill {backfill_id} to finish", interval=3, daemon=services[1])
        assert final in ("COMPLETED", "COMPLETED_SUCCESS"), final

        runs = instance.get_runs(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        assert sorted(r.tags["dagster/partition"] for r in runs) == sorted(f"{d}|{r}" for d, r in partitions)
        assert {r.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
        records = instance.get_run_records(filters=dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
        spans = [(r.start_time, r.end_time) for r in records]
        assert all(start and end for start, end in spans)
        at_once = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
        assert at_once <= 2  # the run queue's limit in the dagster.yaml `datalog dagster-home` wrote
        with engine.connect() as conn:
            rebuilt = conn.execute(
                sa.select(batches.c.batch_id, batches.c.part_date, batches.c.dstrct_code, batches.c.status)
                .where(batches.c.kind == REBUILD)
                .where(batches.c.run_id.in_([r.run_id for r in runs]))
            ).all()
        assert sorted((b.part_date, b.dstrct_code, b.status) for b in rebuilt) == sorted(
            (d, r, COMMITTED) for d, r in partitions
        )
        prefixes = tuple(f"part-{b.batch_id}-" for b in rebuilt)
        for partition in partitions:
            files = set(directory_of(lake, *partition).glob("*.parquet"))
            assert files and files.isdisjoint(old_files[partition])
            assert all(f.name.startswith(prefixes) for f in files), files
        after = {p: sorted(partition_row_ids(lake, *p)) for p in partitions}
        assert after == before  # every row once, none lost
    finally:
        survivors = [pid for service in services for pid in service.stop()]
        instance.dispose()
        engine.dispose()
        assert not survivors, f"processes survived SIGKILL: {survivors}"
