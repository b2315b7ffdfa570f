"""The ledger's clock: naive UTC, as every DateTime column of the ledger holds it."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)
