"""Double-entry ledger: every transfer debits one account and credits another.

Accounts are aggregates named by business key (client:alice, escrow:<job>,
provider:<id>, protocol:fees, external:deposits). A transfer posts two entries
with the same transfer id, saved in one transaction, so the sum of all balances
is always zero. A transfer id already posted is skipped: retries are harmless.

A client's account also keeps what the client has paid for verified work
(`verified_spent_micro`, from VerifiedWorkPaid: each job's `JobSettled.charged_micro` where
its verdict was a verified success, noted with that settlement). It moves no money; it is
what an `outvoted` outcome needs to count (domain/reputation.py), and unlike a balance it
cannot be bought by a deposit or a grant. It also counts the `outvoted` outcomes the
client's jobs have caused (`outvotes_caused`, from OutvotedCaused: one for each `outvoted`
the control plane records of one of its jobs, against any provider, noted with that outcome,
so once): each raises the verified spend the client's next `outvoted` needs to count.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError, InsufficientFunds, InvalidAmount
from domain.ids import business_id
from domain.limits import AMOUNT, MAX_BALANCE_MICRO, OutOfBounds

EXTERNAL = "external:deposits"
FEES = "protocol:fees"
# The network pays for the checks it adds on its own; this account shows what they cost it.
CHECKS = "protocol:verification"
MAY_GO_NEGATIVE = (EXTERNAL, CHECKS)

# What a transfer is, from the prefix of its id: the ledger per account shows it.
KINDS = {
    "deposit": "deposit", "withdraw": "withdrawal", "escrow": "escrow", "pay": "payment",
    "fee": "fee", "refund": "refund", "check": "verification", "grant": "grant",
}
# Entries written before `kind` existed (version 1) carry only their memo.
_KIND_FROM_MEMO = {
    "deposit": "deposit", "escrow": "escrow", "payment for GPU time": "payment",
    "protocol fee": "fee", "escrow refund": "refund",
}


def kind_of(transfer_id: str) -> str:
    return KINDS.get(transfer_id.partition(":")[0], "other")


def client_account(client_id: str) -> str:
    return f"client:{client_id}"


def escrow_account(job_id: str) -> str:
    return f"escrow:{job_id}"


def provider_account(provider_id: str) -> str:
    return f"provider:{provider_id}"


class Account(Aggregate):
    # Lists of strings or numbers, copied flat by the application's aggregate cache.
    FLAT_LISTS = ("posted",)

    # v2 keeps what a client paid for verified work (`verified_spent_micro`); v3 how many
    # `outvoted` outcomes its jobs caused (`outvotes_caused`).
    class_version = 3

    class EntryPosted(Aggregate.Event):
        """One side of a transfer. Version 2 added `kind`."""

        class_version = 2
        transfer_id: str
        amount_micro: int
        counterparty: str
        memo: str
        kind: str

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            state["kind"] = _KIND_FROM_MEMO.get(state["memo"], "other")

    @staticmethod
    def upcast_v1_v2(state: dict[str, Any]) -> None:
        # A snapshot from before: no VerifiedWorkPaid came before it, as none was recorded.
        state.setdefault("verified_spent_micro", 0)

    @staticmethod
    def upcast_v2_v3(state: dict[str, Any]) -> None:
        # A snapshot from before: no OutvotedCaused came before it, as none was recorded.
        state.setdefault("outvotes_caused", 0)

    @staticmethod
    def create_id(name: str, **_: Any) -> UUID:
        return business_id("account", name)

    @event("AccountOpened")
    def __init__(self, name: str, may_go_negative: bool):
        self.name = name
        self.may_go_negative = may_go_negative
        self.balance_micro = 0
        self.posted: list[str] = []
        self.verified_spent_micro = 0  # a client's: what it paid for verified work
        self.outvotes_caused = 0  # a client's: the `outvoted` outcomes its jobs caused

    def has_posted(self, transfer_id: str) -> bool:
        return transfer_id in self.posted

    def check_debit(self, amount_micro: int) -> None:
        if not self.may_go_negative and self.balance_micro < amount_micro:
            raise InsufficientFunds(
                "", f"account {self.name} holds {self.balance_micro} micro-credits, "
                f"{amount_micro} needed"
            )

    def note_verified_work(self, job_id: str, amount_micro: int) -> None:
        """The client was charged `amount_micro` for job `job_id`, whose result the network
        verified. Noted once, with the job's settlement (Jobs.settle_many)."""
        AMOUNT.check("amount_micro", amount_micro)
        if not self.name.startswith("client:"):
            raise InvalidAmount("", f"only a client pays for work, not {self.name}")
        if amount_micro:
            self._verified_work_paid(job_id=job_id, amount_micro=amount_micro)

    @event("VerifiedWorkPaid")
    def _verified_work_paid(self, job_id: str, amount_micro: int) -> None:
        self.verified_spent_micro += amount_micro

    def note_outvoted(self, outcome_key: str, provider_id: str) -> None:
        """A job of this client outvoted `provider_id`'s run (the outcome `outcome_key`:
        `<job id>` or `<job id>#<attempt>`). Noted once, with that outcome, where the
        provider recorded it for the first time (Jobs.record_reputation)."""
        if not self.name.startswith("client:"):
            raise DomainError("", f"only a client's jobs outvote a run, not {self.name}'s")
        self._outvoted_caused(outcome_key=outcome_key, provider_id=provider_id)

    @event("OutvotedCaused")
    def _outvoted_caused(self, outcome_key: str, provider_id: str) -> None:
        self.outvotes_caused += 1

    @event(EntryPosted)
    def post(
        self, transfer_id: str, amount_micro: int, counterparty: str, memo: str, kind: str
    ) -> None:
        self.balance_micro += amount_micro
        self.posted.append(transfer_id)


def transfer(
    source: Account, target: Account, transfer_id: str, amount_micro: int, memo: str
) -> bool:
    """Move money between two loaded accounts. False if already posted (or nothing to move)."""
    if not isinstance(amount_micro, int) or isinstance(amount_micro, bool):
        raise InvalidAmount("", f"amount must be an integer of micro-credits, got {amount_micro!r}")
    if amount_micro < 0:
        raise InvalidAmount("", f"amount must not be negative, got {amount_micro}")
    AMOUNT.check("amount_micro", amount_micro)
    if source.name == target.name:
        raise InvalidAmount("", f"cannot transfer from {source.name} to itself")
    if amount_micro == 0 or source.has_posted(transfer_id) or target.has_posted(transfer_id):
        return False
    source.check_debit(amount_micro)
    # Balances stay representable (domain/limits.py), the outside world's account too.
    if source.balance_micro - amount_micro < -MAX_BALANCE_MICRO:
        raise OutOfBounds("amount_micro", f"would take {source.name} below "
                          f"-{MAX_BALANCE_MICRO} micro-credits")
    if target.balance_micro + amount_micro > MAX_BALANCE_MICRO:
        raise OutOfBounds("amount_micro", f"would take {target.name} above "
                          f"{MAX_BALANCE_MICRO} micro-credits")
    kind = kind_of(transfer_id)
    source.post(transfer_id, -amount_micro, target.name, memo, kind)
    target.post(transfer_id, amount_micro, source.name, memo, kind)
    return True
