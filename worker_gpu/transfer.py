"""Streaming transfers to and from presigned URLs, with sha256 and size checked on the way.

No file is ever held whole in memory: downloads go chunk by chunk to a temporary
file that is renamed into place only once its size and digest are right.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import httpcore
import httpx

CHUNK_BYTES = 1024 * 1024

# httpcore reads an HTTP/1.1 body 64 KiB at a time, and each read passes through h11 and
# httpx in Python: half the CPU of staging a large input (bench/staging.py). Reading up to
# 1 MiB at a time (as much as the socket holds) halves it; smaller responses are unaffected.
httpcore.HTTP11Connection.READ_NUM_BYTES = max(httpcore.HTTP11Connection.READ_NUM_BYTES,
                                               CHUNK_BYTES)

# Told how many bytes just moved; may raise to abort the transfer (cancellation).
ChunkFn = Callable[[int], None]


class UnsafePath(ValueError):
    """A job-relative path that would land outside the job's working directory."""


@dataclass
class IntegrityMismatch(Exception):
    name: str
    expected_sha256: str
    expected_size: int
    got_sha256: str
    got_size: int

    def __str__(self) -> str:
        expected = f"expected sha256 {self.expected_sha256} and {self.expected_size} bytes"
        if not self.got_sha256:
            got = f"got more than {self.expected_size} bytes"
        else:
            got = f"got sha256 {self.got_sha256} and {self.got_size} bytes"
        return f"input {self.name!r} does not match its declaration: {expected}, {got}"


@dataclass
class HttpFailure(Exception):
    method: str
    status: int
    body: str

    def __str__(self) -> str:
        return f"{self.method} answered HTTP {self.status}: {self.body}"

    @property
    def retryable(self) -> bool:
        # A 4xx will not change on retry (bad or expired signature, missing object),
        # except the two that mean "later".
        return self.status >= 500 or self.status in (408, 429)


def relative_path(relative: str) -> PurePosixPath:
    """A job-relative path as declared, refusing absolute paths and '..' before any I/O."""
    pure = PurePosixPath(relative)
    if not relative or pure.is_absolute() or ".." in pure.parts or str(pure) == ".":
        raise UnsafePath(f"{relative!r} is not a relative path inside the job directory")
    return pure


def safe_path(root: Path, relative: str) -> Path:
    """`relative` under `root`, refusing absolute paths, '..' and symlinks that leave root."""
    path = root / relative_path(relative)
    resolved_root = root.resolve()
    if not path.resolve().is_relative_to(resolved_root):
        raise UnsafePath(f"{relative!r} resolves outside the job directory")
    return path


def sha256_file(path: Path, on_chunk: ChunkFn | None = None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            if on_chunk is not None:
                on_chunk(len(chunk))
    return digest.hexdigest(), size


def _error_body(response: httpx.Response) -> str:
    try:
        response.read()
        return response.text[:500]
    except httpx.HTTPError:
        return ""


def download_verified(
    client: httpx.Client,
    url: str,
    target: Path,
    *,
    name: str,
    sha256: str,
    size: int,
    on_chunk: ChunkFn | None = None,
) -> int:
    """GET `url` into `target`; the file appears only if its size and sha256 match."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        got = 0
        # The body as sent, in the pieces read (iter_raw: no decoder, no regrouping into
        # CHUNK_BYTES, which copies every byte twice more); so ask for it uncompressed.
        headers = {"Accept-Encoding": "identity"}
        with (
            os.fdopen(fd, "wb") as out,
            client.stream("GET", url, headers=headers) as response,
        ):
            if not response.is_success:
                raise HttpFailure("GET", response.status_code, _error_body(response))
            for chunk in response.iter_raw():
                got += len(chunk)
                if got > size:
                    # Stop early: a wrong file must not fill the provider's disk.
                    raise IntegrityMismatch(name, sha256, size, "", got)
                digest.update(chunk)
                out.write(chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        if got != size or digest.hexdigest() != sha256.lower():
            raise IntegrityMismatch(name, sha256, size, digest.hexdigest(), got)
        tmp.replace(target)
        return got
    finally:
        tmp.unlink(missing_ok=True)


def already_present(target: Path, sha256: str, size: int) -> bool:
    """True when a retried stage finds the file already verified in place."""
    if not target.is_file() or target.is_symlink() or target.stat().st_size != size:
        return False
    return sha256_file(target)[0] == sha256.lower()


def _chunks(path: Path, on_chunk: ChunkFn | None) -> Iterator[bytes]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk
            if on_chunk is not None:
                on_chunk(len(chunk))


def upload_file(
    client: httpx.Client,
    url: str,
    path: Path,
    *,
    sha256: str,
    size: int,
    on_chunk: ChunkFn | None = None,
) -> None:
    """PUT `path` to `url` as a stream, announcing its digest in X-Sha256."""
    # An explicit Content-Length: S3-style presigned PUTs refuse chunked bodies.
    headers = {"X-Sha256": sha256, "Content-Length": str(size)}
    response = client.put(url, content=_chunks(path, on_chunk), headers=headers)
    if not response.is_success:
        raise HttpFailure("PUT", response.status_code, response.text[:500])
