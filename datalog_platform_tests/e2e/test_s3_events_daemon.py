"""S3 event notifications under a real `dagster-daemon`: an upload reaches the lake with nobody
launching a run, and without waiting for a listing.

The raw store is a bucket on moto's server whose `s3:ObjectCreated:*` events go to an SQS queue
(a real bucket notification configuration); DATALOG_S3_EVENTS_QUEUE_URL names the queue, so the
code location defines `s3_events_sensor`, RUNNING by default. Once `raw_logs_sensor` and
`s3_events_sensor` have finished a tick, two files of one device are uploaded (one partition, so
one run keeps the test short), one of them under a name with a space, a quote and a plus. The
listing's next tick is a minute away; `s3_events_sensor` registers the keys from the events and
requests the run in the same tick. The test checks every record in the lake exactly once, every
key SUCCESS under its exact name, the run launched by `s3_events_sensor`, the queue left empty
(the test event and the uploads deleted), and the sensor never toggled. It asserts no timing.

Real parts only: `dagster-daemon run -w workspace.yaml` in its own process group, the `datalog`
command in child processes, moto's server on 127.0.0.1 (S3 for the raw store and DuckDB's httpfs,
SQS for the events, reached from the daemon's processes over HTTP), a local lake and a SQLite
ledger under a temporary DATALOG_HOME, and the Dagster instance in DAGSTER_HOME.
"""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from datalog_platform.core.generate import device_registry, generate, log_lines, registry_csv
from datalog_platform.core.ledger import clock, raw_keys
from datalog_platform.core.ledger.schema import SUCCESS
from datalog_platform.core.store import S3Store
from datalog_platform.settings import Settings
from datalog_platform_tests.support.cli_helpers import run_ok, write_csv
from datalog_platform_tests.support.daemon_helpers import (
    BIN,
    WORKSPACE,
    partition_runs,
    poll,
    sensor_states,
    sensor_ticks,
    service_env,
    start_daemon,
)
from datalog_platform_tests.support.lake import partition_row_ids
from datalog_platform_tests.support.ledger_helpers import key_rows
from datalog_platform_tests.support.raw_data import is_raw_log, ndjson, raw_records
from datalog_platform_tests.support.s3 import (
    FAKE_AWS_ENV,
    new_bucket,
    new_queue,
    notify_queue,
    s3_access,
    sqs_client_for,
)

TZ_OFFSET_HOURS = 8
SENSOR = "s3_events_sensor"


def test_uploads_reach_the_lake_through_s3_events(tmp_path: Path, moto_server: str, s3_client: Any) -> None:
    bucket = new_bucket(s3_client)
    sqs = sqs_client_for(moto_server)
    queue_url, queue_arn = new_queue(sqs)
    notify_queue(s3_client, bucket, queue_arn)
    home = tmp_path / "home"
    env = service_env(
        home,
        home / "dagster_home",
        TZ_OFFSET_HOURS,
        DATALOG_RAW_URL=f"s3://{bucket}/raw",
        DATALOG_S3_ENDPOINT_URL=moto_server,
        DATALOG_S3_EVENTS_QUEUE_URL=queue_url,
        AWS_REGION=FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        **FAKE_AWS_ENV,
    )
    settings = Settings.from_env(env)
    run_ok(env, "dagster-home")
    registry = device_registry(1)
    run_ok(env, "devices", "load", str(write_csv(tmp_path / "registry.csv", registry_csv(registry).decode())))
    raw = S3Store(bucket, "raw/", s3_client, s3_access(moto_server))
    engine = sa.create_engine(settings.ledger_url, connect_args={"timeout": 30})
    instance = dg.DagsterInstance.from_config(str(home / "dagster_home"))
    daemon = start_daemon(BIN, WORKSPACE, env, tmp_path / "daemon.log")
    try:
        # Upload once each sensor has finished a tick: the listing's next one is a minute away.
        poll(
            lambda: all(
                any(t.status.value != "STARTED" for t in sensor_ticks(instance, name, limit=2))
                for name in ("raw_logs_sensor", SENSOR)
            ),
            timeout=120,
            what=f"a finished tick of raw_logs_sensor and {SENSOR}",
            daemon=daemon,
            detail=lambda: f"stored sensor states: {sensor_states(instance)}",
        )
        start = clock.utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(days=3)
        generate(raw, devices=1, hours=1, rows=20, seed=21, start=start, bad_file_share=0)
        device = registry[0][0]
        odd = f"{device}/{start:%Y%m%d%H}/it's a log+1.json"
        raw.write_bytes(odd, ndjson(*log_lines(device, start, 20, random.Random(21), bad=False)))
        keys = {o.key for o in raw.list() if is_raw_log(o.key)}
        expected = sorted(raw_records(raw))
        regions = dict(registry)
        partitions = {
            f"{raw_keys.local_date(parsed.hour, TZ_OFFSET_HOURS)}|{regions[parsed.device_id]}"
            for parsed in (raw_keys.parse_raw_key(k) for k in keys)
            if parsed is not None
        }
        assert odd in keys and len(keys) == 2 and len(partitions) == 1

        def lake_rows() -> list[tuple[str, int]]:
            return sorted(
                row
                for partition in sorted(partitions)
                for row in partition_row_ids(Path(settings.lake_url), *partition.split("|"))
            )

        def ingested() -> dict[str, dict[str, Any]] | None:
            rows = key_rows(engine, keys)
            if len(rows) != len(keys) or any(r["status"] != SUCCESS for r in rows.values()):
                return None
            if not all(r.is_finished for p in partitions for r in partition_runs(instance, p)):
                return None
            return rows if lake_rows() == expected else None

        def state() -> str:
            runs = [
                (p, r.status.value, r.tags.get("datalog/trigger"))
                for p in partitions
                for r in partition_runs(instance, p)
            ]
            ticks = [t.skip_reason for t in sensor_ticks(instance, SENSOR, limit=5)]
            return f"keys: {key_rows(engine, keys)}\nruns: {runs}\n{SENSOR} ticks: {ticks}"

        rows = poll(ingested, timeout=240, what="every uploaded record in the lake", daemon=daemon, detail=state)
        assert set(rows) == keys  # the exact names, the space, the quote and the plus included
        runs = [r for p in sorted(partitions) for r in partition_runs(instance, p)]
        assert {r.tags["dagster/partition"] for r in runs} == partitions
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), state()
        # The events, not a listing, found the keys: their runs come from the sensor that read them.
        assert all(r.tags.get("datalog/trigger") == SENSOR for r in runs), [r.tags for r in runs]
        assert all(r.tags.get("datalog/trigger") for r in instance.get_runs()), "a run was launched by hand"
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
        states = sensor_states(instance)
        assert states.get(SENSOR) == "DECLARED_IN_CODE", states
    finally:
        survivors = daemon.stop()
        instance.dispose()
        engine.dispose()
        assert not survivors, f"processes of the daemon's group survived SIGKILL: {survivors}"
