"""The production deployment as the tests use it: the files under deploy/, a Dagster database of its
own on the test PostgreSQL server, a DAGSTER_HOME holding deploy/dagster.yaml, a workspace written
from deploy/workspace.yaml for a given port, the gRPC code server, and Dagster's run records read
back from PostgreSQL.

Real parts only: the PostgreSQL server named by DATALOG_TEST_POSTGRES_URL (a database created per
topology and dropped afterwards), `dagster code-server start` and `dagster api grpc-health-check`
from the virtualenv as child processes, and plain SQL on Dagster's `runs`, `run_tags` and
`event_logs` tables.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
import yaml

from datalog_platform_tests.support.daemon_helpers import (
    BIN,
    Daemon,
    answering,
    poll,
    service_env,
    start_daemon,
    start_process,
    start_webserver,
)
from datalog_platform_tests.support.ledger_helpers import postgres_schema, postgres_url, schema_url
from datalog_platform_tests.support.net import free_port

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DAGSTER_YAML = DEPLOY / "dagster.yaml"
WORKSPACE_YAML = DEPLOY / "workspace.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
MAKEFILE = REPO / "Makefile"
REFERENCE = REPO / "datalog_platform_tests" / "reference"
CODE_MODULE = "datalog_platform.definitions"


@contextmanager
def dagster_database(prefix: str = "datalog_dagster") -> Iterator[str]:
    """A new, empty database `<prefix>_<hex>` on the test server (by default for Dagster's own
    storage); yields its URL in the form DAGSTER_PG_URL takes, and drops the database afterwards."""
    server = sa.make_url(postgres_url())
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield server.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def production_dagster_home(path: Path) -> Path:
    """A DAGSTER_HOME holding deploy/dagster.yaml, copied byte for byte."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(DAGSTER_YAML, path / "dagster.yaml")
    return path


def workspace_for_port(path: Path, port: int) -> Path:
    """deploy/workspace.yaml with the code server's port replaced by `port`; everything else as shipped."""
    workspace = yaml.safe_load(WORKSPACE_YAML.read_text())
    (entry,) = workspace["load_from"]
    entry["grpc_server"]["port"] = port
    path.write_text(yaml.safe_dump(workspace, sort_keys=False))
    return path


def grpc_healthy(port: int) -> bool:
    """`dagster api grpc-health-check -p PORT`: the Dockerfile's HEALTHCHECK, run against 127.0.0.1."""
    proc = subprocess.run(
        [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0


def start_code_server(cwd: Path, env: Mapping[str, str], log_path: Path, port: int) -> Daemon:
    """`dagster code-server start -m datalog_platform.definitions` on 127.0.0.1:port, in its own
    process group (the image binds 0.0.0.0; a test keeps to the loopback interface)."""
    argv = [str(BIN / "dagster"), "code-server", "start", "-m", CODE_MODULE, "-h", "127.0.0.1", "-p", str(port)]
    return start_process(argv, cwd, env, log_path)


# ---------------------------------------------------------------------------------------------
# Dagster's run storage, read with SQL


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    job_name: str
    status: str
    start: float | None  # epoch seconds, from the runs table
    end: float | None
    tags: dict[str, str]

    @property
    def partition(self) -> str | None:
        return self.tags.get("dagster/partition")


def run_records(dagster_pg_url: str) -> list[RunRecord]:
    """Every run of the instance with its start and end time and its tags, from `runs` and `run_tags`."""
    engine = sa.create_engine(dagster_pg_url)
    try:
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT run_id, pipeline_name, status, start_time, end_time FROM runs")).all()
            tags: dict[str, dict[str, str]] = {}
            for run_id, key, value in conn.execute(sa.text("SELECT run_id, key, value FROM run_tags")):
                tags.setdefault(run_id, {})[key] = value
    finally:
        engine.dispose()
    return [RunRecord(r[0], r[1], r[2], r[3], r[4], tags.get(r[0], {})) for r in runs]


def event_counts(dagster_pg_url: str, run_ids: list[str]) -> dict[str, dict[str, int]]:
    """run id -> Dagster event type -> how many of the run's events `event_logs` holds."""
    engine = sa.create_engine(dagster_pg_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT run_id, dagster_event_type, count(*) FROM event_logs "
                    "WHERE run_id IN :ids AND dagster_event_type IS NOT NULL GROUP BY run_id, dagster_event_type"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": run_ids},
            ).all()
    finally:
        engine.dispose()
    counts: dict[str, dict[str, int]] = {}
    for run_id, event_type, n in rows:
        counts.setdefault(run_id, {})[event_type] = int(n)
    return counts


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The largest number of (start, end) spans that hold one instant."""
    return max((sum(1 for s, e in spans if s <= start < e) for start, _ in spans), default=0)


def overlapping_pairs(records: list[RunRecord]) -> list[tuple[str, str, str]]:
    """(partition, run, run) for every two finished runs of one partition whose spans overlap."""
    found = []
    by_partition: dict[str, list[RunRecord]] = {}
    for r in records:
        if r.partition is not None:
            by_partition.setdefault(r.partition, []).append(r)
    for partition, runs in by_partition.items():
        ordered = sorted(runs, key=lambda r: r.start or 0.0)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1 :]:
                if a.start is not None and b.start is not None and a.end is not None and b.start < a.end:
                    found.append((partition, a.run_id, b.run_id))
    return found


# ---------------------------------------------------------------------------------------------
# A whole production topology on this machine


def production_instance(dagster_home: Path, dagster_pg_url: str) -> dg.DagsterInstance:
    """The instance of deploy/dagster.yaml in `dagster_home`, its storage at `dagster_pg_url`: the
    variable is set only while the configuration is read (storages keep the resolved URL), so
    instances of several topologies live side by side in one process."""
    saved = os.environ.get("DAGSTER_PG_URL")
    os.environ["DAGSTER_PG_URL"] = dagster_pg_url
    try:
        return dg.DagsterInstance.from_config(str(dagster_home))
    finally:
        if saved is None:
            os.environ.pop("DAGSTER_PG_URL", None)
        else:
            os.environ["DAGSTER_PG_URL"] = saved


@dataclass
class Topology:
    """Dagster's storage in a PostgreSQL database of its own, the ledger in a PostgreSQL schema of
    its own, the code server over gRPC on 127.0.0.1 and the daemon (and the webserver) on a
    workspace written from deploy/workspace.yaml. The code server and the runs it starts get the
    platform's settings; the daemon and the webserver get only DAGSTER_HOME and DAGSTER_PG_URL."""

    home: Path
    dagster_home: Path
    dagster_pg_url: str
    ledger_url: str
    code_env: dict[str, str]
    workspace: Path
    code_port: int
    web_port: int | None
    instance: dg.DagsterInstance
    services: list[Daemon] = field(default_factory=list)

    @property
    def code_server(self) -> Daemon:
        return self.services[0]

    @property
    def daemon(self) -> Daemon:
        return self.services[1]

    def service_env(self) -> dict[str, str]:
        return {
            "PATH": self.code_env["PATH"],
            "HOME": str(self.home),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "DAGSTER_HOME": str(self.dagster_home),
            "DAGSTER_PG_URL": self.dagster_pg_url,
        }

    def start_code_server(self) -> None:
        self.services.append(start_code_server(self.home, self.code_env, self.home / "code-server.log", self.code_port))

    def start_services(self) -> None:
        """Once the code server answers its health check: the daemon, and the webserver if it has a port."""
        poll(lambda: grpc_healthy(self.code_port), 120, "the code server's gRPC health check", daemon=self.code_server)
        env = self.service_env()
        self.services.append(start_daemon(BIN, self.workspace, env, self.home / "daemon.log"))
        if self.web_port is not None:
            log = self.home / "webserver.log"
            self.services.append(start_webserver(BIN, self.workspace, env, log, self.web_port))
            poll(lambda: answering(self.web_port), 180, "the webserver to answer", daemon=self.services[-1])

    def require_running(self) -> None:
        for service in self.services:
            service.require_running()

    def logs(self) -> str:
        return "\n".join(service.log_tail(3000) for service in self.services)


@contextmanager
def production_topology(home: Path, tz_offset_hours: int, webserver: bool, **settings: str) -> Iterator[Topology]:
    """A Topology under `home` whose code server gets DATALOG_HOME, the UTC offset, the ledger's URL
    and `settings`; nothing is started yet. Every process group is stopped, the ledger's schema and
    Dagster's database are dropped on the way out."""
    home.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        dagster_pg_url = stack.enter_context(dagster_database())
        base = postgres_url()
        _engine, schema = stack.enter_context(postgres_schema(base))
        ledger_url = schema_url(base, schema)
        dagster_home = production_dagster_home(home / "dagster_home")
        code_env = service_env(
            home,
            dagster_home,
            tz_offset_hours,
            DAGSTER_PG_URL=dagster_pg_url,
            DATALOG_LEDGER_URL=ledger_url,
            **settings,
        )
        code_port = free_port()
        topology = Topology(
            home=home,
            dagster_home=dagster_home,
            dagster_pg_url=dagster_pg_url,
            ledger_url=ledger_url,
            code_env=code_env,
            workspace=workspace_for_port(home / "workspace.yaml", code_port),
            code_port=code_port,
            web_port=free_port() if webserver else None,
            instance=production_instance(dagster_home, dagster_pg_url),
        )
        try:
            yield topology
        finally:
            survivors = [pid for service in reversed(topology.services) for pid in service.stop(grace=5)]
            topology.instance.dispose()
            assert not survivors, f"processes survived SIGKILL: {survivors}"
