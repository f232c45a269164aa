"""Resting: a provider that keeps losing its runs is placed only where no other fits.

A provider that registers, heartbeats and never takes (or never finishes) what it is given
costs every job placed on it its pickup bound or heartbeat timeout, and the job's provider
is chosen first by price: at the lowest price it would be first in line for every job, and
a loss (`lost`, weight 3) only lowers its score, which the price outweighs. So after a run
lost with it the provider *rests*: until the rest is over it is its jobs' last resort,
placed only where no provider that is not resting fits (domain/scheduling.py), as a job's
own lost provider already is for that job's next run (workflows/runs.py).

The rest is counted per owner (the account that registered the provider), so that one
account's many provider ids are one streak: the `lost` outcomes of all the owner's
providers since the owner's latest `success` on any of them, n of them, the latest at t:

    rests until t + min(REST_MAX_S, REST_BASE_S * 2 ** (n - 1))

A success ends the streak (a resting provider placed as a last resort, or a canary, that
succeeds brings its owner's providers back at once). An honest provider whose machine
crashed once rests a minute; a black hole costs one job, then one more each time its rest
(doubling up to an hour) is over. A new account's first provider has no streak: accounts
are free, so each new one can still cost one job its pickup bound (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

REST_BASE_S = 60.0
REST_MAX_S = 3600.0
LOST = "lost"
SUCCESS = "success"


def streak(outcomes: Sequence[str], times: Sequence[float]) -> tuple[float, tuple[float, ...]]:
    """(the time of the latest success, 0.0 if none; the times of the `lost` outcomes
    after it) of one provider's outcomes."""
    last_success = max((at for o, at in zip(outcomes, times, strict=True) if o == SUCCESS),
                       default=0.0)
    lost = tuple(at for o, at in zip(outcomes, times, strict=True)
                 if o == LOST and at >= last_success)
    return last_success, lost


def rests_until(streaks: Iterable[tuple[float, tuple[float, ...]]]) -> float:
    """Until when the providers of one owner rest (0.0: they do not), given each one's
    `streak`: the owner's losses after its latest success on any of them."""
    found = list(streaks)
    last_success = max((s for s, _ in found), default=0.0)
    lost = [at for _, times in found for at in times if at >= last_success]
    if not lost:
        return 0.0
    return max(lost) + min(REST_MAX_S, REST_BASE_S * 2.0 ** min(len(lost) - 1, 32))
