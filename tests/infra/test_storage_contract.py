"""One storage contract, run against the filesystem backend and S3 (a real Ceph RGW)."""

from __future__ import annotations

import hashlib
import os
import re
import tracemalloc
from collections.abc import Iterable, Iterator

import pytest

from infra.storage import (
    CHUNK,
    AlreadyStored,
    IntegrityMismatch,
    ObjectInfo,
    ObjectNotFound,
    ObjectStore,
    QuotaExceeded,
    StorageError,
)
from protocol import digest
from tests.infra.conftest import StoreFactory, leftovers, recorded_as_before_blake3

# The first S3 test waits for RGW to start, and maybe for Ceph to install.
pytestmark = pytest.mark.timeout(900)

ALICE, BOB = "alice", "bob"
MiB = 1 << 20


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


def sha(data: bytes) -> str:
    """As a client from before BLAKE3 declared it: a bare sha256."""
    return hashlib.sha256(data).hexdigest()


def in_chunks(data: bytes, size: int = MiB) -> Iterator[bytes]:
    return (data[i : i + size] for i in range(0, len(data), size))


def read(store: ObjectStore, client_id: str, key: str) -> bytes:
    _, chunks = store.open(client_id, key)
    return b"".join(chunks)


def keys(objects: Iterable[ObjectInfo]) -> list[str]:
    return sorted(o.key for o in objects)


def test_put_stat_open_round_trip_with_its_digest(store: ObjectStore) -> None:
    data = b"model weights\n" * 1000
    info = store.put(ALICE, "models/w.bin", [data[:100], data[100:]], b3(data))
    assert info == ObjectInfo("models/w.bin", len(data), b3(data))
    assert info.digest.startswith("blake3:")
    assert store.stat(ALICE, "models/w.bin") == info
    opened, chunks = store.open(ALICE, "models/w.bin")
    assert opened == info
    assert b"".join(chunks) == data


def test_the_digest_is_recorded_when_the_sender_gives_none(store: ObjectStore) -> None:
    info = store.put(ALICE, "notes.txt", [b"hello ", b"world"], None)
    assert info == ObjectInfo("notes.txt", 11, b3(b"hello world"))
    assert store.stat(ALICE, "notes.txt").digest == b3(b"hello world")


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["small", "multipart"])
def test_a_declared_sha256_is_checked_on_the_same_pass_and_blake3_recorded(
    store: ObjectStore, size: int
) -> None:
    """A client from before BLAKE3 declares a bare sha256: its bytes are checked against
    it (and refused when they differ), and what the store records is BLAKE3."""
    data = os.urandom(size)
    info = store.put(ALICE, "old.bin", in_chunks(data), sha(data))
    assert info == ObjectInfo("old.bin", size, b3(data))
    assert store.stat(ALICE, "old.bin") == info
    with pytest.raises(IntegrityMismatch, match=re.escape(f"the sender said sha256:{sha(b'x')}")):
        store.put(ALICE, "lie.bin", in_chunks(data), f"sha256:{sha(b'x')}")
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "lie.bin")
    assert leftovers(store) == []


def test_an_object_stored_before_blake3_keeps_its_sha256(store: ObjectStore) -> None:
    """Its digest is the sha256 recorded when it arrived, said as one; never recomputed."""
    data = b"stored before BLAKE3\n"
    store.put(ALICE, "old/input.txt", [data], None)
    recorded_as_before_blake3(store, ALICE, "old/input.txt", sha(data))
    old = ObjectInfo("old/input.txt", len(data), f"sha256:{sha(data)}")
    assert store.stat(ALICE, "old/input.txt") == old
    assert store.open(ALICE, "old/input.txt")[0] == old
    assert store.list(ALICE, "old/") == [old]


def test_a_declared_digest_that_is_not_one_is_refused_naming_it(store: ObjectStore) -> None:
    refusal = re.escape("x.bin: the declared digest: 'md5:00' is not a digest")
    with pytest.raises(StorageError, match=refusal):
        store.put(ALICE, "x.bin", [b"x"], "md5:00")
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "x.bin")


@pytest.mark.parametrize("announced", [True, False], ids=["digest-announced", "no-digest"])
def test_20mib_streamed_in_1mib_chunks_round_trips(store: ObjectStore, announced: bool) -> None:
    data = os.urandom(20 * MiB)
    tracemalloc.start()
    try:
        info = store.put(ALICE, "big.bin", in_chunks(data), b3(data) if announced else None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info == ObjectInfo("big.bin", 20 * MiB, b3(data))
    # One 8 MiB part and a chunk at most: the 20 MiB are never held at once.
    assert peak < 12 * MiB, f"the upload held {peak} bytes at once"
    assert store.stat(ALICE, "big.bin") == info
    opened, chunks = store.open(ALICE, "big.bin")
    pieces = list(chunks)
    assert opened == info
    assert max(len(p) for p in pieces) <= CHUNK
    assert b"".join(pieces) == data
    assert leftovers(store) == []


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["small", "multipart"])
def test_a_wrong_digest_is_refused_and_nothing_is_stored(store: ObjectStore, size: int) -> None:
    data = os.urandom(size)
    with pytest.raises(IntegrityMismatch) as refused:
        store.put(ALICE, "out.bin", in_chunks(data), b3(b"something else"))
    assert str(refused.value) == (
        f"out.bin: the bytes received have digest {b3(data)}, "
        f"the sender said {b3(b'something else')}"
    )
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "out.bin")
    assert store.list(ALICE) == []
    assert leftovers(store) == []


@pytest.mark.parametrize("size", [1000, 20 * MiB], ids=["small", "multipart"])
def test_a_refused_upload_leaves_the_previous_object(store: ObjectStore, size: int) -> None:
    before = store.put(ALICE, "out.bin", [b"previous"], None)
    with pytest.raises(IntegrityMismatch):
        store.put(ALICE, "out.bin", in_chunks(os.urandom(size)), b3(b"something else"))
    assert store.stat(ALICE, "out.bin") == before
    assert read(store, ALICE, "out.bin") == b"previous"
    assert leftovers(store) == []


def refusals_of(store: ObjectStore, key: str) -> list[str]:
    """What put, stat, open and delete of `key` in ALICE's space answer: each a plain
    StorageError (the message of each)."""
    attempts = {
        "put": lambda: store.put(ALICE, key, [b"data"], None),
        "stat": lambda: store.stat(ALICE, key),
        "open": lambda: store.open(ALICE, key),
        "delete": lambda: store.delete(ALICE, key),
    }
    found = []
    for name, attempt in attempts.items():
        with pytest.raises(StorageError) as refused:
            attempt()
        assert type(refused.value) is StorageError, name
        found.append(str(refused.value))
    return found


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a//b", "a/./b"])
def test_keys_leaving_the_client_space_are_refused(store: ObjectStore, key: str) -> None:
    store.put(BOB, "x", [b"bob's"], None)
    for refusal in refusals_of(store, key):
        assert repr(key) in refusal
    assert store.list(ALICE) == []
    assert read(store, BOB, "x") == b"bob's"


@pytest.mark.parametrize(
    ("key", "words"),
    [
        ("a" * 300, "of 300 bytes of UTF-8, more than the 255 a file or folder name may have"),
        ("d/" + "\u00e9" * 128, "of 256 bytes of UTF-8, more than the 255"),
        ("/".join(["k" * 200] * 5), "is 1004 bytes of UTF-8, more than the 959 a key may have"),
    ],
)
def test_a_key_past_the_bounds_is_refused_naming_it(
    store: ObjectStore, key: str, words: str
) -> None:
    """A part past a file system's 255 bytes answered 500 (ENAMETOOLONG) on the filesystem
    store; a key past S3's 1024 bytes (with `<client>/`) was S3's error: both are refused by
    name, on every backend, before any I/O."""
    for refusal in refusals_of(store, key):
        assert refusal.startswith(f"key: {key[:40]!r}") and words in refusal, refusal
    assert store.list(ALICE) == []


def test_the_longest_key_round_trips_for_the_longest_client_id(store: ObjectStore) -> None:
    """959 bytes in 4-byte characters, each part 252 bytes: what an output's key may reach."""
    client = "c" * 64
    part = "\U0001d552" * 63
    key = "/".join([part] * 3) + "/" + "x" * (959 - 3 * 253)
    assert len(key.encode()) == 959
    info = store.put(client, key, [b"long"], b3(b"long"))
    assert (info.key, store.stat(client, key).digest, read(store, client, key)) == (
        key, b3(b"long"), b"long")
    assert keys(store.list(client)) == [key]
    store.delete(client, key)


def test_client_ids_that_are_not_plain_names_are_refused(store: ObjectStore) -> None:
    for client_id in ["../bob", ".hidden", "a/b", ""]:
        with pytest.raises(StorageError, match="client id"):
            store.put(client_id, "x", [b"data"], None)


def test_other_clients_objects_are_invisible(store: ObjectStore) -> None:
    store.put(BOB, "secret.txt", [b"bob's"], None)
    store.put("ali", "short.txt", [b"a client whose id is a prefix of another's"], None)
    store.put(ALICE, "mine.txt", [b"alice's"], None)
    assert keys(store.list(ALICE)) == ["mine.txt"]
    assert keys(store.list("ali")) == ["short.txt"]
    assert keys(store.list(BOB)) == ["secret.txt"]
    with pytest.raises(
        ObjectNotFound, match=re.escape("no object 'secret.txt' in alice's storage")
    ):
        store.stat(ALICE, "secret.txt")
    with pytest.raises(ObjectNotFound):
        store.open(ALICE, "secret.txt")
    with pytest.raises(ObjectNotFound):
        store.delete(ALICE, "secret.txt")
    assert read(store, BOB, "secret.txt") == b"bob's"


def test_an_upload_past_the_quota_is_refused_and_nothing_stored(make_store: StoreFactory) -> None:
    store = make_store(quota_bytes=3 * MiB)
    store.put(ALICE, "a.bin", in_chunks(bytes(2 * MiB)), None)
    store.put(BOB, "b.bin", in_chunks(bytes(2 * MiB)), None)  # each client has its own quota
    with pytest.raises(QuotaExceeded) as refused:
        store.put(ALICE, "b.bin", in_chunks(os.urandom(2 * MiB)), None)
    assert str(refused.value).startswith(
        "b.bin: refused, alice's storage quota is 3145728 bytes, 2097152 bytes are in use"
    )
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "b.bin")
    assert keys(store.list(ALICE)) == ["a.bin"]
    assert leftovers(store) == []
    # Replacing an object counts only the new bytes: up to the quota, not past it.
    store.put(ALICE, "a.bin", in_chunks(bytes(3 * MiB)), None)
    with pytest.raises(QuotaExceeded, match="3145728 bytes are in use"):
        store.put(ALICE, "c.txt", [b"x"], None)
    assert store.stat(ALICE, "a.bin").size == 3 * MiB


@pytest.mark.parametrize("announced", [True, False], ids=["digest-announced", "no-digest"])
def test_a_large_upload_past_the_quota_stops_early(
    make_store: StoreFactory, announced: bool
) -> None:
    store = make_store(quota_bytes=10 * MiB)
    data = os.urandom(20 * MiB)
    taken = 0

    def chunks() -> Iterator[bytes]:
        nonlocal taken
        for chunk in in_chunks(data):
            taken += 1
            yield chunk

    with pytest.raises(QuotaExceeded, match="alice's storage quota is 10485760 bytes, 0 bytes"):
        store.put(ALICE, "big.bin", chunks(), b3(data) if announced else None)
    assert taken == 11, "the upload went on past the quota"
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "big.bin")
    assert store.list(ALICE) == []
    assert leftovers(store) == []


def test_delete_then_stat_is_not_found(store: ObjectStore) -> None:
    store.put(ALICE, "tmp/x.bin", [b"x"], None)
    store.delete(ALICE, "tmp/x.bin")
    with pytest.raises(ObjectNotFound, match=re.escape("no object 'tmp/x.bin' in alice's storage")):
        store.stat(ALICE, "tmp/x.bin")
    with pytest.raises(ObjectNotFound):
        store.open(ALICE, "tmp/x.bin")
    with pytest.raises(ObjectNotFound):
        store.delete(ALICE, "tmp/x.bin")
    assert store.list(ALICE) == []


def test_list_with_prefix(store: ObjectStore) -> None:
    for key in ["runs/1/out.txt", "runs/2/out.txt", "runs10/x", "inputs/data.csv"]:
        store.put(ALICE, key, [key.encode()], None)
    assert keys(store.list(ALICE, "runs/")) == ["runs/1/out.txt", "runs/2/out.txt"]
    assert keys(store.list(ALICE, "runs")) == ["runs/1/out.txt", "runs/2/out.txt", "runs10/x"]
    assert store.list(ALICE, "nothing/") == []
    everything = {o.key: o for o in store.list(ALICE)}
    assert sorted(everything) == ["inputs/data.csv", "runs/1/out.txt", "runs/2/out.txt", "runs10/x"]
    assert everything["runs10/x"] == ObjectInfo("runs10/x", 8, b3(b"runs10/x"))


def test_a_key_named_like_a_metadata_file_is_an_ordinary_object(store: ObjectStore) -> None:
    """Metadata lives where no key reaches it: writing `.<name>.sha256` (the old side file)
    changes nothing about `<name>`; it is an object of its own, listed and counted."""
    store.put(ALICE, "out/result.txt", [b"real"], None)
    store.put(ALICE, "out/.result.txt.sha256", [b"0" * 64], None)
    assert store.stat(ALICE, "out/result.txt") == ObjectInfo("out/result.txt", 4, b3(b"real"))
    assert keys(store.list(ALICE, "out/")) == ["out/.result.txt.sha256", "out/result.txt"]
    store.delete(ALICE, "out/.result.txt.sha256")
    assert store.stat(ALICE, "out/result.txt").digest == b3(b"real")


@pytest.mark.parametrize("size", [5, 9 * MiB], ids=["one-part", "multipart"])
def test_a_create_only_put_never_replaces_an_object(store: ObjectStore, size: int) -> None:
    first, other = os.urandom(size), os.urandom(size)
    stored = store.put(ALICE, "jobs/j/runs/1/o", in_chunks(first), b3(first), create_only=True)
    with pytest.raises(AlreadyStored) as taken:
        store.put(ALICE, "jobs/j/runs/1/o", in_chunks(other), b3(other), create_only=True)
    assert taken.value.stored == stored
    assert read(store, ALICE, "jobs/j/runs/1/o") == first
    assert store.stat(ALICE, "jobs/j/runs/1/o") == stored
    assert leftovers(store) == []


def test_a_body_other_than_its_declared_size_is_refused(store: ObjectStore) -> None:
    for body in (b"12345", b"123"):
        with pytest.raises(IntegrityMismatch):
            store.put(ALICE, "s.bin", [body], None, expected_size=4)
    with pytest.raises(ObjectNotFound):
        store.stat(ALICE, "s.bin")
    assert leftovers(store) == []
