"""The record fields of each dataset (`schema_fields`): which type each field's column has.

The first batch that carries a field fixes its type; later batches cast their values to it (or
rescue them), so every file of the dataset agrees. The one change allowed is a numeric widening.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from datalog_platform.core.ledger.clock import utcnow
from datalog_platform.core.ledger.engine import chunks
from datalog_platform.core.ledger.records import FieldSeen
from datalog_platform.core.ledger.schema import schema_fields

_RECORD_ATTEMPTS = 3


@dataclass(frozen=True)
class SchemaChange:
    field: str
    type: str
    previous_type: str | None  # None: a new field
    batch_id: str


def known_fields(engine: sa.Engine, dataset: str) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema_fields.c.field, schema_fields.c.type).where(schema_fields.c.dataset == dataset)
        ).all()
    return dict(rows)


def record_fields(
    engine: sa.Engine,
    dataset: str,
    batch_id: str,
    part_date: str,
    region: str,
    new: list[FieldSeen],
    widened: dict[str, tuple[str, str]],
) -> dict[str, str]:
    """Record new fields and numeric widenings (field -> (from, to)); returns the dataset's fields
    as they now are. A field another batch recorded first keeps that batch's type."""
    for attempt in range(_RECORD_ATTEMPTS):
        try:
            with engine.begin() as conn:
                now = utcnow()
                for chunk in chunks(new):
                    names = [f.field for f in chunk]
                    taken = set(
                        conn.execute(
                            sa.select(schema_fields.c.field).where(
                                schema_fields.c.dataset == dataset, schema_fields.c.field.in_(names)
                            )
                        ).scalars()
                    )
                    rows = [
                        {
                            "dataset": dataset,
                            "field": f.field,
                            "type": f.type,
                            "first_key": f.first_key,
                            "first_batch_id": batch_id,
                            "first_part_date": part_date,
                            "first_dstrct_code": region,
                            "first_seen_at": now,
                        }
                        for f in chunk
                        if f.field not in taken
                    ]
                    if rows:
                        conn.execute(sa.insert(schema_fields), rows)
                for field, (before, after) in sorted(widened.items()):
                    conn.execute(
                        sa.update(schema_fields)
                        .where(
                            schema_fields.c.dataset == dataset,
                            schema_fields.c.field == field,
                            schema_fields.c.type == before,
                        )
                        .values(
                            type=after,
                            previous_type=before,
                            changed_by_batch_id=batch_id,
                            changed_part_date=part_date,
                            changed_dstrct_code=region,
                            changed_at=now,
                        )
                    )
            break
        except sa.exc.IntegrityError:
            # another batch recorded one of these fields first: its type stands
            if attempt == _RECORD_ATTEMPTS - 1:
                raise
    return known_fields(engine, dataset)


def schema_changes(engine: sa.Engine, dataset: str, part_date: str, region: str) -> list[SchemaChange]:
    """Fields first carried, or widened, by batches of one partition."""
    f = schema_fields.c
    with engine.connect() as conn:
        added = conn.execute(
            sa.select(f.field, f.type, f.first_batch_id).where(
                f.dataset == dataset, f.first_part_date == part_date, f.first_dstrct_code == region
            )
        ).all()
        changed = conn.execute(
            sa.select(f.field, f.type, f.previous_type, f.changed_by_batch_id).where(
                f.dataset == dataset, f.changed_part_date == part_date, f.changed_dstrct_code == region
            )
        ).all()
    return sorted(
        [SchemaChange(name, kind, None, batch) for name, kind, batch in added]
        + [SchemaChange(name, kind, before, batch) for name, kind, before, batch in changed],
        key=lambda c: (c.field, c.previous_type is not None),
    )
