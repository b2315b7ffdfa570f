"""Plain records that the transform makes and the ledger keeps, and the names of the datasets
ingest writes. Nothing here imports SQLAlchemy: a batch's reader process (`isolation`) imports this
and never a database driver.
"""

from __future__ import annotations

from dataclasses import dataclass

# The lake's datasets that ingest writes: the records, and the lines that could not be records.
DATASET = "datalog_v2"
QUARANTINE = "quarantine"
INGEST_DATASETS = (DATASET, QUARANTINE)


@dataclass(frozen=True)
class LakeFile:
    """A Parquet file a batch wrote: its path in the lake (`dataset/hiveperiod=D/dstrct_code=R/name`)."""

    path: str
    rows: int | None
    bytes: int | None

    @property
    def dataset(self) -> str:
        return self.path.split("/", 1)[0]

    @property
    def hiveperiod(self) -> str:
        return self.path.split("hiveperiod=", 1)[1][:10]


@dataclass(frozen=True)
class FieldSeen:
    """A field a batch carries that the dataset did not know: its type and the first key with a value."""

    field: str
    type: str
    first_key: str
