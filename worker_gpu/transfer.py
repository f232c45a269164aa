"""Streaming transfers to and from presigned URLs, with sha256 and size checked on the way.

No file is ever held whole in memory: downloads go chunk by chunk to a temporary
file that is renamed into place only once its size and digest are right.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import logging
import os
import ssl
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx

from infra import tracing

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_BYTES = 1024 * 1024
# A storage server that restarts (a deploy, a crash loop) is gone for seconds. A transfer
# rides that out here, within its step, rather than fail the run: the network retries a
# staging or upload step only once, and a run lost to a blip costs the whole job.
RIDE_OUT_S = 60.0
RETRY_FIRST_S, RETRY_MAX_S = 0.25, 4.0


@functools.cache
def tls() -> ssl.SSLContext:
    """One TLS context per process for every transfer: building one loads the CA bundle,
    which cost more CPU than staging a small job's inputs (bench/pipeline.py)."""
    return httpx.create_ssl_context()
HASH_QUEUE_DEPTH = 8  # chunks (of at most about CHUNK_BYTES) waiting to be hashed
RESERVE_FROM_BYTES = 16 * CHUNK_BYTES  # smaller files gain nothing from preallocation

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


def transient(err: BaseException) -> bool:
    """An error that may go away by itself: no connection, a broken one, a 5xx, 408 or 429."""
    if isinstance(err, HttpFailure):
        return err.retryable
    return isinstance(err, httpx.TransportError)


def ride_out(
    transfer: Callable[[], T],
    what: str,
    *,
    budget_s: float | None = None,
    check: Callable[[], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run `transfer` again, with backoff, while it fails transiently and `budget_s`
    (default RIDE_OUT_S) lasts.

    Each try starts the transfer over (a presigned PUT cannot resume); `check` runs before
    each wait and may raise to stop (a cancelled activity). Other errors pass at once.
    """
    deadline = time.monotonic() + (RIDE_OUT_S if budget_s is None else budget_s)
    wait, tries = RETRY_FIRST_S, 1
    while True:
        try:
            return transfer()
        except (HttpFailure, httpx.TransportError) as err:
            if not transient(err) or time.monotonic() + wait > deadline:
                raise
            log.warning("%s: try %d failed (%s); again in %.2f s", what, tries, err, wait)
        if check is not None:
            check()
        sleep(wait)
        wait, tries = min(wait * 2, RETRY_MAX_S), tries + 1


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


# A grant (infra/signing.py) lives minutes; one that ends within this is renewed before use.
RENEW_MARGIN_S = 60.0


def renewed(client: httpx.Client, url: str, method: str, *, now: float | None = None,
            api_key: str | None = None) -> str:
    """`url`, or, if it is a storage grant for `method` that ends within RENEW_MARGIN_S, a
    fresh grant for the same key and run: a POST to the grant, with the provider's own key
    (`api_key`, default the agent's GPGPU_API_KEY), renews it while its run is live
    (api/storage.py). The key goes with the renewal only, never with a transfer."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    expires = query.get("expires", [""])[0]
    if "sig" not in query or not expires.isdigit():
        return url
    if int(expires) - (time.time() if now is None else now) > RENEW_MARGIN_S:
        return url
    if api_key is None:
        from worker_gpu.api_client import agent_api_key

        api_key = agent_api_key()
    key = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    response = client.post(url, headers={"X-Grant-Method": method, **key, **tracing.headers()})
    if not response.is_success:
        raise HttpFailure("POST", response.status_code, response.text[:500])
    fresh = response.json().get("url")
    if not isinstance(fresh, str):
        raise HttpFailure("POST", response.status_code, "the renewal holds no url")
    return fresh


def _error_body(response: httpx.Response) -> str:
    try:
        response.read()
        return response.text[:500]
    except httpx.HTTPError:
        return ""


class _Sha256Behind:
    """The sha256 of a stream, computed on a thread of its own, behind the caller's I/O.

    hashlib releases the GIL on large buffers, so hashing one chunk overlaps receiving
    and writing the next ones instead of following them. At most `depth` chunks wait
    for it, so memory stays bounded; they are hashed in order (one worker).
    """

    def __init__(self, depth: int = HASH_QUEUE_DEPTH):
        self._digest = hashlib.sha256()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def update(self, chunk: bytes) -> None:
        if len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._digest.update, chunk))

    def hexdigest(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._digest.hexdigest()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _body(response: httpx.Response) -> Iterator[bytes]:
    """The body as sent, in the pieces read, without h11 in the way where that is safe.

    h11 copies every byte twice and httpcore once more, all holding the GIL. For a
    plain HTTP/1.1 body of known length, the first piece comes through httpx (it holds
    what was read along with the headers) and the rest straight from the connection's
    network stream (httpcore's documented `network_stream` extension). h11 then never
    sees the end of the body, so the connection is closed with the response rather
    than reused. Anything else (chunked, encoded, HTTP/2) goes through httpx as is.
    """
    headers = response.headers
    length = headers.get("content-length", "")
    stream = response.extensions.get("network_stream")
    plain = (
        response.extensions.get("http_version") == b"HTTP/1.1"
        and "transfer-encoding" not in headers
        and headers.get("content-encoding", "identity") == "identity"
        and length.isascii()
        and length.isdigit()
        and int(length) > 0
    )
    if stream is None or not plain:
        yield from response.iter_raw()
        return
    left = int(length)
    timeout = response.request.extensions.get("timeout", {}).get("read")
    through_httpx = response.iter_raw()
    try:
        # h11 hands over all it holds, up to the length. Were it ever to hold some back,
        # the digest would not match (tests/worker_gpu/test_transfer.py would say so).
        first = next(through_httpx, b"")
        if first:
            left -= len(first)
            yield first
        while left > 0:
            try:
                chunk = stream.read(min(CHUNK_BYTES, left), timeout)
            except httpcore.TimeoutException as err:
                raise httpx.ReadTimeout(str(err), request=response.request) from err
            except httpcore.NetworkError as err:
                raise httpx.ReadError(str(err), request=response.request) from err
            if not chunk:
                raise httpx.RemoteProtocolError(
                    f"peer closed connection without sending complete message body "
                    f"(received {int(length) - left} bytes, expected {length})",
                    request=response.request,
                )
            left -= len(chunk)
            yield chunk
    finally:
        response.close()  # and its connection, whose h11 did not see the body end


def _reserve(fd: int, size: int) -> None:
    """Allocate the declared size up front, where the filesystem can.

    Writing into blocks already allocated costs ext4 about a quarter less CPU than
    delayed allocation, block by block, does (bench/staging.py), and a disk too full
    for the input says so before any byte moves. Only the declared size is reserved:
    a longer body is refused as it arrives, and the file is removed on any failure.
    """
    if size < RESERVE_FROM_BYTES or not hasattr(os, "posix_fallocate"):
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EFBIG):
            raise
        # Not supported here: the writes allocate as they go.


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


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
    digest = _Sha256Behind()
    try:
        _reserve(fd, size)
        got = 0
        # The body as sent (no decoder, no regrouping into CHUNK_BYTES, which copies
        # every byte twice more); so ask for it uncompressed.
        headers = {"Accept-Encoding": "identity", **tracing.headers()}
        with client.stream("GET", renewed(client, url, "GET"), headers=headers) as response:
            if not response.is_success:
                raise HttpFailure("GET", response.status_code, _error_body(response))
            for chunk in _body(response):
                got += len(chunk)
                if got > size:
                    # Stop early: a wrong file must not fill the provider's disk.
                    raise IntegrityMismatch(name, sha256, size, "", got)
                digest.update(chunk)
                _write_all(fd, chunk)
                if on_chunk is not None:
                    on_chunk(len(chunk))
        os.close(fd)
        fd = -1
        got_sha256 = digest.hexdigest()
        if got != size or got_sha256 != sha256.lower():
            raise IntegrityMismatch(name, sha256, size, got_sha256, got)
        tmp.replace(target)
        return got
    finally:
        digest.close()
        if fd != -1:
            os.close(fd)
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
    """PUT `path` to `url` as a stream, declaring its digest (X-Sha256) and size.

    A write-once key that already holds these very bytes (an upload retried after its
    answer was lost) counts as uploaded: the storage endpoint refuses the PUT (409) and
    says what it holds."""
    # An explicit Content-Length: S3-style presigned PUTs refuse chunked bodies.
    headers = {"X-Sha256": sha256, "Content-Length": str(size), **tracing.headers()}
    url = renewed(client, url, "PUT")
    response = client.put(url, content=_chunks(path, on_chunk), headers=headers)
    if response.status_code == 409 and _holds(response, sha256, size):
        return
    if not response.is_success:
        raise HttpFailure("PUT", response.status_code, response.text[:500])


def _holds(response: httpx.Response, sha256: str, size: int) -> bool:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return False
    return isinstance(detail, dict) and (detail.get("sha256"), detail.get("size")) == (
        sha256.lower(), size
    )
