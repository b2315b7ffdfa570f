"""Synthetic device logs: `{device}/{YYYYMMDDHH}/log.json[.gz]` with mixed heartbeat formats.

Corruption is realistic rather than uniform: a small share of uploads (`bad_file_share`) carries
one or two broken lines (a truncated record, or an unusable heartbeat), the rest are clean.
"""

from __future__ import annotations

import csv
import gzip
import io
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta

from datalog_platform.core.store import ObjectStore

REGIONS = ("BRCB", "KPCS", "SMRD")
REGISTRY_KEY = "_registry/devices.csv"
DEFAULT_START = datetime(2026, 11, 1, 0)

_FORMATS = ("s", "ms", "us", "ns", "s_text", "s_float", "iso_z", "iso_offset", "iso_naive")
_BAD_LINES = ('{"device_id": "%s", "heartbeat": 17', '{"device_id":"%s","heartbeat":"not a time"}')


@dataclass(frozen=True)
class GenerateSummary:
    files: int
    rows: int
    bad_lines: int
    bytes: int
    devices: list[tuple[str, str]]


def device_registry(devices: int) -> list[tuple[str, str]]:
    return [(f"dev{n:05d}", REGIONS[n % len(REGIONS)]) for n in range(devices)]


def registry_csv(registry: list[tuple[str, str]]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["device_id", "dstrct_code"])
    writer.writerows(registry)
    return out.getvalue().encode()


def _heartbeat(instant: datetime, fmt: str) -> str:
    epoch = (instant - datetime(1970, 1, 1)).total_seconds()
    if fmt == "s":
        return str(int(epoch))
    if fmt == "ms":
        return str(int(epoch * 1000))
    if fmt == "us":
        return str(int(round(epoch * 1_000_000)))
    if fmt == "ns":
        return str(int(round(epoch * 1_000_000)) * 1000)
    if fmt == "s_text":
        return f'"{int(epoch)}"'
    if fmt == "s_float":
        return f"{epoch:.3f}"
    if fmt == "iso_z":
        return f'"{instant:%Y-%m-%dT%H:%M:%S}Z"'
    if fmt == "iso_offset":
        return f'"{instant + timedelta(hours=8):%Y-%m-%dT%H:%M:%S}+08:00"'
    return f'"{instant:%Y-%m-%d %H:%M:%S}"'


def log_lines(device: str, hour: datetime, rows: int, rng: random.Random, bad: bool) -> Iterator[str]:
    fmt = _FORMATS[rng.randrange(len(_FORMATS))]
    bad_at = {rng.randrange(rows) for _ in range(rng.choice((1, 2)))} if bad else set()
    step = 3600 / max(rows, 1)
    for i in range(rows):
        if i in bad_at:
            yield _BAD_LINES[i % 2] % device
            continue
        instant = hour + timedelta(seconds=int(i * step))
        yield (
            f'{{"device_id":"{device}","heartbeat":{_heartbeat(instant, fmt)},'
            f'"temperature":{rng.uniform(18, 42):.2f},"humidity":{rng.uniform(20, 90):.1f},'
            f'"pcv_temperature":{rng.uniform(30, 80):.2f},'
            f'"status":{{"battery":{rng.randrange(0, 101)},"rssi":{rng.randrange(-110, -40)}}},'
            f'"seq":{i}}}'
        )


def generate(
    store: ObjectStore,
    devices: int,
    hours: int,
    rows: int,
    seed: int = 0,
    start: datetime = DEFAULT_START,
    bad_file_share: float = 0.02,
    gzip_share: float = 0.1,
    workers: int = 8,
) -> GenerateSummary:
    """Write `devices x hours` log files of `rows` lines each, plus the registry CSV."""
    registry = device_registry(devices)
    rng = random.Random(seed)
    jobs = []
    for device, _region in registry:
        for h in range(hours):
            jobs.append(
                (
                    device,
                    start + timedelta(hours=h),
                    rng.random() < bad_file_share,
                    rng.random() < gzip_share,
                    rng.getrandbits(32),
                )
            )

    def write(job: tuple[str, datetime, bool, bool, int]) -> tuple[int, int, int]:
        device, hour, bad, gz, file_seed = job
        lines = list(log_lines(device, hour, rows, random.Random(file_seed), bad))
        data = ("\n".join(lines) + "\n").encode()
        key = f"{device}/{hour:%Y%m%d%H}/log.json"
        if gz:
            data, key = gzip.compress(data, compresslevel=1), key + ".gz"
        store.write_bytes(key, data)
        bad_lines = sum(1 for line in lines if not line.endswith("}") or "not a time" in line)
        return len(lines) - bad_lines, bad_lines, len(data)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        written = list(pool.map(write, jobs))
    store.write_bytes(REGISTRY_KEY, registry_csv(registry))
    return GenerateSummary(
        files=len(jobs),
        rows=sum(w[0] for w in written),
        bad_lines=sum(w[1] for w in written),
        bytes=sum(w[2] for w in written),
        devices=registry,
    )
