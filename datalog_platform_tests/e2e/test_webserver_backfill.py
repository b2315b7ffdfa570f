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

from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from datalog_platform.core.ledger.schema import COMMITTED, REBUILD, batches
from datalog_platform_tests.support.cli_helpers import ingest_two_days
from datalog_platform_tests.support.daemon_helpers import (
    BACKFILL_STATUS,
    BIN,
    LAUNCH_BACKFILL,
    WORKSPACE,
    graphql,
    poll,
    webserver_and_daemon,
)
from datalog_platform_tests.support.lake import partition_dir, partition_row_ids
from datalog_platform_tests.support.net import free_port


def test_backfill_launched_through_graphql_rebuilds_each_partition(tmp_path: Path) -> None:
    ingested = ingest_two_days(tmp_path)
    env, settings, lake, partitions = ingested.env, ingested.settings, ingested.lake, ingested.partitions
    before = {p: sorted(partition_row_ids(lake, *p)) for p in partitions}
    old_files = {p: set(partition_dir(lake, *p).glob("*.parquet")) for p in partitions}
    assert all(before.values()) and all(old_files.values())

    port = free_port()
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    engine = sa.create_engine(settings.ledger_url, connect_args={"timeout": 30})
    try:
        with webserver_and_daemon(BIN, WORKSPACE, env, tmp_path, port) as (_, daemon):
            launched = graphql(
                port,
                LAUNCH_BACKFILL,
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
                status = graphql(port, BACKFILL_STATUS, {"id": backfill_id})["partitionBackfillOrError"]
                assert status["__typename"] == "PartitionBackfill", status
                return status["status"] if status["status"] not in ("REQUESTED", "CANCELING", "FAILING") else None

            final = poll(finished, timeout=420, what=f"backfill {backfill_id} to finish", interval=3, daemon=daemon)
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
                files = set(partition_dir(lake, *partition).glob("*.parquet"))
                assert files and files.isdisjoint(old_files[partition])
                assert all(f.name.startswith(prefixes) for f in files), files
            after = {p: sorted(partition_row_ids(lake, *p)) for p in partitions}
            assert after == before  # every row once, none lost
    finally:
        instance.dispose()
        engine.dispose()
