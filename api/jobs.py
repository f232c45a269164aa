"""Submit a job: validate, pin inputs, record, start its workflow; or refuse, recording nothing.

A submission the client cannot pay for is refused here, before anything is recorded: one
whose escrow its balance cannot hold, or one past the client's live jobs (accounts are
free to open, and each recorded job costs the network a workflow and its history)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from temporalio.client import Client
from temporalio.common import TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from api.services import Services
from domain.errors import DomainError
from domain.ledger import client_account
from domain.node import split_queue
from domain.states import JOB_STATES, TERMINAL_STATES
from infra.job_env import seal_env
from infra.storage import ObjectNotFound, StorageError
from protocol.spec import JobSpec, SpecError, parse_job_spec
from workflows.contracts import JobInput, job_workflow_id
from workflows.job import JobWorkflow
from workflows.search_attributes import job_search_attributes

log = logging.getLogger(__name__)

LIVE_STATES = tuple(s for s in JOB_STATES if s not in TERMINAL_STATES)

# A server that lacked the search attributes (target, namespace) -> when it was found so;
# asked again after a while, since an operator may register them on a running cluster.
_WITHOUT_SEARCH_ATTRIBUTES: dict[tuple[str, str], float] = {}
RECHECK_SEARCH_ATTRIBUTES_S = 300.0


@dataclass
class Submitted:
    job_id: str
    warnings: list[str] = field(default_factory=list)


def queue_refusal(err: DomainError) -> SpecError:
    """A refusal of the spec's queue or priority, under the spec field it is about (a
    refused node is the queue's: "queue: node: no node 'x'")."""
    if err.field in ("queue", "priority"):
        return SpecError([(err.field, err.reason)])
    return SpecError([("queue", str(err))])


async def pin_inputs(services: Services, client_id: str, spec: JobSpec) -> JobSpec:
    """Fix each input's digest and size as storage holds them now (a digest the client
    pinned must be the one storage recorded)."""
    errors: list[tuple[str, str]] = []
    pinned = []
    for n, ref in enumerate(spec.inputs):
        try:
            info = await asyncio.to_thread(services.store.stat, client_id, ref.key)
        except ObjectNotFound:
            errors.append((f"inputs.{n}.key", f"no object {ref.key!r} in your storage"))
            continue
        except StorageError as err:
            errors.append((f"inputs.{n}.key", str(err)))
            continue
        if ref.digest is not None and ref.digest != info.digest:
            errors.append((f"inputs.{n}.digest", f"storage holds {info.digest}"))
        pinned.append(ref.model_copy(update={"digest": info.digest, "size": info.size}))
    if errors:
        raise SpecError(errors)
    return spec.model_copy(update={"inputs": pinned})


async def check_affordable(services: Services, client_id: str, spec: JobSpec) -> None:
    """Refuse a job whose escrow (what admission holds: every run's maximum) the client's
    balance cannot hold now, or one past its live jobs or its submissions a minute.
    Admission checks the balance again when it takes the escrow: another job may spend it
    in between."""
    held = spec.max_cost_micro
    most = services.settings.max_live_jobs_per_client
    rate = services.settings.max_submissions_per_client_per_minute
    since = datetime.fromtimestamp(time.time() - 60, UTC).isoformat()
    # One statement on the read model, which every API process shares: the client's
    # balance (one indexed row), its live jobs (index jobs_client_state: the live rows
    # only, however many jobs it ran before) and those of the last minute (index
    # jobs_client), each counted no further than its cap.
    (row,) = await services.query(
        "SELECT (SELECT balance_micro FROM accounts WHERE name = ?) AS balance,"
        " (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE client_id = ? AND state IN"
        f" ({', '.join('?' * len(LIVE_STATES))}) LIMIT ?) AS live) AS live,"
        " (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE client_id = ? AND submitted_at > ?"
        " LIMIT ?) AS recent) AS recent",
        (client_account(client_id), client_id, *LIVE_STATES, most, client_id, since, rate))
    # Where the read model's balance does not cover the job (or lags behind a grant), the
    # ledger's own account decides, exactly (it loads every transfer the account ever
    # posted: the slow way, for refusals only).
    available = held
    if row["balance"] is None or int(row["balance"]) < held:
        available = await asyncio.to_thread(services.network.available_micro, client_id,
                                             services.settings.starting_balance_micro)
    if held > available:
        runs = spec.verification.runs
        each = f", for each of its {runs} runs" if runs > 1 else ""
        raise SpecError([("balance", f"the job holds up to {held} micro-credits in escrow "
                          f"until it settles (its GPUs for its whole timeout at its max "
                          f"price{each}); your balance is {available} micro-credits")])
    if row["live"] >= most:
        raise SpecError([("jobs", f"at most {most} live jobs per client; wait for some to end")])
    # A job submitted and cancelled at once is refunded in full, yet each one is recorded
    # and starts a workflow: the rate bounds that loop.
    if row["recent"] >= rate:
        raise SpecError([("jobs", f"at most {rate} jobs a minute per client; try again in a "
                          "few seconds")])


async def submit_job(services: Services, client_id: str, data: Any) -> Submitted:
    spec = parse_job_spec(data)
    try:
        await asyncio.to_thread(services.network.check_queue, spec.queue, spec.priority)
    except DomainError as err:
        raise queue_refusal(err) from None
    await check_affordable(services, client_id, spec)
    spec = await pin_inputs(services, client_id, spec)
    job_id = str(uuid.uuid4())
    settings = services.settings
    await asyncio.to_thread(
        services.network.open_client, client_id, settings.starting_balance_micro
    )
    sealed_env = seal_env(services.row_cipher, job_id, spec.env)
    await asyncio.to_thread(services.network.submit_job, job_id, client_id, spec, sealed_env)
    job_input = JobInput(
        job_id=job_id,
        client_id=client_id,
        gpu_heartbeat_timeout_s=settings.gpu_activity_heartbeat_timeout_s,
        gpu_schedule_to_start_timeout_s=settings.gpu_schedule_to_start_timeout_s,
        max_provider_attempts=settings.max_provider_attempts,
        gpu_outage_grace_s=settings.gpu_outage_grace_s,
    )
    node, _ = split_queue(spec.queue)
    attributes = job_search_attributes(client_id, spec.resources.gpu_model, node)
    try:
        await start_job_workflow(services.temporal, job_input, settings.control_task_queue,
                                 attributes)
    except Exception as err:
        # The job is recorded; say plainly that it never started rather than leave it hanging.
        reason = f"could not start the job's workflow: {err}"
        await asyncio.to_thread(services.network.finish_job, job_id, False, reason)
        raise
    # A notice, not a refusal: a provider that fits may still join (and the job then runs).
    never = await asyncio.to_thread(services.network.unsatisfiable, spec)
    return Submitted(job_id, [never] if never else [])


async def start_job_workflow(
    temporal: Client, job_input: JobInput, task_queue: str, attributes: TypedSearchAttributes
) -> None:
    """Start the job's workflow with its search attributes, or without them on a server
    that has none registered (an operator's own cluster): the job runs all the same."""
    server = (temporal.service_client.config.target_host, temporal.namespace)
    lacking_since = _WITHOUT_SEARCH_ATTRIBUTES.get(server)
    if lacking_since is not None and time.monotonic() - lacking_since < RECHECK_SEARCH_ATTRIBUTES_S:
        attributes = TypedSearchAttributes.empty
    workflow_id = job_workflow_id(job_input.job_id)
    try:
        await temporal.start_workflow(JobWorkflow.run, job_input, id=workflow_id,
                                      task_queue=task_queue, search_attributes=attributes)
        _WITHOUT_SEARCH_ATTRIBUTES.pop(server, None)
        return
    except RPCError as err:
        if not attributes or not _lacks_search_attributes(err):
            raise
        if lacking_since is None:
            log.warning(
                "Temporal at %s (namespace %s) has no GPGPU search attributes registered; "
                "jobs run without them (%s). Register them as Keyword: %s", server[0],
                server[1], err.message, ", ".join(pair.key.name for pair in attributes),
            )
        _WITHOUT_SEARCH_ATTRIBUTES[server] = time.monotonic()
    await temporal.start_workflow(JobWorkflow.run, job_input, id=workflow_id,
                                  task_queue=task_queue)


def _lacks_search_attributes(err: RPCError) -> bool:
    # SQL visibility: "Namespace default has no mapping defined for search attribute X";
    # Elasticsearch: "search attribute X is not defined".
    return err.status == RPCStatusCode.INVALID_ARGUMENT and "search attribute" in err.message
