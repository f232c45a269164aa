"""download_verified against a real socket server that sends exactly what each test scripts.

The scripted responses cover both ways a body is read: HTTP/1.1 with a
Content-Length (the first piece through httpx, the rest straight from the
connection's socket into reused buffers) and anything else (chunked, HTTP/1.0),
through httpx alone.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from protocol import digest
from worker_gpu.context import StepCancelled
from worker_gpu.receive import PIECE_BYTES
from worker_gpu.transfer import (
    HttpFailure,
    IntegrityMismatch,
    download_verified,
    ride_out,
)

MiB = 1 << 20


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


@dataclass
class Scripted:
    """Answers every request with `parts`, sent one by one, `pause_s` apart.

    With `keep_alive` false it closes the connection after the first answer.
    """

    parts: list[bytes] = field(default_factory=list)
    pause_s: float = 0.0
    keep_alive: bool = True
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/files/data.bin"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        """One response per request on the connection, as long as the client keeps it."""
        with conn:
            while True:
                request = b""
                while b"\r\n\r\n" not in request:
                    try:
                        got = conn.recv(65536)
                    except OSError:
                        return
                    if not got:
                        return
                    request += got
                self.requests.append(request)
                try:
                    for part in self.parts:
                        conn.sendall(part)
                        time.sleep(self.pause_s)
                except OSError:  # the client stopped reading: what some tests are about
                    return
                if not self.keep_alive:
                    return

    def close(self) -> None:
        self.listener.close()


def head(length: int | None, version: str = "1.1", extra: str = "") -> bytes:
    lines = [f"HTTP/{version} 200 OK", "Content-Type: application/octet-stream"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def chunked(data: bytes, size: int) -> list[bytes]:
    encoded = [f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces(data, size)]
    return [*encoded, b"0\r\n\r\n"]


@pytest.fixture
def server() -> Iterator[Scripted]:
    scripted = Scripted()
    yield scripted
    scripted.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as c:
        yield c


def fetch(
    client: httpx.Client, server: Scripted, target: Path, data: bytes, **changes: object
) -> tuple[int, list[int]]:
    moved: list[int] = []
    declared: dict[str, object] = {"digest": b3(data), "size": len(data), **changes}
    got = download_verified(
        client, server.url, target, name="data.bin", on_chunk=moved.append,
        **declared,  # type: ignore[arg-type]
    )  # fmt: skip
    return got, moved


def hash_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("digest")]


BODY = os.urandom(5 * MiB + 12345)


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([head(len(BODY)) + BODY], id="headers-and-body-in-one-send"),
        pytest.param([head(len(BODY)), *pieces(BODY, 7777)], id="http11-small-pieces"),
        pytest.param([head(len(BODY)) + BODY[:100], BODY[100:]], id="http11-body-after-headers"),
        pytest.param([head(None, extra="Transfer-Encoding: chunked\r\n"), *chunked(BODY, MiB)],
                     id="http11-chunked"),
        pytest.param([head(len(BODY), version="1.0"), BODY], id="http10"),
    ],
)  # fmt: skip
def test_the_file_appears_whole_and_progress_counts_every_byte(
    server: Scripted, client: httpx.Client, tmp_path: Path, parts: list[bytes]
) -> None:
    server.parts = parts
    target = tmp_path / "in" / "data.bin"

    got, moved = fetch(client, server, target, BODY)

    assert got == len(BODY) and sum(moved) == len(BODY)
    assert max(moved) <= PIECE_BYTES  # bounded pieces, never the whole body at once
    assert target.read_bytes() == BODY
    assert sorted(p.name for p in target.parent.iterdir()) == ["data.bin"]
    assert b"accept-encoding: identity" in server.requests[0].lower()
    assert hash_threads() == []


# Past RESERVE_FROM_BYTES the file is allocated at its declared size before the body comes.
SIZES = [pytest.param(len(BODY), id="5MiB"), pytest.param(24 * MiB + 1, id="24MiB-preallocated")]


@pytest.mark.parametrize("size", SIZES)
def test_a_wrong_digest_leaves_nothing(
    server: Scripted, client: httpx.Client, tmp_path: Path, size: int
) -> None:
    body = BODY if size == len(BODY) else os.urandom(size)
    server.parts = [head(size), body]
    declared = b3(b"another input")

    with pytest.raises(IntegrityMismatch) as caught:
        fetch(client, server, tmp_path / "data.bin", body, digest=declared)

    assert caught.value.got_digest == b3(body)
    assert caught.value.expected_digest == declared
    assert list(tmp_path.iterdir()) == []
    assert hash_threads() == []


@pytest.mark.parametrize(
    "parts",
    [
        pytest.param([head(len(BODY)), *pieces(BODY, 7777)], id="http11-from-the-socket"),
        pytest.param([head(None, extra="Transfer-Encoding: chunked\r\n"), *chunked(BODY, MiB)],
                     id="http11-chunked"),
    ],
)  # fmt: skip
def test_an_input_recorded_with_a_sha256_is_checked_with_sha256(
    server: Scripted, client: httpx.Client, tmp_path: Path, parts: list[bytes]
) -> None:
    """Inputs pinned before BLAKE3 carry a sha256 digest ("sha256:<hex>", or bare as the
    events of that time held it): the bytes are checked with that algorithm."""
    server.parts = parts
    hexpart = hashlib.sha256(BODY).hexdigest()
    for n, declared in enumerate([f"sha256:{hexpart}", hexpart]):
        got, _ = fetch(client, server, tmp_path / f"{n}.bin", BODY, digest=declared)
        assert got == len(BODY) and (tmp_path / f"{n}.bin").read_bytes() == BODY
    with pytest.raises(IntegrityMismatch) as caught:
        fetch(client, server, tmp_path / "x.bin", BODY, digest=f"sha256:{'0' * 64}")
    assert caught.value.got_digest == f"sha256:{hexpart}"
    assert not (tmp_path / "x.bin").exists()


def test_a_buffer_is_filled_again_only_once_hashed(
    server: Scripted, client: httpx.Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hash slower than the network: the receiver waits for it before it reuses a
    buffer (were it not to, the digest would be of bytes overwritten meanwhile)."""
    body = os.urandom(10 * PIECE_BYTES + 5)
    server.parts = [head(len(body)), *pieces(body, MiB)]
    hashed = digest.Digester.update

    def slow(self: digest.Digester, data: bytes | bytearray | memoryview) -> None:
        time.sleep(0.05)
        hashed(self, data)

    monkeypatch.setattr(digest.Digester, "update", slow)
    got, moved = fetch(client, server, tmp_path / "data.bin", body)
    assert got == len(body) == sum(moved)
    assert (tmp_path / "data.bin").read_bytes() == body


def test_a_body_longer_than_declared_is_refused_before_it_is_all_read(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    big = os.urandom(64 * MiB)
    server.parts = [head(len(big)), *pieces(big, MiB)]
    moved: list[int] = []

    with pytest.raises(IntegrityMismatch) as caught:
        download_verified(client, server.url, tmp_path / "data.bin", name="data.bin",
                          digest=b3(big[:MiB]), size=MiB, on_chunk=moved.append)  # fmt: skip

    assert "got more than 1048576 bytes" in str(caught.value)
    assert sum(moved) <= MiB
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size", SIZES)
def test_a_shorter_body_is_refused(
    server: Scripted, client: httpx.Client, tmp_path: Path, size: int
) -> None:
    body = BODY if size == len(BODY) else os.urandom(size)
    server.parts = [head(size - 10), body[:-10]]

    with pytest.raises(IntegrityMismatch) as caught:
        fetch(client, server, tmp_path / "data.bin", body)

    assert caught.value.got_size == size - 10
    assert list(tmp_path.iterdir()) == []


def test_a_connection_closed_mid_body_is_a_transport_error(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    server.parts = [head(len(BODY)), BODY[: 2 * MiB]]
    server.keep_alive = False

    with pytest.raises(httpx.RemoteProtocolError, match="received 2097152 bytes"):
        fetch(client, server, tmp_path / "data.bin", BODY)

    assert list(tmp_path.iterdir()) == []
    assert hash_threads() == []


def test_a_stalled_server_is_a_read_timeout(server: Scripted, tmp_path: Path) -> None:
    server.parts = [head(len(BODY)) + BODY[:MiB], BODY[MiB:]]
    server.pause_s = 3.0

    with (
        httpx.Client(timeout=httpx.Timeout(10.0, read=0.5)) as client,
        pytest.raises(httpx.ReadTimeout),
    ):
        fetch(client, server, tmp_path / "data.bin", BODY)

    assert list(tmp_path.iterdir()) == []


def test_cancelling_from_the_progress_callback_stops_the_transfer(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    big = os.urandom(64 * MiB)
    server.parts = [head(len(big)), *pieces(big, MiB)]
    moved: list[int] = []

    def on_chunk(n: int) -> None:
        moved.append(n)
        if sum(moved) >= 3 * MiB:
            raise StepCancelled("activity cancelled")  # as stage_inputs does

    with pytest.raises(StepCancelled):
        download_verified(client, server.url, tmp_path / "data.bin", name="data.bin",
                          digest=b3(big), size=len(big), on_chunk=on_chunk)  # fmt: skip

    assert 3 * MiB <= sum(moved) < len(big)
    assert list(tmp_path.iterdir()) == []
    assert hash_threads() == []


def test_a_refusal_is_an_http_failure(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    body = b"signature expired"
    server.parts = [f"HTTP/1.1 403 Forbidden\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                    + body]  # fmt: skip

    with pytest.raises(HttpFailure) as caught:
        fetch(client, server, tmp_path / "data.bin", BODY)

    assert (caught.value.status, caught.value.body) == (403, "signature expired")
    assert not caught.value.retryable
    assert list(tmp_path.iterdir()) == []


def test_the_same_client_fetches_again_after_a_fast_read(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    """A body read past h11 leaves its connection closed, not back in the pool as if idle."""
    server.parts = [head(len(BODY)), BODY]

    for n in range(3):
        got, _ = fetch(client, server, tmp_path / f"copy{n}.bin", BODY)
        assert got == len(BODY)

    assert len(server.requests) == 3
    assert server.connections == 3  # the fast path was taken each time (else 1, kept alive)
    assert all((tmp_path / f"copy{n}.bin").read_bytes() == BODY for n in range(3))


def test_a_server_that_comes_back_is_waited_for(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    """Nothing listens (a restarting API), then a server that closes mid-body, then the
    file: ride_out tries again until one try is whole, and the file appears once."""
    port = server.listener.getsockname()[1]
    server.listener.close()
    server.parts = [head(len(BODY)), BODY[:MiB]]
    server.keep_alive = False
    waits: list[float] = []

    def come_back(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # after two refused connections, a server that breaks off
            server.listener = socket.create_server(("127.0.0.1", port))
            threading.Thread(target=server._serve, daemon=True).start()
        if len(waits) == 3:  # and then one that sends it all
            server.parts = [head(len(BODY)), BODY]

    got = ride_out(lambda: fetch(client, server, tmp_path / "data.bin", BODY)[0], "fetching",
                   sleep=come_back)

    assert got == len(BODY) and (tmp_path / "data.bin").read_bytes() == BODY
    assert waits == [0.25, 0.5, 1.0]
    assert [p.name for p in tmp_path.iterdir()] == ["data.bin"]


def test_a_refusal_or_a_mismatch_is_not_tried_again(
    server: Scripted, client: httpx.Client, tmp_path: Path
) -> None:
    server.parts = [head(len(BODY)), BODY]
    waits: list[float] = []

    with pytest.raises(IntegrityMismatch):
        ride_out(lambda: fetch(client, server, tmp_path / "a.bin", BODY, digest="0" * 64),
                 "fetching", sleep=waits.append)
    server.parts = [b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"]
    with pytest.raises(HttpFailure):
        ride_out(lambda: fetch(client, server, tmp_path / "b.bin", BODY), "fetching",
                 sleep=waits.append)

    assert waits == [] and len(server.requests) == 2


def test_riding_out_ends_with_its_budget_or_a_cancel(client: httpx.Client, tmp_path: Path) -> None:
    nobody = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{nobody.getsockname()[1]}/x"
    nobody.close()

    def get() -> httpx.Response:
        return client.get(url)

    started = time.monotonic()
    with pytest.raises(httpx.ConnectError):
        ride_out(get, "fetching", budget_s=1.0)
    assert 0.7 < time.monotonic() - started < 3.0

    def cancelled() -> None:
        raise StepCancelled("activity cancelled")

    with pytest.raises(StepCancelled):
        ride_out(get, "fetching", check=cancelled)
