"""Credit accounts: a client's balance and what is held in escrow for its jobs, its
ledger, a provider's earnings, and an admin's grant of credits."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import strawberry

from api import auth
from api.context import I, run_command, signed_in
from api.cost import MAX_LEDGER_ENTRIES
from api.errors import FieldError, Refusal, refusable
from api.features.providers import own_provider
from api.scalars import BigInt
from api.services import Services
from domain.ledger import client_account
from protocol.money import credits_to_micro

MAX_GRANT_MICRO = 1_000_000 * 1_000_000  # an admin's grant: at most a million credits


@strawberry.type
class Account:
    client_id: str
    balance_micro: BigInt
    escrow_micro: BigInt


@strawberry.type
class LedgerEntry:
    seq: int
    transfer_id: str
    amount_micro: BigInt
    balance_micro: BigInt
    counterparty: str
    kind: str
    memo: str
    at: str


@strawberry.type
class ProviderEarnings:
    provider_id: str
    balance_micro: BigInt
    earned_micro: BigInt = strawberry.field(
        description="paid for GPU time, ever: verified work, the network's checks, and the "
        "time used by jobs that were cancelled or failed")
    verified_micro: BigInt = strawberry.field(
        description="paid for verified work, ever: runs of jobs whose results were checked "
        "and accepted (the job succeeded)")
    withdrawn_micro: BigInt
    entries: list[LedgerEntry] = strawberry.field(description="newest first")


@strawberry.type
class CreditsGranted:
    client_id: str
    balance_micro: BigInt = strawberry.field(description="the client's balance now")


GrantCreditsResult = Annotated[CreditsGranted | FieldError, strawberry.union(
    "GrantCreditsResult", description="The client's balance after the grant, or why it was "
    "refused")]


def ledger_entry(r: dict[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        seq=r["seq"], transfer_id=r["transfer_id"], amount_micro=r["amount_micro"],
        balance_micro=r["balance_micro"], counterparty=r["counterparty"], kind=r["kind"],
        memo=r["memo"], at=r["at"],
    )


async def load_earnings(services: Services, provider_id: str, limit: int) -> ProviderEarnings:
    account = f"provider:{provider_id}"
    totals = await services.query(
        "SELECT COALESCE(SUM(CASE WHEN kind IN ('payment', 'verification') THEN amount_micro"
        " ELSE 0 END), 0) AS earned, COALESCE(SUM(CASE WHEN kind = 'withdrawal'"
        " THEN -amount_micro ELSE 0 END), 0) AS withdrawn FROM ledger_entries WHERE account = ?",
        (account,),
    )
    # A payment's transfer is pay:<job id>:<provider id> (domain/application.py settle_many).
    verified = await services.query(
        "SELECT COALESCE(SUM(e.amount_micro), 0) AS verified FROM ledger_entries e"
        " JOIN jobs j ON j.job_id = substr(e.transfer_id, 5, length(e.transfer_id) - 5 - ?)"
        " WHERE e.account = ? AND e.kind = 'payment' AND j.state = 'SUCCEEDED'",
        (len(provider_id), account),
    )
    balance = await services.query(
        "SELECT balance_micro FROM accounts WHERE name = ?", (account,)
    )
    rows = await services.query(
        "SELECT * FROM ledger_entries WHERE account = ? ORDER BY seq DESC LIMIT ?",
        (account, max(1, min(limit, MAX_LEDGER_ENTRIES))),
    )
    return ProviderEarnings(
        provider_id=provider_id,
        balance_micro=BigInt(balance[0]["balance_micro"] if balance else 0),
        earned_micro=BigInt(totals[0]["earned"]), withdrawn_micro=BigInt(totals[0]["withdrawn"]),
        verified_micro=BigInt(verified[0]["verified"]),
        entries=[ledger_entry(r) for r in rows],
    )


@strawberry.type
class AccountQuery:
    @strawberry.field(permission_classes=[auth.ClientRole])
    async def account(self, info: I) -> Account:
        client = info.context.client_id
        rows = await info.context.services.query(
            "SELECT a.balance_micro AS b FROM accounts a WHERE a.name = ?",
            (client_account(client),),
        )
        escrow = await info.context.services.query(
            "SELECT COALESCE(SUM(a.balance_micro), 0) AS e FROM accounts a JOIN jobs j"
            " ON a.name = 'escrow:' || j.job_id WHERE j.client_id = ?",
            (client,),
        )
        balance = rows[0]["b"] if rows else info.context.services.settings.starting_balance_micro
        return Account(
            client_id=client, balance_micro=BigInt(balance), escrow_micro=BigInt(escrow[0]["e"])
        )

    @strawberry.field(description="A provider's balance, what it earned and its ledger entries",
                      permission_classes=[auth.ProviderRole])
    async def provider_earnings(
        self, info: I, provider_id: str, limit: int = 100
    ) -> ProviderEarnings:
        await own_provider(info, provider_id)
        return await load_earnings(info.context.services, provider_id, limit)

    @strawberry.field(description="The caller's ledger: every entry on its account, newest first",
                      permission_classes=[auth.ClientRole])
    async def ledger(self, info: I, limit: int = 100) -> list[LedgerEntry]:
        rows = await info.context.services.query(
            "SELECT * FROM ledger_entries WHERE account = ? ORDER BY seq DESC LIMIT ?",
            (client_account(info.context.client_id), max(1, min(limit, MAX_LEDGER_ENTRIES))),
        )
        return [ledger_entry(r) for r in rows]


@strawberry.type
class AccountMutation:
    @strawberry.mutation(
        description="Admin: add credits to the client account of the user with this email (a "
        "grant from outside the network, in its ledger as one, with who granted it and why); "
        "answers the client's new balance",
        permission_classes=[auth.AdminRole],
    )
    @refusable
    async def grant_credits(
        self, info: I, email: str, amount: str, memo: str = ""
    ) -> GrantCreditsResult:
        caller, services = signed_in(info), info.context.services
        try:
            micro = credits_to_micro(amount)
        except ValueError as err:
            raise Refusal("amount", str(err)) from None
        if not 0 < micro <= MAX_GRANT_MICRO:
            raise Refusal("amount", f"must be more than 0 and at most "
                          f"{MAX_GRANT_MICRO // 1_000_000} credits, got {amount}")
        memo = memo.strip()
        if len(memo) > 200:
            raise Refusal("memo", f"at most 200 characters, got {len(memo)}")
        user = await asyncio.to_thread(services.identity.user_by_email, email[:320])
        if user is None or user.client_id is None or "client" not in user.roles:
            raise Refusal("email", f"no client account '{email[:80]}'")
        words = f"granted by {caller.email}" + (f": {memo}" if memo else "")
        # The starting balance the client sees before its first job is theirs: keep it.
        await run_command(services.network.open_client, user.client_id,
                   services.settings.starting_balance_micro)
        balance = await run_command(services.network.grant, user.client_id, micro,
                                    str(uuid.uuid4()), words)
        return CreditsGranted(client_id=user.client_id, balance_micro=BigInt(balance))
