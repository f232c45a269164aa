"""Receiving one response body into a file: counted, hashed and written, piece by piece.

What a staged input costs is the bytes' trips through memory and the Python work per
piece (bench/staging.py). So a plain HTTP/1.1 body of known length is read straight
from the connection's socket into a few buffers that are used again and again (no
h11, no new object per read, one write per piece); anything else (chunked, encoded,
HTTP/2) comes through httpx as it is. Each piece is hashed on a thread of its own, behind the
receiving and writing of the next ones (blake3 and hashlib release the GIL while they
hash), and a buffer is filled again only once its digest is taken.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from protocol import digest

# A piece is received, hashed and written while it is still in the CPU's cache: receiving
# 512 MiB from a sendfile server took the receiver 1.0 CPU-s per GiB with 1 MiB pieces on
# the development machine (2 vCPUs, AMD EPYC), 2.6 with 2 MiB and 2.9 with 4 MiB ones,
# the difference nearly all the kernel's copies (README, Performance: staging). Larger
# pieces save Python work per piece, not memory traffic.
PIECE_BYTES = 1 << 20
BUFFERS = 4  # one being filled while up to three wait for (or are in) the hash
RESERVE_FROM_BYTES = 16 << 20  # smaller files gain nothing from preallocation

# Told how many bytes just moved; may raise to abort the transfer (cancellation).
ChunkFn = Callable[[int], None]


@dataclass
class IntegrityMismatch(Exception):
    name: str
    expected_digest: str
    expected_size: int
    got_digest: str
    got_size: int

    def __str__(self) -> str:
        expected = f"expected {self.expected_digest} and {self.expected_size} bytes"
        if not self.got_digest:
            got = f"got more than {self.expected_size} bytes"
        else:
            got = f"got {self.got_digest} and {self.got_size} bytes"
        return f"input {self.name!r} does not match its declaration: {expected}, {got}"


class HashBehind:
    """The digest of a stream, computed on a thread of its own, behind the caller's I/O.

    At most `depth` pieces wait for it, so memory stays bounded and a caller that
    reuses buffers knows which are free: one handed over `depth` updates ago or more
    has been hashed. Pieces are hashed in order (one worker).
    """

    def __init__(self, digester: digest.Digester, depth: int):
        self._digester = digester
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="digest")
        self._pending: deque[Future[None]] = deque()
        self._depth = depth

    def update(self, piece: bytes | memoryview) -> None:
        if len(self._pending) >= self._depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._digester.update, piece))

    def value(self) -> str:
        while self._pending:
            self._pending.popleft().result()
        return self._digester.value()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def reserve(fd: int, size: int) -> None:
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


def write_all(fd: int, piece: bytes | memoryview) -> None:
    view = memoryview(piece)
    while view:
        view = view[os.write(fd, view) :]


def receive(
    response: httpx.Response,
    fd: int,
    *,
    name: str,
    expected: str,
    size: int,
    on_chunk: ChunkFn | None = None,
) -> tuple[int, str]:
    """Write the body of `response` to `fd`; how many bytes it held and their digest, in
    the algorithm of `expected` (the digest it should have).

    More than `size` bytes are refused (IntegrityMismatch) as soon as they arrive, so
    a wrong file cannot fill the disk. Closes the response.
    """
    got = 0
    buffers = BUFFERS
    hasher = HashBehind(digest.Digester.like(expected), depth=buffers - 1)
    try:
        length = response.headers.get("content-length", "")
        if length.isascii() and length.isdigit() and int(length) > size:
            raise IntegrityMismatch(name, expected, size, "", int(length))  # says so up front
        for piece in _pieces(response, PIECE_BYTES, buffers):
            got += len(piece)
            if got > size:
                raise IntegrityMismatch(name, expected, size, "", got)
            hasher.update(piece)
            write_all(fd, piece)
            if on_chunk is not None:
                on_chunk(len(piece))
        return got, hasher.value()
    finally:
        hasher.close()
        response.close()  # and its connection, if its h11 did not see the body end


def _pieces(response: httpx.Response, piece_bytes: int,
            buffers: int) -> Iterator[bytes | memoryview]:
    """The body in the pieces read. A memoryview is into one of `buffers` buffers, filled
    again `buffers` pieces later: by then `receive`'s HashBehind (`buffers` - 1 deep) has
    hashed it."""
    headers = response.headers
    length = headers.get("content-length", "")
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    # The socket is the body's own only if the stream's TLS, if any, is the socket's (not
    # so for TLS inside a proxy's TLS, whose "socket" carries the inner TLS's bytes).
    own = (
        isinstance(sock, socket.socket)
        and stream is not None
        and (getattr(sock, "_sslobj", None) is stream.get_extra_info("ssl_object"))
    )
    plain = (
        response.extensions.get("http_version") == b"HTTP/1.1"
        and "transfer-encoding" not in headers
        and headers.get("content-encoding", "identity") == "identity"
        and length.isascii()
        and length.isdigit()
        and int(length) > 0
    )
    if not own or not plain or not isinstance(sock, socket.socket):
        yield from response.iter_raw()
        return
    left = int(length)
    timeout = response.request.extensions.get("timeout", {}).get("read")
    # What h11 already holds (read with the headers) comes through httpx, all of it up to
    # the length; were it ever to hold some back, the digest would not match
    # (tests/worker_gpu/test_transfer.py would say so). h11 then never sees the end of
    # the body, so the connection is closed with the response rather than reused.
    # The generator is kept until the end: closing it would close the connection.
    through_httpx = response.iter_raw()
    first = next(through_httpx, b"")
    if first:
        left -= len(first)
        yield first
    # A small body gets buffers of its size, and no more of them than it fills: none is
    # then filled twice.
    piece = min(piece_bytes, left)
    count = min(buffers, -(-left // piece)) if left > 0 else 0
    ring = [memoryview(bytearray(piece)) for _ in range(count)]
    turn = 0
    while left > 0:
        buf = ring[turn % count]
        turn += 1
        filled = _fill(
            sock, buf[: min(piece, left)], timeout, response.request, int(length) - left, length
        )
        left -= filled
        yield buf[:filled]
    del through_httpx


def _fill(
    sock: socket.socket,
    view: memoryview,
    timeout: float | None,
    request: httpx.Request,
    before: int,
    length: str,
) -> int:
    """Fill `view` from the socket (a plain or an SSL one); httpx's errors."""
    filled = 0
    try:
        sock.settimeout(timeout)
        while filled < len(view):
            n = sock.recv_into(view[filled:])
            if not n:
                raise httpx.RemoteProtocolError(
                    "peer closed connection without sending complete message body "
                    f"(received {before + filled} bytes, expected {length})",
                    request=request,
                )
            filled += n
    except TimeoutError as err:
        raise httpx.ReadTimeout(str(err) or "timed out", request=request) from err
    except httpx.HTTPError:
        raise
    except OSError as err:
        raise httpx.ReadError(str(err), request=request) from err
    return filled
