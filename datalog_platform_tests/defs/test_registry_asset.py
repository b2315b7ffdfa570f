"""`device_registry`: the devices table synced from `_registry/devices.csv` in the raw store.

Covers a first sync (devices inserted, regions added as dynamic partitions, UNROUTED keys of now
known devices routed to PENDING), a second sync with a changed region and a new device, a CSV with
a byte-order mark, and clear failures for a missing or malformed CSV and for regions outside the
safe set (a path-like and a unicode region).

Real parts only: a local directory as raw store, a SQLite ledger file, and a real ephemeral Dagster
instance (`dg.instance_for_test`) that holds the `region` dynamic partitions; `dg.materialize` runs
the asset as the UI would.
"""

from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa

from datalog_platform.core.generate import REGISTRY_KEY
from datalog_platform.core.ledger import registration
from datalog_platform.core.ledger.engine import ledger_engine
from datalog_platform.core.ledger.schema import PENDING, UNROUTED, devices, keys
from datalog_platform.core.ledger.versions import REINGEST
from datalog_platform.core.store import LocalStore, ObjectInfo
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME
from datalog_platform.defs.registry.assets import device_registry


def sync(instance: dg.DagsterInstance, resources: dict[str, Any]) -> dg.ExecuteInProcessResult:
    return dg.materialize([device_registry], instance=instance, resources=resources, raise_on_error=False)


def metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_registry_sync_routes_waiting_keys(
    tmp_path: Path, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    raw = LocalStore(tmp_path / "raw")
    engine = ledger_engine(resources["ledger"].url)
    waiting = ["devA/2026110100/x.json", "devB/2026110100/x.json", "devZ/2026110100/x.json"]
    registration.register_keys(engine, [ObjectInfo(k, 1) for k in waiting], 8, REINGEST)
    raw.write_bytes(REGISTRY_KEY, "\ufeffdevice_id,dstrct_code\ndevA,BRCB\ndevB,KPCS\n".encode())

    first = sync(instance, resources)
    assert first.success
    assert metadata(first) | {"path": None} == {
        "devices": 2,
        "new": 2,
        "changed": 0,
        "regions": 2,
        "new_regions": "BRCB, KPCS",
        "routed_keys": 2,
        "path": None,
    }
    assert set(instance.get_dynamic_partitions(REGION_PARTITIONS_NAME)) == {"BRCB", "KPCS"}
    with engine.connect() as conn:
        status = dict(conn.execute(sa.select(keys.c.key, keys.c.status)).all())
    assert status == {waiting[0]: PENDING, waiting[1]: PENDING, waiting[2]: UNROUTED}

    raw.write_bytes(REGISTRY_KEY, b"device_id,dstrct_code\ndevA,SMRD\ndevB,KPCS\ndevZ,KPCS\n")
    second = sync(instance, resources)
    meta = metadata(second)
    assert (meta["new"], meta["changed"], meta["routed_keys"], meta["new_regions"]) == (1, 1, 1, "SMRD")
    assert set(instance.get_dynamic_partitions(REGION_PARTITIONS_NAME)) == {"BRCB", "KPCS", "SMRD"}
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(devices.c.device_id, devices.c.dstrct_code)).all()) == {
            "devA": "SMRD",
            "devB": "KPCS",
            "devZ": "KPCS",
        }

    again = sync(instance, resources)
    assert (metadata(again)["new"], metadata(again)["changed"], metadata(again)["routed_keys"]) == (0, 0, 0)


def test_missing_registry_fails_clearly(instance: dg.DagsterInstance, resources: dict[str, Any]) -> None:
    result = sync(instance, resources)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    message = failure.step_failure_data.user_failure_data.description or ""
    assert "device registry CSV not found" in message and REGISTRY_KEY in message


def test_malformed_registry_fails_clearly(
    tmp_path: Path, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    LocalStore(tmp_path / "raw").write_bytes(REGISTRY_KEY, b"device,region\ndevA,BRCB\n")
    result = sync(instance, resources)
    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "lacks column(s)" in (failure.step_failure_data.user_failure_data.description or "")


def test_unsafe_region_fails_the_sync_before_anything_changes(
    tmp_path: Path, instance: dg.DagsterInstance, resources: dict[str, Any]
) -> None:
    """A path-like region would become a lake directory outside the dataset, a unicode one a
    percent-encoded directory: the asset fails naming the line, and no device, region partition
    or routed key results from the file."""
    raw = LocalStore(tmp_path / "raw")
    engine = ledger_engine(resources["ledger"].url)
    registration.register_keys(engine, [ObjectInfo("devA/2026110100/x.json", 1)], 8, REINGEST)
    for region in ("../../../../../escape", "Ü REGION"):
        raw.write_bytes(REGISTRY_KEY, f"device_id,dstrct_code\ndevA,{region}\n".encode())
        result = sync(instance, resources)
        assert not result.success
        (failure,) = result.get_step_failure_events()
        message = failure.step_failure_data.user_failure_data.description or ""
        assert f"line 2: dstrct_code {region!r} is not valid" in message, message
    assert instance.get_dynamic_partitions(REGION_PARTITIONS_NAME) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(devices)).scalar_one() == 0
        assert conn.execute(sa.select(keys.c.status)).scalars().all() == [UNROUTED]
