"""The storage API records on the job that the client's quota refused a run's output (Job
`OutputRefused`, domain/outputs.py): once per output however often the PUT is repeated, only
for a run's own write-once output grant, only while the run is live, and only where the
declared size would have fit the whole quota. Verification reads it (a run whose missing
output storage refused so does not vote: tests/activities/test_judge_refused.py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI

from api.storage import router
from domain.application import Network
from domain.errors import InvalidTransition
from domain.outputs import output_key, output_path, refused_for_quota
from infra.signing import Grant, grant_url
from infra.storage import FilesystemStore
from ops.launch import free_port
from protocol import digest
from tests.domain.support import PRICE, START, gpu, job_event_types, make_spec
from tests.infra.conftest import SECRET
from tests.support.api_server import serving

QUOTA = 64 * 1024
JOB, CLIENT, PROVIDER = "job-1", "alice", "prov-1"
KEY = output_key(JOB, "out.bin", 1)


def allocated_job() -> Network:
    """A real (in-memory) network with a job that declares out.bin, its attempt 1 on prov-1."""
    network = Network(env={"PERSISTENCE_MODULE": "eventsourcing.popo"})
    network.open_client(CLIENT, START)
    network.submit_job(JOB, CLIENT, make_spec(outputs=["out.bin"]))
    network.admit_job(JOB)
    network.register_provider(PROVIDER, "eu-west", PRICE, [gpu(0)])
    network.allocate(JOB, 1, set(), {PROVIDER})
    return network


@pytest.fixture
def api(tmp_path: Path) -> Iterator[tuple[str, Network, FilesystemStore]]:
    """The storage router alone, over a filesystem store with a 64 KiB quota."""
    store = FilesystemStore(tmp_path, quota_bytes=QUOTA)
    network = allocated_job()
    app = FastAPI()
    app.include_router(router)
    app.state.services = SimpleNamespace(
        settings=SimpleNamespace(signing_secret=SECRET, grant_max_s=900,
                                 api_url="http://127.0.0.1", max_object_bytes=1 << 20),
        store=store, network=network)
    with serving(app, free_port(), lifespan=False) as url:
        yield url, network, store


def put(base: str, key: str, body: bytes, once: bool = True) -> httpx.Response:
    grant = Grant("PUT", CLIENT, key, int(time.time()) + 600, JOB, 1, PROVIDER, 1 << 20, "",
                  once)
    return httpx.put(grant_url(SECRET, base, grant), content=body, timeout=60,
                     headers={"X-Digest": digest.of_bytes(body)})


def refusals(network: Network) -> list[str]:
    return [t for t in job_event_types(network, JOB) if t == "OutputRefused"]


def test_a_put_refused_for_the_quota_is_recorded_once_however_often_it_is_repeated(
    api: tuple[str, Network, FilesystemStore],
) -> None:
    base, network, store = api
    store.put(CLIENT, "filler.bin", [bytes(QUOTA - 1000)])
    for _ in range(5):
        r = put(base, KEY, bytes(8192))
        assert r.status_code == 413, r.text
        assert "storage quota is 65536 bytes" in r.json()["detail"]
    assert refusals(network) == ["OutputRefused"]
    job = network.job(JOB)
    assert job.refused_outputs(1) == {"out.bin"} and job.refused_outputs(2) == set()


def test_only_a_runs_own_output_that_would_fit_the_quota_is_recorded(
    api: tuple[str, Network, FilesystemStore],
) -> None:
    """A checkpoint's (or any key's that is no declared output), a grant that is not
    write-once, and an object larger than the whole quota (a fact of the job, or a
    provider's lie) leave no record; nor does a refusal once the run reported its outputs."""
    base, network, store = api
    store.put(CLIENT, "filler.bin", [bytes(QUOTA - 1000)])
    assert put(base, output_key(JOB, "ckpt/state.bin", 1), bytes(8192)).status_code == 413
    assert put(base, KEY, bytes(8192), once=False).status_code == 413
    store.delete(CLIENT, "filler.bin")
    assert put(base, KEY, bytes(QUOTA + 1)).status_code == 413
    assert refusals(network) == []


def test_the_job_records_a_refusal_only_for_its_live_runs_declared_outputs() -> None:
    network = allocated_job()
    args = (1024, "blake3:" + "ab" * 32, QUOTA, QUOTA - 10, "refused")
    with pytest.raises(InvalidTransition, match="not a declared output"):
        network.record_output_refused(JOB, 1, "other.bin", PROVIDER, *args)
    with pytest.raises(InvalidTransition, match="is not prov-2's live run"):
        network.record_output_refused(JOB, 1, "out.bin", "prov-2", *args)
    network.record_output_refused(JOB, 1, "out.bin", PROVIDER, *args)
    network.record_output_refused(JOB, 1, "out.bin", PROVIDER, *args)
    assert refusals(network) == ["OutputRefused"]
    network.record_step(JOB, "outputs_uploaded", 1, {
        "provider_id": PROVIDER, "manifest": [], "missing": ["out.bin"]})
    with pytest.raises(InvalidTransition, match="live run"):
        network.record_output_refused(JOB, 1, "out.bin", PROVIDER, *args)


def test_which_keys_are_outputs_and_which_refusals_count() -> None:
    assert output_path(JOB, 1, KEY, ["out.bin"]) == "out.bin"
    assert output_path(JOB, 2, KEY, ["out.bin"]) is None  # another run's key
    assert output_path(JOB, 1, output_key(JOB, "x", 1), ["out.bin"]) is None
    assert refused_for_quota(100, 1000, 901) and not refused_for_quota(100, 1000, 900)
    assert not refused_for_quota(1001, 1000, 0)  # past the whole quota: the job's own size
