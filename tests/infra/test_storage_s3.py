"""What only the S3 backend does: its bucket, object metadata, parts, and presigned URLs."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest
from botocore.exceptions import ClientError

from infra.storage import FilesystemStore, StorageError, build_store
from infra.storage_s3 import S3Store
from protocol import digest
from tests.infra.conftest import S3Server, fresh_bucket, leftovers

pytestmark = pytest.mark.timeout(900)

ALICE = "alice"
MiB = 1 << 20


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


def in_chunks(data: bytes, size: int = MiB) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_the_bucket_is_made_on_first_use(s3_server: S3Server) -> None:
    s3, bucket = s3_server.client(), fresh_bucket()
    store = s3_server.store(bucket)
    with pytest.raises(ClientError):
        s3.head_bucket(Bucket=bucket)  # making the store touches nothing
    assert store.list(ALICE) == []
    s3.head_bucket(Bucket=bucket)
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert sorted(r["ID"] for r in rules) == [
        "abort-stale-multipart-uploads",
        "expire-staged-uploads",
    ]


def test_an_existing_bucket_is_used_as_it_is(s3_server: S3Server) -> None:
    s3, bucket = s3_server.client(), fresh_bucket()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="README", Body=b"not a client's")
    store = s3_server.store(bucket)
    store.put(ALICE, "x.txt", [b"x"], None)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["README", "alice/x.txt"]


@pytest.mark.parametrize("announced", [True, False], ids=["digest-announced", "no-digest"])
def test_objects_sit_under_the_client_prefix_with_their_digest_in_metadata(
    s3_server: S3Server, announced: bool
) -> None:
    store = s3_server.store()
    data = os.urandom(20 * MiB)
    store.put(ALICE, "runs/big.bin", in_chunks(data), b3(data) if announced else None)
    head = store.s3.head_object(Bucket=store.bucket, Key="alice/runs/big.bin")
    assert head["Metadata"] == {"digest": b3(data)}
    assert head["ContentLength"] == 20 * MiB
    if announced:  # straight to its key in 8 MiB parts; else copied into place from staging
        assert head["ETag"].endswith('-3"')
    assert leftovers(store) == []


def test_an_upload_of_whole_parts_has_no_empty_last_part(s3_server: S3Server) -> None:
    store = s3_server.store()
    data = os.urandom(16 * MiB)
    info = store.put(ALICE, "even.bin", in_chunks(data, 3 * MiB), b3(data))
    assert info.size == 16 * MiB
    head = store.s3.head_object(Bucket=store.bucket, Key="alice/even.bin")
    assert head["ETag"].endswith('-2"')
    _, chunks = store.open(ALICE, "even.bin")
    assert b"".join(chunks) == data


def test_a_presigned_get_talks_to_s3_directly_and_there_is_no_presigned_put(
    s3_server: S3Server,
) -> None:
    store = s3_server.store()
    data = os.urandom(3 * MiB)
    store.put(ALICE, "inputs/data.bin", [data], None)

    got = httpx.get(store.presign("GET", ALICE, "inputs/data.bin", 60))
    assert got.status_code == 200
    assert got.content == data
    # A PUT straight to S3 would skip the quota, the declared digest and write-once.
    with pytest.raises(StorageError, match="method 'PUT' is not GET"):
        store.presign("PUT", ALICE, "outputs/result.txt", 60)
    # And no GET lives longer than a grant (minutes).
    with pytest.raises(StorageError, match="expiry 604800s"):
        store.presign("GET", ALICE, "inputs/data.bin", 7 * 24 * 3600)


def test_a_presigned_url_allows_one_method_on_one_object_until_it_expires(
    s3_server: S3Server,
) -> None:
    store = s3_server.store()
    store.put(ALICE, "a.txt", [b"a"], None)
    url = store.presign("GET", ALICE, "a.txt", 60)
    assert httpx.put(url, content=b"overwritten").status_code == 403
    assert httpx.get(url.replace("/alice/a.txt?", "/alice/b.txt?")).status_code == 403
    short = store.presign("GET", ALICE, "a.txt", 1)
    time.sleep(2.1)
    assert httpx.get(short).status_code == 403
    _, chunks = store.open(ALICE, "a.txt")
    assert b"".join(chunks) == b"a"


def test_presign_refuses_what_it_cannot_sign(s3_server: S3Server) -> None:
    store = s3_server.store()
    with pytest.raises(StorageError, match=re.escape("'a/../b'")):
        store.presign("GET", ALICE, "a/../b", 60)
    with pytest.raises(StorageError, match="method 'DELETE' is not GET"):
        store.presign("DELETE", ALICE, "a.txt", 60)
    with pytest.raises(StorageError, match="expiry 0s"):
        store.presign("GET", ALICE, "a.txt", 0)


def test_build_store_picks_the_backend(tmp_path: Path) -> None:
    fs = build_store("filesystem", root=tmp_path, quota_bytes=5)
    assert isinstance(fs, FilesystemStore) and fs.quota_bytes == 5
    s3 = build_store(
        "s3", root=tmp_path, s3_endpoint="http://127.0.0.1:1", s3_bucket="b-1", quota_bytes=7
    )
    assert isinstance(s3, S3Store) and (s3.bucket, s3.quota_bytes) == ("b-1", 7)
    with pytest.raises(ValueError, match="'gcs' is not one of 'filesystem', 's3'"):
        build_store("gcs", root=tmp_path)
