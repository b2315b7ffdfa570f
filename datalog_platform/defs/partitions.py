"""Date x region partitions: a daily local calendar date and the dynamic set of device regions."""

from __future__ import annotations

import dagster as dg

from datalog_platform.settings import Settings

REGION_PARTITIONS_NAME = "region"

region_partitions = dg.DynamicPartitionsDefinition(name=REGION_PARTITIONS_NAME)


def local_zone(tz_offset_hours: int) -> str:
    """The IANA name of the fixed zone UTC + `tz_offset_hours`. POSIX-style zone names count the
    other way round: Etc/GMT-8 is UTC+8."""
    return f"Etc/GMT{-tz_offset_hours:+d}"


def local_dates(settings: Settings) -> dg.DailyPartitionsDefinition:
    """Daily partitions of the local calendar (UTC + the configured offset), from the start date up
    to today's local date: today is listed (its keys are ingested as they come), tomorrow is not."""
    return dg.DailyPartitionsDefinition(
        start_date=settings.partitions_start_date, timezone=local_zone(settings.tz_offset_hours), end_offset=1
    )


date_partitions = local_dates(Settings.from_env())
date_region_partitions = dg.MultiPartitionsDefinition({"date": date_partitions, "region": region_partitions})


def partition_key(part_date: str, region: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": part_date, "region": region})


def date_and_region(key: dg.MultiPartitionKey | str) -> tuple[str, str]:
    if not isinstance(key, dg.MultiPartitionKey):
        key = date_region_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["date"], dims["region"]
