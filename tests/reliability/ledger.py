"""Checks over a whole event log that every reliability test (and `python -m bench soak`)
makes: no gap, no duplicate, each job ended once, the ledger balanced and each client charged
once per job, no GPU double-booked or left reserved."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any

from domain.ledger import EXTERNAL, client_account, escrow_account
from tests.reliability.harness import TERMINAL, EventLog, event_type, per_job


def assert_log_is_whole(log: EventLog) -> None:
    """Notification ids run 1, 2, 3... with no gap or repeat; no aggregate version twice."""
    log.read()
    ids = log.ids
    assert ids == list(range(ids[0], ids[0] + len(ids))), _first_gap(ids)
    versions = Counter((e.originator_id, e.originator_version) for e in log.events)
    twice = [k for k, n in versions.items() if n > 1]
    assert not twice, f"aggregate versions recorded twice: {twice[:3]}"


def _first_gap(ids: list[int]) -> str:
    for a, b in itertools.pairwise(ids):
        if b != a + 1:
            return f"notification ids jump from {a} to {b} (of {len(ids)})"
    return "ids out of order"


def assert_each_job_ended_once(log: EventLog, job_ids: list[str]) -> dict[str, str]:
    """One terminal event and (for an admitted job) one settlement per job; each job's end."""
    counts = per_job(log, [*TERMINAL, "JobSettled", "FundsEscrowed"])
    ends = {}
    for job_id in job_ids:
        c = counts[job_id]
        terminal = {t: n for t, n in c.items() if t in TERMINAL}
        assert sum(terminal.values()) == 1, f"job {job_id} ended {terminal}"
        assert c["JobSettled"] == c["FundsEscrowed"] == 1, f"job {job_id}: {dict(c)}"
        ends[job_id] = next(iter(terminal))
    return ends


def balances(log: EventLog) -> tuple[dict[str, int], dict[str, list[int]]]:
    """Every ledger account's balance now, and each transfer's posted amounts."""
    log.read()
    by_transfer: dict[str, list[int]] = defaultdict(list)
    accounts: set[str] = set()
    for e in log.events:
        t = event_type(e)
        if t == "AccountOpened":
            accounts.add(e.name)
        elif t == "EntryPosted":
            by_transfer[e.transfer_id].append(e.amount_micro)
    return {name: log.app.balance(name) for name in accounts}, by_transfer


def open_escrows(log: EventLog, job_ids: Iterable[str]) -> list[str]:
    """The jobs among these whose escrow holds money or was never settled (escrowed, no
    JobSettled): what a job that ended must not leave."""
    held, _ = balances(log)
    counts = per_job(log, ["FundsEscrowed", "JobSettled"])
    return [j for j in job_ids
            if held.get(escrow_account(j), 0) != 0
            or counts[j]["FundsEscrowed"] != counts[j]["JobSettled"]]


def assert_ledger_balances(log: EventLog, job_ids: list[str], clients: dict[str, str],
                           start_micro: int) -> dict[str, int]:
    """Double entry: every transfer posted once on each side, all balances sum to zero; each
    client paid its starting deposit minus what its jobs were charged, once each; every
    escrow is empty. `clients`: job id -> client id. Returns what each job was charged."""
    app = log.app
    held, by_transfer = balances(log)
    lopsided = {t: a for t, a in by_transfer.items() if len(a) != 2 or sum(a) != 0}
    assert not lopsided, f"transfers not posted once on each side: {list(lopsided.items())[:3]}"
    assert sum(held.values()) == 0, held

    charged: dict[str, int] = {}
    ids = log.jobs
    for e in log.of_type("JobSettled"):
        job_id = ids[e.originator_id]
        assert job_id not in charged, f"job {job_id} settled twice"
        charged[job_id] = e.charged_micro
    by_client: dict[str, int] = defaultdict(int)
    for job_id in job_ids:
        assert held.get(escrow_account(job_id), 0) == 0, f"escrow of {job_id} not empty"
        by_client[clients[job_id]] += charged[job_id]
    deposits: dict[str, int] = defaultdict(int)
    for e in log.of_type("EntryPosted"):
        if e.counterparty == EXTERNAL and e.amount_micro > 0:
            deposits[app.repository.get(e.originator_id).name] += e.amount_micro
    for client_id, total in by_client.items():
        account = client_account(client_id)
        assert deposits[account] == start_micro, (account, deposits[account])
        assert held[account] == start_micro - total, (
            f"{account}: balance {held[account]}, expected {start_micro} - {total}")
        # Each job's escrow and refund moved through the client's account exactly once.
        escrows = [t for t in by_transfer if t.startswith("escrow:")
                   and clients.get(t.removeprefix("escrow:")) == client_id]
        assert len(escrows) == sum(1 for j in job_ids if clients[j] == client_id)
    return charged


def settled_figures(log: EventLog) -> dict[str, dict[str, Any]]:
    ids = log.jobs
    return {ids[e.originator_id]: {
        "charged": e.charged_micro, "paid": e.provider_paid_micro, "fee": e.fee_micro,
        "refunded": e.refunded_micro,
    } for e in log.of_type("JobSettled")}


def replay_reservations(log: EventLog) -> tuple[list[str], dict[tuple[str, int], str]]:
    """Replay the providers' GpusReserved and GpusReleased in log order: the GPUs reserved
    while another job held them, and what is still held at the end."""
    names = {e.originator_id: e.provider_id for e in log.of_type("ProviderRegistered")}
    held: dict[tuple[str, int], str] = {}
    doubles = []
    for e in log.events:
        t = event_type(e)
        if t == "GpusReserved":
            for index in e.gpu_indexes:
                key = (names[e.originator_id], index)
                if key in held and held[key] != e.job_id:
                    doubles.append(f"GPU {key} reserved for {e.job_id} while {held[key]} holds it")
                held[key] = e.job_id
        elif t == "GpusReleased" and e.originator_id in names:  # not the job's own note
            for key in [k for k, job in held.items() if job == e.job_id
                        and k[0] == names[e.originator_id]]:
                del held[key]
    return doubles, held


def double_bookings(log: EventLog) -> list[str]:
    return replay_reservations(log)[0]


def leaked_gpus(log: EventLog) -> list[str]:
    """GPUs still reserved once every job has ended, and reservations that no allocation of
    the job matches (a provider's GPUs held for a job that was never placed there)."""
    _, held = replay_reservations(log)
    problems = [f"GPU {key} still reserved for {job} after every job ended"
                for key, job in held.items()]
    names = {e.originator_id: e.provider_id for e in log.of_type("ProviderRegistered")}
    allocated = Counter((log.job_of(e), e.provider_id) for e in log.of_type("GpusAllocated"))
    reserved = Counter((e.job_id, names[e.originator_id]) for e in log.of_type("GpusReserved"))
    problems += [f"{n} reservations of {provider} for job {job}, which was allocated there "
                 f"{allocated[job, provider]} times"
                 for (job, provider), n in reserved.items() if n > allocated[job, provider]]
    return problems
