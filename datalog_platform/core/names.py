"""Names that come from outside and become paths: regions and device ids, validated where they enter.

A region becomes a hive directory of the lake (`dstrct_code=REGION`) and a Dagster partition key;
a device id becomes a prefix of the raw store (a path on a local one) and part of every key. Both
are checked in one place each: the registry reader (`registry.read_registry_csv`, shared by
`datalog devices load` and the `device_registry` asset) and the raw key parser
(`ledger.raw_keys.parse_raw_key`). Nothing is encoded: a name outside its safe set is refused.

- A region is 1 to 64 characters from `A-Z a-z 0-9 _ -`, starting with a letter or digit. These
  are characters DuckDB's `PARTITION_BY` writes as they are (it percent-encodes others), that
  Dagster allows in a partition key (it reserves `|`, `,`, `[` and `]`), and that no file system
  or object store treats specially.
- A device id is 1 to 255 printable characters without `/`, `\\`, `|`, `,`, `[`, `]` or `...`,
  not starting with `.` or `_` (top-level prefixes discovery leaves alone, such as `_registry/`):
  no path segment of its own, never `.` or `..`, nothing Dagster reserves. Spaces, quotes and
  letters of any script are fine: a device id names raw objects only.
"""

from __future__ import annotations

import re

REGION_RULE = "1 to 64 characters from A-Z a-z 0-9 _ -, starting with a letter or digit"
DEVICE_RULE = "1 to 255 printable characters without / \\ | , [ ] or '...', not starting with . or _"

_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_DEVICE_RESERVED = re.compile(r"[/\\|,\[\]]|\.\.\.|^[._]")


def is_region(name: str) -> bool:
    return _REGION.fullmatch(name) is not None


def is_device_id(name: str) -> bool:
    return 0 < len(name) <= 255 and name.isprintable() and _DEVICE_RESERVED.search(name) is None
