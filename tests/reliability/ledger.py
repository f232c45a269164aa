"""Checks over a whole event log that every reliability test makes: no gap, no duplicate,
each job ended once, the ledger balanced and each client charged once per job."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
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


def assert_ledger_balances(log: EventLog, job_ids: list[str], clients: dict[str, str],
                           start_micro: int) -> dict[str, int]:
    """Double entry: every transfer posted once on each side, all balances sum to zero; each
    client paid its starting deposit minus what its jobs were charged, once each; every
    escrow is empty. `clients`: job id -> client id. Returns what each job was charged."""
    log.read()
    app = log.app
    by_transfer: dict[str, list[int]] = defaultdict(list)
    accounts: set[str] = set()
    for e in log.events:
        t = event_type(e)
        if t == "AccountOpened":
            accounts.add(e.name)
        elif t == "EntryPosted":
            by_transfer[e.transfer_id].append(e.amount_micro)
    lopsided = {t: a for t, a in by_transfer.items() if len(a) != 2 or sum(a) != 0}
    assert not lopsided, f"transfers not posted once on each side: {list(lopsided.items())[:3]}"
    balances = {name: app.balance(name) for name in accounts}
    assert sum(balances.values()) == 0, balances

    charged: dict[str, int] = {}
    ids = log.jobs
    for e in log.of_type("JobSettled"):
        job_id = ids[e.originator_id]
        assert job_id not in charged, f"job {job_id} settled twice"
        charged[job_id] = e.charged_micro
    by_client: dict[str, int] = defaultdict(int)
    for job_id in job_ids:
        assert balances.get(escrow_account(job_id), 0) == 0, f"escrow of {job_id} not empty"
        by_client[clients[job_id]] += charged[job_id]
    deposits: dict[str, int] = defaultdict(int)
    for e in log.of_type("EntryPosted"):
        if e.counterparty == EXTERNAL and e.amount_micro > 0:
            deposits[app.repository.get(e.originator_id).name] += e.amount_micro
    for client_id, total in by_client.items():
        account = client_account(client_id)
        assert deposits[account] == start_micro, (account, deposits[account])
        assert balances[account] == start_micro - total, (
            f"{account}: balance {balances[account]}, expected {start_micro} - {total}")
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
