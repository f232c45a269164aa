"""This process's side of handing out assignments: agents long-polling for their next
assignment wait here, woken by one shared look at the table (infra/assignments.py) every
POLL_S; the per-process pacing of what a run's heartbeats cost (a Temporal heartbeat
every BEAT_EVERY_S, a last_seen_at write a few times per heartbeat timeout, the grace a
reset run's step gets); and the listener stamp that tells the control worker this API
hears providers, so that a provider unheard meanwhile is silent rather than cut off
(activities/assign.py watch_assignments). The provider API's routes (api/assignments.py)
take it as a dependency and say when a provider was heard; the app's lifespan runs
`listen`.

An API hears while providers reach it: while some provider's long poll is open here, or a
provider's request came within HEARD_FOR_S (agents poll again at once). Being up is not
enough: an outage in front of the APIs (a load balancer that went down, a route withdrawn)
leaves every API up and hearing no one, and the runs in flight must then bear it as the
network's own outage, not be lost one by one as each provider's heartbeat timeout runs
out. A network that hears no one also judges no one: the only provider's death is then
found at the backstop (the heartbeat timeout plus the outage grace). What this cannot tell
from a provider's death is an outage that holds connections open and passes nothing (a
black hole): an open poll counts as hearing until its wait is over (agents wait
POLL_WAIT_S, 20 s) or its connection is seen closed."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request

from api.services import Services
from api.waiters import Waiters
from infra.assignments import Assignment, AssignmentBoard
from infra.listeners import LISTEN_EVERY_S, LISTEN_GAP_S
from infra.row_cipher import RowCipher

log = logging.getLogger(__name__)

# last_seen_at is written this often per assignment at most, and at least six times per
# heartbeat timeout (the control worker judges silence by it).
SEEN_EVERY_S = 15.0
POLL_S = 0.05  # how often this process looks for new assignments while agents wait
GONE_EVERY_S = 0.5  # how often a waiting poll looks whether its agent has gone
BEAT_EVERY_S = 2.0  # at most one Temporal heartbeat per assignment this often, per process
# How long a step whose workflow run was reset goes on for the new run to take it over
# (infra/assignments.py adopt) before its agent is told to stop; the new run then leaves
# the attempt for a fresh one (activities/assign.py). Settings: gpu_adopt_grace_s.
ADOPT_GRACE_S = 60.0
# How long a provider's request (or a poll's answer) counts as hearing it: an agent always
# has a poll open here, and opens the next as one is answered.
HEARD_FOR_S = 0.5
# A report tried again (api/assignments.py complete, fail) goes to Temporal once more at
# most this often per assignment, per process.
REDELIVER_EVERY_S = 1.0


def _due(last: dict[str, float], aid: str, every: float) -> bool:
    """Whether `every` has passed since the assignment's entry in `last` (then it is now)."""
    now = time.monotonic()
    if now - last.get(aid, -every) < every:
        return False
    if len(last) > 100_000:
        last.clear()
    last[aid] = now
    return True


class Dispatch:
    """This process's waiting agents, woken by one shared look at the table."""

    def __init__(self, board: AssignmentBoard, adopt_grace_s: float = ADOPT_GRACE_S):
        self.board, self.adopt_grace_s = board, adopt_grace_s
        self._waiters = Waiters()
        self._poller: asyncio.Task[None] | None = None
        self._recorded: dict[str, float] = {}  # assignment -> when its last_seen_at was set
        self._beaten: dict[str, float] = {}  # assignment -> its last heartbeat to Temporal
        self._redelivered: dict[str, float] = {}  # assignment -> its report's last delivery
        self._orphaned: dict[str, float] = {}  # assignment -> when its run was seen reset
        self.listener_id = str(uuid.uuid4())
        self._polls_open = 0  # providers' long polls waiting here now
        self._last_heard = -HEARD_FOR_S  # time.monotonic() of a provider's last request

    def heard(self) -> None:
        """A provider's request reached this process (called once it is authenticated: an
        outsider's calls do not make the network hear)."""
        self._last_heard = time.monotonic()

    def hearing(self) -> bool:
        """Whether providers reach this process now (the module's docstring)."""
        return self._polls_open > 0 or time.monotonic() - self._last_heard <= HEARD_FOR_S

    async def listen(self, stop: asyncio.Event) -> None:
        """Stamp this process's listener row every LISTEN_EVERY_S while it hears providers,
        until `stop`; a stamp that comes late (the process stalled, or heard no one
        meanwhile) starts its hearing afresh."""
        up_since = last = self.board.clock()
        try:
            while not stop.is_set():
                now = self.board.clock()
                if now - last > LISTEN_GAP_S:
                    up_since = now
                try:
                    if self.hearing():
                        await asyncio.to_thread(self.board.listeners.stamp, self.listener_id,
                                                up_since)
                        last = now
                except Exception as err:  # the database blinked: the next stamp
                    log.warning("listener stamp: %s", err)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), LISTEN_EVERY_S)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.board.listeners.forget, self.listener_id)

    def within_grace(self, aid: str) -> bool:
        """Whether a step whose run was reset may still wait here for the new run."""
        if len(self._orphaned) > 100_000:
            self._orphaned.clear()
        now = self._orphaned.setdefault(aid, time.monotonic())
        return time.monotonic() - now < self.adopt_grace_s

    def due_to_record(self, a: Assignment) -> bool:
        """Whether to write the assignment's last_seen_at, by which the control worker
        judges its provider silent: at least six times per heartbeat timeout (the agent
        beats three times), per process."""
        return _due(self._recorded, a.assignment_id, min(SEEN_EVERY_S, a.heartbeat_timeout_s / 6))

    def due_to_beat(self, a: Assignment) -> bool:
        """Whether to pass this heartbeat on to Temporal: the agent beats early to send its
        job's output, and Temporal needs a beat every few seconds only (a cancel is heard
        at the next one passed on)."""
        return _due(self._beaten, a.assignment_id, min(BEAT_EVERY_S, a.heartbeat_timeout_s / 4))

    def due_to_redeliver(self, aid: str) -> bool:
        """Whether a report tried again goes to Temporal once more: once per REDELIVER_EVERY_S
        per assignment, per process (an agent tries again every second; a flood of them
        costs Temporal no more)."""
        return _due(self._redelivered, aid, REDELIVER_EVERY_S)

    async def next(self, provider_id: str, wait_s: float,
                   gone: Callable[[], Awaitable[bool]] | None = None) -> list[Assignment]:
        """The provider's new assignments, handed out (each once), waiting up to `wait_s`
        for some. `gone` says whether the poll's agent has gone (its connection closed):
        such a poll takes nothing, or an agent killed while its poll waited (and started
        again at once) would lose its next assignment to the dead poll, until the step's
        heartbeat timeout counted the provider lost again
        (tests/liveness/test_lost_provider_bound.py and CI saw it)."""
        deadline = time.monotonic() + wait_s
        self._polls_open += 1
        try:
            while True:
                if gone is not None and await gone():
                    return []
                got = await asyncio.to_thread(self.board.hand_out, provider_id)
                left = deadline - time.monotonic()
                if got or left <= 0:
                    self.heard()  # its answer goes out: heard until its next poll comes
                    return got
                await self._wait(provider_id, deadline, gone)
        finally:
            self._polls_open -= 1

    async def _wait(self, provider_id: str, deadline: float,
                    gone: Callable[[], Awaitable[bool]] | None) -> None:
        """Until the provider is woken or the deadline, or its agent has gone (looked at
        every GONE_EVERY_S): a dead poll would otherwise wait out its whole wait, and hold
        the API's graceful shutdown that long (the agents stop first)."""
        while (left := deadline - time.monotonic()) > 0:
            if self._poller is None or self._poller.done():
                # It first runs once this wait has begun (and is counted in `_waiters`).
                self._poller = asyncio.create_task(self._poll())
            if await self._waiters.wait(provider_id, min(left, GONE_EVERY_S) if gone else left):
                return
            if gone is not None and await gone():
                return

    async def _poll(self) -> None:
        while self._waiters:
            try:
                ready = await asyncio.to_thread(self.board.waiting_providers)
            except Exception as err:
                log.warning("looking for assignments: %s", err)
                ready = set()
            for pid in ready & self._waiters.keys():
                self._waiters.wake(pid)
            await asyncio.sleep(POLL_S)


def of_services(services: Services) -> Dispatch:
    return Dispatch(AssignmentBoard(services.telemetry_views or services.views,
                                    RowCipher(services.settings.payload_keys)),
                    services.settings.gpu_adopt_grace_s)


def dispatch(request: Request) -> Dispatch:
    state = request.app.state
    if getattr(state, "dispatch", None) is None:
        state.dispatch = of_services(state.services)
    found: Dispatch = state.dispatch
    return found


DispatchDep = Annotated[Dispatch, Depends(dispatch)]
