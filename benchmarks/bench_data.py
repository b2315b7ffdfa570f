"""The data sets of the benchmark, all under one work directory.

- `generate`d sets (standard, small files): `core.generate`, mixed heartbeat formats, 2 % of
  the files with one or two broken lines.
- Scaled sets: the standard set plus copies of its files under new device ids. A copy replaces
  the device id in the key and in every record (`dev00012` -> `dev10012`, same length), so each
  copied record is a new record for the platform's deduplication; the new devices are in the
  registry with the region of the device they copy. Files are hard links where they are shared.
- The big file: clean standard files (those without a broken line) concatenated into one raw
  key, copy after copy with new device ids in the records, until it reaches the size asked for.
- The growing partition: files of one region and one local date, one per device and UTC hour,
  written hour by hour into the raw store by the caller.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from datalog_platform.core.generate import generate, log_lines, registry_csv
from datalog_platform.core.store import LocalStore

# The growing partition's hours: local (UTC+8) 2026-11-01 00:00 .. 23:00.
GROWING_START = datetime(2026, 10, 31, 16)
GROWING_LOCAL_DATE = "2026-11-01"
GROWING_REGION = "BRCB"


@dataclass
class DataSet:
    raw: Path
    registry_path: Path
    devices: list[tuple[str, str]]
    files: int
    rows: int
    bad_lines: int
    bytes: int
    seconds: float = 0.0

    def generated(self) -> dict:
        return {
            "files": self.files,
            "rows": self.rows,
            "bad_lines": self.bad_lines,
            "bytes": self.bytes,
            "seconds": self.seconds,
        }


def generated_set(root: Path, devices: int, hours: int, rows: int) -> DataSet:
    shutil.rmtree(root, ignore_errors=True)
    raw = root / "raw"
    gen = generate(LocalStore(raw), devices=devices, hours=hours, rows=rows, seed=42, gzip_share=0.0)
    registry_path = root / "devices.csv"
    registry_path.write_bytes(registry_csv(gen.devices))
    return DataSet(raw, registry_path, gen.devices, gen.files, gen.rows, gen.bad_lines, gen.bytes)


def _copied_device(device: str, copy: int) -> str:
    number = int(device.removeprefix("dev"))
    if not device.startswith("dev") or number >= 10_000:
        raise ValueError(f"cannot copy device {device!r}: copies need ids dev00000 .. dev09999")
    return f"dev{copy * 10_000 + number:05d}"


def _copy_files(base: DataSet, copy: int, target: Path) -> None:
    """Every raw file of `base` under the device ids of copy number `copy`."""
    for source in base.raw.rglob("*.json"):
        relative = source.relative_to(base.raw)
        device = relative.parts[0]
        new = _copied_device(device, copy)
        path = target / new / Path(*relative.parts[1:])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(source.read_bytes().replace(f'"{device}"'.encode(), f'"{new}"'.encode()))


def _link_tree(source: Path, target: Path) -> None:
    for path in source.rglob("*.json"):
        link = target / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(path, link)


def scaled_sets(base: DataSet, root: Path, factors: list[int]) -> dict[int, DataSet]:
    """For each factor k > 1: the base set and k - 1 copies of it, in a raw directory of its own."""
    shutil.rmtree(root, ignore_errors=True)
    copies = root / "copies"
    for copy in range(1, max(factors, default=1)):
        _copy_files(base, copy, copies / str(copy))
    sets = {}
    for factor in factors:
        if factor == 1:
            continue
        raw = root / f"x{factor}" / "raw"
        _link_tree(base.raw, raw)
        registry = list(base.devices)
        for copy in range(1, factor):
            _link_tree(copies / str(copy), raw)
            registry += [(_copied_device(d, copy), r) for d, r in base.devices]
        registry_path = root / f"x{factor}" / "devices.csv"
        registry_path.write_bytes(registry_csv(registry))
        sets[factor] = DataSet(
            raw,
            registry_path,
            registry,
            base.files * factor,
            base.rows * factor,
            base.bad_lines * factor,
            base.bytes * factor,
        )
    return sets


def _clean(data: bytes) -> bool:
    """A file of `generate` without either kind of broken line it writes."""
    return b'"device_id": "' not in data and b"not a time" not in data


def big_file(base: DataSet, root: Path, target_bytes: int) -> DataSet:
    """One raw key (device `big00000`, hour 2026-11-01 00 UTC) of at least `target_bytes`."""
    shutil.rmtree(root, ignore_errors=True)
    device = "big00000"
    path = root / "raw" / device / "2026110100" / "log.json"
    path.parent.mkdir(parents=True)
    sources = sorted(base.raw.rglob("*.json"))
    written = lines = 0
    copy = 0
    with path.open("wb") as out:
        while written < target_bytes:
            for source in sources:
                data = source.read_bytes()
                if not _clean(data):
                    continue
                if copy:
                    original = source.relative_to(base.raw).parts[0]
                    data = data.replace(f'"{original}"'.encode(), f'"{_copied_device(original, copy)}"'.encode())
                out.write(data)
                written += len(data)
                lines += data.count(b"\n")
                if written >= target_bytes:
                    break
            copy += 1
    registry = [(device, GROWING_REGION)]
    registry_path = root / "devices.csv"
    registry_path.write_bytes(registry_csv(registry))
    return DataSet(path.parents[2], registry_path, registry, 1, lines, 0, written)


@dataclass
class GrowingPartition:
    incoming: Path
    raw: Path
    registry_path: Path
    devices: list[str]
    hours: list[datetime]
    rows_per_file: int

    def hour_files(self, hour: datetime) -> list[Path]:
        return [self.incoming / d / f"{hour:%Y%m%d%H}" / "log.json" for d in self.devices]

    def deliver(self, hour: datetime) -> None:
        """Move one hour's files from `incoming` into the raw store."""
        for source in self.hour_files(hour):
            target = self.raw / source.relative_to(self.incoming)
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)


def growing_partition(root: Path, devices: int, hours: int, rows: int) -> GrowingPartition:
    """`devices` devices of one region, `hours` hourly files each, all of one local date,
    written to `incoming` (not yet in the raw store)."""
    shutil.rmtree(root, ignore_errors=True)
    names = [f"grw{n:05d}" for n in range(devices)]
    grown = GrowingPartition(
        root / "incoming",
        root / "raw",
        root / "devices.csv",
        names,
        [GROWING_START + timedelta(hours=h) for h in range(hours)],
        rows,
    )
    rng = random.Random(7)
    for hour in grown.hours:
        for device, path in zip(names, grown.hour_files(hour), strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            lines = log_lines(device, hour, rows, random.Random(rng.getrandbits(32)), bad=False)
            path.write_text("\n".join(lines) + "\n")
    grown.raw.mkdir(parents=True)
    grown.registry_path.write_bytes(registry_csv([(d, GROWING_REGION) for d in names]))
    return grown
