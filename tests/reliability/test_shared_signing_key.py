"""The API and a control worker with no file in common (separate homes, as the two
containers of docker-compose.yml) share the storage-grant key only through
GPGPU_SIGNING_KEY: the grants the control worker signs verify at the API, and a job's
transfers go through; a grant signed with another key is refused.

PostgreSQL holds the event log and the read models (production's rule: both keys must be
given). The worker's home links its `storage` to the API's, standing in for the S3 bucket
the two containers share.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from activities.grants import Grants
from infra.settings import Settings
from tests.reliability.harness import Cluster, EventLog
from tests.support.graphql import CANCEL, SUBMIT, accepted
from tests.support.stores import store_settings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]
KEY = secrets.token_hex(32)
PROVIDER = "sig-a"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, temporal_server: str
        ) -> Iterator[tuple[Cluster, Path]]:
    home = tmp_path_factory.mktemp("signing-api")
    worker_home = tmp_path_factory.mktemp("signing-worker")
    (home / "storage").mkdir()
    (worker_home / "storage").symlink_to(home / "storage")
    with store_settings("postgres", home) as settings:
        EventLog(settings)  # the event store's tables, made once before the processes race
        cluster = Cluster.create(home, temporal_server, {"GPGPU_SIGNING_KEY": KEY},
                                 settings=settings)
        try:
            cluster.start_api()
            cluster.start_control_worker("control", home=worker_home)
            cluster.wait_control_workers(["control"])
            cluster.start_provider(PROVIDER, "1xH100:80")
            cluster.wait_providers_online([PROVIDER])
            yield cluster, worker_home
        finally:
            cluster.stop()


def submit(cluster: Cluster, command: str) -> str:
    net = cluster.net()
    answer = net.gql(SUBMIT, "sig", s={
        "name": "signed", "max_price_per_gpu_hour": "2", "timeout": "2m", "command": command,
        "inputs": [{"key": "in.txt"}], "outputs": ["out.txt"],
    })["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    return str(answer["job"]["id"])


def test_grants_the_control_worker_signs_verify_at_the_api(rig: Any) -> None:
    cluster, worker_home = rig
    net = cluster.net()
    net.put("sig", "in.txt", b"signed input\n")
    job_id = submit(cluster, "tr a-z A-Z < in.txt > out.txt")
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), "sig", timeout_s=120)
    assert job["state"] == "SUCCEEDED", (job, cluster.logs())
    outputs = net.gql("query($id: ID!) { job(id: $id) { outputs { path key } } }", "sig",
                      id=job_id)["job"]["outputs"]
    assert [o["path"] for o in outputs] == ["out.txt"]
    assert net.get("sig", outputs[0]["key"]) == b"SIGNED INPUT\n"
    # The key was given, not made: neither home holds a signing key file.
    assert not (cluster.home / "signing.key").exists()
    assert not (worker_home / "signing.key").exists()


def test_a_grant_signed_with_another_key_is_refused(rig: Any) -> None:
    cluster, worker_home = rig
    net = cluster.net()
    stored = net.put("sig", "in.txt", b"signed input\n")
    job_id = submit(cluster, "sleep 30; cp in.txt out.txt")
    net.wait_job(job_id, ("RUNNING",), "sig", timeout_s=60)

    def fetch(key: str) -> httpx.Response:
        # What the control worker's own code signs (activities/grants.py), in its own home.
        settings = Settings(home=worker_home, event_store="postgres", signing_key=key,
                            api_url=cluster.api_urls["api"])
        grants = Grants(settings, net.client_id("sig"), job_id, 1, PROVIDER)
        return httpx.get(grants.get("in.txt", stored["digest"], stored["size"]), timeout=30)

    shared = fetch(KEY)
    assert shared.status_code == 200, shared.text
    assert shared.content == b"signed input\n"
    other = fetch(secrets.token_hex(32))
    assert other.status_code == 403
    assert "signature is not the network's" in other.text
    accepted(net.gql(CANCEL, "sig", id=job_id)["cancelJob"])


@pytest.mark.parametrize("service", ["api", "activities.worker"])
@pytest.mark.parametrize("given", [None, "ab" * 31])
def test_a_production_process_without_a_signing_key_refuses_to_start(
    service: str, given: str | None, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPGPU_")}
    env.update(GPGPU_HOME=str(tmp_path), GPGPU_EVENT_STORE="postgres",
               GPGPU_TEMPORAL_PAYLOAD_KEYS=secrets.token_hex(32),
               GPGPU_TEMPORAL_ADDRESS="127.0.0.1:1")  # nothing listens: it must stop first
    if given is not None:
        env["GPGPU_SIGNING_KEY"] = given
    done = subprocess.run([sys.executable, "-m", service], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    why = "is not set" if given is None else "is not 64 hex digits"
    assert f"GPGPU_SIGNING_KEY {why}" in done.stderr, done.stderr
    assert given is None or given not in done.stderr  # a wrong key is not echoed
    assert not (tmp_path / "signing.key").exists()  # no key made for one process
