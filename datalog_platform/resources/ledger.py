"""The ledger database and the claim protocol's settings as one Dagster resource."""

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from datalog_platform.core.ledger.engine import ledger_engine


class LedgerResource(dg.ConfigurableResource):
    """The SQL ledger that tracks every raw object and batch, and how batches are claimed.

    Example:
        LedgerResource(url=dg.EnvVar("DATALOG_LEDGER_URL"), key_limit_per_run=1000)
    """

    url: str = Field(description="SQLAlchemy URL: mssql+pymssql://..., postgresql+psycopg2://... or sqlite:///path")
    key_limit_per_run: int = Field(default=1000, description="Most keys one run claims (DATALOG_KEY_LIMIT_PER_RUN)")
    lease_seconds: int = Field(
        default=900, description="Lease of a claimed batch; renewed while written, taken over once it lapses"
    )
    max_attempts: int = Field(default=3, description="Failed batches a key survives before it is FAILED")
    tz_offset_hours: int = Field(default=8, description="Local time = UTC + offset (DATALOG_TZ_OFFSET_HOURS)")

    def get_engine(self) -> sa.Engine:
        return ledger_engine(self.url)
