"""A provider that keeps losing its runs rests: placed only where no other fits
(domain/resting.py), counted per owner so that many provider ids are one streak."""

from __future__ import annotations

from dataclasses import replace

from domain.matching import Candidate, explain
from domain.resting import REST_BASE_S, REST_MAX_S, rests_until, streak
from domain.scheduling import Waiting, plan, resting
from tests.domain.support import PRICE, gpu
from tests.domain.test_scheduling import REQ

NOW = 1_000_000.0


ESTABLISHED = 10_000_000  # a client that paid 10 credits for verified work before


def provider(pid: str, price: int = PRICE, outcomes: tuple[tuple[str, float], ...] = (),
             client: str = "c-someone", spent: int = ESTABLISHED, own_client: str = "c-owner"
             ) -> Candidate:
    """A candidate whose outcomes were all on jobs of `client`, which had paid `spent`."""
    return Candidate(pid, price, 0.5, True, [gpu(0)], [0], streak=streak(
        [o for o, _ in outcomes], [at for _, at in outcomes], [client] * len(outcomes),
        [spent] * len(outcomes), own_client))


def one_job(job: str = "j") -> list[Waiting]:
    return [Waiting(job, 1, "client", 0, 1.0, REQ)]


def placed(candidates: list[Candidate], owners: dict[str, str] | None = None) -> str:
    result = plan(one_job(), candidates, {}, owners=owners, now=NOW)
    assert len(result.placements) == 1, result
    return result.placements[0].provider_id


def test_a_cheap_provider_that_lost_its_last_run_is_passed_over_while_it_rests() -> None:
    black_hole = provider("cheap", PRICE // 100, (("lost", NOW - 10),))
    honest = provider("honest")

    assert placed([black_hole, honest]) == "honest"
    # Without the rest (no clock, as before) the price puts it first.
    assert plan(one_job(), [black_hole, honest], {}).placements[0].provider_id == "cheap"


def test_a_resting_provider_is_still_the_last_resort() -> None:
    black_hole = provider("cheap", PRICE // 100, (("lost", NOW - 10),))
    busy = replace(provider("honest"), free_gpu_indexes=[])

    assert placed([black_hole, busy]) == "cheap"


def test_the_rest_doubles_with_each_loss_in_a_row_up_to_an_hour() -> None:
    def until(losses: int) -> float:
        times = [NOW - 10 * i for i in range(losses)]
        return rests_until([streak(["lost"] * losses, times)])

    assert until(0) == 0.0
    assert until(1) == NOW + REST_BASE_S
    assert until(2) == NOW + 2 * REST_BASE_S
    assert until(3) == NOW + 4 * REST_BASE_S
    assert until(40) == NOW + REST_MAX_S
    # Over: it is placed by price again (one more chance).
    over = provider("cheap", PRICE // 100, (("lost", NOW - REST_BASE_S - 1),))
    assert placed([over, provider("honest")]) == "cheap"


def test_a_success_ends_the_streak() -> None:
    came_back = provider("cheap", PRICE // 100,
                         (("lost", NOW - 30), ("lost", NOW - 20), ("success", NOW - 10)))

    assert came_back.streak == (NOW - 10, ())
    assert placed([came_back, provider("honest")]) == "cheap"


def test_a_success_on_the_owners_own_job_or_a_new_clients_ends_no_streak() -> None:
    outcomes = (("lost", NOW - 30), ("success", NOW - 10))
    own = provider("cheap", PRICE // 100, outcomes, client="c-owner")
    new_client = provider("cheap", PRICE // 100, outcomes, spent=ESTABLISHED - 1)

    for came_back in (own, new_client):
        assert came_back.streak == (0.0, (NOW - 30,))
        assert placed([came_back, provider("honest")]) == "honest"


def test_an_owners_provider_ids_are_one_streak() -> None:
    # One account's fresh ids, each lost once long ago by itself, rest all together.
    ids = [provider(f"sybil-{i}", PRICE // 100, (("lost", NOW - 100 - i),)) for i in range(3)]
    owners = {p.provider_id: "attacker" for p in ids}
    fresh = provider("sybil-new", PRICE // 200)
    owners["sybil-new"] = "attacker"
    honest = provider("honest")

    # Alone, each one's single loss rested a minute and is over.
    assert placed([*ids, honest]) == "sybil-0"
    # As one owner: three losses in a row rest 4 minutes from the latest, fresh id too.
    assert placed([*ids, fresh, honest], owners) == "honest"


def test_an_honest_owners_success_on_one_machine_brings_back_the_others() -> None:
    crashed = provider("m1", PRICE // 100, (("lost", NOW - 20),))
    working = provider("m2", PRICE, (("success", NOW - 5),))
    owners = {"m1": "owner", "m2": "owner"}

    assert placed([crashed, working, provider("other", PRICE * 2)], owners) == "m1"


def test_the_explanation_puts_a_resting_offer_last_and_says_until_when() -> None:
    black_hole = provider("cheap", PRICE // 100, (("lost", NOW - 10),))
    honest = provider("honest")
    rests = resting([black_hole, honest], {}, NOW)

    judged = explain(REQ, [black_hole, honest], set(), "", rests)

    assert [(a.provider_id, a.eligible, a.resting_until) for a in judged] == [
        ("honest", True, 0.0), ("cheap", True, NOW - 10 + REST_BASE_S)]
    assert explain(REQ, [black_hole, honest], set())[0].provider_id == "cheap"
