"""Attacks by an outsider who reached Temporal's frontend (compose keeps it on an internal
network: this is defence in depth), against a real network: real Temporal, API, control
worker and an honest agent.

Without the payload key (infra/payload_codec.py) whatever the outsider gives the control
worker is plaintext, and the codec refuses it before any workflow code or step runs: the
first tests. With the key too (stolen from an operator), the step guard (activities/guard.py)
still refuses every control step that a workflow other than the job's own asks for: the
tests after. Each asserts the refusal and that nothing changed: no job event, no ledger
entry, no reputation change, no assignment handed out or closed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
import typing
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.common import RawValue
from temporalio.converter import DataConverter, PayloadCodec
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from activities.assign import AssignActivities
from activities.canary import CanaryActivities
from activities.control import ControlActivities
from tests.adversarial.outside_workflow import Forgery, OutsideSweep, OutsideWorkflow
from tests.adversarial.rogue import Rogue, State, settled
from tests.e2e.network import Network, network
from tests.support.graphql import CANCEL, SUBMIT, accepted
from workflows.contracts import JobInput, JobResult, job_workflow_id

pytestmark = pytest.mark.e2e

PROVIDER = "out-honest"
# Nothing of the network's own may appear in the history of a workflow the codec refused:
# no step scheduled (activity or local activity), no timer, no child, no signal sent.
RAN = {EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_MARKER_RECORDED,
       EventType.EVENT_TYPE_TIMER_STARTED,
       EventType.EVENT_TYPE_START_CHILD_WORKFLOW_EXECUTION_INITIATED,
       EventType.EVENT_TYPE_SIGNAL_EXTERNAL_WORKFLOW_EXECUTION_INITIATED,
       EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES,
       EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("adversarial-outside")


@pytest.fixture(scope="module")
def net(home: Path, temporal_server: str) -> Iterator[Network]:
    # The honest agent asks 2 credits, above every job's maximum here: jobs wait, QUEUED.
    with network(home, temporal_server, [(PROVIDER, "1xH100:80", "2.0", [])]) as n:
        n.wait_providers_online([PROVIDER])
        yield n


@pytest.fixture
def state(home: Path) -> State:
    return State(home)


def waiting_job(net: Network) -> str:
    """A victim's live job that no provider here takes (0.1 credits an hour): it waits."""
    spec = {"name": "adv-wait", "max_price_per_gpu_hour": "0.1", "timeout": "5m",
            "command": "true", "outputs": []}
    result = net.gql(SUBMIT, "victim", s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    job_id = str(result["job"]["id"])
    net.wait_job(job_id, ("QUEUED",), "victim")
    return job_id


def cause_type(err: BaseException) -> str | None:
    cause: Any = err
    while getattr(cause, "cause", None) is not None and not getattr(cause, "type", None):
        cause = cause.cause  # through ActivityError to the cause
    return getattr(cause, "type", None)


@pytest.mark.parametrize("under", ["the outsider's id", "a job's own id"])
async def test_a_workflow_started_with_plaintext_input_is_refused_and_nothing_is_recorded(
    net: Network, state: State, temporal_server: str, under: str
) -> None:
    # The network's own JobWorkflow, started on the control queue by a client without the
    # payload key: a victim's live job under an id of the outsider's, or a job id never
    # submitted under the id the step guard expects of it (job-<job_id>), which only the
    # codec refuses.
    victim = waiting_job(net)
    before = settled(state, wait_s=0.2)
    job_id = victim if under == "the outsider's id" else f"forged{time.monotonic_ns()}"
    workflow_id = (f"outside-plain-{time.monotonic_ns()}" if under == "the outsider's id"
                   else job_workflow_id(job_id))
    outsider = await Client.connect(temporal_server)
    await outsider.start_workflow(
        "JobWorkflow", JobInput(job_id, net.client_id("victim")), id=workflow_id,
        task_queue=net.stack.env["GPGPU_CONTROL_TASK_QUEUE"],
        execution_timeout=timedelta(seconds=60),
    )
    settings = net.stack.settings  # the network's client reads what its worker wrote
    ours = await Client.connect(settings.temporal_address,
                                data_converter=settings.temporal_converter())
    started = time.monotonic()
    with pytest.raises(WorkflowFailureError) as failed:
        await ours.get_workflow_handle(workflow_id).result()
    assert time.monotonic() - started < 30  # failed at its first task, not at its timeout
    assert cause_type(failed.value) == "PayloadRefused", repr(failed.value.cause)
    assert "in the clear" in str(failed.value.cause)

    history = await outsider.get_workflow_handle(workflow_id).fetch_history()
    kinds = [e.event_type for e in history.events]
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    assert not [EventType.Name(k) for k in kinds if k in RAN]
    assert settled(state, wait_s=0.2) == before
    job = net.gql("query($id: ID!) { job(id: $id) { state } }", "victim", id=victim)["job"]
    assert job["state"] == "QUEUED"


async def copied_input(outsider: Client, job_id: str) -> Payload:
    """A job's input as its history holds it, sealed by the network: what an outsider with
    Temporal's frontend and no key can copy."""
    history = await outsider.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
    (sealed,) = history.events[0].workflow_execution_started_event_attributes.input.payloads
    assert sealed.metadata["encoding"] == b"binary/encrypted"
    return sealed


@pytest.mark.parametrize("under", ["the outsider's id", "another job's own id"])
async def test_a_jobs_sealed_input_copied_into_another_workflow_is_refused(
    net: Network, state: State, temporal_server: str, under: str
) -> None:
    # The outsider reads a victim's live job's history and starts the network's JobWorkflow
    # on the control queue with that job's input, byte for byte (the network's own
    # ciphertext), under an id of its own or under the id the step guard expects of a job
    # never submitted: the payload is sealed for the victim's workflow and opens in no other.
    victim = waiting_job(net)
    outsider = await Client.connect(temporal_server)
    sealed = await copied_input(outsider, victim)
    before = settled(state, wait_s=0.2)
    workflow_id = (f"outside-copy-{time.monotonic_ns()}" if under == "the outsider's id"
                   else job_workflow_id(f"forged{time.monotonic_ns()}"))
    await outsider.start_workflow(
        "JobWorkflow", RawValue(sealed), id=workflow_id,
        task_queue=net.stack.env["GPGPU_CONTROL_TASK_QUEUE"],
        execution_timeout=timedelta(seconds=60),
    )
    started = time.monotonic()
    ours = await with_key(net)
    with pytest.raises(WorkflowFailureError) as failed:
        await ours.get_workflow_handle(workflow_id).result()
    assert time.monotonic() - started < 30  # failed at its first task, not at its timeout
    assert cause_type(failed.value) == "PayloadRefused", repr(failed.value.cause)
    assert f"failed its integrity check in workflow {workflow_id!r}" in str(failed.value.cause)
    assert "sealed for another workflow" in str(failed.value.cause)

    history = await outsider.get_workflow_handle(workflow_id).fetch_history()
    kinds = [e.event_type for e in history.events]
    assert kinds[-1] == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED
    assert not [EventType.Name(k) for k in kinds if k in RAN]
    assert settled(state, wait_s=0.2) == before
    job = net.gql("query($id: ID!) { job(id: $id) { state } }", "victim", id=victim)["job"]
    assert job["state"] == "QUEUED"


async def test_a_finished_jobs_input_started_again_under_its_own_id_changes_nothing(
    net: Network, state: State, temporal_server: str
) -> None:
    # What the binding leaves open: a payload is sealed for a workflow id, not for one run
    # of it, so a finished job's own input opens in a new run under the job's id. Every
    # step refuses a job that has ended (as after a reset): the run ends with the job's own
    # ending and records nothing.
    job_id = waiting_job(net)
    assert accepted(net.gql(CANCEL, "victim", id=job_id)["cancelJob"])["id"] == job_id
    assert net.wait_job(job_id, ("CANCELLED",), "victim", timeout_s=30)["state"] == "CANCELLED"
    outsider = await Client.connect(temporal_server)
    sealed = await copied_input(outsider, job_id)
    ours = await with_key(net)
    await ours.get_workflow_handle(job_workflow_id(job_id)).result()  # its run has ended
    before = settled(state, wait_s=0.2)

    again = await outsider.start_workflow(
        "JobWorkflow", RawValue(sealed), id=job_workflow_id(job_id),
        task_queue=net.stack.env["GPGPU_CONTROL_TASK_QUEUE"],
        execution_timeout=timedelta(seconds=60),
    )
    result = await ours.get_workflow_handle(job_workflow_id(job_id), run_id=again.result_run_id,
                                            result_type=JobResult).result()
    assert (result.job_id, result.state) == (job_id, "CANCELLED")
    history = await outsider.get_workflow_handle(
        job_workflow_id(job_id), run_id=again.result_run_id).fetch_history()
    assert not [e for e in history.events
                if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED]
    assert settled(state, wait_s=0.2) == before


async def test_a_control_step_scheduled_with_plaintext_input_is_refused(
    net: Network, state: State, temporal_server: str
) -> None:
    # A workflow of the outsider's own, on its own queue and worker, scheduling a control
    # step on the network's control queue with a request in the clear.
    job_id = waiting_job(net)
    before = settled(state, wait_s=0.2)
    client = await Client.connect(temporal_server)
    queue = f"outside-plain-step-{time.monotonic_ns()}"
    arg = {"job_id": job_id, "provider_id": PROVIDER, "gpu_ms": 3_600_000,
           "price_per_gpu_hour_micro": 10**9, "pay_provider": True}
    async with Worker(client, task_queue=queue, workflows=[OutsideWorkflow],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        answer = await client.execute_workflow(
            "JobWorkflow", Forgery(net.stack.env["GPGPU_CONTROL_TASK_QUEUE"], "settle_job", arg),
            id=queue, task_queue=queue, execution_timeout=timedelta(seconds=60), result_type=str,
        )

    # The SDK wraps what the codec refused: "Failed decoding arguments", caused by it.
    assert answer.startswith("refused: ApplicationError <- PayloadRefused:"), answer
    assert settled(state, wait_s=0.2) == before


async def with_key(net: Network) -> Client:
    """An outsider's client that holds the network's payload key."""
    settings = net.stack.settings
    return await Client.connect(settings.temporal_address,
                                data_converter=settings.temporal_converter())


@pytest.mark.parametrize("activity, arg", [
    ("record_reputation", {"job_id": "job-fake-1", "provider_id": PROVIDER,
                           "outcome": "success"}),
    ("settle_job", {"job_id": "job-fake-2", "provider_id": PROVIDER, "gpu_ms": 3_600_000,
                    "price_per_gpu_hour_micro": 10**9, "pay_provider": True}),
])
async def test_a_workflow_from_outside_cannot_run_control_steps(
    net: Network, state: State, activity: str, arg: dict[str, Any],
) -> None:
    # A workflow of the outsider's own (even one named JobWorkflow) scheduling the network's
    # control steps on its control queue, its payloads encrypted with the network's key.
    before = settled(state, wait_s=0.2)
    client = await with_key(net)
    queue = f"outside-{activity}"
    async with Worker(client, task_queue=queue, workflows=[OutsideWorkflow],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        answer = await client.execute_workflow(
            "JobWorkflow", Forgery(net.stack.env["GPGPU_CONTROL_TASK_QUEUE"], activity, arg),
            id=f"outside-{activity}-{time.monotonic_ns()}", task_queue=queue,
            execution_timeout=timedelta(seconds=60), result_type=str,
        )

    assert answer.startswith("refused: NotOurWorkflow"), answer
    assert settled(state, wait_s=0.2) == before


def control_steps() -> list[tuple[str, type]]:
    """Every activity the control worker serves (infra/temporal.py), with its request type."""
    found = []
    for cls in (ControlActivities, CanaryActivities, AssignActivities):
        for fn in vars(cls).values():
            defn = activity._Definition.from_callable(fn) if callable(fn) else None
            if defn is not None:
                assert defn.arg_types, defn.name
                found.append((str(defn.name), defn.arg_types[0]))
    return found


def forged(cls: type, job_id: str, provider_id: str) -> dict[str, Any]:
    """A request of type `cls` for this job and provider, every required field filled."""
    hints = typing.get_type_hints(cls)

    def sample(t: Any) -> Any:
        origin = typing.get_origin(t)
        if origin in (list, dict) or t in (list, dict):
            return (origin or t)()
        if origin is not None:  # X | None
            return sample(next(a for a in typing.get_args(t) if a is not type(None)))
        if dataclasses.is_dataclass(t):
            return forged(t, job_id, provider_id)  # type: ignore[arg-type]
        return {str: "x", int: 1, float: 1.0, bool: False}[t]

    named = {"job_id": job_id, "origin_job_id": job_id, "provider_id": provider_id}
    return {f.name: named.get(f.name) or sample(hints[f.name])
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


async def test_every_control_step_refuses_a_workflow_from_outside(
    net: Network, state: State
) -> None:
    # Each of them, the GPU steps and the canary's included, for a victim's live job and the
    # network's honest provider, from a workflow of the outsider's own on the control queue.
    steps = control_steps()
    assert len(steps) >= 20
    job_id = waiting_job(net)
    queue = net.stack.env["GPGPU_CONTROL_TASK_QUEUE"]
    forgeries = [Forgery(queue, name, forged(cls, job_id, PROVIDER)) for name, cls in steps]
    before = settled(state, wait_s=0.2)
    client = await with_key(net)
    own_queue = f"outside-sweep-{time.monotonic_ns()}"
    async with Worker(client, task_queue=own_queue, workflows=[OutsideSweep],
                      workflow_runner=UnsandboxedWorkflowRunner()):
        answers = await client.execute_workflow(
            "OutsideSweep", forgeries, id=own_queue, task_queue=own_queue,
            execution_timeout=timedelta(seconds=120), result_type=list[str],
        )

    assert len(answers) == len(steps)
    assert [a for a in answers if ": refused: NotOurWorkflow" not in a] == []
    assert settled(state, wait_s=0.2) == before


async def test_the_networks_job_workflow_under_another_id_runs_no_control_step(
    net: Network, state: State
) -> None:
    # The network's own JobWorkflow code, started on the control queue under an id of the
    # outsider's with a victim's live job as input: its control steps run as local
    # activities of our worker, and each asks which workflow it serves.
    job_id = waiting_job(net)
    before = settled(state, wait_s=0.2)
    outsider = await with_key(net)
    workflow_id = f"outside-job-{time.monotonic_ns()}"
    await outsider.start_workflow(
        "JobWorkflow", JobInput(job_id, net.client_id("victim")), id=workflow_id,
        task_queue=net.stack.env["GPGPU_CONTROL_TASK_QUEUE"],
        execution_timeout=timedelta(seconds=60),
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await outsider.get_workflow_handle(workflow_id).result()
    assert cause_type(failed.value) == "NotOurWorkflow", repr(failed.value.cause)
    assert settled(state, wait_s=0.2) == before
    job = net.gql("query($id: ID!) { job(id: $id) { state } }", "victim", id=job_id)["job"]
    assert job["state"] == "QUEUED"


class ForgedKeyCodec(PayloadCodec):
    """Labels each payload as the network's ciphertext under a well-formed key id that no
    process of the network holds: the codec's retryable case (a key dropped too soon)."""

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [Payload(metadata={"encoding": b"binary/encrypted",
                                  "encryption-key-id": b"0123456789abcdef"},
                        data=secrets.token_bytes(64)) for _ in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return list(payloads)


@pytest.mark.parametrize("payload", ["in the clear", "under a key id the network lacks"])
async def test_a_signal_the_codec_refuses_does_not_stop_a_victims_job(
    net: Network, temporal_server: str, payload: str
) -> None:
    # The SDK decodes a workflow's whole activation at once: a refusal raised while decoding
    # would fail the activation that holds the signal, and every retry of it, so the job
    # would answer nothing again (not even its cancel). The codec sets such a payload aside
    # and the SDK drops the signal when it cannot read it.
    job_id = waiting_job(net)
    outsider = await Client.connect(temporal_server) if payload == "in the clear" else \
        await Client.connect(temporal_server, data_converter=dataclasses.replace(
            DataConverter.default, payload_codec=ForgedKeyCodec()))
    handle = outsider.get_workflow_handle(job_workflow_id(job_id))
    for name in ("cancel", "anything"):
        await handle.signal(name, "stop it")
    await asyncio.sleep(1)  # the worker takes the activation with the signals in it

    cancelled = accepted(net.gql(CANCEL, "victim", id=job_id)["cancelJob"])
    assert cancelled["id"] == job_id, cancelled
    job = net.wait_job(job_id, ("CANCELLED", "FAILED"), "victim", timeout_s=30)
    assert job["state"] == "CANCELLED", job
    ours = await with_key(net)
    described = await ours.get_workflow_handle(job_workflow_id(job_id)).describe()
    assert described.status != WorkflowExecutionStatus.RUNNING


def first_execute(rogues: list[Rogue], timeout_s: float = 60) -> tuple[Rogue, dict[str, Any]]:
    """The rogue that got the job's first execute step, and that assignment."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for rogue in rogues:
            r = rogue.poll(wait_s=1)
            r.raise_for_status()
            for a in r.json()["assignments"]:
                if a["kind"] == "execute_job":
                    return rogue, dict(a)
    raise AssertionError("no provider got the job's execute step")


async def steps_of(client: Client, workflow_id: str) -> dict[str, list[Any]]:
    """activity id -> [its type, its completed result payload or None], from the history."""
    found: dict[str, list[Any]] = {}
    scheduled: dict[int, str] = {}
    async for e in client.get_workflow_handle(workflow_id).fetch_history_events():
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = e.activity_task_scheduled_event_attributes
            scheduled[e.event_id] = attributes.activity_id
            found[attributes.activity_id] = [attributes.activity_type.name, None]
        elif e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            done = e.activity_task_completed_event_attributes
            (found[scheduled[done.scheduled_event_id]][1],) = done.result.payloads
    return found


async def test_an_earlier_attempts_result_does_not_complete_a_later_attempts_step(
    net: Network, state: State, temporal_server: str
) -> None:
    # The job's first run executes on one provider, which then fails its upload; its second
    # attempt executes on another. An outsider without the key, reading the job's history,
    # completes the pending execute step of attempt 2 (its workflow and activity id, as
    # `describe` shows them) with attempt 1's execute result, byte for byte: the network's
    # own ciphertext, of the very type the step returns. Sealed for attempt 1's step, it
    # fails its tag at attempt 2's: the workflow fails (PayloadRefused, as a terminate
    # would: the sweeper ends the job, row 55) and records nothing of it.
    rogues = [Rogue(net, "fence-a", "fence-1", 300_000), Rogue(net, "fence-b", "fence-2", 400_000)]
    try:
        net.wait_providers_online(["fence-1", "fence-2"])
        spec = {"name": "adv-steps", "max_price_per_gpu_hour": "1", "timeout": "5m",
                "command": "true", "outputs": []}
        result = net.gql(SUBMIT, "victim", s=spec)["submitJob"]
        assert result["__typename"] == "JobSubmitted", result
        job_id, workflow_id = str(result["job"]["id"]), job_workflow_id(str(result["job"]["id"]))

        first, execute = first_execute(rogues)
        r = first.call("complete", execute["assignmentId"], {"result": {
            "exit_code": 0, "timed_out": False, "wall_ms": 500, "gpu_ms": 500, "log_tail": ""}})
        assert r.status_code == 200, r.text
        upload = first.take("upload_outputs")
        r = first.call("fail", upload["assignmentId"],
                       {"message": "disk full", "type": "ProviderError", "nonRetryable": True})
        assert r.status_code == 200, r.text
        second = rogues[1] if first is rogues[0] else rogues[0]
        pending = second.take("execute_job")
        assert second.call("heartbeat", pending["assignmentId"],
                           {"details": {}}).json() == {"cancel": False}

        outsider = await Client.connect(temporal_server)
        described = await outsider.get_workflow_handle(workflow_id).describe()
        (step_id,) = [a.activity_id for a in described.raw_description.pending_activities
                      if a.activity_type.name == "execute_job"]
        steps = await steps_of(outsider, workflow_id)
        done = [(a, result) for a, (kind, result) in steps.items()
                if kind == "execute_job" and result is not None]
        assert len(done) == 1, done
        earlier_id, sealed = done[0]
        # Each step has an id of its own: `<name>:<attempt>:<n>` (workflows/steps.py).
        assert earlier_id.startswith("execute_job:1:") and step_id.startswith("execute_job:2:")
        assert sealed.metadata["encoding"] == b"binary/encrypted"
        before = [e for e in events(net, job_id) if e["type"] == "ExecutionFinished"]

        await outsider.get_async_activity_handle(
            workflow_id=workflow_id, run_id=None, activity_id=step_id).complete(RawValue(sealed))

        ours = await with_key(net)
        with pytest.raises(WorkflowFailureError) as failed:
            await ours.get_workflow_handle(workflow_id).result()
        assert cause_type(failed.value) == "PayloadRefused", repr(failed.value.cause)
        assert (f"failed its integrity check in workflow {workflow_id!r} step {step_id!r}"
                in str(failed.value.cause)), str(failed.value.cause)
        # Nothing of it recorded: attempt 2 did not finish executing, nothing was uploaded
        # or paid, and its provider is handed no upload.
        time.sleep(1)
        finished = [e for e in events(net, job_id) if e["type"] == "ExecutionFinished"]
        assert finished == before and [e["data"]["attempt"] for e in finished] == [1]
        assert not [e for e in events(net, job_id)
                    if e["type"] in ("OutputsUploaded", "JobVerified", "JobSucceeded")]
        assert state.transfers(f"pay:{job_id}:{second.provider_id}") == []
        polled = second.poll(wait_s=1)
        assert [a["kind"] for a in polled.json()["assignments"]] == []
    finally:
        for rogue in rogues:
            rogue.close()


def events(net: Network, job_id: str) -> list[dict[str, Any]]:
    query = "query($id: ID!) { job(id: $id) { events { type data } } }"
    return list(net.gql(query, "victim", id=job_id)["job"]["events"])
