"""The double-entry ledger, through the Network application, on every event store."""

from __future__ import annotations

from typing import Any

import pytest

from domain.application import Network, Payment
from domain.errors import InsufficientFunds, InvalidAmount
from domain.ledger import EXTERNAL, FEES, Account, transfer
from protocol.money import cost_of_gpu_time
from tests.domain.support import (
    CHARGED,
    FEE,
    FEE_BPS,
    GPU_MS,
    MAX_COST,
    PAID,
    PRICE,
    REFUND,
    START,
    Names,
    account_names,
    all_events,
    event_type,
    events_of,
    lifecycle_commands,
    make_spec,
    notification_count,
    run_lifecycle,
)


def entries(app: Network, name: str) -> list[Any]:
    return [
        e for e in events_of(app, Account.create_id(name=name)) if event_type(e) == "EntryPosted"
    ]


def total_of_all_balances(app: Network) -> int:
    return sum(app.balance(name) for name in account_names(app))


def test_open_client_twice_gives_one_welcome_deposit(app: Network) -> None:
    app.open_client("alice", START)
    app.open_client("alice", START)
    assert app.balance("client:alice") == START
    assert app.balance(EXTERNAL) == -START
    assert len(entries(app, "client:alice")) == 1


def test_deposits_add_up_and_each_deposit_id_counts_once(app: Network) -> None:
    app.open_client("alice", START)
    assert app.deposit("alice", 2_500_000, "dep-1") == START + 2_500_000
    assert app.deposit("alice", 2_500_000, "dep-1") == START + 2_500_000
    assert app.deposit("alice", 1, "dep-2") == START + 2_500_001
    assert app.balance("client:alice") == START + 2_500_001
    assert app.balance(EXTERNAL) == -(START + 2_500_001)


def test_balance_of_an_unknown_account_is_zero(app: Network) -> None:
    assert app.balance("client:nobody") == 0


@pytest.mark.parametrize(
    ("amount", "words"),
    [
        (-1, "must not be negative, got -1"),
        (1.5, "must be an integer of micro-credits, got 1.5"),
        ("5", "must be an integer of micro-credits, got '5'"),
        (True, "must be an integer of micro-credits, got True"),
        (False, "must be an integer of micro-credits, got False"),
    ],
)
def test_transfer_refuses_bad_amounts(app: Network, amount: Any, words: str) -> None:
    app.open_client("alice", START)
    before = notification_count(app)
    with pytest.raises(InvalidAmount) as info:
        app.deposit("bob", amount, "dep")
    assert words in str(info.value)
    alice, bob = app.account("client:alice"), app.account("client:bob")
    with pytest.raises(InvalidAmount):
        transfer(alice, bob, "t-bad", amount, "gift")
    assert notification_count(app) == before
    assert app.balance("client:bob") == 0
    assert app.balance("client:alice") == START


def test_transfer_to_itself_is_refused(app: Network) -> None:
    app.open_client("alice", START)
    alice, same = app.account("client:alice"), app.account("client:alice")
    with pytest.raises(InvalidAmount, match="cannot transfer from client:alice to itself"):
        transfer(alice, same, "t-self", 10, "loop")
    assert app.balance("client:alice") == START


def test_overdraft_names_the_account_and_the_amounts(app: Network) -> None:
    app.open_client("alice", 1_000)
    alice, bob = app.account("client:alice"), app.account("client:bob")
    with pytest.raises(InsufficientFunds) as info:
        transfer(alice, bob, "t-1", 1_001, "too much")
    assert str(info.value) == "account client:alice holds 1000 micro-credits, 1001 needed"
    assert alice.balance_micro == 1_000  # nothing posted on either side
    assert bob.balance_micro == 0


def test_a_transfer_moves_money_both_ways_and_a_repeated_id_posts_once(app: Network) -> None:
    app.open_client("alice", START)
    alice, bob = app.account("client:alice"), app.account("client:bob")
    assert transfer(alice, bob, "t-1", 400, "gift") is True
    app.save(alice, bob)
    alice, bob = app.account("client:alice"), app.account("client:bob")
    assert transfer(alice, bob, "t-1", 400, "gift") is False
    assert transfer(bob, alice, "t-1", 400, "gift back, same id") is False
    app.save(alice, bob)
    assert app.balance("client:alice") == START - 400
    assert app.balance("client:bob") == 400
    assert [e.amount_micro for e in entries(app, "client:bob")] == [400]
    assert [e.counterparty for e in entries(app, "client:bob")] == ["client:alice"]


def test_zero_transfer_posts_nothing(app: Network) -> None:
    app.open_client("alice", START)
    alice, bob = app.account("client:alice"), app.account("client:bob")
    assert transfer(alice, bob, "t-0", 0, "nothing") is False
    assert alice.balance_micro == START
    assert not alice.has_posted("t-0")


def test_only_external_accounts_may_go_negative(app: Network) -> None:
    assert app.account(EXTERNAL).may_go_negative is True
    for name in ("client:alice", "escrow:job-1", "provider:p", FEES):
        assert app.account(name).may_go_negative is False


def test_full_lifecycle_balances(app: Network) -> None:
    results = run_lifecycle(app)
    figures = results["settle"]
    assert (
        figures.charged_micro,
        figures.provider_paid_micro,
        figures.fee_micro,
        figures.refunded_micro,
    ) == (CHARGED, PAID, FEE, REFUND)
    assert FEE == CHARGED * FEE_BPS // 10_000
    assert app.balance("client:alice") == START - CHARGED
    assert app.balance("escrow:job-1") == 0
    assert app.balance("provider:prov-1") == CHARGED - FEE
    assert app.balance(FEES) == FEE
    assert app.balance(EXTERNAL) == -START
    assert sorted(account_names(app)) == sorted(
        [EXTERNAL, "client:alice", "escrow:job-1", "provider:prov-1", FEES]
    )
    assert total_of_all_balances(app) == 0


def test_escrow_holds_the_max_cost_until_settlement(app: Network) -> None:
    app.open_client("alice", START)
    app.submit_job("job-1", "alice", make_spec())
    admission = app.admit_job("job-1")
    assert admission.admitted
    assert admission.max_cost_micro == MAX_COST
    assert app.balance("client:alice") == START - MAX_COST
    assert app.balance("escrow:job-1") == MAX_COST
    assert total_of_all_balances(app) == 0


def test_settle_twice_changes_nothing(app: Network) -> None:
    first = run_lifecycle(app)["settle"]
    balances = {name: app.balance(name) for name in account_names(app)}
    count = notification_count(app)
    again = app.settle("job-1", "prov-1", GPU_MS, PRICE, True, FEE_BPS)
    assert again == first
    assert notification_count(app) == count
    assert {name: app.balance(name) for name in account_names(app)} == balances


def test_settle_without_paying_refunds_the_whole_escrow(app: Network) -> None:
    figures = run_lifecycle(app, succeed=False)["settle"]
    assert (
        figures.charged_micro,
        figures.provider_paid_micro,
        figures.fee_micro,
        figures.refunded_micro,
    ) == (0, 0, 0, MAX_COST)
    assert app.balance("client:alice") == START
    assert app.balance("escrow:job-1") == 0
    assert app.balance("provider:prov-1") == 0
    assert app.balance(FEES) == 0
    assert total_of_all_balances(app) == 0
    settled = [e for e in all_events(app) if event_type(e) == "JobSettled"]
    assert [(e.charged_micro, e.refunded_micro) for e in settled] == [(0, MAX_COST)]


def test_charge_is_capped_at_the_escrow(app: Network) -> None:
    for name, command in lifecycle_commands(app, Names()):
        if name == "settle":
            break
        command()
    # Ten hours of GPU time against a one hour escrow: the client never pays more than held.
    figures = app.settle("job-1", "prov-1", 10 * 3_600_000, PRICE, True, FEE_BPS)
    assert figures.charged_micro == MAX_COST
    assert figures.refunded_micro == 0
    assert figures.fee_micro == MAX_COST * FEE_BPS // 10_000
    assert app.balance("client:alice") == START - MAX_COST
    assert app.balance("provider:prov-1") == MAX_COST - figures.fee_micro
    assert app.balance("escrow:job-1") == 0
    assert total_of_all_balances(app) == 0


def test_two_jobs_two_clients_still_sum_to_zero(app: Network) -> None:
    run_lifecycle(app, Names("job-a", "alice", "prov-a"))
    run_lifecycle(app, Names("job-b", "bob", "prov-b"), succeed=False)
    assert app.balance("client:alice") == START - CHARGED
    assert app.balance("client:bob") == START
    assert app.balance(FEES) == FEE
    assert app.balance(EXTERNAL) == -2 * START
    assert total_of_all_balances(app) == 0


def test_a_withheld_payment_charges_the_client_and_pays_the_network_not_the_provider(
    app: Network,
) -> None:
    """A timed-out run with no outputs that nothing checked (JobWorkflow): the client pays
    for the window, the provider gets nothing, the network keeps it; a retry changes nothing."""
    commands = dict(lifecycle_commands(app, succeed=False))
    for name in ("open_client", "submit_job", "admit_job", "register_provider", "allocate"):
        commands[name]()
    names = Names()
    withheld = [Payment(names.provider, GPU_MS, PRICE, withheld=True)]
    fees_before = app.balance(FEES)

    figures = app.settle_many(names.job, withheld, FEE_BPS)
    again = app.settle_many(names.job, withheld, FEE_BPS)

    assert figures == again
    assert figures.charged_micro == CHARGED and figures.provider_paid_micro == 0
    assert figures.fee_micro == CHARGED and figures.refunded_micro == MAX_COST - CHARGED
    assert app.balance(f"provider:{names.provider}") == 0
    assert app.balance(FEES) - fees_before == CHARGED
    assert app.balance(f"client:{names.client}") == START - CHARGED
    assert total_of_all_balances(app) == 0


def test_two_runs_paid_to_one_provider_both_leave_the_escrow(app: Network) -> None:
    """Two accepted runs on one provider (e.g. a replica and the verifier, or a run placed
    there again after a release): the settlement moves what its figures say, every
    micro-credit, and the escrow ends empty (the soak found 2 escrows left holding the
    second run's pay, posted under the first one's transfer id and skipped)."""
    for name, command in lifecycle_commands(app, Names()):
        if name == "settle":
            break
        command()
    runs = [Payment("prov-1", GPU_MS, PRICE), Payment("prov-1", 2 * GPU_MS, PRICE)]
    figures = app.settle_many("job-1", runs, FEE_BPS)
    cost = cost_of_gpu_time(GPU_MS, PRICE) + cost_of_gpu_time(2 * GPU_MS, PRICE)
    assert figures.charged_micro == cost and figures.refunded_micro == MAX_COST - cost
    assert app.balance("escrow:job-1") == 0
    assert app.balance("client:alice") == START - cost
    assert app.balance("provider:prov-1") == figures.provider_paid_micro
    assert app.balance(FEES) == figures.fee_micro
    assert total_of_all_balances(app) == 0
    assert app.settle_many("job-1", runs, FEE_BPS) == figures  # a retry moves nothing more
    assert app.balance("escrow:job-1") == 0 and app.balance(FEES) == figures.fee_micro
