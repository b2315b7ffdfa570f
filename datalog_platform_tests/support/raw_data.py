"""Raw log files: write them as newline-delimited JSON, and read back the records that should reach
the lake.

Real parts only: the platform's object stores (a local directory, or moto's S3 server).
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

from datalog_platform.core.ledger import clock
from datalog_platform.core.store import ObjectStore

RowId = tuple[str, int]  # (source_file, seq): one generated record


def ndjson(*lines: str) -> bytes:
    """The bytes of a raw log file holding `lines`, one a line, the last one ended too."""
    return ("\n".join(lines) + "\n").encode()


def raw_key(device: str, hour: datetime, name: str = "log") -> str:
    """The key a device uploads a log file under: `{device}/{YYYYMMDDHH}/{name}.json` (UTC hour)."""
    return f"{device}/{hour:%Y%m%d%H}/{name}.json"


def hour_ago(hours: int, now: datetime | None = None) -> datetime:
    """The start of the UTC hour `hours` before `now` (naive UTC, as the ledger keeps times)."""
    now = now or clock.utcnow()
    return (now - timedelta(hours=hours)).replace(minute=0, second=0, microsecond=0)


def epoch_seconds(naive_utc: datetime) -> int:
    """A naive UTC time as whole seconds since 1970-01-01 (a heartbeat as devices send it)."""
    return int((naive_utc - datetime(1970, 1, 1)).total_seconds())


def is_raw_log(key: str) -> bool:
    return key.endswith((".json", ".json.gz")) and not key.startswith("_")


def good_records(store: ObjectStore, key: str) -> Iterator[dict[str, Any]]:
    """The records of one raw file that should reach the lake: lines that are valid JSON with a
    usable heartbeat (the generator's two kinds of bad line are left out)."""
    data = store.read_bytes(key)
    if key.endswith(".gz"):
        data = gzip.decompress(data)
    for line in data.decode().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("heartbeat") != "not a time":
            yield record


def raw_records(store: ObjectStore) -> set[RowId]:
    """(source key, seq) of every record of the raw store that should reach the lake."""
    return {
        (obj.key, int(record["seq"]))
        for obj in store.list()
        if is_raw_log(obj.key)
        for record in good_records(store, obj.key)
    }


def raw_log_keys(store: ObjectStore) -> list[str]:
    return [o.key for o in store.list() if is_raw_log(o.key)]
