"""Nodes and their queues: registering a node, configuring a queue, and the jobs waiting
in one in the order they will be placed."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

import strawberry

from api import auth
from api.context import I, bounded, run_command, signed_in
from api.cost import MAX_QUEUE_LISTED, WAITING_REASONS_SHOWN
from api.errors import FieldError, refusable
from api.services import Services
from api.waiting import waiting_reasons
from domain.application import Network
from domain.errors import DomainError
from domain.limits import GPUS_PER_CLIENT, PRIORITY_LEVELS
from domain.node import DEFAULT_NODE, check_name, split_queue
from readmodel.queue import EXPECTED_START


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


NodeResult = Annotated[Node | FieldError, strawberry.union(
    "NodeResult", description="The node as it is now, or why the change was refused")]


async def load_nodes(services: Services, node_id: str | None = None) -> list[Node]:
    """Nodes as the read model shows them (one, with `node_id`), each queue with how many
    jobs wait in it."""
    where, params = ("WHERE node_id = ?", (node_id,)) if node_id else ("", ())
    waiting = {
        r["queue"]: r["n"] for r in await services.query(
            "SELECT queue, COUNT(*) AS n FROM jobs WHERE state = 'QUEUED' GROUP BY queue"
        )
    }
    out = []
    for r in await services.query(f"SELECT * FROM nodes {where} ORDER BY node_id", params):
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


async def projected_node(services: Services, node_id: str) -> Node:
    """The node once the read model shows what was just recorded."""
    await services.projected()
    found = await load_nodes(services, node_id)
    if not found:
        raise RuntimeError("the node was recorded but the read model does not show it")
    return found[0]


def node_exists(network: Network, node_id: str) -> bool:
    try:
        network.node(node_id)
    except DomainError:
        return False
    return True


@strawberry.type
class NodeQuery:
    @strawberry.field(description="Nodes, their providers and queues with how many jobs wait",
                      permission_classes=[auth.SignedIn])
    async def nodes(self, info: I) -> list[Node]:
        return await load_nodes(info.context.services)

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
        for n, r in enumerate(line.rows[: max(1, min(limit, MAX_QUEUE_LISTED))]):
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


@strawberry.type
class NodeMutation:
    @strawberry.mutation(
        description="A node joins the network, with a queue `default`; it becomes yours. "
        "Answers the node as it is now",
        permission_classes=[auth.OperatorRole],
    )
    @refusable
    async def register_node(
        self, info: I, node_id: str, region: str, operator: str
    ) -> NodeResult:
        services, caller = info.context.services, signed_in(info)
        network = services.network
        owner = await asyncio.to_thread(services.identity.owner_of, "node", node_id)
        exists = await asyncio.to_thread(node_exists, network, node_id)
        auth.require(auth.can_claim(caller, "operator", owner, exists),
                     f"nodeId: {node_id!r} belongs to another account")
        await run_command(check_name, "nodeId", node_id)
        if owner is None:
            await run_command(services.identity.claim, "node", node_id, caller.user_id)
            services.auth.forget(user_id=caller.user_id)
        await run_command(network.register_node, node_id, region, operator)
        return await projected_node(services, node_id)

    @strawberry.mutation(
        description="Create or change a node's queue: the GPU models it serves (none: any), "
        "its priority levels, a per-client cap on GPUs held (0: none), fair share or FIFO. "
        "Answers the node as it is now",
        permission_classes=[auth.OperatorRole],
    )
    @refusable
    async def configure_queue(
        self, info: I, node_id: str, name: str, gpu_models: list[str],
        priority_levels: int = 1, max_gpus_per_client: int = 0, fair_share: bool = True,
    ) -> NodeResult:
        auth.require(await info.context.allowed(auth.can_operate_node, node_id),
                     f"forbidden: node {node_id!r} is not one of yours")
        bounded("priorityLevels", PRIORITY_LEVELS, priority_levels)
        bounded("maxGpusPerClient", GPUS_PER_CLIENT, max_gpus_per_client)
        services = info.context.services
        await run_command(
            services.network.configure_queue, node_id, name, gpu_models, priority_levels,
            max_gpus_per_client, fair_share,
        )
        return await projected_node(services, node_id)
