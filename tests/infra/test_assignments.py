"""The assignment table on SQLite and PostgreSQL, shared by two replicas (two connections):
an assignment is handed out once, finished once, and a retried try replaces the earlier;
its request and task token are sealed in the row, and a row that does not open is closed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.assignments import MAX_OUTAGE_GRACE_S, AssignmentBoard
from infra.row_cipher import RowCipher
from readmodel.schema import ViewDB
from tests.support.stores import store_settings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["sqlite", "postgres"])
def boards(request: pytest.FixtureRequest, tmp_path: Path
           ) -> Iterator[tuple[AssignmentBoard, AssignmentBoard, Clock]]:
    with store_settings(request.param, tmp_path) as settings:
        clock = Clock()
        one, two = ViewDB(settings), ViewDB(settings)  # two API replicas' connections
        try:
            cipher = RowCipher([secrets.token_bytes(32)])  # the replicas share the payload key
            yield (AssignmentBoard(one, cipher, clock), AssignmentBoard(two, cipher, clock),
                   clock)
        finally:
            one.close()
            two.close()


def publish(board: AssignmentBoard, attempt: int = 1, provider_id: str = "p1",
            activity_id: str = "7", request: dict[str, Any] | None = None,
            run_id: str = "r1") -> str:
    return board.publish(
        provider_id=provider_id, kind="execute_job",
        request=request or {"job_id": "j1", "attempt": 1},
        task_token=b"\x00token\xff", workflow_id="job-j1", run_id=run_id,
        activity_id=activity_id, attempt=attempt, gpus=2, heartbeat_timeout_s=10.0,
        pickup_timeout_s=30.0,
    )


def test_an_assignment_is_handed_out_once_whichever_replica_asks(boards: Any) -> None:
    one, two, clock = boards
    aid = publish(one)

    assert two.waiting_providers() == {"p1"}
    first, second = two.hand_out("p1"), one.hand_out("p1")

    assert [a.assignment_id for a in first] == [aid] and second == []
    got = one.get(aid)
    assert got is not None and got.handed_out_at == clock.now and got.open
    assert got.task_token == b"\x00token\xff" and got.gpus == 2
    assert got.request == {"job_id": "j1", "attempt": 1}
    assert "task_token" not in str(got.public()) and "token" not in str(got.public())
    assert one.hand_out("p2") == [] and two.waiting_providers() == set()


def test_a_retried_try_replaces_the_earlier_ones_row(boards: Any) -> None:
    one, two, _ = boards
    old = publish(one, attempt=1)
    assert one.hand_out("p1")
    new = publish(two, attempt=2)

    assert new != old
    assert one.get(old) is None  # the first try's agent hears "gone" at its next heartbeat
    assert [a.assignment_id for a in one.hand_out("p1")] == [new]


def test_an_assignment_is_finished_once(boards: Any) -> None:
    one, two, _ = boards
    aid = publish(one)
    assert one.finish(aid, "completed") is True
    assert two.finish(aid, "completed") is False
    assert two.finish(aid, "failed") is False
    found = one.get(aid)
    assert found is not None and not found.open and found.outcome == "completed"
    one.reopen(aid, "failed")  # only the finish it made is undone: not this one
    assert not one.get(aid).open  # type: ignore[union-attr]
    one.reopen(aid, "completed")
    assert two.finish(aid, "failed") is True


def test_what_waits_and_what_lapsed(boards: Any) -> None:
    one, _, clock = boards
    waiting = publish(one)
    held = publish(one, provider_id="p2", activity_id="8")
    assert {a.assignment_id for a in one.waiting()} == {waiting, held}
    one.hand_out("p2")
    assert [a.assignment_id for a in one.waiting()] == [waiting]
    clock.now += 10.0 + 61.0  # unheard a minute past its timeout: every API may be away,
    one.forget_finished()  # its agent running on, its step in Temporal for the outage grace
    running = one.get(held)
    assert running is not None and running.open
    clock.now += MAX_OUTAGE_GRACE_S  # past any grace: Temporal has long timed it out
    one.forget_finished()
    lapsed = one.get(held)
    assert lapsed is not None and lapsed.outcome == "lapsed"
    still = one.get(waiting)
    assert still is not None and still.open  # waiting ones are the assignment watch's business


def raw(board: AssignmentBoard, aid: str) -> dict[str, Any]:
    rows = board.db.query("SELECT * FROM assignments WHERE assignment_id = ?", (aid,))
    return dict(rows[0])


def test_the_request_and_the_task_token_are_sealed_in_the_row(boards: Any) -> None:
    one, two, _ = boards
    secret = {"job_id": "j1", "attempt": 1, "env": {"API_TOKEN": "tok-0123456789"},
              "url": "http://api/storage/c/in.txt?sig=" + "ab" * 32}
    aid = publish(one, request=secret)
    row = str(list(raw(one, aid).values()))
    for clear in ("tok-0123456789", "ab" * 32, b"\x00token\xff".hex(), "token"):
        assert clear not in row
    (got,) = two.hand_out("p1")  # the other replica opens it with the shared key
    assert got.request == secret and got.task_token == b"\x00token\xff"


def test_a_row_that_does_not_open_is_closed_and_never_handed_out(boards: Any) -> None:
    one, _, _ = boards
    victim = publish(one, provider_id="p1", activity_id="1")
    other = publish(one, provider_id="p1", activity_id="2",
                    request={"job_id": "j1", "attempt": 1, "env": {"X": "other"}})
    old = publish(one, provider_id="p1", activity_id="3")
    # Another row's sealed request moved into the victim's row; an old version's plaintext.
    with one.db.transaction() as cur:
        cur.execute("UPDATE assignments SET request = ? WHERE assignment_id = ?",
                    (raw(one, other)["request"], victim))
        cur.execute("UPDATE assignments SET request = ?, task_token = ?"
                    " WHERE assignment_id = ?", ('{"job_id": "j1"}', "00", old))

    assert [a.assignment_id for a in one.hand_out("p1")] == [other]
    assert one.get(victim) is None and one.get(old) is None
    for aid in (victim, old):
        row = raw(one, aid)
        assert row["finished_at"] is not None and row["outcome"] == "unreadable"
        assert row["handed_out_at"] is None
    assert one.waiting() == [] and one.waiting_providers() == set()


def test_a_board_with_another_key_opens_no_row(boards: Any) -> None:
    one, _, clock = boards
    aid = publish(one)
    stranger = AssignmentBoard(one.db, RowCipher([secrets.token_bytes(32)]), clock)
    assert stranger.hand_out("p1") == []
    assert raw(one, aid)["outcome"] == "unreadable"


def adopt(board: AssignmentBoard, run_id: str = "r2", job_attempt: int = 1,
          kind: str = "execute_job") -> Any:
    return board.adopt(
        provider_id="p1", kind=kind, job_id="j1", job_attempt=job_attempt,
        task_token=b"new", workflow_id="job-j1", run_id=run_id, activity_id="9", attempt=1,
        heartbeat_timeout_s=20.0, pickup_timeout_s=30.0,
    )


def test_a_reset_runs_new_run_takes_over_the_step_its_old_run_left(boards: Any) -> None:
    """A Temporal reset's new run schedules the running step again: it takes the old run's
    row over (its agent goes on, reporting to the new try), once; never a row of its own
    run, of another attempt or of another step."""
    one, two, _ = boards
    aid = publish(one)
    (handed,) = one.hand_out("p1")
    assert adopt(two, run_id="r1") is None  # its own run: a retry, not a takeover
    assert adopt(two, job_attempt=2) is None and adopt(two, kind="upload_outputs") is None
    assert not one.begun("job-j1", "r2", "j1", 2) and not one.begun("job-j1", "r1", "j1", 1)
    assert one.begun("job-j1", "r2", "j1", 1)  # its command was handed out: no staging

    taken = adopt(two)
    assert taken is not None and taken.assignment_id == aid and taken.result is None
    got = one.get(aid)
    assert got is not None and got.open and got.task_token == b"new" and got.run_id == "r2"
    assert got.handed_out_at == handed.handed_out_at  # paid from the first hand-out
    assert adopt(one, run_id="r3") is not None and adopt(two, run_id="r3") is None


def test_a_step_an_earlier_run_handed_out_that_closed_with_nothing_to_take_is_abandoned(
    boards: Any,
) -> None:
    """The reset's new run came after the API's grace (its agent was told to stop: `gone`):
    nothing to take over, and the attempt is not handed out again (activities/assign.py
    refuses it, AttemptSpent, for a fresh attempt). Only a row an earlier run handed out."""
    one, two, _ = boards
    aid = publish(one)
    assert not two.abandoned("job-j1", "r2", "execute_job", "j1", 1)  # waiting: taken over
    one.hand_out("p1")
    assert not two.abandoned("job-j1", "r2", "execute_job", "j1", 1)  # running: taken over
    assert one.finish(aid, "gone")
    assert adopt(two) is None
    assert two.abandoned("job-j1", "r2", "execute_job", "j1", 1)
    assert not two.abandoned("job-j1", "r1", "execute_job", "j1", 1)  # its own run's retry
    assert not two.abandoned("job-j1", "r2", "execute_job", "j1", 2)
    assert not two.abandoned("job-j1", "r2", "upload_outputs", "j1", 1)
    never = publish(one, request={"job_id": "j1", "attempt": 2}, activity_id="8")
    assert one.finish(never, "not picked up")  # never handed out: nothing ran under it
    assert not two.abandoned("job-j1", "r2", "execute_job", "j1", 2)


def test_a_result_that_came_after_its_run_was_reset_goes_to_the_new_run_once(
    boards: Any,
) -> None:
    one, two, clock = boards
    aid = publish(one)
    one.hand_out("p1")
    assert one.finish(aid, "completed", {"exit_code": 0})
    one.hold(aid)
    assert one.hand_out("p1") == [] and one.waiting() == []

    taken = adopt(two)
    assert taken is not None and taken.result == {"exit_code": 0}
    got = one.get(aid)
    assert got is not None and not got.open and got.outcome == "completed"
    # A later reset's run takes the same kept result; the step is not run again.
    again = adopt(one, run_id="r3")
    assert again is not None and again.result == {"exit_code": 0}
    assert one.kept("job-j1", "j1", 1, "execute_job")
    assert not one.kept("job-j1", "j1", 2, "execute_job")
    assert not one.kept("job-j1", "j1", 1, "upload_outputs")

    # One no run takes closes as a lapsed step does.
    # One no run takes closes as a lapsed step does; a failed one is not taken either.
    with one.db.transaction() as cur:
        cur.execute("DELETE FROM assignments WHERE assignment_id = ?", (aid,))
    held = publish(one, run_id="r4", activity_id="8")
    failed = publish(one, run_id="r6", activity_id="8")
    one.hand_out("p1")
    one.finish(held, "completed", {"exit_code": 1})
    one.hold(held)
    one.finish(failed, "failed")
    clock.now += 10.0 + 61
    one.forget_finished()
    lapsed = one.get(held)
    assert lapsed is not None and lapsed.outcome == "lapsed" and adopt(two, run_id="r5") is None
    assert not one.kept("job-j1", "j1", 1, "execute_job")


def test_a_provider_is_silent_only_once_an_api_was_up_all_through_its_bound(
        boards: Any) -> None:
    """An API's listener stamps say the network could hear: silence is a stretch of the
    heartbeat timeout, from the provider's last word (or the API's start, if later) to the
    API's latest stamp."""
    one, two, clock = boards
    aid = publish(one)  # heartbeat timeout 10 s
    (a,) = two.hand_out("p1")  # heard at 1000
    assert a.public()["giveUpAfterS"] == 10.0  # its request names no outage grace
    clock.now += 30.0
    assert two.silent() == []  # no API stamped: nobody was heard, so nobody is silent

    one.listeners.stamp("api-1", up_since=900.0)  # up since before, stamped now: 30 s unheard
    assert [s.assignment_id for s in two.silent()] == [aid]
    one.seen(aid)  # heard again (at 1030)
    clock.now += 9.0
    one.listeners.stamp("api-1", up_since=900.0)
    assert two.silent() == []  # 9 s: within its bound
    clock.now += 5.0  # api-1 died at 1039, unheard since 1030 for 9 s of its life
    assert two.silent() == []
    one.listeners.stamp("api-2", up_since=clock.now - 1.0)  # another came up a moment ago
    assert two.silent() == []  # the agent reconnects: its bound runs from the API's start
    clock.now += 9.5
    one.listeners.stamp("api-2", up_since=clock.now - 10.5)
    assert [s.assignment_id for s in two.silent()] == [aid]

    one.seen(aid)
    assert two.silent() == []
    assert one.finish(aid, "completed")
    clock.now += 60.0
    one.listeners.stamp("api-2", up_since=clock.now - 70.5)
    assert two.silent() == []  # a finished step is nobody's silence
    one.listeners.forget("api-2")
    one.listeners.forget("api-1")
    assert not one.db.query("SELECT * FROM listeners")


def test_a_step_whose_request_names_an_outage_grace_gives_up_after_both(boards: Any) -> None:
    one, two, _ = boards
    publish(one, request={"job_id": "j1", "attempt": 1, "outage_grace_s": 60.0})
    (a,) = two.hand_out("p1")
    assert (a.public()["heartbeatTimeoutS"], a.public()["giveUpAfterS"]) == (10.0, 70.0)


def test_a_step_is_not_picked_up_only_once_an_api_was_up_all_through_its_bound(
        boards: Any) -> None:
    """An outage of every API is no provider's fault: nobody could pick anything up. A
    waiting step is overdue past its pickup bound (30 s) once an API was up for a whole
    bound (from the step's publication, or the API's start if later), or, whatever the
    outages, past its bound and its outage grace (60 s)."""
    one, two, clock = boards
    publish(one, request={"job_id": "j1", "attempt": 1, "outage_grace_s": 60.0})  # at 1000
    (a,) = two.waiting()
    assert not a.pickup_overdue(1029.0, [(900.0, 1029.0)])  # within its bound
    assert a.pickup_overdue(1031.0, [(900.0, 1031.0)])  # an API up all through it
    assert not a.pickup_overdue(1031.0, [])  # every API away: no verdict yet
    assert not a.pickup_overdue(1031.0, [(900.0, 1010.0)])  # it died 10 s in
    assert not a.pickup_overdue(1050.0, [(900.0, 1010.0), (1040.0, 1050.0)])  # one came back
    assert a.pickup_overdue(1071.0, [(900.0, 1010.0), (1040.0, 1071.0)])  # a bound since
    assert a.pickup_overdue(1090.0, [])  # past its bound and the grace: given up all the same

    clock.now = 1031.0
    one.listeners.stamp("api-1", up_since=1020.0)
    assert two.listeners.rows() == [(1020.0, 1031.0)]
    assert not a.pickup_overdue(clock.now, two.listeners.rows())


def test_the_watch_closes_a_step_only_in_the_state_it_judged(boards: Any) -> None:
    """Judged not picked up, then handed out meanwhile: not closed. Judged silent, then its
    result came after a reset (held for the new run): not closed, the result kept."""
    one, two, _ = boards
    aid = publish(one)
    two.hand_out("p1")
    assert not one.finish(aid, "not picked up", None, "waiting")
    assert one.finish(aid, "completed", {"files": 1, "bytes": 2})
    one.hold(aid)
    assert not one.finish(aid, "silent", None, "running")
    kept = one.get(aid)
    assert kept is not None and kept.open and kept.outcome == "held"
    assert one.kept("job-j1", "j1", 1, "execute_job")


def test_a_board_keeps_time_on_the_databases_clock(boards: Any) -> None:
    """Without a clock of its own, a board stamps with its database's: PostgreSQL's for the
    APIs and control workers of every machine that share it (so a provider heard by one
    API and another API's listener stamp are compared on one clock)."""
    import time

    from infra.row_cipher import RowCipher as Cipher

    one, _, _ = boards
    board = AssignmentBoard(one.db, Cipher([secrets.token_bytes(32)]))
    assert board.clock == one.db.now
    assert abs(board.clock() - time.time()) < 5  # the same machine here
    if one.db.is_postgres:
        (row,) = one.db.query("SELECT EXTRACT(EPOCH FROM now()) AS t")
        assert abs(board.clock() - float(row["t"])) < 5
