"""The assignment table on SQLite and PostgreSQL, shared by two replicas (two connections):
an assignment is handed out once, finished once, and a retried try replaces the earlier;
its request and task token are sealed in the row, and a row that does not open is closed."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infra.assignments import AssignmentBoard
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
            activity_id: str = "7", request: dict[str, Any] | None = None) -> str:
    return board.publish(
        provider_id=provider_id, kind="execute_job",
        request=request or {"job_id": "j1", "attempt": 1},
        task_token=b"\x00token\xff", workflow_id="job-j1", run_id="r1",
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
    one.reopen(aid)
    assert two.finish(aid, "failed") is True


def test_what_waits_and_what_lapsed(boards: Any) -> None:
    one, _, clock = boards
    waiting = publish(one)
    held = publish(one, provider_id="p2", activity_id="8")
    assert {a.assignment_id for a in one.waiting()} == {waiting, held}
    one.hand_out("p2")
    assert [a.assignment_id for a in one.waiting()] == [waiting]
    clock.now += 10.0 + 61.0  # the holder stopped heartbeating a minute past its timeout
    one.forget_finished()
    lapsed = one.get(held)
    assert lapsed is not None and lapsed.outcome == "lapsed"
    still = one.get(waiting)
    assert still is not None and still.open  # waiting ones are the pickup watch's business


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
