"""Names from outside: regions and device ids are validated where they enter, and nothing else.

Covers the registry reader (`datalog devices load` and the `device_registry` asset read the CSV
through it) refusing a path-like region, a unicode region, characters Dagster reserves in partition
keys and device ids that would make a path of their own, naming the CSV line; and the raw key
parser ignoring keys whose device part is outside its safe set (an S3 event can name any key).

Pure functions over text; the asset and CLI tests check the same refusals through Dagster and a
real `datalog` process.
"""

from __future__ import annotations

import pytest

from datalog_platform.core.ledger.raw_keys import parse_raw_key
from datalog_platform.core.names import is_device_id, is_region
from datalog_platform.core.registry import read_registry_csv

UNSAFE_REGIONS = [
    "../../../../../escape",
    "Ü REGION",
    "a/b",
    "a\\b",
    "A|B",
    "A,B",
    "A[1]",
    "...",
    "..",
    ".",
    "-lead",
    "with space",
    "x" * 65,
]
SAFE_REGIONS = ["BRCB", "kpcs", "R-1", "north_2", "7", "x" * 64]
UNSAFE_DEVICES = [
    "../up",
    "..",
    ".",
    "a/b",
    "a\\b",
    "a|b",
    "a,b",
    "a[1]",
    "dev...1",
    "_registry",
    ".hidden",
    "tab\tid",
    "x" * 256,
]
SAFE_DEVICES = ["dev00001", "site=7", "AA:BB:CC:DD:EE:FF", "unit.7", "dev..7", "dev A'1", "ünï", "glob*?", "x" * 255]


@pytest.mark.parametrize("region", UNSAFE_REGIONS)
def test_registry_refuses_an_unsafe_region_naming_its_line(region: str) -> None:
    text = f'device_id,dstrct_code\ndev1,BRCB\ndev2,"{region}"\n'
    with pytest.raises(ValueError, match=r"registry CSV line 3: dstrct_code .* is not valid: expected 1 to 64"):
        read_registry_csv(text)


@pytest.mark.parametrize("device", UNSAFE_DEVICES)
def test_registry_refuses_an_unsafe_device_id_naming_its_line(device: str) -> None:
    text = f'device_id,dstrct_code\n"{device}",BRCB\n'
    with pytest.raises(ValueError, match=r"registry CSV line 2: device_id .* is not valid: expected 1 to 255"):
        read_registry_csv(text)


def test_registry_strips_what_csv_leaves_around_a_value() -> None:
    """Spaces around a value are not part of it (the reader strips them), so only the inside counts."""
    assert read_registry_csv("device_id,dstrct_code\n  dev 1 , BRCB \n") == [("dev 1", "BRCB")]


def test_registry_reads_safe_names() -> None:
    rows = [(d, r) for d, r in zip(SAFE_DEVICES, SAFE_REGIONS * 2, strict=False)]
    text = "device_id,dstrct_code\n" + "".join(f"{d},{r}\n" for d, r in rows)
    assert read_registry_csv(text) == rows


@pytest.mark.parametrize("device", UNSAFE_DEVICES)
def test_key_parser_ignores_keys_of_unsafe_device_ids(device: str) -> None:
    assert parse_raw_key(f"{device}/2026110100/log.json") is None


@pytest.mark.parametrize("device", SAFE_DEVICES)
def test_key_parser_takes_safe_device_ids(device: str) -> None:
    parsed = parse_raw_key(f"{device}/2026110100/log.json")
    assert parsed is not None and parsed.device_id == device


def test_safe_sets_are_disjoint_from_reserved_characters() -> None:
    """What the module promises: no region holds a character DuckDB would percent-encode in a
    directory name or Dagster reserves in a partition key; no device id a path separator or a
    character Dagster reserves."""
    for char in "/\\|,[] %=:+@~.\u00dc":
        assert not is_region(f"A{char}B")
    for char in "/\\|,[]\n\x00":
        assert not is_device_id(f"A{char}B")
