"""Cancel and terminate from any step, on a real network (issue 13 item 2).

`cancelJob` while the job waits in its queue, while it runs, and while it is verifying
with the network's check waiting for a GPU that no independent provider has: each ends
CANCELLED, refunds what was not used, and releases every GPU, in the domain and in the
read model alike. An operator's `temporal workflow terminate` leaves the job to the
control worker's sweeper, which ends it FAILED with its escrow refunded. (The steps too
short to catch on a real network, admitting, staging, uploading, verifying, settling and
recording reputation, are cancelled in tests/workflows/test_cancel.py.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from temporalio.client import Client

from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.liveness.flow_support import (
    PATIENT,
    balance,
    finish,
    held_gpus,
    ledger,
    submit,
    wait_state,
)
from tests.support.graphql import CANCEL, accepted
from workflows.contracts import job_workflow_id

pytestmark = pytest.mark.e2e

FLEET = [("only", "1xH100:80", "1.0", [])]  # one provider: no check can ever be placed


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    env = {**PATIENT, "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": "600",
           "GPGPU_SWEEP_INTERVAL_S": "1"}
    with network(tmp_path_factory.mktemp("cancel"), temporal_server, FLEET, env) as n:
        yield n


def cancel(net: Network, client: str, job_id: str) -> dict[str, object]:
    accepted(net.gql(CANCEL, client, id=job_id)["cancelJob"])
    record = finish(net, client, job_id, timeout_s=60)
    assert record["state"] == "CANCELLED", record
    assert ledger(net).job(job_id).state == "CANCELLED"  # the domain agrees
    assert job_id not in ledger(net).provider("only").reservations
    return record


def test_cancel_while_queued_running_and_with_a_check_pending(net: Network) -> None:
    start = CREDITS_MICRO  # a new client: granted through the ledger (tests/e2e/network.py)
    # Running: a long job holds the only GPU; a second one waits in the queue behind it.
    running = submit(net, "ann", command="sleep 60", outputs=[])
    wait_state(net, "ann", running, "RUNNING")
    queued = submit(net, "ann", command="true", outputs=[])
    wait_state(net, "ann", queued, "QUEUED")
    cancel(net, "ann", queued)
    assert ledger(net).job(queued).settlement == {
        "charged_micro": 0, "provider_paid_micro": 0, "fee_micro": 0,
        "refunded_micro": ledger(net).job(queued).max_cost_micro,
    }
    cancel(net, "ann", running)
    assert held_gpus(net, ["only"]) == {}
    # Verifying: the run is done, the network's check waits (600 s) for another provider.
    checked = submit(net, "ann", verification={"reproducible": True})
    wait_state(net, "ann", checked, "VERIFYING")
    record = cancel(net, "ann", checked)
    assert held_gpus(net, ["only"]) == {}
    # Paid: the GPU time the runs used; refunded: the rest of every escrow.
    charged = sum(int(ledger(net).job(j).settlement["charged_micro"])  # type: ignore[index]
                  for j in (queued, running, checked))
    assert balance(net, "ann") == start - charged
    assert int(record["costMicro"]) == int(  # type: ignore[call-overload]
        ledger(net).job(checked).settlement["charged_micro"]  # type: ignore[index]
    )


async def test_a_terminated_workflow_is_reconciled_by_the_sweeper(
    net: Network, temporal_server: str
) -> None:
    start = CREDITS_MICRO  # a new client: granted through the ledger (tests/e2e/network.py)
    job_id = submit(net, "bob", command="sleep 60", outputs=[])
    wait_state(net, "bob", job_id, "RUNNING")
    client = await Client.connect(temporal_server)
    await client.get_workflow_handle(job_workflow_id(job_id)).terminate("operator")
    record = finish(net, "bob", job_id, timeout_s=30)
    assert record["state"] == "FAILED"
    assert record["reason"] == "the job's workflow was terminated by an operator"
    assert balance(net, "bob") == start  # the whole escrow back
    assert held_gpus(net, ["only"]) == {}
