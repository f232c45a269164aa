"""Attacks on the control plane's database: whoever reads the assignment table (a backup, a
replica, a process that reached the database) finds no secret of a running job.

A GPU step's assignment row carries its request (the job's `env`, the presigned grants of
its inputs and outputs) and the step's Temporal task token. While a job with a secret in
its `env` runs, the table read directly holds neither the secret nor any grant's signature
nor a task token in the clear; the agent still gets its steps and runs the job with the
secret intact. The rows open with the control plane's key (so the secrets are there to
hide), and only in their own row.
"""

from __future__ import annotations

import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from infra.row_cipher import RowCipher
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT

SIG = re.compile(r"sig=([0-9a-f]{64})")
GPU_STEPS = {"stage_inputs", "execute_job", "upload_outputs"}


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("adversarial-rows"), temporal_server,
                 [("rows-a", "1xH100:80", "1.0", [])]) as n:
        yield n


def assignment_rows(net: Network) -> list[dict[str, Any]]:
    with sqlite3.connect(net.stack.settings.views_path, timeout=30) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM assignments")]


def test_a_running_jobs_env_grants_and_task_tokens_are_sealed_in_the_assignment_table(
    net: Network,
) -> None:
    secret = f"tok-{secrets.token_hex(16)}"
    net.put("mallory", "in.txt", b"input bytes\n")
    answer = net.gql(SUBMIT, "mallory", s={
        "name": "secret-env-rows", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": f'test "$API_TOKEN" = {secret} && sleep 2 && cp in.txt out.txt',
        "env": {"API_TOKEN": secret}, "inputs": [{"key": "in.txt"}], "outputs": ["out.txt"],
    })["submitJob"]
    assert answer["__typename"] == "JobSubmitted", answer
    job_id = answer["job"]["id"]

    seen: dict[str, dict[str, Any]] = {}  # every row of the job, as read while it ran
    states: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = net.wait_job(job_id, ("SUBMITTED", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED",
                                      "CANCELLED", "VERIFYING"), "mallory")["state"]
        states.add(state)
        for row in assignment_rows(net):  # after the state: a finished step's row stays
            if row["workflow_id"].endswith(job_id):
                seen.setdefault(row["assignment_id"], row)
        if state in ("SUCCEEDED", "FAILED", "CANCELLED"):
            break
        time.sleep(0.1)
    assert state == "SUCCEEDED", state  # the agent got its steps and the job saw its secret
    assert "RUNNING" in states
    assert {r["kind"] for r in seen.values()} == GPU_STEPS, seen

    # The rows open with the control plane's key: the secret and the grants are in them.
    cipher = RowCipher(net.stack.settings.payload_keys)
    opened = {aid: cipher.open("assignments", "request", aid, r["request"]).decode()
              for aid, r in seen.items()}
    signatures = {s for text in opened.values() for s in SIG.findall(text)}
    assert any(secret in text for text in opened.values())
    assert len(signatures) >= 2, "no input and output grants in the opened requests"
    tokens = [cipher.open("assignments", "task_token", aid, r["task_token"])
              for aid, r in seen.items()]

    # As stored, every column of every row: none of it.
    stored = repr([list(r.values()) for r in seen.values()])
    assert secret not in stored
    assert "sig=" not in stored and not [s for s in signatures if s in stored]
    assert "/storage/" not in stored
    assert not [t for t in tokens if t.hex() in stored or repr(t) in stored]
    assert all(r["request"].startswith("s1.") and r["task_token"].startswith("s1.")
               for r in seen.values())
