"""Nodes own providers and queues; a job is only placed on its queue's node and GPU classes."""

from __future__ import annotations

import pytest

from domain.application import Network
from domain.errors import DomainError
from protocol.spec import parse_job_spec

H100 = [{"index": 0, "model": "NVIDIA H100 80GB HBM3", "memory_mb": 81559}]
A100 = [{"index": 0, "model": "NVIDIA A100-SXM4-40GB", "memory_mb": 40960}]


def job(app: Network, job_id: str, queue: str, **resources: object) -> None:
    spec = parse_job_spec({"name": "j", "command": "true", "max_price_per_gpu_hour": "9",
                           "timeout": 60, "queue": queue, "resources": resources})
    app.submit_job(job_id, "alice", spec)
    assert app.admit_job(job_id).admitted


def test_queues_place_jobs_on_their_node_and_gpu_classes(app: Network) -> None:
    app.open_client("alice", 10**9)
    app.register_node("eu", "eu-west", "ops@eu")
    app.configure_queue("eu", "h100", ["H100"])
    app.register_provider("eu-a100", "eu-west", 1_000_000, A100, node_id="eu")
    app.register_provider("eu-h100", "eu-west", 2_000_000, H100, node_id="eu")
    app.register_provider("home-h100", "local", 500_000, H100)  # the default node

    online = {"eu-a100", "eu-h100", "home-h100"}
    job(app, "j1", "eu/h100")
    assert app.allocate("j1", 1, set(), online).provider_id == "eu-h100"  # not the cheaper A100
    job(app, "j2", "eu/default")
    assert app.allocate("j2", 1, set(), online).provider_id == "eu-a100"  # any model, cheapest
    job(app, "j3", "default")
    assert app.allocate("j3", 1, set(), online).provider_id == "home-h100"
    job(app, "j4", "eu/h100")
    waiting = app.allocate("j4", 1, set(), online)
    assert waiting.provider_id is None
    assert waiting.rejected == {"eu-h100": "busy", "eu-a100":
                                "no GPUs of the requested model and memory"}


def test_unknown_nodes_and_queues_are_refused(app: Network) -> None:
    with pytest.raises(DomainError, match="node: no node 'mars'"):
        app.check_queue("mars/x")
    with pytest.raises(DomainError, match="queue: node 'local' has no queue 'gpu'"):
        app.check_queue("gpu")
    app.check_queue("default")  # the default node always has its default queue
    with pytest.raises(DomainError, match="node: 'Bad Name' must be"):
        app.register_node("Bad Name", "x", "y")
    with pytest.raises(DomainError, match="node: no node 'nowhere'"):
        app.register_provider("p", "r", 1, A100, node_id="nowhere")
