"""The Node aggregate: a node's region, its operator, the providers it manages, its queues.

A queue says which GPU models it serves (none listed: any), how many priority
levels its jobs may ask for (0 is the lowest; higher goes first), how many GPUs
one client may hold at once (0: no cap), and whether waiting clients share the
GPUs fairly (each next GPU to the client holding the fewest) or first come,
first served. A job names its queue as `<node>/<queue>` (a bare name means the
default node); allocation only looks at that node's providers and the queue's
GPU models. `domain/scheduling.py` orders a queue's waiting jobs.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.ids import business_id
from domain.limits import GPUS_PER_CLIENT, PRIORITY_LEVELS

DEFAULT_NODE = "local"
DEFAULT_QUEUE = "default"
MAX_GPU_MODELS = 64  # GPU models one queue lists
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise DomainError(what, f"{value!r} must be 1-63 lower-case letters, digits, . _ -")
    return value


def split_queue(ref: str) -> tuple[str, str]:
    """'gpu-eu/batch' -> ('gpu-eu', 'batch'); a bare name is a queue of the default node."""
    node, _, queue = ref.rpartition("/")
    return (node or DEFAULT_NODE), queue


def queue_config(
    gpu_models: list[str], priority_levels: int, max_gpus_per_client: int, fair_share: bool
) -> dict[str, Any]:
    return {
        "gpu_models": gpu_models, "priority_levels": priority_levels,
        "max_gpus_per_client": max_gpus_per_client, "fair_share": fair_share,
    }


class Node(Aggregate):
    # Lists of strings or numbers, copied flat by the application's aggregate cache.
    FLAT_LISTS = ("provider_ids",)

    # v2: queues carry priority levels, a per-client GPU cap and fair share.
    class_version = 2

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        for config in state.get("queues", {}).values():
            config.update(queue_config(config["gpu_models"], 1, 0, True) | config)

    @staticmethod
    def create_id(node_id: str, **_: Any) -> UUID:
        return business_id("node", node_id)

    @event("NodeRegistered")
    def __init__(self, node_id: str, region: str, operator: str):
        self.node_id = node_id
        self.region = region
        self.operator = operator
        self.queues: dict[str, dict[str, Any]] = {}
        self.provider_ids: list[str] = []

    def configure_queue(
        self,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> None:
        check_name("queue", name)
        PRIORITY_LEVELS.check("priority_levels", priority_levels)
        GPUS_PER_CLIENT.check("max_gpus_per_client", max_gpus_per_client)
        if len(gpu_models) > MAX_GPU_MODELS or any(len(m) > 128 for m in gpu_models):
            raise DomainError("gpu_models", f"at most {MAX_GPU_MODELS} models of at most 128 "
                              "characters each")
        models = sorted({m.strip() for m in gpu_models if m.strip()})
        config = queue_config(models, priority_levels, max_gpus_per_client, fair_share)
        if self.queues.get(name) != config:
            self._queue_configured(
                name=name, gpu_models=models, priority_levels=priority_levels,
                max_gpus_per_client=max_gpus_per_client, fair_share=fair_share,
            )

    def check_priority(self, queue: str, priority: int) -> None:
        levels = self.queues[queue]["priority_levels"]
        if not 0 <= priority < levels:
            raise DomainError(
                "priority", f"{priority} is not a level of queue {self.node_id}/{queue} "
                f"(0 to {levels - 1})"
            )

    def serves(self, queue: str, gpu_model: str) -> bool:
        models = self.queues[queue]["gpu_models"]
        return not models or any(m.lower() in gpu_model.lower() for m in models)

    def remove_queue(self, name: str) -> None:
        if name not in self.queues:
            raise DomainError("queue", f"node {self.node_id} has no queue {name!r}")
        self._queue_removed(name=name)

    def admit_provider(self, provider_id: str) -> None:
        if provider_id not in self.provider_ids:
            self._provider_joined(provider_id=provider_id)

    @event("QueueConfigured")
    def _queue_configured(
        self,
        name: str,
        gpu_models: list[str],
        priority_levels: int = 1,
        max_gpus_per_client: int = 0,
        fair_share: bool = True,
    ) -> None:
        self.queues[name] = queue_config(
            gpu_models, priority_levels, max_gpus_per_client, fair_share
        )

    @event("QueueRemoved")
    def _queue_removed(self, name: str) -> None:
        del self.queues[name]

    @event("ProviderJoinedNode")
    def _provider_joined(self, provider_id: str) -> None:
        self.provider_ids.append(provider_id)
