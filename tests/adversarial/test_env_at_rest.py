"""Attacks on the control plane's databases at rest: whoever reads them (a backup, a replica,
a process that reached their files) finds no job's `env`.

A job is submitted with a secret in its `env` and runs: its process sees the value (it
writes the value's sha256 into its output). The event store keeps the job's spec with the
env's names alone and the env sealed for the job (infra/job_env.py), which the control
plane's key opens; the read model keeps the names alone. Every file the control plane keeps
(its event store, read model and the rest of its home, write-ahead logs included), the
session's Temporal database and what the API shows of the job hold the secret nowhere.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from domain.application import Network as Application
from infra.job_env import open_env
from infra.row_cipher import RowCipher
from tests.adversarial.test_temporal_history import temporal_database
from tests.e2e.network import Network, network
from tests.support.graphql import JOB, SUBMIT

# The job's own check of what it was given: the value's sha256, written as its output.
COMMAND = ["python3", "-c", "import hashlib, os; open('out.txt', 'w').write("
           "hashlib.sha256(os.environ['API_TOKEN'].encode()).hexdigest())"]


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("adversarial-env-at-rest"), temporal_server,
                 [("rest-a", "1xH100:80", "1.0", [])]) as n:
        yield n


def control_plane_files(home: Path) -> dict[Path, bytes]:
    """Every file under the control plane's home but the agents' scratch (a provider's
    machine, which the job's env is meant to reach)."""
    return {p: p.read_bytes() for p in home.rglob("*")
            if p.is_file() and "providers" not in p.relative_to(home).parts}


def test_a_jobs_env_reaches_its_run_and_is_in_no_control_plane_database(
    net: Network, tmp_path_factory: pytest.TempPathFactory
) -> None:
    secret = f"tok-secret-{secrets.token_hex(16)}"
    answer = net.gql(SUBMIT, "mallory", s={
        "name": "secret-env-at-rest", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": COMMAND, "env": {"API_TOKEN": secret, "MODE": "fast"},
        "outputs": ["out.txt"],
    })["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    job_id = answer["job"]["id"]
    assert net.wait_job(job_id, ("SUCCEEDED", "FAILED"), "mallory",
                        timeout_s=120)["state"] == "SUCCEEDED"

    # The run saw the value itself.
    shown = net.gql(JOB, "mallory", id=job_id)["job"]
    (out,) = shown["outputs"]
    assert net.get("mallory", out["key"]).decode() == hashlib.sha256(secret.encode()).hexdigest()

    # It is there to hide: the job's event holds it sealed, the control plane's key opens it.
    settings = net.stack.settings
    app = Application(env=settings.eventsourcing_env())
    try:
        job = app.job(job_id)
    finally:
        app.close()
    assert job.spec["env"] == {"API_TOKEN": "", "MODE": ""}
    cipher = RowCipher(settings.payload_keys)
    assert open_env(cipher, job_id, job.spec["env"], job.sealed_env) == {
        "API_TOKEN": secret, "MODE": "fast"}

    # The read model keeps the names alone.
    with sqlite3.connect(settings.views_path, timeout=30) as db:
        (spec,) = db.execute("SELECT spec FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    assert json.loads(spec)["env"] == {"API_TOKEN": "", "MODE": ""}

    # What the API shows of the job: its events, its place in the list.
    listed = net.gql("{ jobs { id name state } }", "mallory")
    assert secret not in json.dumps([shown, listed])

    # The files themselves: the event store and the views among them.
    files = control_plane_files(settings.home)
    assert settings.events_path in files and settings.views_path in files
    assert b"API_TOKEN" in files[settings.events_path] + files.get(
        Path(f"{settings.events_path}-wal"), b"")  # the spec is there, readable
    found = [str(p) for p, data in files.items() if secret.encode() in data]
    assert found == []
    assert secret.encode() not in temporal_database(tmp_path_factory)
