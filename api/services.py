"""What the API process holds: the application, the read model, storage, Temporal, the
projection runner and the subscribers' wake-ups (readmodel/live.py), and the providers'
heartbeats: their ingest and the liveness monitor."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from temporalio.client import Client

from api.auth import Authenticator, SignInThrottle, SignUpThrottle
from api.hashing import PasswordSlots
from api.joblog import LiveLogs
from api.multiplex import Hub
from domain.app_identity import Identity
from domain.application import Network
from domain.errors import DomainError, UnknownProvider
from domain.identity import Caller
from infra.db import PostgresChanges, SqliteChanges
from infra.row_cipher import RowCipher
from infra.settings import Settings
from infra.storage import ObjectStore
from readmodel.live import Broadcaster, PostgresListener, ProjectionThread
from readmodel.projector import Projector
from readmodel.schema import ViewDB
from readmodel.telemetry import (
    HealthWatch,
    Heartbeat,
    degraded_gpus,
    ingest_heartbeats,
    liveness_changes,
    liveness_rows,
    parse_readings,
)

log = logging.getLogger(__name__)


class HeartbeatIngest:
    """Gathers the heartbeats that arrive together and writes them as one batch.

    A request waits for its batch to be written (so an answered heartbeat is
    recorded); while one batch is written the next one gathers, so the batch grows
    with the load and the database sees a few statements per batch, not per beat.
    GPU health changes seen in a batch go to the domain (only changes: `HealthWatch`).
    """

    def __init__(self, views: ViewDB, network: Network, health: HealthWatch):
        self.views, self.network, self.health = views, network, health
        self._pending: list[tuple[Heartbeat, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, beat: Heartbeat) -> None:
        done = asyncio.get_running_loop().create_future()
        self._pending.append((beat, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        await done

    async def _write_all(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await asyncio.to_thread(self._write, [beat for beat, _ in batch])
            except Exception:
                # One bad beat must not cost the others theirs: the batch's transaction was
                # rolled back whole, so each beat is written again on its own.
                log.warning("writing %d heartbeats together failed; writing each alone",
                            len(batch))
                for beat, done in batch:
                    await self._write_one(beat, done)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _write_one(self, beat: Heartbeat, done: asyncio.Future[None]) -> None:
        try:
            await asyncio.to_thread(self._write, [beat])
        except Exception as err:
            log.warning("heartbeat of %s refused: %s", beat.provider_id, err)
            if not done.done():
                done.set_exception(ValueError(
                    f"telemetry: the heartbeat of {beat.provider_id!r} was refused: {err}"
                ))
        else:
            if not done.done():
                done.set_result(None)

    def _write(self, batch: list[Heartbeat]) -> None:
        ingest_heartbeats(self.views, batch)
        for change in self.health.observe(batch):
            try:
                self.network.report_gpu_health(
                    change.provider_id, change.index, change.healthy, change.reason
                )
            except DomainError as err:  # e.g. a reading for a GPU the provider never declared
                log.warning("GPU health of %s: %s", change.provider_id, err)
                self.health.ignore(change.provider_id, change.index)


class ProviderMonitor(threading.Thread):
    """Records a provider's going offline (missed heartbeats) and coming back, once each.

    Twice per heartbeat interval it compares the read model's provider status with
    the last heartbeats (`readmodel.telemetry.liveness_changes`) and tells the domain of
    the differences, and refreshes what `HealthWatch` knows. Safe in several API
    replicas at once: the domain records a change only once (the second replica's
    save conflicts, reloads, and finds nothing left to do).
    """

    def __init__(self, settings: Settings, views: ViewDB, network: Network, health: HealthWatch):
        super().__init__(name="provider-monitor", daemon=True)
        self.settings, self.views, self.network, self.health = settings, views, network, health
        self.stopping = threading.Event()
        self.tick_s = min(1.0, max(0.05, settings.provider_heartbeat_interval_s / 2))
        self.started_at = time.time()

    def run(self) -> None:
        while not self.stopping.wait(self.tick_s):
            try:
                self.check()
            except Exception:
                log.exception("provider liveness check failed; retrying")

    def check(self) -> None:
        now, after = time.time(), self.settings.offline_after_s
        self.health.refresh(degraded_gpus(self.views))
        rows = liveness_rows(self.views, now, after)
        changes = liveness_changes(
            rows, now, after, self.settings.provider_heartbeat_interval_s, self.started_at
        )
        for change in changes:
            try:
                if change.online:
                    self.network.provider_online(change.provider_id)
                else:
                    self.network.provider_offline(change.provider_id, change.reason)
            except DomainError as err:
                log.warning("liveness of %s: %s", change.provider_id, err)


Worker = ProjectionThread | PostgresListener | ProviderMonitor


@dataclass
class Services:
    settings: Settings
    network: Network
    views: ViewDB
    store: ObjectStore
    temporal: Client
    broadcaster: Broadcaster
    projector: Projector
    heartbeats: HeartbeatIngest
    threads: list[Worker] = field(default_factory=list)
    # Heartbeats and the monitor use a connection of their own, so that a burst of
    # heartbeats never queues the read queries behind it (but the memory store's
    # in-memory views exist on one connection only).
    telemetry_views: ViewDB | None = None
    # Providers once seen in the read model (they are never removed): a heartbeat costs no query.
    known_providers: set[str] = field(default_factory=set)
    # Accounts, sessions, API keys and who owns what: an application of its own over the
    # Network's store (domain/app_identity.py).
    identity: Identity = field(init=False)
    # Bearer tokens to callers, remembered for `auth_cache_ttl_s` (api/auth.py).
    auth: Authenticator = field(init=False)
    # Wrong passwords per email: guessing is refused after a few (api/auth.py).
    sign_ins: SignInThrottle = field(init=False)
    # Sign-ups per source address, and password hashes at once (api/auth.py, api/hashing.py).
    sign_ups: SignUpThrottle = field(init=False)
    password_slots: PasswordSlots = field(init=False)
    # Live subscriptions per account (user id), in this process.
    open_subscriptions: dict[str, int] = field(default_factory=dict)
    subscriptions_open: int = 0  # ... and of every account together
    # Jobs' live logs: chunks from the providers, followed by subscribers (api/joblog.py).
    live_logs: LiveLogs = field(init=False)
    # Live subscriptions by stream, sharing each event's execution (api/multiplex.py).
    live: Hub = field(init=False)
    # Seals a submitted job's env before it is recorded (infra/job_env.py).
    row_cipher: RowCipher = field(init=False)

    def __post_init__(self) -> None:
        self.live = Hub(self.query, self.broadcaster.recent,
                        lambda: asyncio.to_thread(self.projector.position))
        self.broadcaster.listeners.append(self.live.advanced)
        self.identity = Identity.beside(self.network)
        self.auth = Authenticator(self.identity, self.settings.auth_cache_ttl_s)
        self.live_logs = LiveLogs(self.telemetry_views or self.views)
        self.row_cipher = RowCipher(self.settings.payload_keys)
        self.sign_ins = SignInThrottle(
            self.telemetry_views or self.views,
            max_source_failures=self.settings.sign_in_max_failures_per_address)
        self.sign_ups = SignUpThrottle(self.telemetry_views or self.views,
                                       self.settings.sign_ups_per_address)
        self.password_slots = PasswordSlots(self.settings.password_hash_concurrency,
                                            self.settings.password_hash_wait_s)

    @classmethod
    async def start(cls, settings: Settings, temporal: Client) -> Services:
        network = Network(env=settings.eventsourcing_env())
        views = ViewDB(settings)
        projector = Projector(network, views)
        broadcaster = Broadcaster(asyncio.get_running_loop())
        projector.listeners.append(broadcaster.advance)
        telemetry_views = views if settings.event_store == "memory" else ViewDB(settings)
        health = HealthWatch()
        changes: SqliteChanges | PostgresChanges | None = None
        if settings.event_store == "sqlite":
            changes = SqliteChanges(settings.events_path)
        elif settings.event_store == "postgres":
            table = network.recorder.events_table_name  # type: ignore[attr-defined]
            try:
                changes = PostgresChanges(settings, table)
            except Exception as err:  # e.g. a database user that may not add triggers
                log.warning("the projection polls PostgreSQL: no NOTIFY trigger on %s (%s)",
                            table, err)
        threads: list[Worker] = [
            ProjectionThread(projector, changed=changes),
            ProviderMonitor(settings, telemetry_views, network, health),
        ]
        if views.is_postgres:
            threads.append(PostgresListener(settings, broadcaster))
        for thread in threads:
            thread.start()
        store = settings.object_store()
        heartbeats = HeartbeatIngest(telemetry_views, network, health)
        return cls(settings, network, views, store, temporal, broadcaster, projector,
                   heartbeats, threads, telemetry_views)

    async def heartbeat(self, provider_id: str, telemetry: Any) -> None:
        """A provider is alive: check its telemetry, then record it with the others arriving.

        TelemetryRefused (a ValueError) names the field (`telemetry.0.index: ...`);
        UnknownProvider if unregistered.
        """
        readings = parse_readings(telemetry)
        if provider_id not in self.known_providers:
            known = await self.query(
                "SELECT status FROM providers WHERE provider_id = ?", (provider_id,)
            )
            if not known:
                raise UnknownProvider("provider_id", f"no provider {provider_id!r}; register first")
            self.known_providers.add(provider_id)
        await self.heartbeats.submit(Heartbeat(provider_id, time.time(), readings))

    @contextmanager
    def subscription_of(self, caller: Caller | None) -> Iterator[None]:
        """One more live subscription of the caller's account while the block runs; refused
        past `max_subscriptions_per_account`, or `max_subscriptions_per_process` of every
        account together (each one holds a task and a poll a second)."""
        account = caller.user_id if caller is not None else "anonymous"
        held = self.open_subscriptions.get(account, 0)
        cap = self.settings.max_subscriptions_per_account
        if held >= cap:
            raise ValueError(f"subscriptions: at most {cap} live subscriptions per account; "
                             f"end one (complete) before starting another")
        everyone = self.settings.max_subscriptions_per_process
        if self.subscriptions_open >= everyone:
            raise ValueError(f"subscriptions: this API holds its most, {everyone} live "
                             "subscriptions; try again in a while, or follow by querying")
        self.subscriptions_open += 1
        self.open_subscriptions[account] = held + 1
        try:
            yield
        finally:
            self.subscriptions_open -= 1
            left = self.open_subscriptions[account] - 1
            if left:
                self.open_subscriptions[account] = left
            else:
                del self.open_subscriptions[account]

    async def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.views.query, sql, params)

    async def projected(self, timeout_s: float = 5.0) -> None:
        """Wait until the read model shows every event recorded so far (a command's too)."""
        target = await asyncio.to_thread(self.network.recorder.max_notification_id) or 0
        deadline = time.monotonic() + timeout_s
        while await asyncio.to_thread(self.projector.position) < target:
            if time.monotonic() > deadline:
                raise RuntimeError("the change was recorded but the read model is not keeping up")
            await asyncio.wait({self.broadcaster.current()}, timeout=0.2)

    def stop(self) -> None:
        for thread in self.threads:
            thread.stopping.set()
            thread.join(timeout=5)
        if self.telemetry_views is not None and self.telemetry_views is not self.views:
            self.telemetry_views.close()
        self.views.close()
