"""The Node aggregate: a node's region, its operator, the providers it manages, its queues.

A queue says which GPU models it serves (none listed: any). A job names its
queue as `<node>/<queue>` (a bare name means the default node); allocation only
looks at that node's providers and the queue's GPU models.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.ids import business_id

DEFAULT_NODE = "local"
DEFAULT_QUEUE = "default"
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")


def check_name(what: str, value: str) -> str:
    if not _NAME.fullmatch(value):
        raise DomainError(f"{what}: {value!r} must be 1-63 lower-case letters, digits, . _ -")
    return value


def split_queue(ref: str) -> tuple[str, str]:
    """'gpu-eu/batch' -> ('gpu-eu', 'batch'); a bare name is a queue of the default node."""
    node, _, queue = ref.rpartition("/")
    return (node or DEFAULT_NODE), queue


class Node(Aggregate):
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

    def configure_queue(self, name: str, gpu_models: list[str]) -> None:
        check_name("queue", name)
        models = sorted({m.strip() for m in gpu_models if m.strip()})
        if self.queues.get(name) != {"gpu_models": models}:
            self._queue_configured(name=name, gpu_models=models)

    def serves(self, queue: str, gpu_model: str) -> bool:
        models = self.queues[queue]["gpu_models"]
        return not models or any(m.lower() in gpu_model.lower() for m in models)

    def remove_queue(self, name: str) -> None:
        if name not in self.queues:
            raise DomainError(f"queue: node {self.node_id} has no queue {name!r}")
        self._queue_removed(name=name)

    def admit_provider(self, provider_id: str) -> None:
        if provider_id not in self.provider_ids:
            self._provider_joined(provider_id=provider_id)

    @event("QueueConfigured")
    def _queue_configured(self, name: str, gpu_models: list[str]) -> None:
        self.queues[name] = {"gpu_models": gpu_models}

    @event("QueueRemoved")
    def _queue_removed(self, name: str) -> None:
        del self.queues[name]

    @event("ProviderJoinedNode")
    def _provider_joined(self, provider_id: str) -> None:
        self.provider_ids.append(provider_id)
