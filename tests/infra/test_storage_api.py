"""The API's presigned storage URLs (our HMAC) over each backend: how providers move files."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi import FastAPI

from api.storage import router
from ops.launch import free_port
from protocol import digest
from tests.infra.conftest import KEYS, StoreFactory, run_grant, storage_services
from tests.support.api_server import serving

pytestmark = pytest.mark.timeout(900)

MiB = 1 << 20


def b3(data: bytes) -> str:
    return digest.of_bytes(data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def api(make_store: StoreFactory) -> Iterator[str]:
    """The storage router alone, served by uvicorn over a store with a 30 MiB quota."""
    app = FastAPI()
    app.include_router(router)
    app.state.services = storage_services(make_store(30 * MiB))
    with serving(app, free_port(), lifespan=False) as url:
        yield url


def url(base: str, method: str, key: str) -> str:
    return run_grant(base, method, key)


def test_a_provider_puts_and_gets_through_presigned_urls(api: str) -> None:
    data = os.urandom(20 * MiB)

    def body() -> Iterator[bytes]:
        for i in range(0, len(data), MiB):
            yield data[i : i + MiB]

    put = httpx.put(url(api, "PUT", "out/result.bin"), content=body(),
                    headers={"X-Digest": b3(data), "Content-Length": str(len(data))},
                    timeout=60)  # fmt: skip
    assert put.status_code == 200, put.text
    assert put.json() == {"key": "out/result.bin", "digest": b3(data), "size": 20 * MiB}
    got = httpx.get(url(api, "GET", "out/result.bin"), timeout=60)
    assert got.status_code == 200
    assert got.headers["X-Digest"] == b3(data)
    assert got.content == data


def test_the_api_reports_refusals_in_the_stores_words(api: str) -> None:
    bad = httpx.put(url(api, "PUT", "bad.bin"), content=b"abc",
                    headers={"X-Digest": "blake3:" + "0" * 64})
    assert bad.status_code == 400
    assert bad.json()["detail"].startswith(
        f"bad.bin: the bytes received have digest {b3(b'abc')}"
    )
    assert httpx.get(url(api, "GET", "bad.bin")).status_code == 404

    big = httpx.put(url(api, "PUT", "big.bin"), content=bytes(31 * MiB), timeout=60,
                    headers={"X-Digest": b3(bytes(31 * MiB))})
    assert big.status_code in (400, 413)
    assert "alice's storage quota is 31457280 bytes, 0 bytes are in use" in big.json()["detail"]
    assert httpx.get(url(api, "GET", "big.bin")).status_code == 404


def test_a_grant_put_must_match_its_declared_digest_and_size_and_stores_nothing_else(
    api: str,
) -> None:
    data = b"x" * 1000
    declared = {"X-Digest": b3(data), "Content-Length": "999"}
    short = httpx.put(url(api, "PUT", "o.bin"), content=data[:999] + b"", headers=declared)
    assert short.status_code == 400, short.text  # 999 bytes whose digest is another's
    no_digest = httpx.put(url(api, "PUT", "o.bin"), content=data)
    assert no_digest.status_code == 400 and "X-Digest" in no_digest.text
    # A provider declares BLAKE3, what the store records: a sha256 (an agent from before
    # BLAKE3) would make a manifest that verification can never match.
    for old in ({"X-Sha256": sha(data)}, {"X-Digest": f"sha256:{sha(data)}"}):
        refused = httpx.put(url(api, "PUT", "o.bin"), content=data, headers=old)
        assert refused.status_code == 400, refused.text
        assert "X-Digest: a PUT through a grant declares the body's digest (blake3" in (
            refused.json()["detail"])
    malformed = httpx.put(url(api, "PUT", "o.bin"), content=data, headers={"X-Digest": "abc"})
    assert malformed.status_code == 400
    assert malformed.json()["detail"].startswith("X-Digest: 'abc' is not a digest")
    big = httpx.put(run_grant(api, "PUT", "o.bin", size=10), content=data,
                    headers={"X-Digest": b3(data)})
    assert big.status_code == 413
    assert httpx.get(url(api, "GET", "o.bin")).status_code == 404


def test_a_write_once_grant_succeeds_once(api: str) -> None:
    once = run_grant(api, "PUT", "jobs/job-1/runs/1/out.txt", once=True)
    first = httpx.put(once, content=b"first", headers={"X-Digest": b3(b"first")})
    assert first.status_code == 200, first.text
    again = httpx.put(once, content=b"other", headers={"X-Digest": b3(b"other")})
    assert again.status_code == 409
    assert again.json()["detail"]["digest"] == b3(b"first")
    got = httpx.get(url(api, "GET", "jobs/job-1/runs/1/out.txt"))
    assert got.content == b"first"


def test_grants_out_of_force_or_of_another_run_are_refused(api: str) -> None:
    httpx.put(url(api, "PUT", "a.txt"), content=b"a", headers={"X-Digest": b3(b"a")})
    far = run_grant(api, "GET", "a.txt", expires_in=10**9)  # signed with the key, year 2050+
    assert httpx.get(far).status_code == 403
    assert "maximum" in httpx.get(far).text
    other_job = run_grant(api, "GET", "a.txt", job_id="job-2")
    assert "no job job-2" in httpx.get(other_job).text
    other_provider = run_grant(api, "GET", "a.txt", provider_id="prov-2")
    assert httpx.get(other_provider).status_code == 403
    moved = url(api, "GET", "a.txt").replace("/a.txt?", "/b.txt?")
    assert "signature" in httpx.get(moved).text
    bound = run_grant(api, "GET", "a.txt", digest=b3(b"b"), size=1)
    assert httpx.get(bound).status_code == 409  # not the object the grant names
    # Nor is the sha256 of its very bytes: the store recorded their BLAKE3 digest.
    other_hash = run_grant(api, "GET", "a.txt", digest=f"sha256:{sha(b'a')}", size=1)
    assert httpx.get(other_hash).status_code == 409
    assert httpx.get(run_grant(api, "GET", "a.txt", digest=b3(b"a"), size=1)).content == b"a"
    assert httpx.get(url(api, "GET", "a.txt")).content == b"a"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def test_a_live_runs_grant_is_renewed_with_a_fresh_deadline(api: str) -> None:
    old = run_grant(api, "GET", "a.txt", expires_in=-5)  # expired 5 s ago
    assert httpx.get(old).status_code == 403
    renewed = httpx.post(old, headers={"X-Grant-Method": "GET", **bearer("own")})
    assert renewed.status_code == 200, renewed.text
    assert renewed.json()["expires"] > time.time() + 800
    httpx.put(url(api, "PUT", "a.txt"), content=b"a", headers={"X-Digest": b3(b"a")})
    fresh = renewed.json()["url"].replace("http://127.0.0.1", api)
    assert httpx.get(fresh).content == b"a"
    put_instead = httpx.post(old, headers={"X-Grant-Method": "PUT", **bearer("own")})
    assert put_instead.status_code == 403  # not a PUT


def test_only_the_grants_own_provider_renews_it(api: str) -> None:
    """Whoever else holds the URL (another provider, the client, anyone it leaked to) cannot
    keep it alive past its deadline."""
    old = run_grant(api, "GET", "a.txt", expires_in=-5)
    nobody = httpx.post(old, headers={"X-Grant-Method": "GET"})
    assert nobody.status_code == 401 and "provider's key" in nobody.text
    for holder in ("other", "client"):
        refused = httpx.post(old, headers={"X-Grant-Method": "GET", **bearer(holder)})
        assert refused.status_code == 403, (holder, refused.text)
        assert "only provider 'prov-1'" in refused.text
    forged = run_grant(api, "GET", "a.txt", expires_in=-5).replace("sig=", "sig=0")[:-1]
    assert httpx.post(forged, headers={"X-Grant-Method": "GET", **bearer("own")}
                      ).status_code == 403  # a bad signature, whoever asks
    assert httpx.post(old, headers={"X-Grant-Method": "GET", **bearer("own")}
                      ).status_code == 200
