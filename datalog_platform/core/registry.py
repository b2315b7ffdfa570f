"""The device registry's CSV format: `device_id,dstrct_code`, standard CSV quoting."""

from __future__ import annotations

import csv
import io

from datalog_platform.core.names import DEVICE_RULE, REGION_RULE, is_device_id, is_region


def read_registry_csv(text: str) -> list[tuple[str, str]]:
    """`device_id,dstrct_code` CSV (standard quoting) -> rows; a clear error for anything else,
    naming the line: a missing column, an empty value, or a name outside its safe set (`names`)."""
    reader = csv.DictReader(io.StringIO(text))
    missing = {"device_id", "dstrct_code"} - set(reader.fieldnames or [])
    if missing:
        raise ValueError(f"registry CSV lacks column(s) {sorted(missing)}; header must be device_id,dstrct_code")
    rows = []
    for line, row in enumerate(reader, start=2):
        device, region = (row["device_id"] or "").strip(), (row["dstrct_code"] or "").strip()
        if not device or not region:
            raise ValueError(f"registry CSV line {line}: device_id and dstrct_code must not be empty")
        if not is_device_id(device):
            raise ValueError(f"registry CSV line {line}: device_id {device!r} is not valid: expected {DEVICE_RULE}")
        if not is_region(region):
            raise ValueError(f"registry CSV line {line}: dstrct_code {region!r} is not valid: expected {REGION_RULE}")
        rows.append((device, region))
    return rows
