"""A raw store that breaks the process reading certain keys, for the tests of the reader's isolation.

DuckDB's own reader segfaults on a record nested some 30,000 levels deep, so a real crash of the
fast path needs only such a file. The line path reads through the store in Python, where no input
breaks the reader; `BreakingStore` makes it break there too: with a real signal sent to the
reading process (SIGSEGV, SIGABRT), or a DuckDB error raised in it (out of memory, a binder
error), so that a file can be shown to break the reader on both paths.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import BinaryIO

from datalog_platform.core.store import LocalStore


class BreakingStore(LocalStore):
    """A local directory whose `open` of any of `keys` sends `breaks` to the calling process when
    it is a signal, and raises it when it is an exception."""

    def __init__(self, root: str | os.PathLike[str], keys: Iterable[str], breaks: signal.Signals | Exception) -> None:
        super().__init__(root)
        self.keys = frozenset(keys)
        self.breaks = breaks

    def open(self, key: str) -> BinaryIO:
        if key in self.keys:
            if isinstance(self.breaks, Exception):
                raise self.breaks
            os.kill(os.getpid(), self.breaks)
        return super().open(key)


def deep_line(depth: int) -> str:
    """A record whose field `x` nests `depth` arrays."""
    return '{"device_id":"dev1","heartbeat":1762000100,"x":' + "[" * depth + "]" * depth + "}"
