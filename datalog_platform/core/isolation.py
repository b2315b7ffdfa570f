"""A batch's reader in a process of its own: a crash of the reading library kills that process only.

DuckDB's JSON reader can die on input (a record nested some 30,000 levels deep overflows its
stack: a segfault that no `try` catches). So the read runs in a child process (`run_isolated`):
it opens its own DuckDB connection through `duckdb_setup.open_reader`, and its own store clients,
reads (and, for a conversion, writes the batch's files), and sends its result back over a pipe.
If it dies, the parent, which holds the batch's lease and the ledger, sees `ReaderCrash` naming the
signal, and can find the file that did it (`ingest.convert_batch`). An exception in the child is
raised again in the parent as itself.

The ledger stays with the parent: what the conversion asks of it (`convert.LakeCatalog`: the
dataset's fields, the files that stay, the write intent) the child asks over the pipe and the
parent answers. The child imports no database driver and holds no ledger credentials.

Readers are forked by a reader server (`reader_server`), a process that each run's process
starts once (`start_reader_server`): it imports this module, and with it everything a reader
needs, then forks one child per task. A child starts in milliseconds, imports nothing, and never
inherits a lock that another thread of the run's process held (it has threads: its lease
renewal, Dagster's). The server reports each child's exit status, which names the signal of a
crash. Memory: the child's DuckDB gets the run's share less what the run's process already holds
(`duckdb_setup.reader_memory_limit`), so the two stay within the run's RAM limit together.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import threading
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any, NoReturn

from datalog_platform.core.duckdb_setup import ReaderSettings, open_reader, resident_bytes
from datalog_platform.core.ledger.records import FieldSeen, LakeFile
from datalog_platform.core.store import ObjectStore
from datalog_platform.core.transform.convert import BatchConverter, LakeCatalog
from datalog_platform.core.transform.lines import SourceFile

_PR_SET_PDEATHSIG = 1


class ReaderCrash(RuntimeError):
    """The reader process died without an answer: killed by a signal, or it exited on its own."""

    def __init__(self, exitcode: int | None) -> None:
        if exitcode is not None and exitcode < 0:
            try:
                cause = f"killed by {signal.Signals(-exitcode).name}"
            except ValueError:
                cause = f"killed by signal {-exitcode}"
        else:
            cause = f"exited with code {exitcode} without an answer"
        super().__init__(f"the reader process {cause}")
        self.exitcode = exitcode


@dataclass(frozen=True)
class ReadTask:
    """What one reader process does: convert `files` of a batch (write its files), or, as a probe,
    only read them to see whether the reader survives them."""

    settings: ReaderSettings
    raw: ObjectStore
    lake: ObjectStore
    batch_id: str
    part_date: str
    region: str
    tz_offset_hours: int
    files: tuple[SourceFile, ...]
    held: tuple[LakeFile, ...] = ()
    line_path: frozenset[int] = frozenset()
    probe: bool = False

    def converter(self, conn: Any) -> BatchConverter:
        return BatchConverter(
            conn,
            self.raw,
            self.lake,
            self.batch_id,
            self.part_date,
            self.region,
            self.tz_offset_hours,
            self.settings.limits,
            self.held,
            self.line_path,
        )


class _RemoteCatalog:
    """The conversion's `LakeCatalog` in the reader process: each question goes to the parent."""

    def __init__(self, pipe: Connection) -> None:
        self._pipe = pipe

    def _ask(self, name: str, *args: object) -> Any:
        self._pipe.send_bytes(pickle.dumps(("call", name, args)))
        kind, value = pickle.loads(self._pipe.recv_bytes())
        if kind == "error":
            raise value
        return value

    def known_fields(self) -> dict[str, str]:
        return self._ask("known_fields")

    def record_fields(self, new: list[FieldSeen], widened: dict[str, tuple[str, str]]) -> dict[str, str]:
        return self._ask("record_fields", new, widened)

    def stored_files(self, dirs: list[str]) -> list[str]:
        return self._ask("stored_files", dirs)

    def record_intent(self, dirs: list[str]) -> None:
        self._ask("record_intent", dirs)


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (a reader's parent is the server, whose
    parent is the run's process): a reader never writes on for a run that is gone."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def serve_task(fd: int) -> NoReturn:
    """A reader: the task and the run's process's memory come over the socket `fd`; the answer
    goes back over it, and the process ends."""
    die_with_parent()
    pipe = Connection(fd)
    task, parent_bytes = pickle.loads(pipe.recv_bytes())
    try:
        with open_reader(task.settings, parent_bytes) as conn:
            converter = task.converter(conn)
            if task.probe:
                converter.probe(task.files)
                answer: tuple[str, object] = ("done", None)
            else:
                answer = ("done", converter.convert(task.files, _RemoteCatalog(pipe)))
    except BaseException as exc:  # everything the parent must know of; it raises it again
        exc.add_note(f"(in the batch's reader process)\n{traceback.format_exc()}")
        answer = ("error", exc)
    try:
        pipe.send_bytes(pickle.dumps(answer))
    except Exception as exc:  # an answer that does not pickle: its text still reaches the parent
        pipe.send_bytes(pickle.dumps(("error", RuntimeError(f"{type(exc).__name__}: {exc} ({answer[1]!r})"))))
    pipe.close()
    os._exit(0)


class _ReaderServer:
    """This process's reader server, started once; a task at a time."""

    def __init__(self) -> None:
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "datalog_platform.core.reader_server", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            env=env,
            stdout=subprocess.DEVNULL,  # it prints nothing; a reader of the run's output must not wait for it
        )
        theirs.close()
        self.control = ours
        self.lock = threading.Lock()
        self._last: int | None = None

    def run(self, task: ReadTask, catalog: LakeCatalog | None) -> Any:
        with self.lock:
            self._last = None
            ours, theirs = socket.socketpair()
            socket.send_fds(self.control, [b"T"], [theirs.fileno()])
            theirs.close()
            pipe = Connection(ours.detach())
            try:
                return self._converse(pipe, task, catalog)
            finally:
                pipe.close()
                self.exit_code()  # the reader's end, reported by the server once it is waited for

    def _converse(self, pipe: Connection, task: ReadTask, catalog: LakeCatalog | None) -> Any:
        try:
            pipe.send_bytes(pickle.dumps((task, resident_bytes())))
            while True:
                kind, *message = pickle.loads(pipe.recv_bytes())
                if kind == "call":
                    pipe.send_bytes(pickle.dumps(_answer(catalog, *message)))
                    continue
                (value,) = message
                if kind == "error":
                    raise value
                return value
        except (EOFError, BrokenPipeError, ConnectionResetError):  # the reader is gone without a word
            raise ReaderCrash(self.exit_code()) from None

    def exit_code(self) -> int:
        """The exit code of the last reader, as the server reports it (-N: killed by signal N);
        read once per reader."""
        if self._last is None:
            data = b""
            while len(data) < 4:
                chunk = self.control.recv(4 - len(data))
                if not chunk:
                    raise RuntimeError(f"the reader server (pid {self.process.pid}) is gone")
                data += chunk
            self._last = struct.unpack("!i", data)[0]
        return self._last


_server: _ReaderServer | None = None
_server_lock = threading.Lock()


def start_reader_server() -> None:
    """Start this process's reader server, without waiting for it: its imports go on while the
    caller does other work (a claim), and the first reader starts sooner."""
    global _server
    with _server_lock:
        if _server is None or _server.process.poll() is not None:
            _server = _ReaderServer()


def run_isolated(task: ReadTask, catalog: LakeCatalog | None = None) -> Any:
    """Run `task` in a reader process, answering its questions from `catalog`; the conversion's
    `ConvertResult` (None for a probe), or the reader's exception raised here. ReaderCrash if the
    reader dies without an answer."""
    start_reader_server()
    assert _server is not None
    return _server.run(task, catalog)


def _answer(catalog: LakeCatalog | None, name: str, args: Sequence[object]) -> tuple[str, object]:
    try:
        return "ok", getattr(catalog, name)(*args)
    except Exception as exc:
        return "error", exc
