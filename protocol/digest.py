"""The integrity digest of stored bytes, written so that it says how it was made.

A digest is "<algorithm>:<64 hex digits>". The network's algorithm is BLAKE3
("blake3:…"): storage computes it as an object's bytes arrive, providers declare
and check it, manifests, grants and events record it. Values recorded before
BLAKE3 was the network's hash are sha256s: "sha256:…", or, as events, grants
and storage metadata of that time wrote them, a bare 64-digit hex, which
`normal` reads as sha256. Those still verify: a digest is checked with its own
algorithm (`hasher_for`). sha256 stays where an outside protocol asks for it
(S3's SigV4 payload hash, computed by botocore) and for things that are not
integrity digests of stored bytes (token hashes, HMACs, canary programs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import blake3

ALGORITHM = "blake3"
ALGORITHMS = ("blake3", "sha256")
# As a pydantic/JSON-schema pattern: what a field holding a digest accepts.
PATTERN = r"^(blake3|sha256):[0-9a-f]{64}$"
_DIGEST = re.compile(PATTERN)
_BARE = re.compile(r"[0-9a-fA-F]{64}")
# Reads and writes of whole files move this much at a time (fewer calls, fewer copies).
CHUNK_BYTES = 4 << 20


class Hasher(Protocol):
    """hashlib's sha256 or blake3's hasher: what a digest is computed with."""

    def update(self, data: bytes | bytearray | memoryview, /) -> object: ...
    def hexdigest(self) -> str: ...


def is_digest(value: object) -> bool:
    """Whether `value` is a digest in its written form, "<algorithm>:<64 lowercase hex>"."""
    return isinstance(value, str) and _DIGEST.fullmatch(value) is not None


def normal(value: str) -> str:
    """`value` as a digest: "blake3:…" and "sha256:…" as they are (hex lowercased), a
    bare 64-digit hex (recorded before digests said their algorithm) as "sha256:…".
    ValueError says what is wrong with anything else."""
    if not isinstance(value, str):
        raise ValueError("must be a digest, 'blake3:' and 64 hex digits")
    if _BARE.fullmatch(value):
        return f"sha256:{value.lower()}"
    algorithm, sep, hexpart = value.partition(":")
    algorithm = algorithm.lower()
    if not sep or algorithm not in ALGORITHMS:
        raise ValueError(f"{value[:80]!r} is not a digest: expected 'blake3:' and 64 hex digits")
    if not _BARE.fullmatch(hexpart):
        raise ValueError(
            f"{value[:80]!r} is not a digest: the part after '{algorithm}:' must be 64 hex digits"
        )
    return f"{algorithm}:{hexpart.lower()}"


def of_record(record: Mapping[str, object]) -> str:
    """The digest of a record written either way: its "digest", or its "sha256" (a
    manifest entry, input or metadata from before digests said their algorithm)."""
    value = record.get("digest") or record.get("sha256")
    if not isinstance(value, str):
        raise ValueError("has neither a 'digest' nor a 'sha256'")
    return normal(value)


def upcast_records(records: object) -> None:
    """Inputs or manifest entries recorded before BLAKE3, in place: each bare `sha256` as a
    `digest` ("sha256:<hex>"; None stays None). What is not a list of dicts is left as is."""
    for record in records if isinstance(records, list) else ():
        if isinstance(record, dict) and "sha256" in record and "digest" not in record:
            legacy = record.pop("sha256")
            record["digest"] = normal(legacy) if isinstance(legacy, str) else None


def algorithm_of(value: str) -> str:
    return normal(value).partition(":")[0]


def hasher(algorithm: str = ALGORITHM, *, threads: bool = False) -> Hasher:
    """A fresh hasher for `algorithm`; `threads`: BLAKE3 may spread one large update over
    the machine's cores (for whole files; a stream's chunks are hashed on one)."""
    if algorithm == "blake3":
        return blake3.blake3(max_threads=blake3.blake3.AUTO) if threads else blake3.blake3()
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"digest algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")


class Digester:
    """Bytes in, digest out: `update` as they pass, `value()` once they are all in."""

    def __init__(self, algorithm: str = ALGORITHM, *, threads: bool = False):
        self.algorithm = algorithm
        self._hasher = hasher(algorithm, threads=threads)

    @classmethod
    def like(cls, digest: str) -> Digester:
        """A digester of the algorithm `digest` was made with (to check bytes against it)."""
        return cls(algorithm_of(digest))

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hasher.update(data)

    def value(self) -> str:
        return f"{self.algorithm}:{self._hasher.hexdigest()}"


def of_bytes(data: bytes, algorithm: str = ALGORITHM) -> str:
    d = Digester(algorithm)
    d.update(data)
    return d.value()


def of_file(
    path: Path, on_chunk: Callable[[int], None] | None = None, algorithm: str = ALGORITHM
) -> tuple[str, int]:
    """The digest and size of a file, read CHUNK_BYTES at a time into one buffer;
    `on_chunk` is told each chunk's size (and may raise to stop)."""
    d = Digester(algorithm, threads=True)
    size = 0
    buf = bytearray(CHUNK_BYTES)
    view = memoryview(buf)
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            d.update(view[:n])
            size += n
            if on_chunk is not None:
                on_chunk(n)
    return d.value(), size


def short(value: str) -> str:
    """For messages: the algorithm and the first 12 hex digits."""
    algorithm, _, hexpart = value.partition(":")
    return f"{algorithm}:{hexpart[:12]}…" if hexpart else f"{value[:12]}…"
