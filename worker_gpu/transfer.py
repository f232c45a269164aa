"""Streaming transfers to and from presigned URLs, with digest and size checked on the way.

No file is ever held whole in memory: downloads go piece by piece to a temporary
file (worker_gpu/receive.py) that is renamed into place only once its size and
digest are right. Digests are protocol/digest.py's: an input is checked with the
algorithm of the digest recorded for it (BLAKE3, or sha256 for an object stored
before), an upload declares its BLAKE3 digest (X-Digest).
"""

from __future__ import annotations

import functools
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx

from infra import tracing
from protocol import digest as digests
from worker_gpu.receive import ChunkFn, IntegrityMismatch, receive, reserve

log = logging.getLogger(__name__)

T = TypeVar("T")

CHUNK_BYTES = digests.CHUNK_BYTES  # what an upload reads its file in
DIGEST_HEADER = "X-Digest"
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


# httpcore reads an HTTP/1.1 body 64 KiB at a time, and each read passes through h11 and
# httpx in Python. Reading up to 1 MiB at a time (as much as the socket holds) halves the
# CPU of a body that goes that way (worker_gpu/receive.py reads most of a large one from
# the socket itself); smaller responses are unaffected.
httpcore.HTTP11Connection.READ_NUM_BYTES = max(httpcore.HTTP11Connection.READ_NUM_BYTES,
                                               1 << 20)


class UnsafePath(ValueError):
    """A job-relative path that would land outside the job's working directory."""


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


def digest_file(path: Path, on_chunk: ChunkFn | None = None,
                algorithm: str = digests.ALGORITHM) -> tuple[str, int]:
    """The file's digest ("blake3:<hex>", or in `algorithm`) and size."""
    return digests.of_file(path, on_chunk, algorithm)


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


def download_verified(
    client: httpx.Client,
    url: str,
    target: Path,
    *,
    name: str,
    digest: str,
    size: int,
    on_chunk: ChunkFn | None = None,
) -> int:
    """GET `url` into `target`; the file appears only if its size and digest match."""
    expected = digests.normal(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        reserve(fd, size)
        # The body as sent (no decoder, no regrouping), so ask for it uncompressed.
        headers = {"Accept-Encoding": "identity", **tracing.headers()}
        with client.stream("GET", renewed(client, url, "GET"), headers=headers) as response:
            if not response.is_success:
                raise HttpFailure("GET", response.status_code, _error_body(response))
            got, got_digest = receive(response, fd, name=name, expected=expected, size=size,
                                      on_chunk=on_chunk)
        os.close(fd)
        fd = -1
        if got != size or got_digest != expected:
            raise IntegrityMismatch(name, expected, size, got_digest, got)
        tmp.replace(target)
        return got
    finally:
        if fd != -1:
            os.close(fd)
        tmp.unlink(missing_ok=True)


def already_present(target: Path, digest: str, size: int) -> bool:
    """True when a retried stage finds the file already verified in place."""
    if not target.is_file() or target.is_symlink() or target.stat().st_size != size:
        return False
    expected = digests.normal(digest)
    return digest_file(target, algorithm=digests.algorithm_of(expected))[0] == expected


def _chunks(path: Path, on_chunk: ChunkFn | None) -> Iterator[bytes]:
    with path.open("rb", buffering=0) as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk
            if on_chunk is not None:
                on_chunk(len(chunk))


def upload_file(
    client: httpx.Client,
    url: str,
    path: Path,
    *,
    digest: str,
    size: int,
    on_chunk: ChunkFn | None = None,
) -> None:
    """PUT `path` to `url` as a stream, declaring its digest (X-Digest) and size.

    A write-once key that already holds these very bytes (an upload retried after its
    answer was lost) counts as uploaded: the storage endpoint refuses the PUT (409) and
    says what it holds."""
    # An explicit Content-Length: S3-style presigned PUTs refuse chunked bodies.
    headers = {DIGEST_HEADER: digest, "Content-Length": str(size), **tracing.headers()}
    url = renewed(client, url, "PUT")
    response = client.put(url, content=_chunks(path, on_chunk), headers=headers)
    if response.status_code == 409 and _holds(response, digest, size):
        return
    if not response.is_success:
        raise HttpFailure("PUT", response.status_code, response.text[:500])


def _holds(response: httpx.Response, digest: str, size: int) -> bool:
    try:
        detail = response.json().get("detail")
    except ValueError:
        return False
    return isinstance(detail, dict) and (detail.get("digest"), detail.get("size")) == (
        digests.normal(digest), size
    )
