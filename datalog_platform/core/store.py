"""One small object-store interface with two implementations: a local directory and S3.

Keys are always relative to the store's root (a directory, or `s3://bucket/prefix`), use `/`,
and are listed in lexicographic order so a listing can resume after any key.

Both stores count their list requests (`list_requests`): S3 counts the ListObjectsV2 calls it
makes, the local store counts what S3 would need for the same listing (one request per page of
`LIST_PAGE_SIZE` entries), so a budget of list requests means the same on both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol
from urllib.parse import urlparse

# S3 returns at most 1,000 keys or common prefixes per ListObjectsV2 call.
LIST_PAGE_SIZE = 1000


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str | None = None


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
        found: list[tuple[str, int]] = []
        pending = [(str(base), base.relative_to(self.root).as_posix().lstrip("."))]
        while pending:
            directory, rel = pending.pop()
            with os.scandir(directory) as entries:
                for entry in entries:
                    key = f"{rel}/{entry.name}" if rel else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        pending.append((entry.path, key))
                    elif key.startswith(prefix) and (start_after is None or key > start_after):
                        found.append((key, entry.stat().st_size))
        for key, size in sorted(found):
            yield ObjectInfo(key=key, size=size)

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
        return ObjectInfo(
            key=item["Key"][len(self.prefix) :],
            size=int(item["Size"]),
            etag=item.get("ETag", "").strip('"') or None,
        )

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
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()

    def open(self, key: str) -> BinaryIO:
        return self.client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"]

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


def split_s3_url(url: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> (`bucket`, `some/prefix/`)."""
    parsed = urlparse(url)
    prefix = parsed.path.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return parsed.netloc, prefix


def is_s3_url(url: str) -> bool:
    return url.startswith("s3://")
