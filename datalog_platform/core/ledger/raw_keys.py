"""Raw keys: `{device_id}/{YYYYMMDDHH}/{name}.json[.gz]`, what they say and where to list them.

The hour in a key is UTC; a key belongs to the local date of that hour (`local_date`), the date
partition its rows are ingested in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from datalog_platform.core.names import is_device_id

_RAW_KEY = re.compile(r"(?P<device>[^/]+)/(?P<hour>\d{10})/[^/]+\.json(\.gz)?")


@dataclass(frozen=True)
class RawKey:
    device_id: str
    hour: datetime


def parse_raw_key(key: str) -> RawKey | None:
    """`{device_id}/{YYYYMMDDHH}/{name}.json[.gz]` -> device and UTC hour; anything else, or a
    device id outside its safe set (`names`), -> None."""
    match = _RAW_KEY.fullmatch(key)
    if not match or not is_device_id(match["device"]):
        return None
    digits = match["hour"]
    try:  # what strptime("%Y%m%d%H") accepts of 10 digits, at a tenth of its cost (a page is 1,000 keys)
        hour = datetime(int(digits[:4]), int(digits[4:6]), int(digits[6:8]), int(digits[8:]))
    except ValueError:
        return None
    return RawKey(device_id=match["device"], hour=hour)


def raw_listing_prefix(key: str) -> str:
    """The prefix of a raw key that one listing reads with its neighbours: its device's UTC day
    (`{device}/{YYYYMMDD}`), two dozen hourly objects."""
    device, hour, _ = key.split("/", 2)
    return f"{device}/{hour[:8]}"


def local_date(hour: datetime, tz_offset_hours: int) -> str:
    return (hour + timedelta(hours=tz_offset_hours)).strftime("%Y-%m-%d")
