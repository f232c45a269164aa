"""Reputation is a documented function of a provider's recorded outcomes, their times and
the clients whose jobs they were.

Each outcome (a ReputationRecorded event) counts with a weight that halves every
HALF_LIFE_DAYS of age, so recent behaviour matters most and old faults fade:

    w(outcome) = 0.5 ** (age_days / HALF_LIFE_DAYS)
    good = 1 + sum of w over successes
    bad  = 1 + sum of w * (1 failure, 2 timeout, 3 lost, 5 mismatch,
                           OUTVOTED_WEIGHT = 1 an `outvoted` that counts)
    score = good / (good + bad)

A new provider starts at 0.5 (the 1 on each side is a uniform prior), each
success raises it, and faults weigh by how much they cost clients: a lost
provider wastes a whole attempt, a wrong result is the worst.

An `outvoted` outcome is a run that a majority of other owners' runs disagreed
with, its report not contradicted by storage (workflows/runs.py). One client's
majority is no evidence against a provider: the client's command can choose which
answer each run gives, and its quota which upload is refused. So an `outvoted`
counts in the score only where several clients say the same (`counted_outvoted`):

- it counts only when, within the OUTVOTED_WINDOW_DAYS (30) up to it (by the times
  of the outcomes; the same time, in the order recorded), the provider was
  outvoted on the jobs of at least OUTVOTED_CLIENTS (3) distinct paying clients,
  itself included. One client, or two, however often they outvote it, never lower
  a score; an outcome whose client is not known (recorded before outcomes named
  their client: "") is no client and never counts;
- a client pays (for this rule) where it had paid for at least
  OUTVOTED_MIN_SPENT_MICRO of verified work before that job for each `outvoted` its
  jobs had caused before it, and once more for this one (`outvoted_price_micro`):
  10 credits for its first, 20 for its second, 10 x (1 + n) where its jobs had
  caused n before, against any provider, counted or not. Each outcome carries its
  client's verified spend as the control plane had it when it recorded the outcome
  (`ReputationRecorded.client_spent_micro`, the sum of what the client was charged,
  `JobSettled.charged_micro`, for its other jobs whose verdict was a verified
  success: domain/app_jobs.py `client_standing`), and how many `outvoted`
  outcomes its jobs had caused before (`ReputationRecorded.client_outvotes_before`,
  counted on its ledger account with each `outvoted` recorded: domain/ledger.py
  `Account.outvotes_caused`). An `outvoted` of a client that paid less is no
  client's either, for the tally as for the count: a deposit or a grant is no spend
  (a deposit can be withdrawn, a grant is free), so a new or merely funded account
  frames no one. Outcomes recorded before they carried the spend (0) never count;
  those recorded before they carried the count (0) are judged as they were then;
- and it counts only when no other `outvoted` of the same client counted within
  the OUTVOTED_WINDOW_DAYS before it: once three clients outvoted a provider, one
  of them still costs it at most one fault a window, however many jobs it has
  outvote it. The score can fall by as many faults a window as clients caught it.

OUTVOTED_MIN_SPENT_MICRO is 10 credits: at the README's 2.5 credits a GPU-hour, four
GPU-hours of work whose results the network verified, paid to providers and gone,
where a deposit comes back out and a grant costs its holder nothing. An honest client
with real work crosses it within its first few jobs (until then its majorities, like a
new account's, lower no score: they still put the provider back on probation, and
storage and canaries still catch a cheater); an account opened to frame must first buy
that much verified work, so three of them cost 30 credits before the first counted
failure.

The price is per failure, not per account: each `outvoted` a client's jobs cause, on
any provider, whether it counted or not, raises by 10 credits the verified spend the
client needs for its next one to count (its k-th needs 10 x k credits paid before it).
An account that paid 10 credits frames once, not once a window for as long as it
lives; each further framing, of that provider or any other, costs it another 10
credits of verified work, so n counted failures cost about 10 x n credits however the
framer spreads them over accounts and providers. An honest client pays the same way
for the cheaters its jobs outvote: its k-th majority counts once it has paid 10 x k
credits for verified work, which real work does as it goes (and storage and canaries
catch a cheater whatever the client paid). It is still not Sybil-proof: a person who
pays the price on three accounts can frame, once per 10 credits an account; one who
also owns the providers that ran that verified work (under other accounts) gets the
spend back but for the protocol fee (5%), so to that person a counted failure costs
about 0.5 credits (5% of 10), plus what its framing jobs' runs cost. The rule prices
each framing, it does not forbid it.

A counted `outvoted` weighs as a `failure` (OUTVOTED_WEIGHT = 1), not as a
`mismatch` (5): a majority is weaker evidence than storage contradicting a report
or a known-answer canary (which the client cannot shape), and three paying accounts
may still be one person's (the rule is bounded, not Sybil-proof), so framing from
three of them costs an honest provider at most one failure an account a window. To
the client, that run was what a failed run is: a result it could not keep. Every
`outvoted`, counted or not, also puts the provider back on probation for the check
rate (domain/verification.py `check_rate`); that use needs no second client.

A counted `outvoted` is a scored outcome like any other (score, confidence,
probation, the outcome count, `last_scored_at`); one not counted is in none of them
and changes nothing but its own entry in `weighted` (`weighted["outvoted"]` holds
every `outvoted`, `weighted[OUTVOTED_SCORED]` the counted ones).

Confidence grows with history: with n = the sum of all scored weights (the
effective number of outcomes), confidence = n / (n + CONFIDENCE_HALF), 0 for a new
provider and 0.5 after CONFIDENCE_HALF recent outcomes. A provider with fewer
than PROBATION (scored) outcomes is on probation: every one of its results is checked
(domain/verification.py).

Anyone holding the event log can recompute every score with `reputation`
(`gpgpu admin recompute-reputation` does, and compares with the stored ones): each
ReputationRecorded carries its outcome, its time, its job's client, that client's
verified spend and the `outvoted` outcomes its jobs had caused before, filled by the
control plane from the job and the client's ledger account (never by a provider or a
client); the spend itself can be checked against the log's JobVerified and JobSettled
events, the count against the log's `outvoted` outcomes (and the account's
OutvotedCaused events).
`reputation_score` is the same formula without time: every outcome at one moment
(every weight 1, every `outvoted` in one window).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

OUTCOMES = ("success", "failure", "timeout", "lost", "mismatch", "outvoted")
WEIGHTS = {"failure": 1, "timeout": 2, "lost": 3, "mismatch": 5}
OUTVOTED = "outvoted"
# An `outvoted` counts only once this many distinct clients outvoted the provider within
# OUTVOTED_WINDOW_DAYS, and then at most once a window for each client; it weighs as a
# failure. (Recorded, shown and used by the check rate whether it counts or not.)
OUTVOTED_CLIENTS = 3
OUTVOTED_WINDOW_DAYS = 30.0
# ... and only the `outvoted` of clients that had paid this much for verified work before
# (10 credits; the docstring says why).
OUTVOTED_MIN_SPENT_MICRO = 10_000_000
OUTVOTED_WEIGHT = WEIGHTS["failure"]
OUTVOTED_SCORED = "outvoted_scored"  # `weighted`'s entry for the counted ones
HALF_LIFE_DAYS = 30.0
CONFIDENCE_HALF = 10.0
PROBATION = 5
DAY_S = 86_400.0


def outvoted_price_micro(outvotes_before: int) -> int:
    """The verified spend a client needs before a job for that job's `outvoted` to count:
    OUTVOTED_MIN_SPENT_MICRO for each `outvoted` its jobs had caused before (against any
    provider, counted or not), and once more for this one."""
    return OUTVOTED_MIN_SPENT_MICRO * (1 + outvotes_before)


def paying_clients(clients: Sequence[str], spent: Sequence[int],
                   outvotes: Sequence[int] = ()) -> list[str]:
    """Each outcome's client where it had paid for `outvoted_price_micro` of verified work
    before that job (OUTVOTED_MIN_SPENT_MICRO for each `outvoted` its jobs had caused before,
    `outvotes[i]`, and one more), "" where not (or not known): the clients whose `outvoted`
    may count. No `outvotes`: none caused before (outcomes recorded before they carried it)."""
    if spent and len(spent) != len(clients):
        raise ValueError(f"{len(clients)} clients but {len(spent)} spends")
    if outvotes and len(outvotes) != len(clients):
        raise ValueError(f"{len(clients)} clients but {len(outvotes)} outvote counts")
    return [c if spent and spent[i] >= outvoted_price_micro(outvotes[i] if outvotes else 0)
            else "" for i, c in enumerate(clients)]


def counted_outvoted(outcomes: Sequence[tuple[str, float]], clients: Sequence[str] = (),
                     spent: Sequence[int] = (), outvotes: Sequence[int] = ()
                     ) -> frozenset[int]:
    """The indexes of the `outvoted` outcomes the score counts (the rule above).

    `clients[i]` is the client of outcome i's job ("" where not known), `spent[i]` what
    that client had paid for verified work before it (micro-credits), `outvotes[i]` how
    many `outvoted` outcomes its jobs had caused before it (none given: 0 each); with no
    `clients` or no `spent` at all, none is known and no `outvoted` counts."""
    if clients and len(clients) != len(outcomes):
        raise ValueError(f"{len(outcomes)} outcomes but {len(clients)} clients")
    paying = paying_clients(clients, spent, outvotes)
    # Only the outvoted outcomes of known, paying clients matter, in the order of their times.
    order = sorted((at, i) for i, (o, at) in enumerate(outcomes)
                   if o == OUTVOTED and paying and paying[i])
    window_s = OUTVOTED_WINDOW_DAYS * DAY_S
    in_window: deque[tuple[float, str]] = deque()
    per_client: Counter[str] = Counter()  # outvoted in the window, by client
    last_counted: dict[str, float] = {}
    counted = set()
    for at, i in order:
        client = paying[i]
        in_window.append((at, client))
        per_client[client] += 1
        while in_window[0][0] < at - window_s:
            _, gone = in_window.popleft()
            per_client[gone] -= 1
            if not per_client[gone]:
                del per_client[gone]
        before = last_counted.get(client)
        if len(per_client) >= OUTVOTED_CLIENTS and (before is None or before < at - window_s):
            counted.add(i)
            last_counted[client] = at
    return frozenset(counted)


def reputation_score(outcomes: Iterable[str], clients: Sequence[str] = (),
                     spent: Sequence[int] = (), outvotes: Sequence[int] = ()) -> float:
    """The score of outcomes all recorded at one moment (`reputation` without time)."""
    return reputation([(o, 0.0) for o in outcomes], 0.0, clients, spent, outvotes).score


@dataclass(frozen=True)
class Reputation:
    """A provider's score and what it is made of, as of one moment."""

    score: float
    confidence: float
    probation: bool
    outcomes: int  # scored outcomes, all time (counted `outvoted` ones too)
    effective_outcomes: float  # their weights summed (time decay)
    # outcome -> its decayed count: `outvoted` all of them, OUTVOTED_SCORED the counted ones
    weighted: dict[str, float]


def reputation(outcomes: Sequence[tuple[str, float]], as_of: float,
               clients: Sequence[str] = (), spent: Sequence[int] = (),
               outvotes: Sequence[int] = ()) -> Reputation:
    """The documented score of (outcome, unix time) pairs, as of `as_of` (unix time), the
    client of each outcome's job in `clients`, its verified spend before that job in
    `spent` and the `outvoted` outcomes its jobs had caused before in `outvotes` (see
    `counted_outvoted`).

    An outcome stamped after `as_of` (clocks of two machines differ) counts as new.
    An `outvoted` that does not count changes nothing but its own entry in `weighted`.
    """
    counted = counted_outvoted(outcomes, clients, spent, outvotes)
    weighted = dict.fromkeys((*OUTCOMES, OUTVOTED_SCORED), 0.0)
    scored = 0
    for i, (outcome, at) in enumerate(outcomes):
        age_days = max(0.0, as_of - at) / DAY_S
        w = math.pow(0.5, age_days / HALF_LIFE_DAYS)
        weighted[outcome] += w
        if outcome != OUTVOTED:
            scored += 1
        elif i in counted:
            weighted[OUTVOTED_SCORED] += w
            scored += 1
    good = 1.0 + weighted["success"]
    bad = (1.0 + sum(WEIGHTS[o] * w for o, w in weighted.items() if o in WEIGHTS)
           + OUTVOTED_WEIGHT * weighted[OUTVOTED_SCORED])
    effective = sum(w for o, w in weighted.items() if o != OUTVOTED)
    return Reputation(
        score=good / (good + bad),
        confidence=effective / (effective + CONFIDENCE_HALF),
        probation=scored < PROBATION,
        outcomes=scored,
        effective_outcomes=effective,
        weighted=weighted,
    )


def last_scored_at(outcomes: Sequence[tuple[str, float]], default: float,
                   clients: Sequence[str] = (), spent: Sequence[int] = (),
                   outvotes: Sequence[int] = ()) -> float:
    """The time of the latest scored outcome (`default` if none): the moment the read
    model's stored score is taken as of, so that an `outvoted` that does not count does
    not move it."""
    counted = counted_outvoted(outcomes, clients, spent, outvotes)
    return max((at for i, (o, at) in enumerate(outcomes) if o != OUTVOTED or i in counted),
               default=default)
