"""Date x region partitions: a daily local calendar date and the dynamic set of device regions.

The assets are declared with the partitions of the default settings; `build_definitions` gives
them those of the settings it is built with (`with_partitions`), so the start date and the offset
are read once, when the definitions are built.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import dagster as dg

from datalog_platform.settings import DEFAULT_PARTITIONS_START_DATE, DEFAULT_TZ_OFFSET_HOURS

REGION_PARTITIONS_NAME = "region"

region_partitions = dg.DynamicPartitionsDefinition(name=REGION_PARTITIONS_NAME)


def local_zone(tz_offset_hours: int) -> str:
    """The IANA name of the fixed zone UTC + `tz_offset_hours`. POSIX-style zone names count the
    other way round: Etc/GMT-8 is UTC+8."""
    return f"Etc/GMT{-tz_offset_hours:+d}"


def local_dates(start_date: str, tz_offset_hours: int) -> dg.DailyPartitionsDefinition:
    """Daily partitions of the local calendar (UTC + the offset), from the start date up to today's
    local date: today is listed (its keys are ingested as they come), tomorrow is not."""
    return dg.DailyPartitionsDefinition(start_date=start_date, timezone=local_zone(tz_offset_hours), end_offset=1)


def date_region_partitions(start_date: str, tz_offset_hours: int) -> dg.MultiPartitionsDefinition:
    return dg.MultiPartitionsDefinition({"date": local_dates(start_date, tz_offset_hours), "region": region_partitions})


def date_range(start_date: str, tz_offset_hours: int) -> tuple[str, str]:
    """The first and the last date partition: the start date and today's local date."""
    today = (datetime.now(UTC) + timedelta(hours=tz_offset_hours)).date().isoformat()
    return start_date, today


# What the assets are declared with (see the module's docstring).
DECLARED_PARTITIONS = date_region_partitions(DEFAULT_PARTITIONS_START_DATE, DEFAULT_TZ_OFFSET_HOURS)


def with_partitions(
    assets: Sequence[dg.AssetsDefinition | dg.AssetSpec], partitions: dg.MultiPartitionsDefinition
) -> list[dg.AssetsDefinition | dg.AssetSpec]:
    """`assets` with `partitions` wherever they were declared with the date x region partitions."""
    return dg.map_asset_specs(
        lambda spec: (
            spec.replace_attributes(partitions_def=partitions) if spec.partitions_def == DECLARED_PARTITIONS else spec
        ),
        assets,
    )


def partition_key(part_date: str, region: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": part_date, "region": region})


def date_and_region(key: dg.MultiPartitionKey | str) -> tuple[str, str]:
    """A date x region partition key (or its string, `DATE|REGION`) -> (date, region)."""
    if isinstance(key, dg.MultiPartitionKey):
        dims = key.keys_by_dimension
        return dims["date"], dims["region"]
    day, region = key.split("|", 1)
    return day, region
