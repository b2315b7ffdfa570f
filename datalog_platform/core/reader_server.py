"""The reader server: `python -m datalog_platform.core.reader_server FD`, started by `isolation`.

It imports what a batch's reader needs once (and what DuckDB imports on its first use of Arrow,
by using it: `warm_up`), then, for each socket the run's process sends over
the control socket FD, forks a reader that serves the task coming over that socket
(`isolation.serve_task`), waits for it and reports its exit status (-N: killed by signal N). It
is single-threaded, so a fork inherits no lock another thread holds; it ends when the run's
process closes the control socket, or dies.
"""

from __future__ import annotations

import os
import socket
import struct
import sys

import duckdb
import pyarrow as pa

from datalog_platform.core import isolation


def warm_up() -> None:
    """Hand DuckDB an Arrow table once: it imports pyarrow's dataset and compute modules then,
    which every reader would otherwise import again after its fork (a tenth of a second each)."""
    with duckdb.connect() as conn:
        conn.register("warm_up", pa.table({"a": [1]}))
        conn.execute("SELECT * FROM warm_up").fetchall()


def main(fd: int) -> None:
    isolation.die_with_parent()
    warm_up()
    control = socket.socket(fileno=fd)
    while True:
        message, fds, _, _ = socket.recv_fds(control, 1, 1)
        if not message:
            return
        (task_fd,) = fds
        pid = os.fork()
        if pid == 0:
            control.close()
            isolation.serve_task(task_fd)
        os.close(task_fd)
        _, status = os.waitpid(pid, 0)
        control.sendall(struct.pack("!i", os.waitstatus_to_exitcode(status)))


if __name__ == "__main__":
    main(int(sys.argv[1]))
