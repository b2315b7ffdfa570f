"""Date x region partitions: a daily local calendar date and the dynamic set of device regions."""

from __future__ import annotations

import dagster as dg

from datalog_platform.settings import Settings

REGION_PARTITIONS_NAME = "region"

region_partitions = dg.DynamicPartitionsDefinition(name=REGION_PARTITIONS_NAME)
# end_offset keeps today's local date (ahead of UTC by the configured offset) materializable.
date_partitions = dg.DailyPartitionsDefinition(start_date=Settings.from_env().partitions_start_date, end_offset=2)
date_region_partitions = dg.MultiPartitionsDefinition({"date": date_partitions, "region": region_partitions})


def partition_key(part_date: str, region: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"date": part_date, "region": region})


def date_and_region(key: dg.MultiPartitionKey | str) -> tuple[str, str]:
    if not isinstance(key, dg.MultiPartitionKey):
        key = date_region_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return dims["date"], dims["region"]
