"""kill -9 the provider of a job that checkpoints: the next provider resumes where it was."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from domain.application import Network as DomainNetwork
from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.support.graphql import SUBMIT
from workflows.contracts import job_workflow_id
from workflows.job import JobWorkflow

pytestmark = pytest.mark.e2e


# Counts to 12, a step a second; each step replaces checkpoint/step.txt whole (a '.' name,
# then a rename), and a start reads it back.
COUNTER = (
    'd="$GPGPU_CHECKPOINT_DIR"; start=$(cat "$d/step.txt" 2>/dev/null || echo 0); i=$start; '
    'echo "starting at $start"; '
    'while [ "$i" -lt 12 ]; do i=$((i+1)); echo "step $i"; '
    'echo "$i" > "$d/.step.tmp"; mv "$d/.step.tmp" "$d/step.txt"; sleep 1; done; '
    'echo "resumed from $start, finished at $i" > result.txt'
)


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("checkpoint")
    with network(home, temporal_server, [
        ("ckpt-a", "1xH100:80", "1.0", []),
        ("ckpt-b", "1xH100:80", "2.0", []),
    ], extra_env={"GPGPU_CHECKPOINT_INTERVAL_S": "0.5"}) as n:
        yield n


def checkpoint_step(
    net: Network, client: str, job_id: str, attempt: int = 1
) -> tuple[int, dict[str, Any]]:
    """The step in the last complete checkpoint of this attempt in storage (0: none yet)."""
    try:
        manifest = json.loads(net.get(client, f"jobs/{job_id}/checkpoint/{attempt}/manifest.json"))
    except httpx.HTTPStatusError:
        return 0, {}
    files = {f["path"]: f for f in manifest["files"]}
    if "step.txt" not in files:
        return 0, manifest
    return int(net.get(client, files["step.txt"]["key"])), manifest


def test_a_job_resumes_from_its_checkpoint_on_another_provider(net: Network) -> None:
    client = "ivy"
    body = {
        "name": "counter", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": COUNTER, "outputs": ["result.txt"],
    }
    job_id = net.gql(SUBMIT, client, s=body)["submitJob"]["job"]["id"]
    running = net.wait_job(job_id, ("RUNNING",), client=client, timeout_s=60)
    assert running["providerId"] == "ckpt-a"  # the cheaper one

    # Wait until the provider has uploaded a checkpoint a few steps in, then kill it.
    deadline = time.monotonic() + 30
    step, manifest = checkpoint_step(net, client, job_id)
    while step < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
        step, manifest = checkpoint_step(net, client, job_id)
    assert step >= 3, manifest
    assert manifest["attempt"] == 1
    victim = next(c for c in net.stack.children if c.name == "ckpt-a")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()

    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=120)
    assert job["state"] == "SUCCEEDED", job
    assert job["providerId"] == "ckpt-b"

    # The output says where the second run started: from the checkpoint, not from 0.
    outputs = net.gql("query($id: ID!) { job(id: $id) { outputs { path key } } }", client,
                      id=job_id)["job"]["outputs"]
    result = net.get(client, outputs[0]["key"]).decode()
    found = re.fullmatch(r"resumed from (\d+), finished at 12\n", result)
    assert found, result
    assert int(found.group(1)) >= step > 0

    events = net.gql("query($id: ID!) { job(id: $id) { events { type data } } }", client,
                     id=job_id)["job"]["events"]
    types = [e["type"] for e in events]
    assert [e["data"]["provider_id"] for e in events if e["type"] == "GpusAllocated"] == [
        "ckpt-a", "ckpt-b"
    ]
    assert next(e for e in events if e["type"] == "ProviderLost")["data"]["provider_id"] == "ckpt-a"
    assert types.count("JobSettled") == 1
    finished = [e["data"] for e in events if e["type"] == "ExecutionFinished"]
    assert len(finished) == 1 and finished[0]["exit_code"] == 0
    assert f"starting at {found.group(1)}" in finished[0]["log_tail"]
    assert "gpgpu: started from the checkpoint of attempt 1 (1 file, " in finished[0]["log_tail"]

    # Its checkpoint has done its work: it leaves the client's storage; the output stays.
    def stored() -> list[str]:
        r = net.http.get(f"/storage/{net.client_id(client)}", params={"prefix": f"jobs/{job_id}/"},
                         headers=net.headers(client))
        r.raise_for_status()
        return sorted(o["key"] for o in r.json())

    deadline = time.monotonic() + 15  # deleted just after the job's end is recorded
    while any("checkpoint" in key for key in stored()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stored() == [outputs[0]["key"]]

    # Charged once, paid to the provider that finished; the lost one gets nothing.
    store = DomainNetwork(env=net.stack.settings.eventsourcing_env())
    settled = next(e["data"] for e in events if e["type"] == "JobSettled")
    assert store.balance("provider:ckpt-a") == 0
    assert store.balance("provider:ckpt-b") == settled["provider_paid_micro"] > 0
    start = CREDITS_MICRO
    assert store.balance(f"client:{net.client_id(client)}") == start - settled["charged_micro"]
    assert store.balance(f"escrow:{job_id}") == 0

    # The history, with its lost provider and its resumed run, replays against today's code.
    async def replay() -> None:
        temporal = await Client.connect(net.stack.settings.temporal_address)
        history = await temporal.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
        result = await Replayer(
            workflows=[JobWorkflow], namespace=net.stack.settings.temporal_namespace,
            data_converter=net.stack.settings.temporal_converter(),
        ).replay_workflow(history)
        assert result.replay_failure is None

    asyncio.run(replay())


def test_a_failed_job_keeps_its_checkpoint_to_start_again_from(net: Network) -> None:
    client = "ivy"
    body = {
        "name": "fails", "max_price_per_gpu_hour": "3", "timeout": "2m",
        "command": 'echo 5 > "$GPGPU_CHECKPOINT_DIR/step.txt"; sleep 2; exit 3',
    }
    job_id = net.gql(SUBMIT, client, s=body)["submitJob"]["job"]["id"]
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), client=client, timeout_s=90)
    assert job["state"] == "FAILED", job
    time.sleep(1)  # as long as a success's checkpoint would have had to go
    step, manifest = checkpoint_step(net, client, job_id)
    assert step == 5, manifest
