"""Discovery: find new objects in the raw store and register them in the ledger, a bounded tick at a time.

The layout is device-first (`{device}/{YYYYMMDDHH}/{name}`), so new objects are not contiguous in
key order and a single "list after the last key" cursor cannot work. One tick instead does:

1. resume: finish a device listing the previous tick cut short (its budget ran out mid-device);
2. new devices: up to `prefixes_per_tick` top-level prefixes (a delimiter listing, 1,000 per
   request), continuing after the last one scanned; a prefix the ledger has never seen is listed in
   full, since all its keys are new;
3. hot devices, those with a key whose hour lies in the trailing window (`window_hours`): each is
   listed from the window's first hour on (`StartAfter={device}/{hour}`), which skips its whole
   history, so it costs one request per 1,000 keys in the window. A late key filed under an older
   hour inside the window is therefore found by the next tick;
4. cold devices (known, but silent for longer than the window): a few per tick
   (`cold_requests`), round-robin, also from the window's start, so a device that comes back is
   found within a round, without paying one request per silent device on every tick.

Every phase is capped by `max_requests` list requests and `max_keys` listed keys for the whole
tick; where it stops is the cursor, and the next tick continues from there. Keys older than the
window under a cold or hot device are only found by `reconcile`, the daily full listing.
Registration is idempotent, so a key listed twice is registered once.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timedelta

import sqlalchemy as sa

from datalog_platform.core.ledger import registration, stats
from datalog_platform.core.store import ObjectStore

# Top-level prefixes that are not devices (`_registry/` holds the device registry CSV).
_RESERVED_PREFIXES = ("_", ".")


@dataclass(frozen=True)
class DiscoveryLimits:
    """How much one tick may do, and how far back it looks for late keys."""

    max_requests: int = 200
    max_keys: int = 50_000
    window_hours: int = 6
    cold_requests: int = 10
    prefixes_per_tick: int = 10_000


@dataclass(frozen=True)
class DiscoveryCursor:
    """Where the previous tick stopped; JSON in the sensor's cursor."""

    resume_prefix: str | None = None  # a device listing cut short ...
    resume_after: str | None = None  # ... and the last key it listed
    prefix_after: str | None = None  # the new-device scan continues after this prefix
    hot_after: str | None = None  # the round over hot devices continues after this device
    cold_after: str | None = None  # the round over cold devices continues after this device
    reported_backlog: str | None = None  # the backlog the sensor last reported ("pending/unrouted")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | None) -> DiscoveryCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(**{k: data.get(k) for k in cls.__dataclass_fields__})


@dataclass
class TickResult:
    cursor: DiscoveryCursor
    registered: int = 0
    unrouted: int = 0
    bytes: int = 0
    new_versions: int = 0
    rewritten: int = 0
    reappeared: int = 0
    keys_listed: int = 0
    list_requests: int = 0
    devices_listed: int = 0
    new_devices: list[str] = field(default_factory=list)
    hot_devices: int = 0
    cold_devices: int = 0

    @property
    def more(self) -> bool:
        """True if this tick stopped before the end of a round (the next tick continues it)."""
        return self.cursor.resume_prefix is not None or self.cursor.hot_after is not None


def window_start(now: datetime, window_hours: int) -> datetime:
    """The first hour of the trailing window: keys filed under this hour or later are re-listed."""
    return (now - timedelta(hours=window_hours)).replace(minute=0, second=0, microsecond=0)


class _Tick:
    def __init__(
        self,
        store: ObjectStore,
        engine: sa.Engine,
        limits: DiscoveryLimits,
        tz_offset_hours: int,
        policy: str,
        result: TickResult,
    ) -> None:
        self.store = store
        self.engine = engine
        self.limits = limits
        self.tz_offset_hours = tz_offset_hours
        self.policy = policy
        self.result = result
        self.requests_at_start = store.list_requests

    @property
    def requests(self) -> int:
        return self.store.list_requests - self.requests_at_start

    def exhausted(self, request_cap: int | None = None) -> bool:
        cap = self.limits.max_requests if request_cap is None else min(request_cap, self.limits.max_requests)
        return self.requests >= cap or self.result.keys_listed >= self.limits.max_keys

    def drain(self, prefix: str, start_after: str | None, request_cap: int | None = None) -> str | None:
        """List `prefix` after `start_after` page by page and register what is new. Returns None when
        the listing reached its end, else the last key listed (the budget ran out first)."""
        self.result.devices_listed += 1
        while True:
            page = self.store.list_page(prefix, start_after)
            self.result.keys_listed += len(page.objects)
            if page.objects:
                found = registration.register_keys(self.engine, page.objects, self.tz_offset_hours, self.policy)
                self.result.registered += found.registered
                self.result.new_versions += found.new_versions
                self.result.rewritten += found.rewritten
                self.result.reappeared += found.reappeared
                self.result.unrouted += found.unrouted
                self.result.bytes += found.bytes
                start_after = page.objects[-1].key
            if not page.truncated:
                return None
            if self.exhausted(request_cap):
                return start_after


def discover(
    store: ObjectStore,
    engine: sa.Engine,
    cursor: DiscoveryCursor,
    now: datetime,
    limits: DiscoveryLimits,
    tz_offset_hours: int,
    policy: str,
) -> TickResult:
    """One bounded discovery tick (see the module docstring). `now` is naive UTC; `policy` is
    the rewrite policy for known keys listed in a new version (`ledger.versions`)."""
    result = TickResult(cursor=cursor)
    tick = _Tick(store, engine, limits, tz_offset_hours, policy, result)
    first_hour = window_start(now, limits.window_hours)
    latest = stats.latest_hour_by_device(engine)
    hot = sorted(d for d, hour in latest.items() if hour >= first_hour)
    cold = sorted(d for d, hour in latest.items() if hour < first_hour)
    result.hot_devices, result.cold_devices = len(hot), len(cold)

    def window_after(device: str) -> str:
        return f"{device}/{first_hour:%Y%m%d%H}"

    def finish(**changes: str | None) -> TickResult:
        result.cursor = replace(result.cursor, **changes)
        result.list_requests = tick.requests
        return result

    # 1. a listing the previous tick cut short
    if cursor.resume_prefix is not None:
        left = tick.drain(cursor.resume_prefix, cursor.resume_after)
        if left is not None:
            return finish(resume_after=left)
        result.cursor = replace(result.cursor, resume_prefix=None, resume_after=None)

    # 2. devices the ledger has never seen
    if not tick.exhausted():
        scanned = 0
        prefix_after = cursor.prefix_after
        for prefix in store.list_prefixes("", start_after=cursor.prefix_after):
            scanned += 1
            prefix_after = prefix
            device = prefix[:-1]
            if not prefix.startswith(_RESERVED_PREFIXES) and device not in latest:
                result.new_devices.append(device)
                left = tick.drain(prefix, None)
                if left is not None:
                    return finish(resume_prefix=prefix, resume_after=left, prefix_after=prefix)
            if scanned >= limits.prefixes_per_tick or tick.exhausted():
                break
        else:
            prefix_after = None  # the scan reached the last prefix: start over next tick
        result.cursor = replace(result.cursor, prefix_after=prefix_after)

    # 3. devices active within the window, every tick; cold devices keep a small reserve
    hot_cap = max(limits.max_requests - limits.cold_requests, 1)
    hot_after = cursor.hot_after
    for device in (d for d in hot if hot_after is None or d > hot_after):
        if tick.exhausted(hot_cap):
            return finish(hot_after=hot_after)
        left = tick.drain(f"{device}/", window_after(device), hot_cap)
        hot_after = device
        if left is not None:
            return finish(resume_prefix=f"{device}/", resume_after=left, hot_after=device)
    result.cursor = replace(result.cursor, hot_after=None)

    # 4. a few silent devices, round-robin
    cold_cap = tick.requests + limits.cold_requests
    ordered = [d for d in cold if cursor.cold_after is None or d > cursor.cold_after]
    ordered += [d for d in cold if cursor.cold_after is not None and d <= cursor.cold_after]
    cold_after = cursor.cold_after
    for device in ordered[: limits.cold_requests]:
        if tick.exhausted(cold_cap):
            break
        left = tick.drain(f"{device}/", window_after(device), cold_cap)
        cold_after = device
        if left is not None:
            return finish(resume_prefix=f"{device}/", resume_after=left, cold_after=device)
    return finish(cold_after=cold_after)


def reconcile(store: ObjectStore, engine: sa.Engine, tz_offset_hours: int, policy: str) -> registration.RegisterResult:
    """List the whole raw store and register every object the ledger lacks, and every new version
    of one it knows (the safety net)."""
    return registration.register_keys(engine, store.list(), tz_offset_hours, policy)


def utc_days_of(part_date: str, tz_offset_hours: int) -> list[str]:
    """The UTC days (`YYYYMMDD`) whose hours fall on the local date `part_date`: one or two."""
    start = datetime.fromisoformat(part_date) - timedelta(hours=tz_offset_hours)
    last_hour = start + timedelta(hours=23)
    return sorted({start.strftime("%Y%m%d"), last_hour.strftime("%Y%m%d")})


def register_partition(
    store: ObjectStore, engine: sa.Engine, part_date: str, region: str, tz_offset_hours: int, policy: str
) -> registration.RegisterResult:
    """List the raw objects one date x region partition can hold (each device of the region, under
    the UTC days of the local date: two list requests per device) and register those the ledger
    lacks, so that a rebuild of the partition finds every raw key, discovered or not."""
    days = utc_days_of(part_date, tz_offset_hours)
    devices = stats.devices_of_region(engine, region)
    objects = (obj for device in devices for day in days for obj in store.list(f"{device}/{day}"))
    return registration.register_keys(engine, objects, tz_offset_hours, policy)
