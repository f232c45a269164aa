"""A provider stages inputs from the API's presigned GET over each backend, as stage_inputs does."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi import FastAPI

from api.storage import router
from infra.storage import ObjectStore
from ops.launch import free_port
from protocol import digest
from tests.infra.conftest import (
    KEYS,
    RUN,
    StoreFactory,
    recorded_as_before_blake3,
    run_grant,
    storage_services,
)
from tests.support.api_server import serving
from worker_gpu.transfer import HttpFailure, IntegrityMismatch, download_verified, renewed

pytestmark = pytest.mark.timeout(900)

SECRET = b"s" * 32
MiB = 1 << 20


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


STORES: dict[str, ObjectStore] = {}  # api URL -> the store it serves


@pytest.fixture
def api(make_store: StoreFactory) -> Iterator[str]:
    """The storage router alone, served by uvicorn over a store of the kind under test."""
    app = FastAPI()
    app.include_router(router)
    port = free_port()
    app.state.services = storage_services(make_store(), f"http://127.0.0.1:{port}")
    with serving(app, port, lifespan=False) as url:
        STORES[url] = app.state.services.store
        yield url
        del STORES[url]


def url(base: str, method: str, key: str) -> str:
    return run_grant(base, method, key)


def put(api: str, key: str, data: bytes) -> None:
    answer = httpx.put(url(api, "PUT", key), content=data, headers={"X-Digest": b3(data)},
                       timeout=120)  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_inputs_are_staged_whole_and_progress_counts_every_byte(api: str, tmp_path: Path) -> None:
    inputs = {"big.bin": os.urandom(40 * MiB + 3), "small.json": b'{"a": 1}', "empty": b"",
              "exactly-4mib.bin": os.urandom(4 * MiB), "9mib.bin": os.urandom(9 * MiB)}
    for key, data in inputs.items():
        put(api, key, data)
    moved: list[int] = []

    with httpx.Client(timeout=60, follow_redirects=True) as client:
        for key, data in inputs.items():
            got = download_verified(client, url(api, "GET", key), tmp_path / "work" / key,
                                    name=key, digest=b3(data), size=len(data),
                                    on_chunk=moved.append)  # fmt: skip
            assert got == len(data)

    for key, data in inputs.items():
        assert (tmp_path / "work" / key).read_bytes() == data
    assert sum(moved) == sum(len(d) for d in inputs.values())
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == sorted(inputs)


def test_an_input_that_is_not_what_was_declared_leaves_nothing(api: str, tmp_path: Path) -> None:
    data = os.urandom(20 * MiB)
    put(api, "data.bin", data)
    # Its last byte flipped: a random last byte of b"x" (1 in 256) once made the
    # "declared" digest the data's own, and the download rightly passed (CI-try 44713be).
    declared = b3(data[:-1] + bytes([data[-1] ^ 1]))
    work = tmp_path / "work"

    with (
        httpx.Client(timeout=60) as client,
        pytest.raises(IntegrityMismatch) as caught,
    ):
        download_verified(client, url(api, "GET", "data.bin"), work / "data.bin",
                          name="data.bin", digest=declared, size=len(data))  # fmt: skip

    assert (caught.value.got_digest, caught.value.got_size) == (b3(data), len(data))
    assert list(work.iterdir()) == []


def test_a_grant_about_to_end_is_renewed_before_it_is_used(api: str, tmp_path: Path) -> None:
    """A run longer than a grant: the agent renews it (POST to the grant) while the run is live."""
    put(api, "late.bin", b"late")
    ending = run_grant(api, "GET", "late.bin", digest=b3(b"late"), size=4, expires_in=20)
    with httpx.Client(timeout=60) as client:
        with pytest.raises(HttpFailure) as refused:  # another provider's key
            renewed(client, ending, "GET", api_key=KEYS["other"])
        assert refused.value.status == 403
        fresh = renewed(client, ending, "GET", api_key=KEYS["own"])
        expires = int(parse_qs(urlsplit(fresh).query)["expires"][0])
        assert expires > time.time() + 800  # grant_max_s (900) from now
        got = download_verified(client, fresh, tmp_path / "late.bin", name="late.bin",
                                digest=b3(b"late"), size=4)
    assert got == 4 and (tmp_path / "late.bin").read_bytes() == b"late"
    far = run_grant(api, "GET", "late.bin", expires_in=600)
    with httpx.Client() as client:
        assert renewed(client, far, "GET") == far  # not near its end: used as it is


def test_an_input_stored_before_blake3_is_staged_against_its_sha256(
    api: str, tmp_path: Path
) -> None:
    """Its event recorded a bare sha256 (read as "sha256:<hex>"), and so did storage: the
    grant names that digest, the API serves it, the provider checks the bytes with sha256."""
    data = os.urandom(5 * MiB + 1)
    put(api, "old.bin", data)
    hexpart = hashlib.sha256(data).hexdigest()
    recorded_as_before_blake3(STORES[api], RUN.client, "old.bin", hexpart)
    with httpx.Client(timeout=60) as client:
        old = f"sha256:{hexpart}"
        grant = run_grant(api, "GET", "old.bin", digest=old, size=len(data))
        assert download_verified(client, grant, tmp_path / "old.bin", name="old.bin",
                                 digest=hexpart, size=len(data)) == len(data)
        assert (tmp_path / "old.bin").read_bytes() == data
        # The BLAKE3 digest of the same bytes is not what storage recorded for them.
        other = run_grant(api, "GET", "old.bin", digest=b3(data), size=len(data))
        with pytest.raises(HttpFailure) as refused:
            download_verified(client, other, tmp_path / "again.bin", name="old.bin",
                              digest=b3(data), size=len(data))
        assert refused.value.status == 409
