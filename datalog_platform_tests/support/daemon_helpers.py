"""Helpers for the daemon tests: the environment the services get, start and stop `dagster-daemon`
(and `dagster-webserver`) in their own process groups, speak to the webserver's GraphQL API, find and
kill the processes of one run, read sensor ticks and runs from the instance.

Real parts only: the `dagster-daemon` and `dagster-webserver` executables of the virtualenv as child
process groups, HTTP to the webserver on 127.0.0.1, /proc for the process tree and the Dagster
instance in DAGSTER_HOME.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import dagster as dg

T = TypeVar("T")

WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
BIN = Path(sys.executable).parent  # the virtualenv's bin: dagster-daemon, dagster-webserver, datalog


def service_env(home: Path, dagster_home: Path, tz_offset_hours: int, **extra: str) -> dict[str, str]:
    """Exactly what a Dagster service, and the `datalog` command beside it, get: the virtualenv's
    bin on PATH, DATALOG_HOME, DAGSTER_HOME and the UTC offset, plus `extra`; nothing of the test
    process's own DATALOG_*/DAGSTER_*/AWS_* variables."""
    return {
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        "DATALOG_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "DATALOG_TZ_OFFSET_HOURS": str(tz_offset_hours),
        **extra,
    }


# ---------------------------------------------------------------------------------------------
# Processes


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    pgid: int
    state: str  # "Z" for a zombie (dead, not yet reaped)


def processes() -> dict[int, ProcInfo]:
    """Every process of the machine, read from /proc (those that vanish while reading are skipped)."""
    found: dict[int, ProcInfo] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        found[int(entry.name)] = ProcInfo(int(entry.name), int(fields[1]), int(fields[2]), fields[0])
    return found


def alive(info: ProcInfo | None) -> bool:
    return info is not None and info.state != "Z"


def descendants(root: int, table: Mapping[int, ProcInfo] | None = None) -> list[int]:
    """Living descendants of `root` (children first found, breadth first)."""
    table = processes() if table is None else table
    children: dict[int, list[int]] = {}
    for info in table.values():
        children.setdefault(info.ppid, []).append(info.pid)
    out: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            if alive(table.get(child)):
                out.append(child)
                todo.append(child)
    return out


def group_members(pgid: int) -> list[int]:
    """Living processes of a process group."""
    return sorted(p.pid for p in processes().values() if p.pgid == pgid and alive(p))


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "<gone>"


def kill_tree(root: int, pgid: int) -> list[int]:
    """SIGKILL `root` and every descendant, all of which must belong to process group `pgid` (ours).

    The root is stopped first so that it cannot notice its children dying (and report a step
    failure) or start new ones; then its descendants are stopped; then all are killed at once.
    Returns the pids killed.
    """
    table = processes()
    if not alive(table.get(root)):
        raise AssertionError(f"process {root} is not running")
    if table[root].pgid != pgid:
        raise AssertionError(f"process {root} ({cmdline(root)}) is not in the daemon's process group {pgid}")
    os.kill(root, signal.SIGSTOP)
    table = processes()
    tree = [root, *descendants(root, table)]
    foreign = [p for p in tree if p in table and table[p].pgid != pgid]
    if foreign:
        os.kill(root, signal.SIGCONT)
        raise AssertionError(f"processes {foreign} under {root} are outside process group {pgid}; not killing")
    for pid in tree[1:]:
        _signal(pid, signal.SIGSTOP)
    for pid in tree:
        _signal(pid, signal.SIGKILL)
    return tree


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of `pids` is alive (zombies count as dead); returns those still alive."""
    pids = list(pids)
    deadline = time.monotonic() + timeout
    while True:
        table = processes()
        left = [p for p in pids if alive(table.get(p))]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------
# The daemon


@dataclass
class Daemon:
    """`dagster-daemon run` as the leader of its own session and process group."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def log_tail(self, chars: int = 6000) -> str:
        if not self.log_file.closed:
            self.log_file.flush()
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return f"--- daemon log ({self.log_path}), last {chars} characters:\n{text[-chars:]}"

    def require_running(self) -> None:
        code = self.proc.poll()
        assert code is None, f"dagster-daemon exited with code {code}\n{self.log_tail()}"

    def crash(self) -> list[int]:
        """SIGKILL the whole group at once, as a lost machine or container would; returns survivors."""
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return self.stop()

    def stop(self, grace: float = 15) -> list[int]:
        """SIGTERM the whole group, then SIGKILL whatever is left; returns pids that survived both."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while group_members(self.pgid) and time.monotonic() < deadline:
                self.proc.poll()
                time.sleep(0.2)
            if not group_members(self.pgid):
                break
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - only if SIGKILL failed
            pass
        if not self.log_file.closed:
            self.log_file.close()
        return group_members(self.pgid)


def start_process(argv: list[str], cwd: Path, env: Mapping[str, str], log_path: Path) -> Daemon:
    """A Dagster service in its own session and process group, its output in `log_path`."""
    assert Path(argv[0]).is_file(), f"{argv[0]} not found: is the virtualenv installed (make setup)?"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: teardown kills everything it started
    )
    return Daemon(proc, log_path, log_file)


def start_daemon(bin_dir: Path, workspace: Path, env: Mapping[str, str], log_path: Path) -> Daemon:
    """`dagster-daemon run -w WORKSPACE` with cwd = the workspace's directory and exactly `env`."""
    return start_process(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(workspace)], workspace.parent, env, log_path
    )


def start_webserver(bin_dir: Path, workspace: Path, env: Mapping[str, str], log_path: Path, port: int) -> Daemon:
    """`dagster-webserver -w WORKSPACE` on 127.0.0.1:port: the UI and the GraphQL API it speaks."""
    argv = [str(bin_dir / "dagster-webserver"), "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    return start_process(argv, workspace.parent, env, log_path)


# The UI's mutation and query for a backfill of partitions (what the Materialize dialog posts).
LAUNCH_BACKFILL = """
mutation Launch($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { status numPartitions }
    ... on Error { message }
  }
}"""


def graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    """POST one query to the webserver's /graphql (the API the UI speaks); its `data`, no `errors`."""
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


@contextmanager
def webserver_and_daemon(
    bin_dir: Path, workspace: Path, env: Mapping[str, str], log_dir: Path, port: int
) -> Iterator[tuple[Daemon, Daemon]]:
    """`dagster-webserver` on 127.0.0.1:port and `dagster-daemon` on the same DAGSTER_HOME, once the
    webserver answers; both process groups are stopped on the way out, whatever happened."""
    services: list[Daemon] = []
    try:
        services.append(start_webserver(bin_dir, workspace, env, log_dir / "webserver.log", port))
        services.append(start_daemon(bin_dir, workspace, env, log_dir / "daemon.log"))
        poll(lambda: answering(port), timeout=180, what="the webserver to answer", daemon=services[0])
        yield services[0], services[1]
    finally:
        survivors = [pid for service in services for pid in service.stop()]
        assert not survivors, f"processes survived SIGKILL: {survivors}"


def poll(
    check: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = 1.0,
    daemon: Daemon | None = None,
    detail: Callable[[], str] | None = None,
) -> T:
    """Call `check` until it returns something other than None/False; fail after `timeout` seconds
    with `what`, the `detail` of the state reached and the daemon's log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if daemon is not None:
            daemon.require_running()
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            state = detail() if detail else ""
            log = daemon.log_tail() if daemon else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{state}\n{log}")
        time.sleep(interval)


# ---------------------------------------------------------------------------------------------
# The Dagster instance


def sensor_ticks(instance: dg.DagsterInstance, name: str, limit: int = 50) -> list[Any]:
    """The newest ticks of the sensor called `name` ([] before its first evaluation)."""
    for state in instance.all_instigator_state():
        if state.instigator_name == name:
            return list(instance.get_ticks(state.instigator_origin_id, state.selector_id, limit=limit))
    return []


def sensor_states(instance: dg.DagsterInstance) -> dict[str, str]:
    """Instigator name -> stored status (DECLARED_IN_CODE for a default-running sensor nobody toggled)."""
    return {s.instigator_name: s.status.value for s in instance.all_instigator_state()}


def partition_runs(instance: dg.DagsterInstance, partition: str) -> list[dg.DagsterRun]:
    """Runs of ingest_partition_job for one date|region partition, oldest first."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name="ingest_partition_job", tags={"dagster/partition": partition})
    )
    return sorted(runs, key=lambda r: instance.get_run_record_by_id(r.run_id).create_timestamp)


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid that reported RUN_START: the run worker the code server spawned for the run."""
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.RUN_START):
        if entry.dagster_event is not None and entry.dagster_event.pid is not None:
            return int(entry.dagster_event.pid)
    return None
