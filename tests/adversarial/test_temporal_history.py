"""Attacks on what Temporal stores: whoever reads a job's history (the Temporal UI, a
backup of its database, anyone who reached its frontend) finds no secret of the job.

A job's `env` and the presigned grants of its transfer plan travel in its workflow history.
Every client and worker of the network encrypts each payload (infra/payload_codec.py), so
the history as the server keeps it, fetched with a client that has no key, and the server's
own database file hold neither; the network's own client still reads it all.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from infra.payload_codec import PayloadKeyError, decrypt_history
from tests.adversarial.test_storage_integrity import SUBMIT
from tests.e2e.network import Network, network
from workflows.contracts import JobResult, job_workflow_id
from workflows.job import JobWorkflow

ROOT = Path(__file__).resolve().parents[2]
SIG = re.compile(rb"sig=([0-9a-f]{64})")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("adversarial-history"), temporal_server,
                 [("hist-a", "1xH100:80", "1.0", [])]) as n:
        yield n


def serialized(events: object) -> bytes:
    return b"".join(e.SerializeToString() for e in events)  # type: ignore[attr-defined]


def temporal_database(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The session's Temporal dev server's SQLite files (tests/conftest.py), WAL included."""
    files = sorted(tmp_path_factory.getbasetemp().glob("temporal*/temporal.db*"))
    assert files, "the session's Temporal database was not found"
    return b"".join(f.read_bytes() for f in files)


async def test_a_jobs_env_and_grants_are_ciphertext_in_temporal(
    net: Network, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secret = f"tok-{secrets.token_hex(16)}"
    net.put("mallory", "in.txt", b"input bytes\n")
    answer = net.gql(SUBMIT, "mallory", s={
        "name": "secret-env", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": f'test "$API_TOKEN" = {secret} && cp in.txt out.txt',
        "env": {"API_TOKEN": secret}, "inputs": [{"key": "in.txt"}], "outputs": ["out.txt"],
    })["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    job_id = answer["job"]["id"]
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), "mallory", timeout_s=120)
    assert job["state"] == "SUCCEEDED", job  # the job saw its env value intact
    settings = net.stack.settings

    # What anyone with Temporal's frontend and no key gets.
    outsider = await Client.connect(settings.temporal_address)
    raw = await outsider.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
    stored = serialized(raw.events) + raw.to_json().encode()

    # The same history decrypted holds the secret and the grants: so they are there to hide.
    plain = serialized(decrypt_history(raw, settings.payload_keys,
                                      settings.temporal_namespace).events)
    signatures = set(SIG.findall(plain))
    assert secret.encode() in plain
    assert len(signatures) >= 2, "no input and output grants in the decrypted history"

    assert secret.encode() not in stored
    assert not [s for s in signatures if s in stored]
    assert b"binary/encrypted" in stored

    # Nor in the server's own database file, where the job's id is in the clear.
    database = temporal_database(tmp_path_factory)
    assert job_id.encode() in database
    assert secret.encode() not in database
    assert not [s for s in signatures if s in database]

    # The network's own client reads it; another key opens nothing.
    ours = await Client.connect(settings.temporal_address,
                                data_converter=settings.temporal_converter())
    result = await ours.get_workflow_handle(job_workflow_id(job_id), result_type=JobResult).result()
    assert result.state == "SUCCEEDED"
    replayed = await Replayer(workflows=[JobWorkflow], namespace=settings.temporal_namespace,
                              data_converter=settings.temporal_converter()).replay_workflow(raw)
    assert replayed.replay_failure is None
    with pytest.raises(PayloadKeyError, match="not among GPGPU_TEMPORAL_PAYLOAD_KEYS"):
        decrypt_history(raw, [secrets.token_bytes(32)], settings.temporal_namespace)


@pytest.mark.parametrize("service", ["api", "activities.worker"])
def test_a_production_process_without_a_payload_key_refuses_to_start(
    service: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPGPU_")}
    env.update(GPGPU_HOME=str(tmp_path), GPGPU_EVENT_STORE="postgres",
               GPGPU_TEMPORAL_ADDRESS="127.0.0.1:1")  # nothing listens: it must stop first
    done = subprocess.run([sys.executable, "-m", service], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "GPGPU_TEMPORAL_PAYLOAD_KEYS is not set" in done.stderr, done.stderr
    assert not (tmp_path / "temporal-payload.key").exists()  # no key made for one process
