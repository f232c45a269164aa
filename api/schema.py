"""The GraphQL schema: queries, mutations, and live job and provider events.

Every root field names its gate (api/auth.py); ownership is checked in the resolvers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import strawberry
from strawberry.scalars import JSON

from api import auth, multiplex
from api.errors import refused
from api.jobs import queue_refusal, submit_job
from api.limits import LIMIT_EXTENSIONS
from api.services import Services
from api.types import (
    BIG_INT_SCALAR,
    PROVIDER_ID,
    Account,
    ApiKey,
    ApiKeyCreated,
    BigInt,
    Context,
    ExplainResult,
    FieldError,
    I,
    Job,
    JobEvent,
    JobLogChunk,
    JobSubmitted,
    LedgerEntry,
    Node,
    Provider,
    ProviderEarnings,
    ProviderEvent,
    Queue,
    QueuedJob,
    RegisterProviderInput,
    Session,
    SpecRejected,
    SubmitJobResult,
    User,
    explain_spec,
    ledger_entry,
    load_earnings,
    load_job,
    load_providers,
    shown_providers,
)
from domain.application import Network
from domain.errors import DomainError
from domain.identity import ROLES, Caller
from domain.ledger import client_account
from domain.limits import (
    GPU_INDEX,
    GPU_MEMORY_MB,
    GPUS_PER_CLIENT,
    MAX_PROVIDER_GPUS,
    PRICE,
    PRIORITY_LEVELS,
    PROVIDER_GPUS,
    Bound,
)
from domain.node import DEFAULT_NODE, check_name, split_queue
from domain.provider import RUNTIMES, SANDBOXES
from domain.states import TERMINAL_EVENTS, TERMINAL_STATES
from protocol.money import credits_to_micro
from protocol.spec import SpecError, parse_job_spec
from readmodel.telemetry import Heartbeat
from workflows.contracts import job_workflow_id

T = TypeVar("T")
MAX_GRANT_MICRO = 1_000_000 * 1_000_000  # an admin's grant: at most a million credits


def _source_address(info: I) -> str:
    """The address the request came from, as the API's socket saw it (behind a proxy: the
    proxy's, so run the throttle where it sees clients, or one replica per proxy)."""
    request = getattr(info.context, "request", None)
    client = getattr(request, "client", None)
    return str(client.host) if client is not None else ""


async def _run(fn: Callable[..., T], *args: Any) -> T:
    """A domain command in a thread; its refusal becomes a GraphQL error naming the field."""
    try:
        return await asyncio.to_thread(fn, *args)
    except DomainError as err:
        raise refused(err) from None


def _bounded(field: str, bound: Bound, value: Any) -> Any:
    """`value` within its bound (domain/limits.py), or a GraphQL error naming the field."""
    if (why := bound.problem(value)) is not None:
        raise ValueError(f"{field}: {why}")
    return value


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


def _signed_in(info: I) -> Caller:
    caller = info.context.caller
    if caller is None:  # the gates let no one through here anonymously
        raise auth.Denied("unauthenticated: sign in, or send Authorization: Bearer <token>")
    return caller


@strawberry.type
class Query:
    @strawberry.field(
        description="One job: yours, or one assigned to your provider; null otherwise",
        permission_classes=[auth.SignedIn],
    )
    async def job(self, info: I, id: strawberry.ID) -> Job | None:
        return await load_job(info, str(id))

    @strawberry.field(description="The caller's jobs, newest first",
                      permission_classes=[auth.ClientRole])
    async def jobs(self, info: I, limit: int = 50) -> list[Job]:
        limit = max(1, min(limit, 500))
        rows = await info.context.services.query(
            "SELECT * FROM jobs WHERE client_id = ? ORDER BY submitted_at DESC LIMIT ?",
            (info.context.client_id, limit),
        )
        return [Job.from_row(r) for r in rows]

    @strawberry.field(permission_classes=[auth.ClientRole])
    async def account(self, info: I) -> Account:
        client = info.context.client_id
        rows = await info.context.services.query(
            "SELECT a.balance_micro AS b FROM accounts a WHERE a.name = ?",
            (client_account(client),),
        )
        escrow = await info.context.services.query(
            "SELECT COALESCE(SUM(a.balance_micro), 0) AS e FROM accounts a JOIN jobs j"
            " ON a.name = 'escrow:' || j.job_id WHERE j.client_id = ?",
            (client,),
        )
        balance = rows[0]["b"] if rows else info.context.services.settings.starting_balance_micro
        return Account(
            client_id=client, balance_micro=BigInt(balance), escrow_micro=BigInt(escrow[0]["e"])
        )

    @strawberry.field(
        description="The market: every provider's GPUs, status, price and reputation (earnings, "
        "telemetry and which job holds a GPU only for your own)",
        permission_classes=[auth.SignedIn],
    )
    async def providers(self, info: I) -> list[Provider]:
        return await shown_providers(info, await load_providers(info.context.services))

    @strawberry.field(permission_classes=[auth.SignedIn])
    async def provider(self, info: I, provider_id: str) -> Provider | None:
        found = await load_providers(info.context.services, provider_id)
        return (await shown_providers(info, found))[0] if found else None

    @strawberry.field(description="A provider's balance, what it earned and its ledger entries",
                      permission_classes=[auth.ProviderRole])
    async def provider_earnings(
        self, info: I, provider_id: str, limit: int = 100
    ) -> ProviderEarnings:
        await _own_provider(info, provider_id)
        return await load_earnings(info.context.services, provider_id, limit)

    @strawberry.field(description="The caller's ledger: every entry on its account, newest first",
                      permission_classes=[auth.ClientRole])
    async def ledger(self, info: I, limit: int = 100) -> list[LedgerEntry]:
        rows = await info.context.services.query(
            "SELECT * FROM ledger_entries WHERE account = ? ORDER BY seq DESC LIMIT ?",
            (client_account(info.context.client_id), max(1, min(limit, 1000))),
        )
        return [ledger_entry(r) for r in rows]

    @strawberry.field(
        description="Where a job spec could run now, with a price quote, and why not elsewhere",
        permission_classes=[auth.ClientRole],
    )
    async def explain(self, info: I, spec: JSON) -> ExplainResult:
        data = {**spec, "inputs": []} if isinstance(spec, dict) else spec
        try:  # where a job runs does not depend on its inputs
            parsed = parse_job_spec(data)
            return await explain_spec(info.context.services, parsed)
        except SpecError as err:
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in err.errors])
        except DomainError as err:
            refusal = queue_refusal(err)
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in refusal.errors])

    @strawberry.field(description="Nodes, their providers and queues with how many jobs wait",
                      permission_classes=[auth.SignedIn])
    async def nodes(self, info: I) -> list[Node]:
        services = info.context.services
        waiting = {
            r["queue"]: r["n"] for r in await services.query(
                "SELECT queue, COUNT(*) AS n FROM jobs WHERE state = 'QUEUED' GROUP BY queue"
            )
        }
        out = []
        for r in await services.query("SELECT * FROM nodes ORDER BY node_id"):
            queues = json.loads(r["queues"])
            out.append(Node(
                node_id=r["node_id"], region=r["region"], operator=r["operator"],
                provider_ids=json.loads(r["provider_ids"]),
                queues=[Queue(name=q, gpu_models=c["gpu_models"],
                              waiting=waiting.get(f"{r['node_id']}/{q}", 0),
                              priority_levels=c.get("priority_levels", 1),
                              max_gpus_per_client=c.get("max_gpus_per_client", 0),
                              fair_share=c.get("fair_share", True))
                        for q, c in sorted(queues.items())],
            ))
        return out

    @strawberry.field(
        description="Jobs waiting in a queue, in the order they will be placed (the node's "
        "operator)",
        permission_classes=[auth.OperatorRole],
    )
    async def queue(
        self, info: I, name: str = f"{DEFAULT_NODE}/default", limit: int = 100
    ) -> list[QueuedJob]:
        if "/" not in name:
            name = f"{DEFAULT_NODE}/{name}"
        node_id, _ = split_queue(name)
        auth.require(await info.context.allowed(auth.can_operate_node, node_id),
                     f"forbidden: node {node_id!r} is not one of yours")
        caller = info.context.caller
        line = await info.context.line(name)
        out = []
        for n, r in enumerate(line.rows[: max(1, min(limit, 1000))]):
            resources = json.loads(r["spec"])["resources"]
            mine = caller is not None and r["client_id"] == caller.client_id
            out.append(QueuedJob(
                position=line.positions[r["job_id"]], job_id=r["job_id"],
                name=r["name"] if mine or (caller is not None and caller.admin) else "",
                gpus=r["gpus"], gpu_model=resources.get("gpu_model"), priority=r["priority"],
                waiting_since=r["submitted_at"],
                expected_start=line.expected_start.get(r["job_id"]), mine=mine,
                queue=name, rank=n,
            ))
        return out

    @strawberry.field(description="Who you are; null when anonymous or the token is not valid",
                      permission_classes=[auth.Public])
    async def me(self, info: I) -> User | None:
        caller = info.context.caller
        return None if caller is None else User.of(caller)

    @strawberry.field(description="Your API keys (never the keys themselves)",
                      permission_classes=[auth.SignedIn])
    async def api_keys(self, info: I) -> list[ApiKey]:
        keys = await _run(info.context.services.network.api_keys, _signed_in(info).user_id)
        return [ApiKey(id=strawberry.ID(k.id), name=k.name, scopes=k.scopes,
                       created_at=_iso(k.created_at)) for k in keys]


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Validate a job spec, pin its inputs and start the job",
                         permission_classes=[auth.ClientRole])
    async def submit_job(self, info: I, spec: JSON) -> SubmitJobResult:
        try:
            submitted = await submit_job(info.context.services, info.context.client_id, spec)
        except SpecError as err:
            return SpecRejected(errors=[FieldError(field=f, message=m) for f, m in err.errors])
        services = info.context.services
        # Wait (briefly) for the read model to show the job, so a follow-up query finds it.
        deadline = time.monotonic() + 5
        while (job := await load_job(info, submitted.job_id)) is None:
            if time.monotonic() > deadline:
                raise RuntimeError("the job was recorded but the read model is not keeping up")
            await asyncio.wait({services.broadcaster.current()}, timeout=0.2)
        return JobSubmitted(job=job, warnings=submitted.warnings)

    @strawberry.mutation(
        description="Stop a job: its process stops within seconds; it pays for GPU time used",
        permission_classes=[auth.ClientRole],
    )
    async def cancel_job(self, info: I, id: strawberry.ID) -> Job:
        job = await load_job(info, str(id))
        if job is None or not auth.can_cancel_job(info.context.caller, job.client_id):
            raise ValueError(f"id: no job {id} of yours")
        if job.state in TERMINAL_STATES:
            raise ValueError(f"id: job {id} is already {job.state}")
        handle = info.context.services.temporal.get_workflow_handle(job_workflow_id(str(id)))
        await handle.cancel()
        return job

    @strawberry.mutation(
        description="A node joins the network, with a queue `default`; it becomes yours",
        permission_classes=[auth.OperatorRole],
    )
    async def register_node(self, info: I, node_id: str, region: str, operator: str) -> bool:
        services, caller = info.context.services, _signed_in(info)
        network = services.network
        owner = await asyncio.to_thread(network.owner_of, "node", node_id)
        exists = await asyncio.to_thread(_node_exists, network, node_id)
        auth.require(auth.can_claim(caller, "operator", owner, exists),
                     f"nodeId: {node_id!r} belongs to another account")
        await _run(check_name, "nodeId", node_id)
        if owner is None:
            await _run(network.claim, "node", node_id, caller.user_id)
            services.auth.forget(user_id=caller.user_id)
        await _run(network.register_node, node_id, region, operator)
        await services.projected()
        return True

    @strawberry.mutation(
        description="Create or change a node's queue: the GPU models it serves (none: any), "
        "its priority levels, a per-client cap on GPUs held (0: none), fair share or FIFO",
        permission_classes=[auth.OperatorRole],
    )
    async def configure_queue(
        self, info: I, node_id: str, name: str, gpu_models: list[str],
        priority_levels: int = 1, max_gpus_per_client: int = 0, fair_share: bool = True,
    ) -> bool:
        auth.require(await info.context.allowed(auth.can_operate_node, node_id),
                     f"forbidden: node {node_id!r} is not one of yours")
        _bounded("priorityLevels", PRIORITY_LEVELS, priority_levels)
        _bounded("maxGpusPerClient", GPUS_PER_CLIENT, max_gpus_per_client)
        services = info.context.services
        await _run(
            services.network.configure_queue, node_id, name, gpu_models, priority_levels,
            max_gpus_per_client, fair_share,
        )
        await services.projected()
        return True

    @strawberry.mutation(
        description="Take one GPU out of service: it gets no new work; a job on it finishes",
        permission_classes=[auth.ProviderRole],
    )
    async def suspend_gpu(self, info: I, provider_id: str, index: int) -> Provider:
        _bounded("index", GPU_INDEX, index)
        return await _provider_control(info, provider_id, "suspend_gpu", index)

    @strawberry.mutation(description="Put a suspended GPU back in service",
                         permission_classes=[auth.ProviderRole])
    async def resume_gpu(self, info: I, provider_id: str, index: int) -> Provider:
        _bounded("index", GPU_INDEX, index)
        return await _provider_control(info, provider_id, "resume_gpu", index)

    @strawberry.mutation(
        description="A provider's new price in credits per GPU-hour (e.g. '2.5'): new jobs "
        "pay it; running ones keep the price they were allocated at",
        permission_classes=[auth.ProviderRole],
    )
    async def set_price(self, info: I, provider_id: str, price_per_gpu_hour: str) -> Provider:
        await _own_provider(info, provider_id)
        try:
            micro = credits_to_micro(price_per_gpu_hour)
        except ValueError as err:
            raise ValueError(f"pricePerGpuHour: {err}") from None
        if micro <= 0:
            raise ValueError(f"pricePerGpuHour: must be more than 0, got {price_per_gpu_hour}")
        if micro > PRICE.high:
            raise ValueError(f"pricePerGpuHour: must be at most {PRICE.high} micro-credits "
                             f"({PRICE.high // 1_000_000} credits)")
        return await _provider_control(info, provider_id, "set_price", micro)

    @strawberry.mutation(
        description="Admin: add credits to the client account of the user with this email (a "
        "grant from outside the network, in its ledger as one, with who granted it and why); "
        "answers the client's new balance in micro-credits",
        permission_classes=[auth.AdminRole],
    )
    async def grant_credits(
        self, info: I, email: str, amount: str, memo: str = ""
    ) -> BigInt:
        caller, services = _signed_in(info), info.context.services
        try:
            micro = credits_to_micro(amount)
        except ValueError as err:
            raise ValueError(f"amount: {err}") from None
        if not 0 < micro <= MAX_GRANT_MICRO:
            raise ValueError(f"amount: must be more than 0 and at most "
                             f"{MAX_GRANT_MICRO // 1_000_000} credits, got {amount}")
        memo = memo.strip()
        if len(memo) > 200:
            raise ValueError(f"memo: at most 200 characters, got {len(memo)}")
        user = await asyncio.to_thread(services.network.user_by_email, email[:320])
        if user is None or user.client_id is None or "client" not in user.roles:
            raise ValueError(f"email: no client account '{email[:80]}'")
        words = f"granted by {caller.email}" + (f": {memo}" if memo else "")
        # The starting balance the client sees before its first job is theirs: keep it.
        await _run(services.network.open_client, user.client_id,
                   services.settings.starting_balance_micro)
        return BigInt(await _run(services.network.grant, user.client_id, micro,
                                 str(uuid.uuid4()), words))

    @strawberry.mutation(
        description="A provider agent declares its GPUs and price; the provider becomes the "
        "caller's (an agent sends its owner's API key)",
        permission_classes=[auth.ProviderRole],
    )
    async def register_provider(self, info: I, input: RegisterProviderInput) -> Provider:
        errors = []
        if not PROVIDER_ID.match(input.provider_id):
            errors.append("providerId: must be 1-63 letters, digits, '.', '_' or '-'")
        if input.price_per_gpu_hour_micro <= 0:
            errors.append("pricePerGpuHourMicro: must be more than 0")
        elif why := PRICE.problem(input.price_per_gpu_hour_micro):
            errors.append(f"pricePerGpuHourMicro: {why}")
        if not input.gpus:
            errors.append("gpus: a provider declares at least one GPU")
        elif why := PROVIDER_GPUS.problem(len(input.gpus)):
            errors.append(f"gpus: {why}")
        if len({g.index for g in input.gpus}) != len(input.gpus):
            errors.append("gpus: two GPUs have the same index")
        for n, g in enumerate(input.gpus[:MAX_PROVIDER_GPUS]):
            for field, bound, value in ((f"gpus.{n}.index", GPU_INDEX, g.index),
                                        (f"gpus.{n}.memoryMb", GPU_MEMORY_MB, g.memory_mb)):
                if why := bound.problem(value):
                    errors.append(f"{field}: {why}")
        if not input.runtimes or not set(input.runtimes) <= set(RUNTIMES):
            errors.append(f"runtimes: each one of {', '.join(RUNTIMES)}")
        if input.sandbox is not None and input.sandbox not in SANDBOXES:
            errors.append(f"sandbox: one of {', '.join(SANDBOXES)}")
        if errors:
            raise ValueError("; ".join(errors))
        services, caller = info.context.services, _signed_in(info)
        network = services.network
        if not await asyncio.to_thread(_node_exists, network, input.node):
            raise ValueError(f"node: no node {input.node!r}")
        owner = await asyncio.to_thread(network.owner_of, "provider", input.provider_id)
        exists = input.provider_id in await asyncio.to_thread(network.provider_ids)
        auth.require(auth.can_claim(caller, "provider", owner, exists),
                     f"providerId: {input.provider_id!r} belongs to another account")
        if owner is None:
            await _run(network.claim, "provider", input.provider_id, caller.user_id)
            services.auth.forget(user_id=caller.user_id)
        gpus = [{"index": g.index, "model": g.model, "memory_mb": g.memory_mb, "uuid": g.uuid}
                for g in input.gpus]
        await _run(
            network.register_provider,
            input.provider_id, input.region, input.price_per_gpu_hour_micro, gpus, input.runtimes,
            input.node, input.sandbox,
        )
        await services.heartbeats.submit(Heartbeat(input.provider_id, time.time()))
        deadline = time.monotonic() + 5
        while not (found := await load_providers(services, input.provider_id)):
            if time.monotonic() > deadline:
                raise RuntimeError("the provider was recorded but the read model is not keeping up")
            await asyncio.wait({services.broadcaster.current()}, timeout=0.2)
        return found[0]

    @strawberry.mutation(
        description="A provider agent is alive. Its GPU telemetry is kept as samples (the last "
        "few per provider), not as events; ECC or Xid errors mark a GPU degraded",
        permission_classes=[auth.ProviderRole],
    )
    async def provider_heartbeat(
        self, info: I, provider_id: str, telemetry: JSON | None = None
    ) -> bool:
        auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                     f"forbidden: provider {provider_id!r} is not one of yours")
        try:
            await info.context.services.heartbeat(provider_id, telemetry)
        except DomainError as err:
            raise refused(err) from None
        return True

    @strawberry.mutation(
        description="The provider's agent is stopping: it is offline at once (no new work) "
        "until it registers again",
        permission_classes=[auth.ProviderRole],
    )
    async def drain_provider(self, info: I, provider_id: str) -> bool:
        auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                     f"forbidden: provider {provider_id!r} is not one of yours")
        network = info.context.services.network
        try:
            await asyncio.to_thread(network.provider_offline, provider_id,
                                    "draining: its agent is stopping")
        except DomainError as err:
            raise refused(err) from None
        return True

    @strawberry.mutation(
        description="Create an account with the roles you need (client, provider, operator) "
        "and sign in",
        permission_classes=[auth.Public],
    )
    async def sign_up(self, info: I, email: str, password: str, roles: list[str]) -> Session:
        settings = info.context.services.settings
        issued = await _run(info.context.services.network.sign_up, email, password, roles,
                            time.time(), settings.session_ttl_s)
        return await _session(info, issued.token)

    @strawberry.mutation(description="Sign in: a session token for `Authorization: Bearer`",
                         permission_classes=[auth.Public])
    async def sign_in(self, info: I, email: str, password: str) -> Session:
        services = info.context.services
        source = _source_address(info)
        await asyncio.to_thread(services.sign_ins.check, email, source)
        try:
            issued = await asyncio.to_thread(services.network.sign_in, email, password,
                                             time.time(), services.settings.session_ttl_s)
        except DomainError as err:
            if err.field == "password":
                await asyncio.to_thread(services.sign_ins.failed, email, source)
            raise refused(err) from None
        await asyncio.to_thread(services.sign_ins.succeeded, email)
        return await _session(info, issued.token)

    @strawberry.mutation(
        description="Choose a new password (the current one is asked again); every other "
        "session of the account ends, and this answer is a new session",
        permission_classes=[auth.SignedIn],
    )
    async def change_password(
        self, info: I, current_password: str, new_password: str
    ) -> Session:
        caller, services = _signed_in(info), info.context.services
        if caller.via != "session":
            raise auth.Denied("forbidden: change a password from a signed-in session, "
                              "not with an API key")
        source = _source_address(info)
        await asyncio.to_thread(services.sign_ins.check, caller.email, source)
        try:
            issued = await asyncio.to_thread(
                services.network.change_password, caller.user_id, current_password,
                new_password, time.time(), services.settings.session_ttl_s)
        except DomainError as err:
            if err.field == "current_password":
                await asyncio.to_thread(services.sign_ins.failed, caller.email, source)
            raise refused(err) from None
        services.auth.forget(user_id=caller.user_id)
        return await _session(info, issued.token)

    @strawberry.mutation(
        description="Admin: a temporary password for a locked-out account (answered once); "
        "every session of it ends",
        permission_classes=[auth.AdminRole],
    )
    async def reset_password(self, info: I, email: str) -> str:
        services = info.context.services
        temporary = await _run(services.network.reset_password, email, time.time())
        await asyncio.to_thread(services.sign_ins.succeeded, email)
        user = await asyncio.to_thread(services.network.user_by_email, email)
        if user is not None:
            services.auth.forget(user_id=str(user.id))
        return temporary

    @strawberry.mutation(
        description="Take on more roles (client, provider, operator): a client who also "
        "offers GPUs, say. Make a new API key to use them from a program",
        permission_classes=[auth.SignedIn],
    )
    async def add_roles(self, info: I, roles: list[str]) -> User:
        caller, services = _signed_in(info), info.context.services
        view = await _run(services.network.add_roles, caller.user_id, roles)
        services.auth.forget(user_id=caller.user_id)
        return User.of_account(view)

    @strawberry.mutation(
        description="Admin: take a role away from an account (it keeps one at least); its "
        "sessions and API keys stop acting as that role",
        permission_classes=[auth.AdminRole],
    )
    async def revoke_role(self, info: I, email: str, role: str) -> User:
        services = info.context.services
        view = await _run(services.network.revoke_role, email, role)
        services.auth.forget(user_id=view.id)
        return User.of_account(view)

    @strawberry.mutation(
        description="End this session (its token stops working); false for an API key",
        permission_classes=[auth.SignedIn],
    )
    async def sign_out(self, info: I) -> bool:
        caller, services = _signed_in(info), info.context.services
        if caller.via != "session":
            return False
        ended = await _run(services.network.sign_out, caller.credential_id, time.time())
        services.auth.forget(credential_id=caller.credential_id)
        return ended

    @strawberry.mutation(
        description="A new API key for programs and provider agents, acting as some of your "
        "roles (scopes); the key is shown only in this answer",
        permission_classes=[auth.SignedIn],
    )
    async def create_api_key(self, info: I, name: str, scopes: list[str]) -> ApiKeyCreated:
        caller = _signed_in(info)
        auth.require(auth.can_mint_keys(caller),
                     "forbidden: API keys are made from a signed-in session, not with a key")
        allowed = [r for r in ROLES if r in caller.roles]
        issued = await _run(info.context.services.network.create_api_key, caller.user_id,
                            name, scopes, allowed, time.time())
        view = issued.view
        return ApiKeyCreated(id=strawberry.ID(view.id), name=view.name, scopes=view.scopes,
                             key=issued.key, created_at=_iso(view.created_at))

    @strawberry.mutation(description="Revoke one of your API keys: it stops working at once",
                         permission_classes=[auth.SignedIn])
    async def revoke_api_key(self, info: I, id: strawberry.ID) -> bool:
        caller, services = _signed_in(info), info.context.services
        owner = None if caller.admin else caller.user_id
        await _run(services.network.revoke_api_key, owner, str(id), time.time())
        services.auth.forget(credential_id=str(id))
        return True


def _node_exists(network: Network, node_id: str) -> bool:
    try:
        network.node(node_id)
    except DomainError:
        return False
    return True


async def _session(info: I, token: str) -> Session:
    caller = await info.context.services.auth.authenticate(token)
    if caller is None:
        raise RuntimeError("the session was recorded but cannot be read back")
    return Session(token=token, user=User.of(caller))


async def _own_provider(info: I, provider_id: str) -> None:
    """The provider exists (for an admin) and is the caller's own; refused otherwise."""
    caller = info.context.caller
    if caller is not None and caller.admin:
        if not await load_providers(info.context.services, provider_id):
            raise ValueError(f"providerId: no provider {provider_id!r}")
        return
    auth.require(await info.context.allowed(auth.can_manage_provider, provider_id),
                 f"forbidden: provider {provider_id!r} is not one of yours")


async def _provider_control(info: I, provider_id: str, command: str, arg: int) -> Provider:
    """Run one of a provider's own controls and answer with the provider as it is now."""
    await _own_provider(info, provider_id)
    services = info.context.services
    if not await load_providers(services, provider_id):
        raise ValueError(f"providerId: no provider {provider_id!r}")
    await _run(getattr(services.network, command), provider_id, arg)
    await services.projected()
    return (await load_providers(services, provider_id))[0]


MAX_SEQ = 1 << 30  # `after` past this names no event a stream will hold


def check_after(after: int) -> int:
    """`after` as a seq to read past: -1 and 0 both mean "from the first event" (seqs start
    at 1); anything lower, or absurdly high, is refused naming the argument."""
    if after < -1 or after > MAX_SEQ:
        raise ValueError(f"after: must be -1 or 0 (from the first event) or the seq of an "
                         f"event already seen, at most {MAX_SEQ}; got {after}")
    return max(after, 0)


async def finished_rows(
    services: Services, kind: str, key: str, after: int, terminal: tuple[str, ...]
) -> list[dict[str, Any]] | None:
    """For a stream that already holds one of its `terminal` events: what is after `after`
    (maybe nothing: a client reconnecting after the last event); None while it goes on."""
    if not terminal:
        return None
    marks = ", ".join("?" * len(terminal))
    ended = await services.query(
        f"SELECT max(seq) AS last, max(CASE WHEN type IN ({marks}) THEN 1 ELSE 0 END) AS done "
        f"FROM {kind}_events "
        f"WHERE {kind}_id = ?", (*terminal, key))
    if not ended or not ended[0]["done"]:
        return None
    last = check_after(after)
    if last > ended[0]["last"]:
        raise ValueError(f"after: {kind} {key}'s last event is seq "
                         f"{ended[0]['last']}; got {after}")
    return await services.query(
        f"SELECT * FROM {kind}_events WHERE {kind}_id = ? AND seq > ? ORDER BY seq", (key, last))


async def follow_stream(
    services: Services, kind: str, key: str, after: int, terminal: tuple[str, ...] = (),
    still_allowed: Callable[[], Awaitable[bool]] | None = None,
) -> AsyncGenerator[dict[str, Any], None]:
    """Every event of one job's or provider's history after `after`, in order, once each,
    for a subscriber with no websocket outlet (see api/multiplex.py for those).

    Rows the projection pushes are used as they come (the broadcaster keeps the recent
    ones, for a subscriber a few behind); a gap (this replica did not apply that batch,
    or it is long gone) is filled from the view, so a reconnecting subscriber that
    names the last seq it saw gets exactly what it missed. A stream that already holds
    one of its `terminal` events is finished: what is after `after` is sent and the
    stream ends, also when that is nothing (a client reconnecting after the last event).
    """
    sql = f"SELECT * FROM {kind}_events WHERE {kind}_id = ? AND seq > ? ORDER BY seq"
    stream, last = f"{kind}:{key}", check_after(after)
    wake = services.broadcaster.current()
    finished = await finished_rows(services, kind, key, after, terminal)
    if finished is not None:
        for row in finished:
            yield row
        return
    rows = await services.query(sql, (key, last))
    while True:
        for row in rows:
            if row["seq"] != last + 1:
                break  # a gap: read what was missed from the view below
            last = row["seq"]
            yield row
            if row["type"] in terminal:
                return
        # Woken by a batch (with its rows when this process applied it), or every
        # second in case another process runs the projection and no NOTIFY reaches us.
        done, _ = await asyncio.wait({wake}, timeout=1.0)
        if still_allowed is not None and not await still_allowed():
            raise auth.Denied(multiplex.REVOKED)
        pushed = wake.result() if done else None
        wake = services.broadcaster.current()
        kept = services.broadcaster.recent(stream, last)
        if kept is None or (not kept and pushed is None):  # a gap, or news from elsewhere
            rows = await services.query(sql, (key, last))
        else:
            rows = kept


async def live_rows(info: I, source: multiplex.Source, after: int) -> AsyncGenerator[Any, None]:
    """The field's values for `source`'s events after `after`, until a terminal event.

    Over our websocket handler the hub sends them itself (one execution per event for every
    subscriber of the same document) and this yields nothing; elsewhere they are yielded."""
    services, context = info.context.services, info.context
    finished = await finished_rows(services, source.kind, source.key, after, source.terminal)
    if finished is not None:
        for row in finished:
            yield source.value(row)
        return
    outlet = multiplex.OUTLET.get()
    if outlet is not None:
        await services.live.serve(outlet, info, source, check_after(after),
                                  context.still_signed_in, context.token, Context(services))
        return
    rows = follow_stream(services, source.kind, source.key, after, source.terminal,
                         context.still_signed_in)
    async for row in rows:
        yield source.value(row)


def _provider_event(row: dict[str, Any]) -> ProviderEvent:
    return ProviderEvent(seq=row["seq"], provider_id=row["provider_id"], type=row["type"],
                         at=row["at"], data=json.loads(row["data"]))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="Every event of the job after seq `after` (0 or -1: from the first), in "
        "order; ends with the job, at once for a job that already ended",
        permission_classes=[auth.SignedIn],
    )
    async def job_events(
        self, info: I, job_id: strawberry.ID, after: int = 0
    ) -> AsyncGenerator[JobEvent, None]:
        if await load_job(info, str(job_id)) is None:
            raise ValueError(f"jobId: no job {job_id} of yours")
        check_after(after)
        source = multiplex.Source("job", str(job_id), JobEvent.from_row, TERMINAL_EVENTS)
        with info.context.services.subscription_of(info.context.caller):
            async for event in live_rows(info, source, after):
                yield event

    @strawberry.subscription(
        description="The job's output as its runs print it, chunk by chunk after seq `after` "
        "(0: from the first kept); ends once the job has ended and every chunk was sent. "
        "The job's owner only",
        permission_classes=[auth.SignedIn],
    )
    async def job_log(
        self, info: I, job_id: strawberry.ID, after: int = 0
    ) -> AsyncGenerator[JobLogChunk, None]:
        services = info.context.services
        rows = await services.query("SELECT client_id FROM jobs WHERE job_id = ?", (str(job_id),))
        if not rows or not auth.can_read_job_log(info.context.caller, rows[0]["client_id"]):
            raise ValueError(f"jobId: no job {job_id} of yours")
        check_after(after)
        with services.subscription_of(info.context.caller):
            async for row in services.live_logs.follow(
                    services.views, str(job_id), max(after, 0), info.context.still_signed_in):
                yield JobLogChunk.from_row(row)

    @strawberry.subscription(
        description="A provider's status changes, reservations and reputation, after `after` "
        "(its owner and the operators of its nodes)",
        permission_classes=[auth.SignedIn],
    )
    async def provider_events(
        self, info: I, provider_id: str, after: int = 0
    ) -> AsyncGenerator[ProviderEvent, None]:
        services = info.context.services
        nodes = (await info.context.provider_nodes()).get(provider_id, set())
        if not auth.can_watch_provider(info.context.caller, provider_id, nodes):
            raise auth.Denied(f"forbidden: provider {provider_id!r} is not yours or on your node")
        if not await load_providers(services, provider_id):
            raise ValueError(f"providerId: no provider {provider_id!r}")
        check_after(after)
        source = multiplex.Source("provider", provider_id, _provider_event)
        with services.subscription_of(info.context.caller):
            async for event in live_rows(info, source, after):
                yield event


schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    scalar_overrides={BigInt: BIG_INT_SCALAR},  # type: ignore[dict-item]
    extensions=LIMIT_EXTENSIONS,  # size, depth, aliases; parse and validation caches
)
auth.check_every_field_guarded(schema)
