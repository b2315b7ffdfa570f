"""The device registry: devices and their regions, synced from a CSV in the raw store."""

import dagster as dg

from datalog_platform.core.generate import REGISTRY_KEY
from datalog_platform.core.ledger import registration
from datalog_platform.core.registry import read_registry_csv
from datalog_platform.defs.constants import OWNERS
from datalog_platform.defs.partitions import REGION_PARTITIONS_NAME
from datalog_platform.defs.resources import LedgerResource, StoresResource


@dg.asset(group_name="registry", kinds={"csv", "sql"}, owners=OWNERS, tags={"layer": "master_data"})
def device_registry(
    context: dg.AssetExecutionContext, ledger: LedgerResource, stores: StoresResource
) -> dg.MaterializeResult:
    """The ledger's devices table (device -> region), synced from _registry/devices.csv in the raw store."""
    raw = stores.raw()
    if not raw.exists(REGISTRY_KEY):
        raise dg.Failure(
            description=(
                f"device registry CSV not found at {raw.uri(REGISTRY_KEY)}: upload a device_id,dstrct_code "
                "CSV there (the format `datalog devices load` reads)"
            )
        )
    # utf-8-sig: spreadsheet exports start the file with a byte-order mark
    try:
        rows = read_registry_csv(raw.read_bytes(REGISTRY_KEY).decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise dg.Failure(description=f"{raw.uri(REGISTRY_KEY)}: {exc}") from exc
    engine = ledger.get_engine()
    inserted, updated = registration.upsert_devices(engine, rows)
    regions = registration.known_regions(engine)
    existing = set(context.instance.get_dynamic_partitions(REGION_PARTITIONS_NAME))
    new_regions = [r for r in regions if r not in existing]
    if new_regions:
        context.instance.add_dynamic_partitions(REGION_PARTITIONS_NAME, new_regions)
    routed = registration.route_unrouted(engine)
    context.log.info(
        f"devices: {inserted} new, {updated} changed, {len(rows)} in file; "
        f"new regions {new_regions or 'none'}; {routed} waiting key(s) routed"
    )
    return dg.MaterializeResult(
        metadata={
            "devices": len({device for device, _ in rows}),
            "new": inserted,
            "changed": updated,
            "regions": len(regions),
            "new_regions": ", ".join(new_regions),
            "routed_keys": routed,
            "path": dg.MetadataValue.path(raw.uri(REGISTRY_KEY)),
        }
    )
