"""The object-store interface on both implementations: LocalStore (a directory) and S3Store.

Covers lexicographic listing with prefix and start_after (including keys that sort differently
from directory walk order), read/write/delete/exists, keys with quotes, spaces and unicode,
pagination past 1,000 keys, S3Store's list request counter, URIs that DuckDB reads, and URL
helpers.

Real parts: local directories under tmp_path; moto's S3 HTTP server on 127.0.0.1 via boto3, and
DuckDB's httpfs reading the same objects by their s3:// URI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pytest

from datalog_platform.core.store import (
    LocalStore,
    ObjectStore,
    S3Access,
    S3Store,
    is_s3_url,
    split_s3_url,
)
from datalog_platform_tests.support.s3 import s3_client_for

# Deliberately includes keys whose lexicographic order differs from a per-directory walk:
# "a/b" < "a-c" is False ('/' 0x2F > '-' 0x2D) and "a/b" < "a0" is True.
KEYS = [
    "a/b/1.json",
    "a-c.json",
    "a0.json",
    "a/b/2.json",
    "a/c.json",
    "dev1/2026110100/it's a log.json",
    "dev1/2026110100/données é.json",
    "dev1/2026110100/sp ace+plus%20.json",
    "z.json",
]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalStore(tmp_path / "root")
    client = request.getfixturevalue("s3_client")
    bucket: str = request.getfixturevalue("s3_bucket")
    return S3Store(bucket, "pre fix/", client, request.getfixturevalue("s3_test_access"))


def fill(store: ObjectStore) -> None:
    for key in KEYS:
        store.write_bytes(key, key.encode("utf-8"))


def listed(store: ObjectStore, prefix: str = "", start_after: str | None = None) -> list[str]:
    return [o.key for o in store.list(prefix, start_after)]


def test_list_is_lexicographic(store: ObjectStore) -> None:
    fill(store)
    assert listed(store) == sorted(KEYS)
    sizes = {o.key: o.size for o in store.list()}
    assert sizes == {k: len(k.encode("utf-8")) for k in KEYS}


@pytest.mark.parametrize("cursor", [None, "a-c.json", "a/b/1.json", "a/b/2.json", "a0.json", "b", "z.json"])
def test_list_start_after(store: ObjectStore, cursor: str | None) -> None:
    fill(store)
    expected = [k for k in sorted(KEYS) if cursor is None or k > cursor]
    assert listed(store, start_after=cursor) == expected


@pytest.mark.parametrize("prefix", ["a", "a/", "a/b", "a/b/", "dev1/2026110100/", "dev1/2026110100/it", "q"])
def test_list_prefix(store: ObjectStore, prefix: str) -> None:
    fill(store)
    assert listed(store, prefix) == [k for k in sorted(KEYS) if k.startswith(prefix)]


def test_list_prefix_with_start_after(store: ObjectStore) -> None:
    fill(store)
    assert listed(store, "a", "a/b/1.json") == ["a/b/2.json", "a/c.json", "a0.json"]


def test_list_resumes_page_by_page(store: ObjectStore) -> None:
    """Listing in slices with the last key as cursor visits every key exactly once."""
    fill(store)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        page = []
        for info in store.list(start_after=cursor):
            page.append(info.key)
            if len(page) == 2:
                break
        if not page:
            break
        seen += page
        cursor = page[-1]
    assert seen == sorted(KEYS)


def test_read_write_exists_delete(store: ObjectStore) -> None:
    key = "dev1/2026110100/it's a log.json"
    assert not store.exists(key)
    store.write_bytes(key, b"one")
    assert store.exists(key)
    assert store.read_bytes(key) == b"one"
    store.write_bytes(key, b"two")  # overwrite
    assert store.read_bytes(key) == b"two"
    # a prefix of an existing key is not itself an object
    assert not store.exists("dev1/2026110100/it")
    assert not store.exists("dev1/2026110100")
    store.write_bytes("other.json", b"x")
    assert store.delete([key, "missing.json"]) >= 1
    assert not store.exists(key)
    assert listed(store) == ["other.json"]
    with pytest.raises(Exception):  # noqa: B017 - FileNotFoundError locally, NoSuchKey on S3
        store.read_bytes(key)


def test_write_leaves_no_temporary_objects(store: ObjectStore) -> None:
    store.write_bytes("d/x.json", b"1")
    store.write_bytes("d/x.json", b"2")
    assert listed(store) == ["d/x.json"]


def test_delete_many(store: ObjectStore) -> None:
    keys = [f"k/{i:04d}.json" for i in range(25)]
    for key in keys:
        store.write_bytes(key, b"")
    store.delete(keys[:20])
    assert listed(store) == keys[20:]


def test_uri_is_readable_by_duckdb(
    store: ObjectStore, duck_factory: Callable[[ObjectStore | None], duckdb.DuckDBPyConnection]
) -> None:
    """`uri(key)` is what DuckDB opens: a path locally, an s3:// URL through httpfs on moto."""
    store.write_bytes("dev1/2026110100/log.json", b'{"a": 1}\n{"a": 2}\n')
    total = (
        duck_factory(store)
        .execute(
            "SELECT sum(a) FROM read_json(?, format = 'newline_delimited')",
            [[store.uri("dev1/2026110100/log.json")]],
        )
        .fetchone()
    )
    assert total == (3,)
    assert store.uri().rstrip("/") == store.url.rstrip("/")


def test_local_store_paths(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "r")
    assert store.uri("a/b.json") == str((tmp_path / "r" / "a" / "b.json").resolve())
    assert store.uri() == str((tmp_path / "r").resolve())
    assert listed(store, "nothing/here/") == []


def test_s3_store_pagination_and_request_count(
    s3_client: Any, s3_bucket: str, s3_test_access: S3Access, moto_server: str
) -> None:
    """Truncated pages are followed via continuation tokens, and every page request is counted.

    The store's own client asks moto for pages of 2 keys (a boto3 parameter hook), so paging is
    exercised without writing thousands of objects.
    """
    bucket = s3_bucket
    paged = s3_client_for(moto_server)  # a client of its own: the hook below must not reach `s3_client`

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params.setdefault("MaxKeys", 2)

    paged.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    store = S3Store(bucket, "p/", paged, s3_test_access)
    keys = [f"k/{i:02d}.json" for i in range(7)]
    # an object outside the prefix is not part of the store
    s3_client.put_object(Bucket=bucket, Key="outside.json", Body=b"")
    for key in keys:
        store.write_bytes(key, b"")
    assert store.list_requests == 0
    assert listed(store) == keys
    assert store.list_requests == 4  # 2 + 2 + 2 + 1
    assert listed(store, start_after=keys[-3]) == keys[-2:]
    assert store.list_requests == 5
    assert listed(store, "k/0") == keys
    assert store.list_requests == 9
    assert all(o.etag for o in store.list())
    assert store.delete(keys) == len(keys)
    assert listed(store) == []
    assert s3_client.list_objects_v2(Bucket=bucket)["KeyCount"] == 1


def test_s3_store_urls(s3_client: Any, s3_test_access: S3Access) -> None:
    store = S3Store("bkt", "raw/", s3_client, s3_test_access)
    assert store.url == "s3://bkt/raw"
    assert store.uri() == "s3://bkt/raw"
    assert store.uri("a/b.json") == "s3://bkt/raw/a/b.json"
    root = S3Store("bkt", "", s3_client, s3_test_access)
    assert root.uri("a.json") == "s3://bkt/a.json"
    assert split_s3_url("s3://bkt/some/prefix") == ("bkt", "some/prefix/")
    assert split_s3_url("s3://bkt") == ("bkt", "")
    assert is_s3_url("s3://bkt") and not is_s3_url("/tmp/x")
