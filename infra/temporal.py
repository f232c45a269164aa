"""Temporal client and the control worker's bootstrap."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor

from temporalio.client import Client
from temporalio.service import TLSConfig
from temporalio.worker import Worker

from activities.assign import AssignActivities, watch_pickups
from activities.canary import CanaryActivities
from activities.control import CONTROL_SLOTS, ControlActivities
from activities.sweeper import Sweeper
from domain.application import Network
from infra import tracing
from infra.assignments import AssignmentBoard
from infra.settings import Settings
from readmodel.schema import ViewDB
from workflows.canary import CanaryWorkflow
from workflows.job import JobWorkflow

log = logging.getLogger(__name__)


async def connect(settings: Settings, attempts: int = 60) -> Client:
    """Connect to Temporal, waiting for a server that is still starting. With tracing on,
    the client (and so its workers) carries the trace in workflow and activity headers."""
    for n in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address, namespace=settings.temporal_namespace,
                interceptors=tracing.interceptors(), tls=tls_config(settings),
            )
        except RuntimeError:
            if n == attempts - 1:
                raise
            await asyncio.sleep(0.5)
    raise AssertionError("unreachable")


def tls_config(settings: Settings) -> TLSConfig | bool:
    """mTLS to the frontend when a certificate is configured; plain TCP otherwise (the
    embedded dev server, or an internal network that nothing untrusted can reach)."""
    paths = (settings.temporal_tls_ca, settings.temporal_tls_cert, settings.temporal_tls_key)
    if not any(paths):
        return False
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        raise ValueError("GPGPU_TEMPORAL_TLS_CERT and GPGPU_TEMPORAL_TLS_KEY go together")
    ca, cert, key = (p.read_bytes() if p else None for p in paths)
    return TLSConfig(server_root_ca_cert=ca, client_cert=cert, client_private_key=key,
                     domain=settings.temporal_tls_server_name)


def build_control_activities(settings: Settings) -> ControlActivities:
    network = Network(env=settings.eventsourcing_env())
    return ControlActivities(
        network, ViewDB(settings), settings.object_store(), settings
    )


async def run_control_worker(settings: Settings, stop: asyncio.Event) -> None:
    client = await connect(settings)
    activities = build_control_activities(settings)
    board = AssignmentBoard(activities.views)
    # A slot and a thread for every job waiting in allocate_gpus, and BUSY_SLOTS for the rest.
    with ThreadPoolExecutor(max_workers=CONTROL_SLOTS) as executor:
        worker = Worker(
            client,
            task_queue=settings.control_task_queue,
            workflows=[JobWorkflow, CanaryWorkflow],
            activities=activities.all() + CanaryActivities(
                activities.network, activities.views, activities.store, settings
            ).all() + AssignActivities(board).all(),
            activity_executor=executor,
            max_concurrent_activities=CONTROL_SLOTS,
            **tracing.worker_options(),
        )
        sweeper = Sweeper(activities.network, activities.views, client,
                          settings.protocol_fee_bps, settings.sweep_interval_s)
        async with worker:
            log.info("control worker serving task queue %r", settings.control_task_queue)
            sweeping = asyncio.create_task(sweeper.run(stop))
            watch = asyncio.create_task(watch_pickups(client, board, stop))
            await stop.wait()
            await sweeping
            await watch
