"""GraphQL types, the request context and the loaders the resolvers share."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, NewType

import strawberry
from strawberry.fastapi import BaseContext
from strawberry.scalars import JSON
from strawberry.types import Info

from api import auth
from api.services import Services
from api.waiting import verifying_reasons
from domain.errors import DomainError
from domain.identity import ROLES, Caller, UserView
from domain.node import DEFAULT_NODE
from domain.reputation import Reputation, reputation
from protocol.money import cost_of_gpu_time, micro_to_credits
from protocol.spec import JobSpec
from readmodel.queue import EXPECTED_START, QueueLine, iso_time, queue_line
from readmodel.telemetry import online_provider_ids, recent_samples

BigInt = NewType("BigInt", int)
INT64 = 2**63


def parse_big_int(value: Any) -> int:
    """A whole number a signed 64-bit integer holds (what the stores hold), or refused."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("BigInt: must be a whole number")
    try:
        number = int(value)
    except ValueError:
        raise ValueError("BigInt: must be a whole number") from None
    if not -INT64 < number < INT64:
        raise ValueError("BigInt: must be within a signed 64-bit integer")
    return number


BIG_INT_SCALAR = strawberry.scalar(
    NewType("BigInt", int),
    name="BigInt",
    serialize=int,
    parse_value=parse_big_int,
    description="An integer beyond GraphQL's 32 bits: money is in micro-credits.",
)

PROVIDER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")

class Context(BaseContext):
    def __init__(self, services: Services, caller: Caller | None = None,
                 token: str | None = None):
        super().__init__()
        self.services = services
        self.caller = caller  # None: anonymous (or a token that is not valid)
        self.token = token  # what named the caller; a subscription checks it again
        self.lines: dict[str, asyncio.Task[QueueLine]] = {}  # per request: queue -> its line
        self._provider_nodes: asyncio.Task[dict[str, set[str]]] | None = None

    async def line(self, queue: str) -> QueueLine:
        """The queue's waiting jobs in order, worked out once per request."""
        if queue not in self.lines:
            self.lines[queue] = asyncio.ensure_future(asyncio.to_thread(
                queue_line, self.services.views, self.services.settings, queue))
        return await self.lines[queue]

    @property
    def client_id(self) -> str:
        """The caller's own client id; refused (auth.Denied) without the client role."""
        return auth.client_of(self.caller)

    async def provider_nodes(self) -> dict[str, set[str]]:
        """Provider id -> the nodes it belongs to, once per request."""
        if self._provider_nodes is None:
            self._provider_nodes = asyncio.ensure_future(_provider_nodes(self.services))
        return await self._provider_nodes

    async def allowed(self, rule: Callable[..., bool], *args: Any) -> bool:
        """auth's `rule` for the caller; when it says no, asked once more past the cache:
        what the caller owns may have changed through another API replica a moment ago."""
        if rule(self.caller, *args):
            return True
        if self.token is None:
            return False
        self.caller = await self.services.auth.authenticate(self.token, fresh=True)
        return rule(self.caller, *args)

    async def still_signed_in(self) -> bool:
        """For a long subscription: does its token still name someone (not revoked)?"""
        if self.token is None:
            return self.caller is None
        return await self.services.auth.authenticate(self.token) is not None


async def _provider_nodes(services: Services) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for r in await services.query("SELECT node_id, provider_ids FROM nodes"):
        for provider_id in json.loads(r["provider_ids"]):
            out.setdefault(provider_id, set()).add(r["node_id"])
    return out


I = Info[Context, None]  # noqa: E741


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    roles: list[str] = strawberry.field(description="client, provider, operator, admin")
    client_id: str | None = strawberry.field(description="your storage space and jobs' owner")
    provider_ids: list[str]
    node_ids: list[str]

    @classmethod
    def of(cls, caller: Caller) -> User:
        """As this credential may act: an API key's scopes narrow the roles."""
        return cls(
            id=strawberry.ID(caller.user_id), email=caller.email,
            roles=[r for r in ROLES if r in caller.roles], client_id=caller.client_id,
            provider_ids=sorted(caller.provider_ids), node_ids=sorted(caller.node_ids),
        )

    @classmethod
    def of_account(cls, view: UserView) -> User:
        """The account itself, every role it holds."""
        return cls(
            id=strawberry.ID(view.id), email=view.email, roles=list(view.roles),
            client_id=view.client_id if "client" in view.roles else None,
            provider_ids=sorted(view.provider_ids), node_ids=sorted(view.node_ids),
        )


@strawberry.type
class Session:
    token: str = strawberry.field(description="send it as Authorization: Bearer <token>")
    user: User


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    scopes: list[str]
    created_at: str


@strawberry.type
class ApiKeyCreated:
    id: strawberry.ID
    name: str
    scopes: list[str]
    key: str = strawberry.field(description="shown only this once: only its hash is kept")
    created_at: str


@strawberry.type
class OutputFile:
    path: str
    key: str
    sha256: str
    size: BigInt


@strawberry.type
class JobEvent:
    seq: int
    job_id: str
    type: str
    at: str
    data: JSON

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobEvent:
        return cls(
            seq=row["seq"], job_id=row["job_id"], type=row["type"], at=row["at"],
            data=json.loads(row["data"]),
        )


EVENTS_SQL = "SELECT * FROM job_events WHERE job_id = ? AND seq > ? ORDER BY seq"


@strawberry.type(description="A piece of a job's output as its run printed it (api/joblog.py)")
class JobLogChunk:
    seq: int = strawberry.field(description="the order in the job's log; resume after it")
    attempt: int = strawberry.field(description="the run that printed it")
    provider_id: str
    at: str
    text: str = strawberry.field(description="the output, not always whole lines")
    skipped_bytes: BigInt = strawberry.field(
        description="output of this run before this chunk that is not shown: passed over "
        "by its provider or trimmed to keep the log within its bound (0: none)")

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobLogChunk:
        return cls(seq=row["seq"], attempt=row["attempt"], provider_id=row["provider_id"],
                   at=iso_time(float(row["at"])), text=row["text"],
                   skipped_bytes=BigInt(row["skipped"]))


@strawberry.type
class ProviderEvent:
    seq: int
    provider_id: str
    type: str
    at: str
    data: JSON


@strawberry.type
class LedgerEntry:
    seq: int
    transfer_id: str
    amount_micro: BigInt
    balance_micro: BigInt
    counterparty: str
    kind: str
    memo: str
    at: str


@strawberry.type
class Queue:
    name: str
    gpu_models: list[str]
    waiting: int
    priority_levels: int = strawberry.field(description="a job's priority is 0 to levels - 1")
    max_gpus_per_client: int = strawberry.field(description="0: no cap")
    fair_share: bool


@strawberry.type
class Node:
    node_id: str
    region: str
    operator: str
    provider_ids: list[str]
    queues: list[Queue]


WAITING_REASONS_SHOWN = 20  # each is a match over the node's providers


@strawberry.type
class QueuedJob:
    position: int
    job_id: str
    name: str
    gpus: int
    gpu_model: str | None
    priority: int
    waiting_since: str
    expected_start: str | None = strawberry.field(description=EXPECTED_START)
    mine: bool
    queue: strawberry.Private[str]
    rank: strawberry.Private[int]  # 0 for the first in line

    @strawberry.field(
        description=f"what it waits for, in words (as Job.waitingFor); for the first "
        f"{WAITING_REASONS_SHOWN} in line, empty further down")
    async def waiting_for(self, info: I) -> list[str]:
        if self.rank >= WAITING_REASONS_SHOWN:
            return []
        line = await info.context.line(self.queue)
        return await waiting_reasons(info.context.services, self.job_id, self.queue, line)


@strawberry.type
class Job:
    id: strawberry.ID
    client_id: str
    name: str
    state: str
    reason: str
    provider_id: str | None
    max_cost_micro: BigInt
    cost_micro: BigInt | None
    submitted_at: str
    updated_at: str
    outputs: list[OutputFile]
    queue: str = strawberry.field(description="<node>/<queue>")
    priority: int

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=strawberry.ID(row["job_id"]), client_id=row["client_id"], name=row["name"],
            state=row["state"], reason=row["reason"], provider_id=row["provider_id"],
            max_cost_micro=row["max_cost_micro"], cost_micro=row["cost_micro"],
            submitted_at=row["submitted_at"], updated_at=row["updated_at"],
            outputs=[OutputFile(**o) for o in json.loads(row["outputs"])],
            queue=row["queue"], priority=row["priority"],
        )

    @strawberry.field(
        description="1 for the next job the scheduler places (priority, then fair share, "
        "then age); null unless QUEUED"
    )
    async def queue_position(self, info: I) -> int | None:
        if self.state != "QUEUED":
            return None
        return (await info.context.line(self.queue)).positions.get(str(self.id))

    @strawberry.field(description=EXPECTED_START)
    async def expected_start(self, info: I) -> str | None:
        if self.state != "QUEUED":
            return None
        return (await info.context.line(self.queue)).expected_start.get(str(self.id))

    @strawberry.field(
        description="While QUEUED, what it waits for, in words: the queue's per-client cap, "
        "every reason each provider of its node cannot take it now, the jobs ahead of it; "
        "while VERIFYING, the step it is on or the further run (check, tie-break, verifier) "
        "waiting for GPUs and why; empty otherwise"
    )
    async def waiting_for(self, info: I) -> list[str]:
        if self.state == "VERIFYING":
            return await verifying_reasons(info.context.services.temporal, str(self.id))
        if self.state != "QUEUED":
            return []
        line = await info.context.line(self.queue)
        return await waiting_reasons(info.context.services, str(self.id), self.queue, line)

    @strawberry.field
    async def events(self, info: I) -> list[JobEvent]:
        rows = await info.context.services.query(EVENTS_SQL, (str(self.id), 0))
        return [JobEvent.from_row(r) for r in rows]


@strawberry.type
class Account:
    client_id: str
    balance_micro: BigInt
    escrow_micro: BigInt


@strawberry.type
class Gpu:
    index: int
    model: str
    memory_mb: int
    busy_job_id: str | None = strawberry.field(
        description="the job holding it; null unless the provider is yours or on your node"
    )
    status: str = strawberry.field(
        description="online (free), busy, suspended, degraded or offline (the provider is)"
    )
    reason: str = strawberry.field(description="why degraded (ECC, Xid errors) or offline")


@strawberry.type
class GpuReading:
    index: int
    utilization_pct: int | None
    memory_used_mb: int | None
    temperature_c: int | None
    power_w: float | None
    ecc_errors: int | None
    xid_errors: int | None


@strawberry.type
class TelemetrySample:
    at: str
    gpus: list[GpuReading]


@strawberry.type
class ReputationDetail:
    """What a provider's score is made of (domain/reputation.py documents the formula)."""

    score: float
    confidence: float = strawberry.field(description="grows with (recent) history, 0 to 1")
    probation: bool = strawberry.field(description="fewer than 5 outcomes: every result checked")
    outcomes: int
    effective_outcomes: float = strawberry.field(description="outcomes weighted by age")
    successes: float
    failures: float
    timeouts: float
    lost: float
    mismatches: float


@strawberry.type
class Provider:
    provider_id: str
    region: str
    status: str = strawberry.field(description="online, busy, offline or lost")
    status_reason: str
    last_heartbeat_at: str | None
    reputation: float = strawberry.field(description="the score now; old outcomes weigh less")
    reputation_detail: ReputationDetail
    earnings_micro: BigInt | None = strawberry.field(
        description="the provider account's balance; null unless the provider is yours"
    )
    price_per_gpu_hour_micro: BigInt
    price_per_gpu_hour: str = strawberry.field(description="credits, e.g. '2.5'")
    runtimes: list[str]
    sandbox: str = strawberry.field(
        description="how its agent isolates jobs: bwrap, docker, or none (started with "
        "--unsafe-no-sandbox: a job there can read the machine's files); empty if not told"
    )
    gpus: list[Gpu]
    # Its owner, its node's operator and admins see its telemetry and which job holds a GPU.
    watched: strawberry.Private[bool] = True

    @strawberry.field(
        description="The last heartbeats' GPU readings, oldest first; empty unless the "
        "provider is yours or on your node"
    )
    async def telemetry(self, info: I, limit: int = 120) -> list[TelemetrySample]:
        if not self.watched:
            return []
        services = info.context.services
        samples = await asyncio.to_thread(
            recent_samples, services.views, self.provider_id, max(1, limit)
        )
        return [
            TelemetrySample(at=iso_time(s.at), gpus=[GpuReading(**vars(r)) for r in s.readings])
            for s in samples
        ]


@strawberry.type
class ProviderEarnings:
    provider_id: str
    balance_micro: BigInt
    earned_micro: BigInt = strawberry.field(
        description="paid for GPU time, ever: verified work, the network's checks, and the "
        "time used by jobs that were cancelled or failed")
    verified_micro: BigInt = strawberry.field(
        description="paid for verified work, ever: runs of jobs whose results were checked "
        "and accepted (the job succeeded)")
    withdrawn_micro: BigInt
    entries: list[LedgerEntry] = strawberry.field(description="newest first")


@strawberry.type
class FieldError:
    field: str
    message: str


@strawberry.type
class JobSubmitted:
    job: Job
    warnings: list[str] = strawberry.field(
        default_factory=list,
        description="What the network saw at submit that the client should know, e.g. that no "
        "provider registered could ever run the spec (too many GPUs, memory, a model or a "
        "region none has): the job is queued all the same and runs if one joins")


@strawberry.type
class SpecRejected:
    errors: list[FieldError]


SubmitJobResult = Annotated[JobSubmitted | SpecRejected, strawberry.union("SubmitJobResult")]


@strawberry.type
class Offer:
    provider_id: str
    gpu_indexes: list[int]
    price_per_gpu_hour_micro: BigInt
    quote_micro: BigInt = strawberry.field(description="the most the job can cost here")
    reputation: float
    expected_start: str = strawberry.field(description="'now': these GPUs are free")


@strawberry.type
class Rejection:
    provider_id: str
    reason: str


@strawberry.type
class GpuVerdict:
    """One GPU of the queue's node, judged for the spec: eligible, or why not."""

    provider_id: str
    index: int
    model: str
    memory_mb: int
    eligible: bool
    reason: str = strawberry.field(description="why not (model, memory, price, reputation, "
                                   "region, offline, busy, suspended, degraded); '' if eligible")
    price_per_gpu_hour_micro: BigInt
    score: float = strawberry.field(description="the documented matching score; lower wins")


@strawberry.type
class Explanation:
    eligible: list[Offer]
    rejected: list[Rejection]
    gpus: list[GpuVerdict] = strawberry.field(
        description="every GPU of the queue's node: eligible first (best first), then the "
        "others, each with its reason"
    )
    held_micro: BigInt = strawberry.field(
        description="what submitting it holds from the balance (escrow): the maximum price "
        "for every GPU for the whole timeout, for each run verification may need; the unused "
        "part comes back")
    unsatisfiable: str | None = strawberry.field(
        default=None,
        description="why no provider registered on the queue's node could ever run the spec "
        "(its GPU count, model, memory, region, runtime), whatever they are doing; null when "
        "one could")


ExplainResult = Annotated[Explanation | SpecRejected, strawberry.union("ExplainResult")]


async def explain_spec(services: Services, spec: JobSpec) -> Explanation:
    online = await asyncio.to_thread(online_provider_ids, services.views, services.settings)
    judged = await asyncio.to_thread(services.network.explain, spec, online)
    per_gpu = await asyncio.to_thread(services.network.explain_gpus, spec, online)
    never = None
    if not any(a.eligible for a in judged):
        never = await asyncio.to_thread(services.network.unsatisfiable, spec)
    hours_ms = spec.resources.gpus * spec.timeout_s * 1000
    return Explanation(
        eligible=[
            Offer(
                provider_id=a.provider_id, gpu_indexes=a.gpu_indexes,
                price_per_gpu_hour_micro=BigInt(a.price_per_gpu_hour_micro),
                quote_micro=BigInt(cost_of_gpu_time(hours_ms, a.price_per_gpu_hour_micro)),
                reputation=a.reputation, expected_start="now",
            )
            for a in judged if a.eligible
        ],
        rejected=[Rejection(provider_id=a.provider_id, reason=a.reason)
                  for a in judged if not a.eligible],
        gpus=[
            GpuVerdict(
                provider_id=g.provider_id, index=g.index, model=g.model, memory_mb=g.memory_mb,
                eligible=g.eligible, reason=g.reason,
                price_per_gpu_hour_micro=BigInt(g.price_per_gpu_hour_micro), score=g.score,
            )
            for g in per_gpu
        ],
        held_micro=BigInt(spec.max_cost_micro),
        unsatisfiable=never,
    )


@strawberry.input
class GpuInput:
    index: int
    model: str
    memory_mb: int
    uuid: str = ""


@strawberry.input
class RegisterProviderInput:
    provider_id: str
    region: str
    price_per_gpu_hour_micro: BigInt
    gpus: list[GpuInput]
    runtimes: list[str] = strawberry.field(default_factory=lambda: ["process"])
    node: str = DEFAULT_NODE
    sandbox: str | None = strawberry.field(
        default=None, description="bwrap, docker or none; an older agent does not say"
    )


async def load_job(info: I, job_id: str) -> Job | None:
    """The job if the caller may see it (auth.can_read_job), else None: no hint it exists."""
    rows = await info.context.services.query("SELECT * FROM jobs WHERE job_id = ?", (job_id,))
    if not rows or not auth.can_read_job(
        info.context.caller, rows[0]["client_id"], rows[0]["provider_id"]
    ):
        return None
    return Job.from_row(rows[0])


async def shown_providers(info: I, providers: list[Provider]) -> list[Provider]:
    """Providers as this caller may see them: the market's catalogue for everyone signed
    in; earnings for the owner; telemetry and who holds each GPU for the owner and the
    operators of its nodes (auth.can_manage_provider, auth.can_watch_provider)."""
    caller = info.context.caller
    nodes = await info.context.provider_nodes()
    out = []
    for p in providers:
        if auth.can_manage_provider(caller, p.provider_id):
            out.append(p)
            continue
        watched = auth.can_watch_provider(caller, p.provider_id, nodes.get(p.provider_id, set()))
        gpus = p.gpus if watched else [replace(g, busy_job_id=None) for g in p.gpus]
        out.append(replace(p, earnings_micro=None, gpus=gpus, watched=watched))
    return out


def gpu_status(
    provider_online: bool, index: int, suspended: set[int], degraded: dict[str, str],
    busy: dict[int, str],
) -> tuple[str, str]:
    """(status, reason) of one GPU, by the precedence of domain.provider.Provider.gpu_status."""
    if not provider_online:
        return "offline", ""
    if index in suspended:
        return "suspended", ""
    if str(index) in degraded:
        return "degraded", degraded[str(index)]
    if index in busy:
        return "busy", ""
    return "online", ""


async def load_providers(services: Services, provider_id: str | None = None) -> list[Provider]:
    where, params = ("WHERE p.provider_id = ?", (provider_id,)) if provider_id else ("", ())
    rows = await services.query(
        "SELECT p.*, l.last_heartbeat_at, a.balance_micro FROM providers p"
        " LEFT JOIN provider_liveness l ON l.provider_id = p.provider_id"
        " LEFT JOIN accounts a ON a.name = 'provider:' || p.provider_id"
        f" {where} ORDER BY p.provider_id",
        params,
    )
    cutoff = time.time() - services.settings.offline_after_s
    out = []
    for r in rows:
        rep = reputation(list(zip(json.loads(r["outcomes"]), json.loads(r["outcome_times"]),
                                  strict=True)), time.time())
        busy = {i: job for job, idx in json.loads(r["reservations"]).items() for i in idx}
        beat = r["last_heartbeat_at"]
        status, reason = r["status"], r["status_reason"]
        if status == "online" and (beat is None or beat < cutoff):
            status, reason = "offline", "no recent heartbeat"
        online = status == "online"
        if online and busy:
            status = "busy"
        suspended, degraded = set(json.loads(r["suspended"])), json.loads(r["degraded"])
        gpus = []
        for g in json.loads(r["gpus"]):
            state, why = gpu_status(online, g["index"], suspended, degraded, busy)
            gpus.append(Gpu(index=g["index"], model=g["model"], memory_mb=g["memory_mb"],
                            busy_job_id=busy.get(g["index"]), status=state,
                            reason=why or (reason if state == "offline" else "")))
        out.append(Provider(
            provider_id=r["provider_id"], region=r["region"], status=status,
            status_reason=reason,
            last_heartbeat_at=None if beat is None else iso_time(beat),
            reputation=rep.score, reputation_detail=_detail(rep),
            earnings_micro=BigInt(r["balance_micro"] or 0),
            price_per_gpu_hour_micro=r["price_micro"],
            price_per_gpu_hour=micro_to_credits(r["price_micro"]),
            runtimes=json.loads(r["runtimes"]), sandbox=r["sandbox"], gpus=gpus,
        ))
    return out


async def load_earnings(services: Services, provider_id: str, limit: int) -> ProviderEarnings:
    account = f"provider:{provider_id}"
    totals = await services.query(
        "SELECT COALESCE(SUM(CASE WHEN kind IN ('payment', 'verification') THEN amount_micro"
        " ELSE 0 END), 0) AS earned, COALESCE(SUM(CASE WHEN kind = 'withdrawal'"
        " THEN -amount_micro ELSE 0 END), 0) AS withdrawn FROM ledger_entries WHERE account = ?",
        (account,),
    )
    # A payment's transfer is pay:<job id>:<provider id> (domain/application.py settle_many).
    verified = await services.query(
        "SELECT COALESCE(SUM(e.amount_micro), 0) AS verified FROM ledger_entries e"
        " JOIN jobs j ON j.job_id = substr(e.transfer_id, 5, length(e.transfer_id) - 5 - ?)"
        " WHERE e.account = ? AND e.kind = 'payment' AND j.state = 'SUCCEEDED'",
        (len(provider_id), account),
    )
    balance = await services.query(
        "SELECT balance_micro FROM accounts WHERE name = ?", (account,)
    )
    rows = await services.query(
        "SELECT * FROM ledger_entries WHERE account = ? ORDER BY seq DESC LIMIT ?",
        (account, max(1, min(limit, 1000))),
    )
    return ProviderEarnings(
        provider_id=provider_id,
        balance_micro=BigInt(balance[0]["balance_micro"] if balance else 0),
        earned_micro=BigInt(totals[0]["earned"]), withdrawn_micro=BigInt(totals[0]["withdrawn"]),
        verified_micro=BigInt(verified[0]["verified"]),
        entries=[ledger_entry(r) for r in rows],
    )


def ledger_entry(r: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        seq=r["seq"], transfer_id=r["transfer_id"], amount_micro=r["amount_micro"],
        balance_micro=r["balance_micro"], counterparty=r["counterparty"], kind=r["kind"],
        memo=r["memo"], at=r["at"],
    )


async def waiting_reasons(
    services: Services, job_id: str, queue: str, line: QueueLine
) -> list[str]:
    """Why a queued job has not started, from what the scheduler weighs: the per-client cap
    (domain.scheduling.plan), where it could run (the network's explain, every reason per
    provider) and its place in the queue's fair order."""
    row = next((r for r in line.rows if r["job_id"] == job_id), None)
    if row is None:
        return []
    reasons: list[str] = []
    cap, held = line.max_gpus_per_client, line.held.get(row["client_id"], 0)
    if cap and held + row["gpus"] > cap:
        reasons.append(f"the queue lets a client hold at most {cap} GPUs at once; the "
                       f"client's jobs hold {held} and this one needs {row['gpus']}: it starts "
                       "when one ends")
    try:
        spec = JobSpec.model_validate(json.loads(row["spec"]))
        online = await asyncio.to_thread(online_provider_ids, services.views, services.settings)
        judged = await asyncio.to_thread(services.network.explain, spec, online)
        never = None  # an eligible provider could run it, so one could ever
        if not any(a.eligible for a in judged):
            never = await asyncio.to_thread(services.network.unsatisfiable, spec)
    except (ValueError, DomainError) as err:
        return [*reasons, f"its spec cannot be matched now: {err}"]
    if never is not None:  # what the providers are, not what they are doing: say that
        reasons.append(never)
    elif not any(a.eligible for a in judged):
        reasons.append("no provider can take it now: " + "; ".join(
            f"{a.provider_id}: {a.reason}" for a in judged))
    ahead = line.positions.get(job_id, 1) - 1
    if ahead:
        reasons.append(f"{ahead} job{'s' if ahead > 1 else ''} ahead of it in the queue")
    if not reasons:
        reasons.append("a GPU fits it and is free: the scheduler places it within seconds")
    return reasons


def _detail(rep: Reputation) -> ReputationDetail:
    w = rep.weighted
    return ReputationDetail(
        score=rep.score, confidence=rep.confidence, probation=rep.probation,
        outcomes=rep.outcomes, effective_outcomes=rep.effective_outcomes,
        successes=w["success"], failures=w["failure"], timeouts=w["timeout"], lost=w["lost"],
        mismatches=w["mismatch"],
    )
