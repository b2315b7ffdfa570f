"""Which failures are the infrastructure's, not the data's.

A batch that fails because of its data costs its keys an attempt, and the next claim of those
keys is smaller (`ledger.batch_size.retry_limit`), so that a bad object ends up alone. A failure
of the infrastructure says nothing of the data: a lost ledger connection, a full disk, S3
throttling or an endpoint that does not answer. Such a batch is handed back as it was, and its
keys are tried again at full size.
"""

from __future__ import annotations

import errno

import botocore.exceptions
import duckdb
import sqlalchemy as sa

_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
_FULL_DISK_TEXT = ("No space left on device", "Disk quota exceeded")
# What a database driver says when the connection, not the statement, failed.
_CONNECTION_TEXT = (
    "server closed the connection",
    "terminating connection",
    "could not connect",
    "connection refused",
    "connection reset",
    "connection timed out",
    "ssl syscall",
    "database is locked",
    "disk i/o error",
    "no space left on device",
)
# S3 error codes that a later request may not meet.
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError", "ServiceUnavailable"}


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it was raised from) is a failure of the infrastructure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _transient(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno in _FULL_DISK:
        return True
    if isinstance(exc, duckdb.IOException | duckdb.OutOfMemoryException):
        return any(text in str(exc) for text in _FULL_DISK_TEXT)
    if isinstance(exc, duckdb.HTTPException):
        return "HTTP 5" in str(exc) or "HTTP 429" in str(exc)
    if isinstance(exc, botocore.exceptions.ConnectionError | botocore.exceptions.ReadTimeoutError):
        return True
    if isinstance(exc, botocore.exceptions.ClientError):
        return exc.response.get("Error", {}).get("Code") in _THROTTLED
    if isinstance(exc, sa.exc.DBAPIError):
        return bool(exc.connection_invalidated) or any(text in str(exc.orig).lower() for text in _CONNECTION_TEXT)
    return False
