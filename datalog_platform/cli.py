"""The `datalog` command: load devices, ingest through Dagster, inspect the ledger, generate data."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import botocore.exceptions
import sqlalchemy as sa

from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.versions import rewrite_note
from datalog_platform.core.registry import read_registry_csv
from datalog_platform.core.store import StoreNotFoundError
from datalog_platform.settings import (
    HOME_SETTINGS_FILE,
    Settings,
    debug_requested,
    read_home_settings,
    record_home_setting,
)

DEMO_HOURS = 30
START_DATE_SETTING = "DATALOG_PARTITIONS_START_DATE"
# `datalog ingest` finished, but some objects were not ingested: missing, quarantined whole or failed.
EXIT_PARTIAL = 3

# Dagster's console logger at this level while `datalog ingest` runs partitions in process.
_RUN_CONFIG_LOGGING = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


# A new DAGSTER_HOME gets one event-log database instead of one per run (creating and migrating
# a database for every run cost about 0.5 s a run), and a run queue that runs backfills and
# sensor-launched runs in parallel but never two runs of the same partition at once. The queue is
# read every second instead of every 5, and sensors tick on threads: one sensor's tick (the long
# poll of s3_events_sensor) no longer holds up the others (see benchmarks/latency.py).
_DEFAULT_DAGSTER_YAML = """\
event_log_storage:
  module: dagster._core.storage.event_log
  class: ConsolidatedSqliteEventLogStorage
  config:
    base_dir: {home}/history
concurrency:
  runs:
    max_concurrent_runs: 2
    tag_concurrency_limits:
      - key: dagster/partition
        value:
          applyLimitPerUniqueValue: true
        limit: 1
run_queue:
  dequeue_interval_seconds: 1
sensors:
  use_threads: true
telemetry:
  enabled: false
"""


def _prepare_dagster_home(settings: Settings) -> Path:
    """Runs launched from the command line are recorded where `dagster dev` reads them; an
    instance configuration already there is left as it is."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(_DEFAULT_DAGSTER_YAML.format(home=home))
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def cmd_devices_load(settings: Settings, path: str) -> int:
    from datalog_platform.core.ledger.engine import ledger_engine

    # utf-8-sig: spreadsheet exports start the file with a byte-order mark
    rows = read_registry_csv(Path(path).read_text(encoding="utf-8-sig"))
    engine = ledger_engine(settings.ledger_url)
    inserted, updated = registration.upsert_devices(engine, rows)
    routed = registration.route_unrouted(engine)
    print(f"devices: {inserted} new, {updated} changed, {len(rows)} in file; {routed} waiting keys routed")
    return 0


@dataclass
class IngestSummary:
    registered: int = 0
    ignored: int = 0
    rewritten: int = 0  # known objects seen in a new version
    rewritten_ingested: int = 0  # of those, objects whose rows the lake held: the rewrite policy decided
    reappeared: int = 0  # MISSING objects back in the raw store
    unrouted: int = 0
    routed: int = 0
    runs: int = 0
    failed_runs: list[str] = field(default_factory=list)
    rows: int = 0
    quarantined_lines: int = 0
    keys: int = 0
    missing_keys: int = 0  # objects gone when their batch read them
    quarantined_keys: int = 0  # objects quarantined whole (unreadable, too many fields)
    failed_keys: int = 0  # objects that failed (a crash of the reader, attempts run out)
    partitions: set[str] = field(default_factory=set)
    step_seconds: float = 0.0  # time inside datalog_parquet, without Dagster's own overhead
    phase_seconds: dict[str, float] = field(default_factory=dict)  # the step's time by phase
    out_of_range_keys: int = 0  # pending keys whose date has no partition (see DATALOG_PARTITIONS_START_DATE)
    seconds: float = 0.0

    def as_json(self) -> dict[str, object]:
        return {**asdict(self), "partitions": sorted(self.partitions)}

    @property
    def not_ingested(self) -> int:
        return self.missing_keys + self.quarantined_keys + self.failed_keys


def run_ingest(settings: Settings) -> IngestSummary:
    """Register new raw objects, then run `ingest_partition_job` for every partition with pending
    keys until nothing is pending (a partition whose run failed is not retried here)."""
    from datalog_platform.core.isolation import start_reader_server

    start_reader_server()  # its imports go on beside Dagster's and the registration
    _prepare_dagster_home(settings)
    import dagster as dg

    from datalog_platform.core.backlog import ingestible_backlog
    from datalog_platform.core.ledger.engine import ledger_engine
    from datalog_platform.defs.ingest.assets import datalog_parquet
    from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME, date_range, partition_key
    from datalog_platform.defs.wiring import build_definitions

    started = time.perf_counter()
    summary = IngestSummary()
    defs = build_definitions(settings)
    stores = defs.resources["stores"]
    engine = ledger_engine(settings.ledger_url)
    found = registration.register_keys(engine, stores.raw().list(), settings.tz_offset_hours, settings.rewrite_policy)
    summary.registered, summary.ignored = found.registered, found.ignored
    summary.rewritten, summary.rewritten_ingested, summary.reappeared = (
        found.new_versions,
        found.rewritten,
        found.reappeared,
    )
    summary.routed = registration.route_unrouted(engine)
    with dg.DagsterInstance.get() as instance:
        known = set(instance.get_dynamic_partitions(REGION_PARTITIONS_NAME))
        new_regions = [r for r in registration.known_regions(engine) if r not in known]
        if new_regions:
            instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, new_regions)
        job = defs.resolve_job_def("ingest_partition_job")
        given_up: set[tuple[str, str]] = set()
        first, last = date_range(settings.partitions_start_date, settings.tz_offset_hours)
        while True:
            in_range, summary.out_of_range_keys = ingestible_backlog(engine, first, last)
            backlog = [p for p in in_range if (p.part_date, p.dstrct_code) not in given_up]
            if not backlog:
                break
            for part in backlog:
                key = partition_key(part.part_date, part.dstrct_code)
                result = job.execute_in_process(
                    instance=instance,
                    partition_key=key,
                    run_config=_RUN_CONFIG_LOGGING,
                    raise_on_error=False,
                    tags={"datalog/trigger": "cli"},
                )
                summary.runs += 1
                if not result.success:
                    summary.failed_runs.append(f"{key} (run {result.run_id})")
                    given_up.add((part.part_date, part.dstrct_code))
                    continue
                for event in result.get_asset_materialization_events():
                    mat = event.materialization
                    if mat.asset_key == datalog_parquet.key and "keys" in mat.metadata:
                        summary.rows += mat.metadata["rows"].value
                        summary.keys += mat.metadata["keys"].value
                        summary.quarantined_lines += mat.metadata["quarantined_lines"].value
                        summary.missing_keys += mat.metadata["missing_keys"].value
                        summary.quarantined_keys += mat.metadata["quarantined_keys"].value
                        summary.failed_keys += mat.metadata["failed_keys"].value
                        summary.step_seconds += mat.metadata["seconds"].value
                        for phase, seconds in mat.metadata["seconds_by_phase"].value.items():
                            summary.phase_seconds[phase] = summary.phase_seconds.get(phase, 0.0) + seconds
                    if mat.asset_key == datalog_parquet.key:
                        summary.partitions.add(str(mat.partition))
    summary.unrouted = registration.status_counts(engine)["by_status"].get("UNROUTED", 0)
    summary.seconds = time.perf_counter() - started
    return summary


def _exit_code(s: IngestSummary) -> int:
    """1 if a run failed; EXIT_PARTIAL if every run finished but some objects were not ingested."""
    return 1 if s.failed_runs else EXIT_PARTIAL if s.not_ingested else 0


def cmd_ingest(settings: Settings, as_json: bool = False) -> int:
    s = run_ingest(settings)
    for failed in s.failed_runs:
        print(f"FAILED: {failed}", file=sys.stderr)
    if as_json:
        print(json.dumps(s.as_json(), indent=2))
        return _exit_code(s)
    rewritten = f"{s.rewritten} rewritten, " if s.rewritten else ""
    print(
        f"registered {s.registered} new object(s) ({s.ignored} ignored), {rewritten}routed {s.routed}; "
        f"{s.runs} run(s) ingested {s.keys} key(s): {s.rows} rows, {s.quarantined_lines} line(s) "
        f"quarantined, {len(s.partitions)} partition(s) written in {s.seconds:.1f}s"
    )
    if s.rewritten_ingested:
        print(rewrite_note(s.rewritten_ingested, settings.rewrite_policy))
    if s.not_ingested:
        print(
            f"not ingested: {s.missing_keys} object(s) gone from the raw store (MISSING), {s.quarantined_keys} "
            f"quarantined whole, {s.failed_keys} failed; `datalog ledger status` counts them by status"
        )
    if s.unrouted:
        print(f"{s.unrouted} key(s) wait for devices missing from the registry (UNROUTED)")
    if s.out_of_range_keys:
        print(
            f"{s.out_of_range_keys} pending key(s) have a date outside the date partitions "
            "(DATALOG_PARTITIONS_START_DATE .. today's local date) and were not ingested"
        )
    return _exit_code(s)


def cmd_ledger_status(settings: Settings, as_json: bool) -> int:
    from datalog_platform.core.ledger.engine import ledger_engine

    counts = registration.status_counts(ledger_engine(settings.ledger_url))
    if as_json:
        print(json.dumps(counts, indent=2, sort_keys=True))
        return 0
    total = sum(counts["by_status"].values())
    print(f"{total} key(s), {counts['rows']} rows ingested")
    for status, n in sorted(counts["by_status"].items()):
        print(f"  {status:<12} {n}")
    for region, statuses in sorted(counts["by_region"].items()):
        print(f"  {region}: " + ", ".join(f"{s}={n}" for s, n in sorted(statuses.items())))
    return 0


def cmd_ledger_requeue(settings: Settings, status: str, region: str | None, since: str | None) -> int:
    from datalog_platform.core.ledger.engine import ledger_engine

    # ValueError (SUCCESS, UNROUTED, ...) is reported by `main` with exit code 2
    count = registration.requeue(ledger_engine(settings.ledger_url), status, region, since)
    where = "".join([f" in region {region}" if region else "", f" dated {since} or later" if since else ""])
    print(f"requeued {count} {status} key(s){where}: PENDING again, attempts reset")
    return 0


def cmd_ledger_release(settings: Settings, region: str | None, since: str | None) -> int:
    from datalog_platform.core.ledger.engine import ledger_engine
    from datalog_platform.core.ledger.registration import release_held

    count = release_held(ledger_engine(settings.ledger_url), region, since)
    where = "".join([f" in region {region}" if region else "", f" dated {since} or later" if since else ""])
    print(f"released {count} HELD key(s){where}: PENDING, their next run replaces the rows of the version before")
    return 0


def _iso_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def cmd_generate(
    settings: Settings, devices: int, hours: int, rows: int, seed: int, start: datetime | None = None
) -> int:
    from datalog_platform.core.generate import DEFAULT_START, REGISTRY_KEY, generate, registry_csv
    from datalog_platform.defs.resources import StoresResource
    from datalog_platform.defs.wiring import build_definitions

    stores: StoresResource = build_definitions(settings).resources["stores"]
    raw = stores.raw()
    summary = generate(raw, devices=devices, hours=hours, rows=rows, seed=seed, start=start or DEFAULT_START)
    registry = settings.home / "devices.csv"
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_bytes(registry_csv(summary.devices))
    print(
        f"generated {summary.files} file(s), {summary.rows} rows (+{summary.bad_lines} bad lines), "
        f"{summary.bytes / 1e6:.1f} MB into {raw.uri()}; registry: {registry} (also {REGISTRY_KEY})"
    )
    return 0


def materialize_registry(settings: Settings) -> None:
    """Materialize `device_registry` from the CSV in the raw store, recorded in DAGSTER_HOME as
    the UI would record it."""
    _prepare_dagster_home(settings)
    import dagster as dg

    from datalog_platform.defs.constants import TRIGGER_TAG
    from datalog_platform.defs.registry.assets import device_registry
    from datalog_platform.defs.wiring import build_definitions

    resources = build_definitions(settings).resources
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize(
            [device_registry],
            instance=instance,
            resources={"ledger": resources["ledger"], "stores": resources["stores"]},
            run_config=_RUN_CONFIG_LOGGING,
            tags={TRIGGER_TAG: "cli"},
        )
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    print(
        f"device_registry: {meta['devices']} devices in {meta['regions']} regions ({meta['new']} new, "
        f"{meta['changed']} changed); {meta['routed_keys']} waiting keys routed"
    )


def record_demo_start_date(settings: Settings, start: datetime) -> str:
    """The date partitions begin at the demo's first local date (the earliest, if run again), so
    the UI lists the dates that have data rather than every date since the default start; returns
    the date recorded."""
    from datalog_platform.core.ledger.raw_keys import local_date

    first = local_date(start, settings.tz_offset_hours)
    recorded = read_home_settings(settings.home).get(START_DATE_SETTING)
    start_date = min(first, recorded or first)
    record_home_setting(settings.home, START_DATE_SETTING, start_date)
    return start_date


def cmd_demo(settings: Settings) -> int:
    # The 30 hours before the current one, so the demo's dates end today.
    start = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0) - timedelta(hours=DEMO_HOURS)
    start_date = record_demo_start_date(settings, start)
    cmd_generate(settings, devices=12, hours=DEMO_HOURS, rows=120, seed=7, start=start)
    materialize_registry(settings)
    code = cmd_ingest(settings)
    import duckdb

    from datalog_platform.core.ledger.records import DATASET

    lake = settings.lake_url.rstrip("/")
    if not lake.startswith("s3://"):
        glob = f"{lake}/{DATASET}/**/*.parquet"
        con = duckdb.connect()
        print(f"\nThe lake ({lake}/{DATASET}, hive-partitioned by hiveperiod and dstrct_code):")
        for day, region, rows, files in con.execute(
            "SELECT hiveperiod, dstrct_code, count(*), count(DISTINCT filename) "
            "FROM read_parquet(?, hive_partitioning = true, filename = true) GROUP BY ALL ORDER BY ALL",
            [glob],
        ).fetchall():
            print(f"  hiveperiod={day}/dstrct_code={region}: {rows} rows in {files} file(s)")
        quarantine = f"{lake}/quarantine/**/*.parquet"
        for reason, n in con.execute(
            "SELECT reason, count(*) FROM read_parquet(?, hive_partitioning = true) GROUP BY ALL ORDER BY ALL",
            [quarantine],
        ).fetchall():
            print(f"  quarantine: {n} line(s) {reason}")
    print(
        f"\nDate partitions start at {start_date}, the demo's first local date "
        f"({START_DATE_SETTING} in {settings.home / HOME_SETTINGS_FILE}; the environment overrides it)."
    )
    print(
        "\nNext:\n"
        "  .venv/bin/datalog ledger status        keys by status and region\n"
        "  make ui                                 Dagster UI on http://127.0.0.1:3000 (runs, partitions)\n"
        f"  .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"FROM read_parquet('{lake}/{DATASET}/**/*.parquet', "
        'hive_partitioning=true) LIMIT 5\\").show()"\n'
    )
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="datalog", description=__doc__)
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an error too (or set DATALOG_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    devices = sub.add_parser("devices", help="the device registry").add_subparsers(dest="action", required=True)
    load = devices.add_parser("load", help="upsert devices from a CSV (device_id,dstrct_code)")
    load.add_argument("path")
    ingest = sub.add_parser("ingest", help="register new raw objects and ingest every pending partition")
    ingest.add_argument("--json", action="store_true", help="print the summary as a JSON object")
    ledger = sub.add_parser("ledger", help="the ledger").add_subparsers(dest="action", required=True)
    status = ledger.add_parser("status", help="keys by status and region")
    status.add_argument("--json", action="store_true", help="print a JSON object")
    requeue = ledger.add_parser(
        "requeue", help="put FAILED, QUARANTINED or MISSING keys back to PENDING (attempts reset, error cleared)"
    )
    requeue.add_argument(
        "--status", required=True, help="FAILED, QUARANTINED or MISSING (SUCCESS is refused: nothing changed)"
    )
    requeue.add_argument("--region", help="only keys of this region (dstrct_code)")
    requeue.add_argument("--since", type=_iso_date, help="only keys whose local date is DATE or later")
    release = ledger.add_parser(
        "release",
        help="let HELD keys (new versions DATALOG_REWRITE_POLICY=quarantine held) replace their rows in the lake",
    )
    release.add_argument("--region", help="only keys of this region (dstrct_code)")
    release.add_argument("--since", type=_iso_date, help="only keys whose local date is DATE or later")
    gen = sub.add_parser("generate", help="write synthetic device logs into the raw store")
    gen.add_argument("--devices", type=int, required=True)
    gen.add_argument("--hours", type=int, required=True)
    gen.add_argument("--rows", type=int, required=True)
    gen.add_argument("--seed", type=int, default=0)
    sub.add_parser("demo", help="generate, load, ingest, and show what landed where")
    sub.add_parser("dagster-home", help="prepare DAGSTER_HOME (as `datalog ingest` uses it) and print its path")
    return parser


def error_message(exc: Exception, settings: Settings | None) -> str | None:
    """One line for an error that a setting, an argument or an input file causes (what is wrong,
    which setting, what to do); None for any other error, whose traceback then shows. Never a
    password or an AWS key: database URLs are shown masked, credentials not at all."""
    if isinstance(exc, ValueError):  # SettingsError, a registry CSV or a requeue status refused
        return str(exc)
    if isinstance(exc, StoreNotFoundError):
        return (
            f"the raw store {exc.url} does not exist (DATALOG_RAW_URL): set DATALOG_RAW_URL to the "
            "directory that holds the raw logs, or write some there first (`datalog generate`)"
        )
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"{exc.filename}: {exc.strerror}"
    if settings is None:  # the errors below come from using the settings
        return None
    if isinstance(exc, botocore.exceptions.ConnectionError):
        return (
            f"cannot connect to the S3 endpoint {settings.s3_endpoint_url or 'of AWS'} (DATALOG_S3_ENDPOINT_URL): "
            "check the URL, the network and that the server is running"
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError):
        return f"S3: {exc}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
    if isinstance(exc, botocore.exceptions.ClientError):
        error = exc.response.get("Error", {})
        return (
            f"S3 refused {exc.operation_name}: {error.get('Code')} ({error.get('Message')}); check the buckets "
            "of DATALOG_RAW_URL and DATALOG_LAKE_URL and the AWS credentials (AWS_ACCESS_KEY_ID, ...)"
        )
    if isinstance(exc, sa.exc.OperationalError):
        url = sa.make_url(settings.ledger_url)
        reason = next(iter(str(exc.orig).strip().splitlines()), type(exc.orig).__name__)
        if url.password:
            reason = reason.replace(str(url.password), "***")
        return (
            f"cannot use the ledger database {url.render_as_string(hide_password=True)} (DATALOG_LEDGER_URL): "
            f"{reason}; check the URL and that the database is reachable"
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. An error of the configuration (see `error_message`) prints one line and
    exits 2, its traceback only with --debug or DATALOG_DEBUG=1; any other error raises."""
    args = build_parser().parse_args(argv)
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        if args.command == "devices":
            return cmd_devices_load(settings, args.path)
        if args.command == "ingest":
            return cmd_ingest(settings, args.json)
        if args.command == "ledger" and args.action == "requeue":
            return cmd_ledger_requeue(settings, args.status.upper(), args.region, args.since)
        if args.command == "ledger" and args.action == "release":
            return cmd_ledger_release(settings, args.region, args.since)
        if args.command == "ledger":
            return cmd_ledger_status(settings, args.json)
        if args.command == "generate":
            return cmd_generate(settings, args.devices, args.hours, args.rows, args.seed)
        if args.command == "dagster-home":
            print(_prepare_dagster_home(settings))
            return 0
        return cmd_demo(settings)
    except Exception as exc:
        message = error_message(exc, settings)
        if message is None:
            raise
        if args.debug or debug_requested():
            traceback.print_exc()
        print(f"datalog: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
