"""Latency from an upload to its rows committed in the lake, under `dagster dev` as `make ui` runs it.

For each mode, a fresh DATALOG_HOME with default settings, the raw store in a bucket of moto's
server (a separate `moto_server` process on 127.0.0.1) and `dagster dev` started as `make ui` starts
it (`DAGSTER_HOME=$(datalog dagster-home) dagster dev`, cwd the repository):

- notification: DATALOG_S3_EVENTS_QUEUE_URL names an SQS queue of the same server that receives
  the bucket's `s3:ObjectCreated:*` events (a real bucket notification configuration);
- listing: no queue; `raw_logs_sensor` finds the uploads.

Once every sensor has finished a tick, 10 files (20 records each) are uploaded 20 s apart, each
to its own date x region partition (a device per region, under the current UTC hour). An upload's
latency runs from the moment its PUT returned to its key's `done_at` in the ledger: the commit
that marks the key SUCCESS, in the transaction that lists its Parquet files in the manifest, so its
rows are readable from then on. Each file's rows are then counted in the lake. Per upload, the
time is split at the key's registration (`discovered_at`), the run's creation (queued) and start
(the run worker began), and the commit.

Prints median and maximum per mode, writes benchmarks/latency.json, and writes its section of
benchmarks/REPORT.md between `<!-- latency:begin -->` and `<!-- latency:end -->` (appended at the
end if the markers are missing).

    .venv/bin/python benchmarks/latency.py [--modes notification listing] [--uploads 10] [--spacing 20]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402
from report_sections import write_section  # noqa: E402

from datalog_platform.core.discovery import DiscoveryCursor, DiscoveryLimits, discover  # noqa: E402
from datalog_platform.core.generate import log_lines, registry_csv  # noqa: E402
from datalog_platform.core.ledger import registration  # noqa: E402
from datalog_platform.core.ledger.engine import ledger_engine  # noqa: E402
from datalog_platform.core.ledger.schema import SUCCESS, keys  # noqa: E402
from datalog_platform.core.ledger.versions import REINGEST  # noqa: E402
from datalog_platform.core.store import LocalStore  # noqa: E402
from datalog_platform_tests.support.cli_helpers import run_ok  # noqa: E402
from datalog_platform_tests.support.daemon_helpers import (  # noqa: E402
    BIN,
    Daemon,
    answering,
    partition_runs,
    poll,
    sensor_ticks,
    service_env,
    start_process,
)
from datalog_platform_tests.support.net import free_port  # noqa: E402
from datalog_platform_tests.support.raw_data import ndjson  # noqa: E402
from datalog_platform_tests.support.s3 import (  # noqa: E402
    FAKE_AWS_ENV,
    new_bucket,
    new_queue,
    notify_queue,
    s3_client_for,
    sqs_client_for,
)

REPORT = REPO / "benchmarks" / "REPORT.md"
RESULTS = REPO / "benchmarks" / "latency.json"
BEGIN, END = "<!-- latency:begin -->", "<!-- latency:end -->"
TZ_OFFSET_HOURS = 8
ROWS = 20
MODES = ("notification", "listing")
TARGETS = {"notification": {"median": 20.0, "max": 30.0}, "listing": {"median": 45.0}}


@dataclass
class Upload:
    key: str
    partition: str
    uploaded_at: float  # epoch seconds when the PUT returned
    registered_s: float | None = None  # discovered_at - upload
    queued_s: float | None = None  # the run's creation - upload
    started_s: float | None = None  # the run worker's start - upload
    committed_s: float | None = None  # done_at - upload: the latency
    rows_in_lake: int = 0


@dataclass
class ModeResult:
    mode: str
    uploads: list[Upload] = field(default_factory=list)
    median_s: float | None = None
    max_s: float | None = None
    missed: int = 0  # uploads not committed within the wait

    def summarise(self) -> None:
        done = [u.committed_s for u in self.uploads if u.committed_s is not None]
        self.missed = len(self.uploads) - len(done)
        if done:
            self.median_s = round(statistics.median(done), 1)
            self.max_s = round(max(done), 1)


def epoch(naive_utc: datetime) -> float:
    return naive_utc.replace(tzinfo=UTC).timestamp()


def start_moto(log_path: Path) -> tuple[Daemon, str]:
    port = free_port()
    server = start_process(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], REPO, dict(os.environ), log_path
    )
    endpoint = f"http://127.0.0.1:{port}"
    poll(lambda: answering_http(endpoint), timeout=60, what="moto's server", daemon=server)
    return server, endpoint


def answering_http(endpoint: str) -> bool:
    try:
        s3_client_for(endpoint).list_buckets()
        return True
    except Exception:  # noqa: BLE001 - not listening yet
        return False


def stop(service: Daemon) -> None:
    left = service.stop()
    if left:
        for pid in left:
            os.kill(pid, signal.SIGKILL)


def measure(mode: str, uploads: int, spacing: float, work: Path, moto: str) -> ModeResult:
    s3 = s3_client_for(moto)
    bucket = new_bucket(s3)
    extra = {
        "DATALOG_RAW_URL": f"s3://{bucket}/raw",
        "DATALOG_S3_ENDPOINT_URL": moto,
        "AWS_REGION": FAKE_AWS_ENV["AWS_DEFAULT_REGION"],
        **FAKE_AWS_ENV,
    }
    if mode == "notification":
        queue_url, queue_arn = new_queue(sqs_client_for(moto))
        notify_queue(s3, bucket, queue_arn)
        extra["DATALOG_S3_EVENTS_QUEUE_URL"] = queue_url
    home = work / mode
    env = service_env(home, home / "dagster", TZ_OFFSET_HOURS, **extra)
    dagster_home = run_ok(env, "dagster-home").stdout.strip().splitlines()[-1]
    env["DAGSTER_HOME"] = dagster_home
    registry = [(f"lat{n:02d}", f"R{n:02d}") for n in range(uploads)]
    csv_path = work / f"{mode}-registry.csv"
    csv_path.write_bytes(registry_csv(registry))
    run_ok(env, "devices", "load", str(csv_path))
    engine = sa.create_engine(f"sqlite:///{home}/ledger.db", connect_args={"timeout": 30})
    instance = dg.DagsterInstance.from_config(dagster_home)
    port = free_port()
    dev = start_process(
        [str(BIN / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(port)], REPO, env, work / f"{mode}-dagster-dev.log"
    )
    result = ModeResult(mode)
    try:
        poll(lambda: answering(port), timeout=240, what="dagster dev's webserver", daemon=dev)
        sensors = ["raw_logs_sensor", "pending_keys_sensor"] + (["s3_events_sensor"] if mode == "notification" else [])
        poll(
            lambda: all(any(t.status.value != "STARTED" for t in sensor_ticks(instance, s, limit=2)) for s in sensors),
            timeout=240,
            what="a finished tick of every sensor",
            daemon=dev,
        )
        rng = random.Random(13)
        first = time.monotonic()
        for n, (device, region) in enumerate(registry):
            time.sleep(max(0.0, first + n * spacing - time.monotonic()))
            hour = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
            key = f"{device}/{hour:%Y%m%d%H}/log-{int(time.time())}.json"
            body = ndjson(*log_lines(device, hour, ROWS, rng, bad=False))
            s3.put_object(Bucket=bucket, Key=f"raw/{key}", Body=body)
            local = datetime.fromtimestamp(epoch(hour) + TZ_OFFSET_HOURS * 3600, UTC).strftime("%Y-%m-%d")
            result.uploads.append(Upload(key=key, partition=f"{local}|{region}", uploaded_at=time.time()))
            print(f"[{mode}] uploaded {key}", flush=True)

        def all_committed() -> bool:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(keys.c.key, keys.c.status).where(keys.c.key.in_([u.key for u in result.uploads]))
                ).all()
            return len(rows) == len(result.uploads) and all(status == SUCCESS for _, status in rows)

        try:
            poll(all_committed, timeout=240, what="every upload committed", daemon=dev, interval=0.5)
        except AssertionError as exc:
            print(f"[{mode}] {str(exc).splitlines()[0]}", flush=True)
        # the runs finish their checks after the commit; let them end before reading their records
        poll(
            lambda: all(r.is_finished for u in result.uploads for r in partition_runs(instance, u.partition)),
            timeout=120,
            what="the runs to finish",
            daemon=dev,
        )
        fill(result, engine, instance, Path(home / "lake"))
    finally:
        stop(dev)
        instance.dispose()
        engine.dispose()
    result.summarise()
    return result


def fill(result: ModeResult, engine: sa.Engine, instance: dg.DagsterInstance, lake: Path) -> None:
    with engine.connect() as conn:
        ledger = {
            row.key: row
            for row in conn.execute(
                sa.select(keys.c.key, keys.c.status, keys.c.discovered_at, keys.c.done_at).where(
                    keys.c.key.in_([u.key for u in result.uploads])
                )
            )
        }
    con = duckdb.connect()
    for upload in result.uploads:
        row = ledger.get(upload.key)
        if row is None:
            continue
        upload.registered_s = round(epoch(row.discovered_at) - upload.uploaded_at, 2)
        if row.status == SUCCESS and row.done_at is not None:
            upload.committed_s = round(epoch(row.done_at) - upload.uploaded_at, 2)
            files = str(lake / "datalog_v2" / "**" / "*.parquet")
            ((count,),) = con.execute(
                "SELECT count(*) FROM read_parquet(?, union_by_name = true) WHERE source_file = ?", [files, upload.key]
            ).fetchall()
            upload.rows_in_lake = int(count)
        committed = [r for r in partition_runs(instance, upload.partition) if r.status == dg.DagsterRunStatus.SUCCESS]
        if committed:
            record = instance.get_run_record_by_id(committed[0].run_id)
            upload.queued_s = round(record.create_timestamp.timestamp() - upload.uploaded_at, 2)
            if record.start_time is not None:
                upload.started_s = round(record.start_time - upload.uploaded_at, 2)


@dataclass
class ListCost:
    devices: int
    requests_per_tick: list[int]  # steady state: every device has uploaded within the window
    ticks_per_round: int  # ticks until every device was listed once
    max_requests: int

    def per_hour(self, interval_seconds: int) -> int:
        return round(statistics.median(self.requests_per_tick) * 3600 / interval_seconds)


def list_cost(work: Path, devices: int = 1000) -> ListCost:
    """List requests of discovery ticks with default limits, for `devices` devices that each
    uploaded a file this hour (all hot), counted by the store after their first registration."""
    raw = LocalStore(work / "list-cost" / "raw")
    hour = datetime.now(UTC).replace(tzinfo=None, minute=0, second=0, microsecond=0)
    registry = [(f"dev{n:05d}", f"R{n % 10}") for n in range(devices)]
    for device, _ in registry:
        raw.write_bytes(f"{device}/{hour:%Y%m%d%H}/log.json", b"{}\n")
    engine = ledger_engine(f"sqlite:///{work / 'list-cost' / 'ledger.db'}")
    registration.upsert_devices(engine, registry)
    limits = DiscoveryLimits()
    cursor = DiscoveryCursor()
    for _ in range(100):  # the first round registers every device; the next ones are steady
        first = discover(raw, engine, cursor, datetime.now(UTC).replace(tzinfo=None), limits, TZ_OFFSET_HOURS, REINGEST)
        cursor = first.cursor
        if not first.more:
            break
    requests, listed, ticks = [], 0, 0
    while listed < devices:
        tick = discover(raw, engine, cursor, datetime.now(UTC).replace(tzinfo=None), limits, TZ_OFFSET_HOURS, REINGEST)
        cursor = tick.cursor
        requests.append(tick.list_requests)
        listed += tick.devices_listed
        ticks += 1
    engine.dispose()
    return ListCost(devices, requests, ticks, limits.max_requests)


def report_block(results: list[ModeResult], command: str, cost: ListCost | None) -> str:
    lines = [
        BEGIN,
        "",
        f"Command: `{command}` ({platform.machine()}, {os.cpu_count()} cores, shared; "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC). Default settings, `dagster dev` as `make ui` runs it, the raw "
        "store on moto's S3 server; 10 uploads of 20 records, each to its own partition, 20 s apart. Latency: "
        "from the PUT's return to the key's commit in the ledger (`done_at`, the transaction that lists its files "
        "in the manifest); every file's rows were counted in the lake afterwards.",
        "",
        "| mode | median s | max s | target | met | uploads committed |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        target = TARGETS[r.mode]
        met = r.missed == 0 and r.median_s is not None and r.median_s <= target["median"]
        met = met and ("max" not in target or (r.max_s is not None and r.max_s <= target["max"]))
        wanted = f"median <= {target['median']:.0f}" + (f", max <= {target['max']:.0f}" if "max" in target else "")
        lines.append(
            f"| {r.mode} | {r.median_s} | {r.max_s} | {wanted} | {'yes' if met else 'no'} | "
            f"{len(r.uploads) - r.missed}/{len(r.uploads)} |"
        )
    lines += ["", "Where the time went (seconds after the upload; medians over the uploads):", ""]
    lines += ["| mode | registered | run queued | run started | committed |", "|---|---|---|---|---|"]
    for r in results:

        def med(values: list[float | None]) -> str:
            present = [v for v in values if v is not None]
            return f"{statistics.median(present):.1f}" if present else "-"

        lines.append(
            f"| {r.mode} | {med([u.registered_s for u in r.uploads])} | {med([u.queued_s for u in r.uploads])} | "
            f"{med([u.started_s for u in r.uploads])} | {med([u.committed_s for u in r.uploads])} |"
        )
    if cost is not None:
        lines += [
            "",
            f"Cost of listing, {cost.devices} devices that all uploaded within the trailing window, default "
            f"discovery limits: a tick makes {statistics.median(cost.requests_per_tick):.0f} list requests (the "
            f"budget DATALOG_DISCOVERY_MAX_REQUESTS={cost.max_requests} caps it) and a round over every device takes "
            f"{cost.ticks_per_round} ticks; list requests per hour by the tick interval of `raw_logs_sensor`:",
            "",
            "| interval s | list requests per hour | a device listed every |",
            "|---|---|---|",
        ]
        for interval in (60, 30, 15):
            lines.append(f"| {interval} | {cost.per_hour(interval):,} | {cost.ticks_per_round * interval} s |")
    lines += ["", END]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--uploads", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=20.0, help="seconds between uploads")
    parser.add_argument("--workdir", type=Path, help="keep the homes and logs here (default: a temporary dir)")
    parser.add_argument("--devices", type=int, default=1000, help="devices for the cost of listing (0: skip)")
    parser.add_argument("--no-report", action="store_true", help="print the figures without writing the report")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="datalog-latency-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.update(FAKE_AWS_ENV)
    moto, endpoint = start_moto(work / "moto.log")
    results = []
    try:
        for mode in args.modes:
            result = measure(mode, args.uploads, args.spacing, work, endpoint)
            results.append(result)
            for u in result.uploads:
                print(json.dumps(asdict(u)), flush=True)
            print(f"[{mode}] median {result.median_s} s, max {result.max_s} s, missed {result.missed}", flush=True)
    finally:
        stop(moto)
    command = "make setup && .venv/bin/python benchmarks/latency.py"
    if args.modes != list(MODES) or args.uploads != 10 or args.spacing != 20.0:
        command = "make setup && .venv/bin/python benchmarks/latency.py " + " ".join(sys.argv[1:])
    cost = list_cost(work, args.devices) if args.devices else None
    if cost is not None:
        print(json.dumps(asdict(cost)), flush=True)
    block = report_block(results, command, cost)
    print(block)
    if not args.no_report:
        figures = {"modes": [asdict(r) for r in results], "list_cost": asdict(cost) if cost else None}
        RESULTS.write_text(json.dumps(figures, indent=2) + "\n")
        write_section(REPORT, BEGIN, END, block, "Latency: upload to committed rows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
