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

A success ends the streak where it vouches for the provider: a success on the job of a
client that is not the owner's own and that had paid VOUCHED_SPENT_MICRO (10 credits) for
verified work before that job (the spend each outcome carries, domain/reputation.py). So
an owner that runs jobs of its own on its providers, or of a new account it opened, ends
no rest (a black hole placed its own job on a provider of its own and came back first in
line a second later); a resting provider placed as a last resort that succeeds on an
established client's job brings its owner's providers back at once. An honest provider
whose machine crashed once rests a minute; a black hole costs one job, then one more each
time its rest (doubling up to an hour) is over. A new account's first provider has no
streak: accounts are free, so each new one can still cost one job its pickup bound; and
one person who pays for verified work under a second account can end its rests with
that account's jobs (docs/security.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from domain.reputation import OUTVOTED_MIN_SPENT_MICRO

REST_BASE_S = 60.0
REST_MAX_S = 3600.0
# What a client must have paid for verified work before a success on its job ends a rest:
# as much as an `outvoted` of its needs to count at all.
VOUCHED_SPENT_MICRO = OUTVOTED_MIN_SPENT_MICRO
LOST = "lost"
SUCCESS = "success"


def vouches(outcome: str, client: str, spent: int, own_client: str | None) -> bool:
    """Whether an outcome ends its owner's streak: a success on a job of a client that is
    not the owner's own and had paid VOUCHED_SPENT_MICRO for verified work before it."""
    return (outcome == SUCCESS and bool(client) and client != own_client
            and spent >= VOUCHED_SPENT_MICRO)


def streak(outcomes: Sequence[str], times: Sequence[float], clients: Sequence[str] = (),
           spent: Sequence[int] = (), own_client: str | None = None
           ) -> tuple[float, tuple[float, ...]]:
    """(the time of the latest success that vouches for the provider, 0.0 if none; the
    times of the `lost` outcomes after it) of one provider's outcomes, with each one's
    client and that client's verified spend before it (domain/provider.py), `own_client`
    the owner's own client id. With no `clients`, no success vouches."""
    last_success = max((at for i, (o, at) in enumerate(zip(outcomes, times, strict=True))
                        if clients and vouches(o, clients[i], spent[i] if spent else 0,
                                               own_client)), default=0.0)
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
