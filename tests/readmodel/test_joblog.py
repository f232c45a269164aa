"""The live log's store on SQLite and PostgreSQL, written by two API replicas: chunks kept in
order once each, gaps and trims counted, every run and job within its bound."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from readmodel.joblog import KEEP_S, JobLogs, LogRefused
from readmodel.schema import ViewDB
from tests.domain.support import store_settings


@pytest.fixture(params=["sqlite", "postgres"])
def logs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[JobLogs, JobLogs]]:
    with store_settings(request.param, tmp_path) as settings:
        one, two = ViewDB(settings), ViewDB(settings)
        try:
            yield (JobLogs(one, max_run_bytes=100, max_job_bytes=150),
                   JobLogs(two, max_run_bytes=100, max_job_bytes=150))
        finally:
            one.close()
            two.close()


def texts(logs: JobLogs, job: str = "j1") -> list[tuple[int, int, int, str]]:
    return [(r["seq"], r["attempt"], r["skipped"], r["text"]) for r in logs.after(job, 0)]


def test_chunks_are_kept_in_order_once_each(logs: tuple[JobLogs, JobLogs]) -> None:
    one, two = logs
    assert one.append("j1", 1, "p1", 0, 6, "line1\n").seq == 1
    assert two.append("j1", 1, "p1", 0, 6, "line1\n").seq is None  # sent again
    assert two.append("j1", 1, "p1", 6, 6, "line2\n").seq == 2
    assert one.append("j1", 2, "p2", 0, 3, "ok\n").seq == 3  # another run of the job
    assert texts(one) == [(1, 1, 0, "line1\n"), (2, 1, 0, "line2\n"), (3, 2, 0, "ok\n")]
    assert [r["seq"] for r in one.after("j1", 2)] == [3]
    with pytest.raises(LogRefused, match=r"log\.offset: 10 overlaps"):
        one.append("j1", 1, "p1", 10, 6, "2\nmore")


def test_a_gap_is_counted_on_the_next_chunk(logs: tuple[JobLogs, JobLogs]) -> None:
    one, _ = logs
    one.append("j1", 1, "p1", 0, 2, "a\n")
    one.append("j1", 1, "p1", 50, 2, "b\n")  # the provider passed over 48 bytes
    assert texts(one) == [(1, 1, 0, "a\n"), (2, 1, 48, "b\n")]


def test_a_run_and_a_job_keep_their_newest_text_within_bounds(
    logs: tuple[JobLogs, JobLogs]
) -> None:
    one, _ = logs
    for i in range(5):  # 5 x 30 bytes in run 1: 100 kept at most
        one.append("j1", 1, "p1", i * 30, 30, str(i) * 30)
    kept = texts(one)
    assert [t[3][0] for t in kept] == ["2", "3", "4"]
    assert kept[0][2] == 60  # the first kept says 60 bytes before it are not shown
    for i in range(3):  # run 2 brings the job past its 150
        one.append("j1", 2, "p2", i * 30, 30, chr(97 + i) * 30)
    kept = texts(one)
    assert sum(len(t[3]) for t in kept) <= 150
    assert kept[-1][3] == "c" * 30 and kept[0][2] > 60


def test_two_replicas_number_one_jobs_chunks_without_a_clash(
    logs: tuple[JobLogs, JobLogs]
) -> None:
    one, two = logs
    errors: list[BaseException] = []

    def write(store: JobLogs, attempt: int) -> None:
        try:
            for i in range(20):
                store.append("j2", attempt, "p", i, 1, "x")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(s, a)) for s, a in ((one, 1), (two, 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = [r["seq"] for r in one.after("j2", 0, 1000)]
    assert seqs == list(range(1, 41))


def test_logs_go_a_week_after_their_last_chunk(tmp_path: Path) -> None:
    with store_settings("sqlite", tmp_path) as settings:
        db = ViewDB(settings)
        now = [1000.0]
        logs = JobLogs(db, clock=lambda: now[0])
        logs.append("old", 1, "p", 0, 2, "a\n")
        now[0] += KEEP_S - 10
        logs.append("new", 1, "p", 0, 2, "b\n")
        now[0] += 20
        logs.forget_old()
        assert logs.after("old", 0) == [] and len(logs.after("new", 0)) == 1
        db.close()
