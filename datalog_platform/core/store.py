"""One small object-store interface with two implementations: a local directory and S3.

Keys are always relative to the store's root (a directory, or `s3://bucket/prefix`), use `/`,
and are listed in lexicographic order so a listing can resume after any key.

Both stores count their list requests (`list_requests`): S3 counts the ListObjectsV2 calls it
makes, the local store counts what S3 would need for the same listing (one request per page of
`LIST_PAGE_SIZE` entries), so a budget of list requests means the same on both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

# S3 returns at most 1,000 keys or common prefixes per ListObjectsV2 call.
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class Version:
    """What tells one upload of a key from another: the size, and S3's ETag or the local file's
    modification time in nanoseconds. Two versions differ when their sizes differ, or when both
    know an ETag (or both an mtime) and those differ; the same bytes uploaded to S3 again keep
    their ETag and change nothing."""

    size: int
    etag: str | None = None
    mtime_ns: int | None = None

    def differs_from(self, other: Version) -> bool:
        return (
            self.size != other.size
            or (self.etag is not None and other.etag is not None and self.etag != other.etag)
            or (self.mtime_ns is not None and other.mtime_ns is not None and self.mtime_ns != other.mtime_ns)
        )


def sequence_order(sequencer: str) -> str:
    """An S3 event's `sequencer` as a text that sorts in event order: hexadecimal of varying
    length, compared once the shorter is padded with zeros on the left."""
    return sequencer.rjust(64, "0")


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None
    mtime_ns: int | None = None  # a local file's
    last_modified: datetime | None = None  # naive UTC; recorded, never compared
    sequencer: str | None = None  # an S3 event's, which orders two events of one key

    @property
    def version(self) -> Version:
        return Version(self.size, self.etag, self.mtime_ns)


@dataclass(frozen=True)
class ListPage:
    """One list request's worth of objects; `truncated` when more follow the last one."""

    objects: list[ObjectInfo]
    truncated: bool


@dataclass(frozen=True)
class S3Access:
    """What DuckDB's httpfs needs to reach the same S3 endpoint as boto3."""

    region: str
    endpoint_url: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None


class ObjectStore(Protocol):
    url: str
    list_requests: int

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]: ...

    def list_page(self, prefix: str = "", start_after: str | None = None, limit: int = LIST_PAGE_SIZE) -> ListPage:
        """At most `limit` objects after `start_after`, in exactly one list request."""
        ...

    def list_prefixes(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        """The "directories" directly under `prefix` (each ending in `/`), in order, after `start_after`."""
        ...

    def stat_many(self, keys: Iterable[str], listing_prefix: Callable[[str], str]) -> dict[str, ObjectInfo]:
        """The current version of each key that exists (absent keys are left out). A store that
        lists rather than looks up lists once per `listing_prefix(key)` (a prefix that holds
        many of the keys and few others)."""
        ...

    def read_bytes(self, key: str) -> bytes: ...

    def open(self, key: str) -> BinaryIO:
        """The object's bytes as a stream, read as they are consumed."""
        ...

    def write_bytes(self, key: str, data: bytes) -> None: ...

    def delete(self, keys: Iterable[str]) -> int: ...

    def exists(self, key: str) -> bool: ...

    def uri(self, key: str = "") -> str:
        """The location of `key` as DuckDB reads and writes it (a path or an s3:// URL)."""
        ...


class StoreNotFoundError(Exception):
    """A store that is read from does not exist (a local directory that is not there)."""

    def __init__(self, url: str) -> None:
        super().__init__(f"store {url} does not exist (no such directory): check the URL configured for it")
        self.url = url


class LocalStore:
    """A directory; `create=False` for a store that is only read here (the raw store): its
    directory is then not made, and listing it while it does not exist raises
    `StoreNotFoundError` instead of finding nothing. Writing a key always creates its directories."""

    def __init__(self, root: str | os.PathLike[str], create: bool = True) -> None:
        self.root = Path(root).resolve()
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)
        self.list_requests = 0

    def _path(self, key: str) -> Path:
        return self.root / key

    def _list_request(self) -> None:
        if not self.root.is_dir():
            raise StoreNotFoundError(self.url)
        self.list_requests += 1

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        self._list_request()
        for n, info in enumerate(self._walk(prefix, start_after)):
            if n and n % LIST_PAGE_SIZE == 0:
                self.list_requests += 1
            yield info

    def list_page(self, prefix: str = "", start_after: str | None = None, limit: int = LIST_PAGE_SIZE) -> ListPage:
        self._list_request()
        objects: list[ObjectInfo] = []
        for info in self._walk(prefix, start_after):
            if len(objects) == limit:
                return ListPage(objects, truncated=True)
            objects.append(info)
        return ListPage(objects, truncated=False)

    def list_prefixes(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        self._list_request()
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        rel = base.relative_to(self.root).as_posix().lstrip(".")
        with os.scandir(base) as entries:
            names = sorted(
                f"{rel}/{e.name}/" if rel else f"{e.name}/" for e in entries if e.is_dir(follow_symlinks=False)
            )
        found = [n for n in names if n.startswith(prefix) and (start_after is None or n > start_after)]
        for n, name in enumerate(found):
            if n and n % LIST_PAGE_SIZE == 0:
                self.list_requests += 1
            yield name

    def _walk(self, prefix: str, start_after: str | None) -> Iterator[ObjectInfo]:
        base = self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root
        if not base.is_dir():
            return
        found: list[tuple[str, os.stat_result]] = []
        pending = [(str(base), base.relative_to(self.root).as_posix().lstrip("."))]
        while pending:
            directory, rel = pending.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    key = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, key))
                    elif key.startswith(prefix) and (start_after is None or key > start_after):
                        found.append((key, entry.stat()))
        for key, stat in sorted(found, key=lambda item: item[0]):
            yield _local_info(key, stat)

    def stat_many(self, keys: Iterable[str], listing_prefix: Callable[[str], str]) -> dict[str, ObjectInfo]:
        found = {}
        root = f"{self.url}/"  # a string join: a Path a key costs more than the stat (20,000 small files)
        for key in keys:
            try:
                found[key] = _local_info(key, os.stat(root + key))
            except (FileNotFoundError, NotADirectoryError):
                pass
        return found

    def read_bytes(self, key: str) -> bytes:
        return self._path(key).read_bytes()

    def open(self, key: str) -> BinaryIO:
        return self._path(key).open("rb")

    def write_bytes(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def delete(self, keys: Iterable[str]) -> int:
        deleted = 0
        for key in keys:
            try:
                self._path(key).unlink()
                deleted += 1
            except FileNotFoundError:
                pass
        return deleted

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str = "") -> str:
        return str(self._path(key)) if key else str(self.root)


def _local_info(key: str, stat: os.stat_result) -> ObjectInfo:
    modified = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, UTC).replace(tzinfo=None)
    return ObjectInfo(key=key, size=stat.st_size, mtime_ns=stat.st_mtime_ns, last_modified=modified)


# Listings `S3Store.stat_many` runs at once.
_STAT_LISTINGS = 16


@dataclass
class S3Store:
    bucket: str
    prefix: str
    client: Any
    access: S3Access
    list_requests: int = field(default=0, init=False)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def _full(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def _info(self, item: dict[str, Any]) -> ObjectInfo:
        modified = item.get("LastModified")
        return ObjectInfo(
            key=item["Key"][len(self.prefix) :],
            size=int(item["Size"]),
            etag=item.get("ETag", "").strip('"') or None,
            last_modified=modified.astimezone(UTC).replace(tzinfo=None) if modified else None,
        )

    def stat_many(self, keys: Iterable[str], listing_prefix: Callable[[str], str]) -> dict[str, ObjectInfo]:
        by_prefix: dict[str, set[str]] = {}
        for key in keys:
            by_prefix.setdefault(listing_prefix(key), set()).add(key)

        def listed(prefix: str) -> list[ObjectInfo]:
            return [obj for obj in self.list(prefix) if obj.key in by_prefix[prefix]]

        with ThreadPoolExecutor(max_workers=_STAT_LISTINGS) as pool:
            return {obj.key: obj for found in pool.map(listed, sorted(by_prefix)) for obj in found}

    def list_page(self, prefix: str = "", start_after: str | None = None, limit: int = LIST_PAGE_SIZE) -> ListPage:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix), "MaxKeys": limit}
        if start_after is not None:
            kwargs["StartAfter"] = self._full(start_after)
        self.list_requests += 1
        page = self.client.list_objects_v2(**kwargs)
        return ListPage([self._info(item) for item in page.get("Contents", [])], bool(page.get("IsTruncated")))

    def list_prefixes(self, prefix: str = "", start_after: str | None = None) -> Iterator[str]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix), "Delimiter": "/"}
        if start_after is not None:
            kwargs["StartAfter"] = self._full(start_after)
        while True:
            self.list_requests += 1
            page = self.client.list_objects_v2(**kwargs)
            for item in page.get("CommonPrefixes", []):
                yield item["Prefix"][len(self.prefix) :]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def list(self, prefix: str = "", start_after: str | None = None) -> Iterator[ObjectInfo]:
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self._full(prefix)}
        if start_after is not None:
            kwargs["StartAfter"] = self._full(start_after)
        while True:
            self.list_requests += 1
            page = self.client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                yield self._info(item)
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def read_bytes(self, key: str) -> bytes:
        return self.open(key).read()

    def open(self, key: str) -> BinaryIO:
        """The object's body; FileNotFoundError when there is no such key, as on a local store."""
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(f"no such object: {self.uri(key)}") from None

    def write_bytes(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def delete(self, keys: Iterable[str]) -> int:
        batch = [self._full(k) for k in keys]
        deleted = 0
        for start in range(0, len(batch), 1000):
            chunk = batch[start : start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True}
            )
            deleted += len(chunk)
        return deleted

    def exists(self, key: str) -> bool:
        page = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self._full(key), MaxKeys=1)
        return any(item["Key"] == self._full(key) for item in page.get("Contents", []))

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self._full(key)}".rstrip("/") if key else self.url

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (for a batch's reader process) without its client: unpickled, it makes its own."""
        return _s3_store, (self.bucket, self.prefix, self.access)


def _s3_store(bucket: str, prefix: str, access: S3Access) -> S3Store:
    return S3Store(bucket, prefix, s3_client(access), access)


def s3_client(access: S3Access) -> Any:
    """A boto3 S3 client for the endpoint and the credentials of `access` (boto3 is imported here:
    a process that reads a local store never needs it)."""
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=access.access_key_id,
        aws_secret_access_key=access.secret_access_key,
        aws_session_token=access.session_token,
        region_name=access.region,
    )
    return session.client("s3", endpoint_url=access.endpoint_url)


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix/`)."""
    parsed = urlparse(url)
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix


def is_s3_url(url: str) -> bool:
    return url.startswith("s3://")
