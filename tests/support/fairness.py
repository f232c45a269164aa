"""Fair share, measured from the event log alone: whose each GPU allocation was, and which
clients had jobs waiting then.

The allocations (GpusAllocated, in log order) are cut into runs during which the same set
of n clients waits ("waiting": JobQueued, or ProviderLost, and no GpusAllocated yet), and
each run into windows of 10n allocations. Tolerance (fair share f = 1/n): in every window
each waiting client gets between 0.4f and 2f of the allocations (4 to 20 of 50 with five
waiting: nobody starves, nobody takes over); over all windows with the same clients
waiting, each gets f ± 0.5f (10 % to 30 % with five); no waiting client goes more than 4n
allocations in a row without one while it holds no GPU (fair share serves first the
client holding the fewest: one whose job holds a GPU a long while is served meanwhile, as
CI saw when one job's workflow task stalled 10 s on a loaded machine). The scheduler
places GPUs a round at a time and learns of a queued job a moment after it is queued, so
exact 1/n per window is not expected.

Used by tests/activities/test_fair_share.py (the scheduler, 500 jobs, in seconds) and
tests/reliability/test_fair_share_load.py (the same through a network of processes).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any, Protocol

WINDOW_PER_CLIENT = 10
WINDOW_MIN, WINDOW_MAX = 0.4, 2.0  # of a fair share, in one window
OVERALL_TOLERANCE = 0.5  # of a fair share, over every window with the same clients waiting
DROUGHT_PER_CLIENT = 4  # allocations in a row without one, per client waiting

# Each allocation: whose it was, the clients with jobs waiting, and (optional) those of them
# that held GPUs then.
Order = list[tuple[str, frozenset[str]] | tuple[str, frozenset[str], frozenset[str]]]


class Log(Protocol):
    events: list[Any]  # the domain events, in log order
    jobs: dict[Any, str]  # a Job aggregate's id -> its job id


def _type(event: Any) -> str:
    return type(event).__qualname__.rpartition(".")[2]


def allocation_order(log: Log, clients: dict[str, str]
                     ) -> list[tuple[str, frozenset[str], frozenset[str]]]:
    """Each allocation in log order: whose it was (`clients`: job id -> client), which
    clients had jobs waiting, and which of those held GPUs."""
    ids = log.jobs
    waiting: Counter[str] = Counter()
    holding: Counter[str] = Counter()
    order = []
    for e in log.events:
        t = _type(e)
        if t not in ("JobQueued", "ProviderLost", "GpusAllocated", "GpusReleased") or (
                e.originator_id not in ids):
            continue
        client = clients[ids[e.originator_id]]
        if t in ("JobQueued", "ProviderLost"):  # a run lost with its provider waits again
            waiting[client] += 1
            holding[client] -= t == "ProviderLost"  # and its GPUs went back
        elif t == "GpusReleased":
            holding[client] -= 1
        else:
            now = frozenset(c for c, n in waiting.items() if n > 0)
            order.append((client, now, frozenset(c for c in now if holding[c] > 0)))
            waiting[client] -= 1
            holding[client] += 1
    return order


def fairness_report(order: Order, min_windows: int = 4) -> list[str]:
    """What breaks the tolerances above (empty: fair); fewer than `min_windows` windows with
    several clients waiting is a problem too (nothing was measured)."""
    problems: list[str] = []
    runs: list[tuple[frozenset[str], list[tuple[str, frozenset[str]]]]] = []
    for client, contenders, *held in order:
        if len(contenders) < 2:
            continue  # one client waiting: nothing to share
        served = (client, held[0] if held else frozenset())
        if runs and runs[-1][0] == contenders:
            runs[-1][1].append(served)
        else:
            runs.append((contenders, [served]))
    totals: dict[frozenset[str], Counter[str]] = defaultdict(Counter)
    windows = 0
    for contenders, allocations in runs:
        n = len(contenders)
        size = WINDOW_PER_CLIENT * n
        clients = [c for c, _ in allocations]
        for start in range(0, len(clients) - size + 1, size):
            window = Counter(clients[start:start + size])
            windows += 1
            totals[contenders].update(window)
            for c in contenders:
                share = window[c] / size
                if not WINDOW_MIN / n <= share <= WINDOW_MAX / n:
                    problems.append(f"window of {size} with {sorted(contenders)} waiting: "
                                    f"{c} got {window[c]} ({dict(window)})")
        last_seen = dict.fromkeys(contenders, -1)
        for i, (c, held) in enumerate(allocations):
            for other in held:  # it holds GPUs: it is being served
                last_seen[other] = i
            for other in contenders:
                if other != c and i - last_seen[other] > DROUGHT_PER_CLIENT * n:
                    problems.append(f"{other} waited {i - last_seen[other]} allocations in a row "
                                    f"with {sorted(contenders)} waiting")
                    last_seen[other] = i  # one report per drought
            last_seen[c] = i
    for contenders, got in totals.items():
        n, total = len(contenders), sum(got.values())
        for c in contenders:
            if abs(got[c] / total - 1 / n) > OVERALL_TOLERANCE / n:
                problems.append(f"with {sorted(contenders)} waiting, {c} got {got[c]} of {total}")
    if windows < min_windows:
        problems.append(f"only {windows} windows with several clients waiting: nothing measured")
    return problems
