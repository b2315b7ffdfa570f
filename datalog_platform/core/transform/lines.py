"""The line path: the files of a batch that DuckDB's reader could not take whole, line by line.

Each file is streamed from the store in blocks of about `LINE_BLOCK_BYTES`, so a file of any size
passes with Python holding one block; Python only splits the bytes into lines (C speed). DuckDB
validates each line into `_dl_lines` (a reason for each bad line), spilling to disk beyond its
memory limit, and the clean lines go to one local NDJSON file per source file for its reader.

Two kinds of line are quarantined before DuckDB parses them: a line longer than the line limit
(`DATALOG_MAX_LINE_BYTES`, which is also DuckDB's `maximum_object_size`), of which only the first
LINE_HEAD_BYTES are ever held, and a line nested deeper than MAX_DEPTH, which would overflow the
stack of DuckDB's JSON reader.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from datalog_platform.core.store import ObjectInfo, ObjectStore, Version
from datalog_platform.core.transform.timestamps import with_instant

MALFORMED_JSON = "malformed_json"
INVALID_TIMESTAMP = "invalid_timestamp"
LINE_TOO_LONG = "line_too_long"  # longer than the line limit: its first LINE_HEAD_BYTES are kept
TOO_DEEP = "too_deep"  # nested deeper than MAX_DEPTH
# The line path reads a file in blocks of this many bytes.
LINE_BLOCK_BYTES = 8 * 1024 * 1024
# What the quarantine keeps of a line longer than the limit.
LINE_HEAD_BYTES = 4096
# Arrays and objects nested deeper than this are not read: DuckDB's JSON reader recurses once a
# level and overflows its thread's stack at about 30,000 (a segfault), long before this is close.
MAX_DEPTH = 128


@dataclass(frozen=True)
class SourceFile:
    key_id: int
    key: str
    version: Version | None = None  # what the ledger holds of the object; None: not checked
    in_lake: bool = False  # the lake holds rows of the key (of an earlier version): they are replaced


@dataclass
class FileOutcome:
    key_id: int
    rows: int = 0
    quarantined_lines: int = 0
    duplicate_rows: int = 0  # valid rows not written: the record is already in the batch or the lake
    error: str | None = None  # set when the file could not be read at all (or is quarantined whole)
    gone: bool = False  # the object was not there when its batch read it
    changed_to: ObjectInfo | None = None  # the object changed before or during the read: not written
    failure: str | None = None  # FAILED: the file broke the reader (its process, memory, an error) on both paths


# A line of a file as the line path sees it: (1-based line number, text, whether it is valid
# UTF-8, the reason it is quarantined without parsing it, if any).
Line = tuple[int, str, bool, str | None]


def json_depth(line: bytes) -> int:
    """How deeply arrays and objects nest in a JSON text (brackets inside strings not counted)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in line:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _is_too_deep(line: bytes) -> bool:
    """Whether a line nests deeper than MAX_DEPTH; counting brackets at C speed rules out all but
    lines with that many of them before the exact look."""
    return len(line) > MAX_DEPTH and line.count(b"[") + line.count(b"{") > MAX_DEPTH and json_depth(line) > MAX_DEPTH


def _line(number: int, line: bytes, reason: str | None) -> Line:
    try:
        return number, line.decode("utf-8"), True, reason
    except UnicodeDecodeError:
        return number, line.decode("utf-8", errors="replace"), False, reason


def _checked(number: int, line: bytes, max_line_bytes: int) -> Line:
    if len(line) > max_line_bytes:
        return _line(number, line[:LINE_HEAD_BYTES], LINE_TOO_LONG)
    return _line(number, line, TOO_DEEP if _is_too_deep(line) else None)


def line_blocks(store: ObjectStore, key: str, max_line_bytes: int) -> Iterator[list[Line]]:
    """The non-blank lines of an object (`Line`), in blocks of about LINE_BLOCK_BYTES; a line that
    is not UTF-8 keeps its text with replacement characters, for the quarantine record. A line
    longer than `max_line_bytes` is never held whole: its first LINE_HEAD_BYTES are kept and the
    rest is read past. `.gz` objects are decompressed."""
    with store.open(key) as raw:
        stream = gzip.GzipFile(fileobj=raw) if key.endswith(".gz") else raw
        number = 0
        rest = b""
        skipping: bytes | None = None  # the head of an overlong line whose end is still ahead
        while True:
            data = stream.read(LINE_BLOCK_BYTES)
            block = []
            if skipping is not None:
                end = data.find(b"\n")
                if end < 0 and data:
                    yield block
                    continue
                number += 1
                block.append(_line(number, skipping, LINE_TOO_LONG))
                skipping, data = None, data[end + 1 :] if end >= 0 else b""
            lines = (rest + data).split(b"\n")
            rest = lines.pop() if data else b""
            for line in lines:
                number += 1
                line = line.rstrip(b"\r")
                if line.strip():
                    block.append(_checked(number, line, max_line_bytes))
            if len(rest) > max_line_bytes:
                skipping, rest = rest[:LINE_HEAD_BYTES], b""
            yield block
            if not data and skipping is None:
                return


def validate_lines(
    conn: duckdb.DuckDBPyConnection,
    raw: ObjectStore,
    files: list[SourceFile],
    outcomes: dict[int, FileOutcome],
    scratch: Path,
    max_line_bytes: int,
) -> dict[str, SourceFile]:
    """Every line of `files` into table `_dl_lines` with its reason (NULL when clean); a file that
    cannot be read gets its error in `outcomes` and no lines, one that is gone is marked so.
    Returns the clean files written under `scratch`, by path."""
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE _dl_lines (key_id BIGINT, source_file VARCHAR,
            line_number BIGINT, raw_line VARCHAR, reason VARCHAR)"""
    )
    lines = _LineBuffer(conn)
    for f in files:
        try:
            for block in line_blocks(raw, f.key, max_line_bytes):
                lines.add(f, block)
        except FileNotFoundError:
            outcomes[f.key_id].gone = True
            lines.drop(f.key_id)
        except (OSError, EOFError, zlib.error) as exc:
            outcomes[f.key_id].error = f"unreadable: {type(exc).__name__}: {exc}"
            lines.drop(f.key_id)
    lines.flush()
    return _write_clean_lines(conn, {f.key_id: f for f in files}, scratch)


class _LineBuffer:
    """Lines of one or more files, validated into `_dl_lines` by one INSERT per LINE_BLOCK_BYTES
    gathered, so a batch of many small files costs a few statements, not one per file."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn
        self.columns: dict[str, list[object]] = {name: [] for name in _BUFFER_TYPES}
        self.size = 0

    def add(self, source: SourceFile, block: list[Line]) -> None:
        if not block:
            return
        numbers, texts, utf8, reasons = zip(*block, strict=True)
        self.columns["key_id"] += [source.key_id] * len(block)
        self.columns["source_file"] += [source.key] * len(block)
        self.columns["line_number"] += numbers
        self.columns["raw_line"] += texts
        self.columns["utf8"] += utf8
        self.columns["pre_reason"] += reasons
        self.size += sum(map(len, texts))
        if self.size >= LINE_BLOCK_BYTES:
            self.flush()

    def drop(self, key_id: int) -> None:
        """Forget every line of one file, gathered or already inserted."""
        keep = [i for i, k in enumerate(self.columns["key_id"]) if k != key_id]
        self.columns = {name: [values[i] for i in keep] for name, values in self.columns.items()}
        self.conn.execute("DELETE FROM _dl_lines WHERE key_id = $key_id", {"key_id": key_id})

    def flush(self) -> None:
        if not self.columns["key_id"]:
            return
        table = pa.table({name: pa.array(self.columns[name], kind) for name, kind in _BUFFER_TYPES.items()})
        self.conn.register("_dl_lines_arrow", table)
        objects = """SELECT key_id, source_file, line_number, raw_line, pre_reason,
                CASE WHEN pre_reason IS NULL AND utf8 AND json_valid(raw_line)
                     THEN json_type(raw_line) = 'OBJECT' ELSE false END AS __dl_object
            FROM _dl_lines_arrow"""
        heartbeats = f"""SELECT *, CASE WHEN __dl_object THEN json_extract(raw_line, '$.heartbeat') END AS __dl_hb
            FROM ({objects})"""
        self.conn.execute(
            f"""INSERT INTO _dl_lines
            SELECT key_id, source_file, line_number, raw_line,
                CASE WHEN pre_reason IS NOT NULL THEN pre_reason
                     WHEN NOT __dl_object THEN '{MALFORMED_JSON}'
                     WHEN __dl_ts IS NULL THEN '{INVALID_TIMESTAMP}' END
            FROM ({with_instant(heartbeats, "__dl_hb", "JSON", "__dl_ts")})"""
        )
        self.conn.unregister("_dl_lines_arrow")
        self.columns = {name: [] for name in _BUFFER_TYPES}
        self.size = 0


_BUFFER_TYPES = {
    "key_id": pa.int64(),
    "source_file": pa.string(),
    "line_number": pa.int64(),
    "raw_line": pa.string(),
    "utf8": pa.bool_(),
    "pre_reason": pa.string(),
}


def _write_clean_lines(
    conn: duckdb.DuckDBPyConnection, by_id: dict[int, SourceFile], scratch: Path
) -> dict[str, SourceFile]:
    """The clean lines of `_dl_lines`, one NDJSON file per source file, streamed from DuckDB."""
    clean: dict[str, SourceFile] = {}
    current: int | None = None
    out = None
    cursor = conn.execute("SELECT key_id, raw_line FROM _dl_lines WHERE reason IS NULL ORDER BY key_id, line_number")
    try:
        while rows := cursor.fetchmany(50_000):
            for key_id, raw_line in rows:
                if key_id != current:
                    if out is not None:
                        out.close()
                    current, path = key_id, scratch / f"{key_id}.json"
                    out = path.open("w", encoding="utf-8")
                    clean[str(path)] = by_id[key_id]
                out.write(raw_line)
                out.write("\n")
    finally:
        if out is not None:
            out.close()
    return clean
