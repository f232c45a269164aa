"""The live log's reader: chunks placed by their offset in the job's whole output, across
the runtime's trims, cut on whole UTF-8 characters, never more than it may send."""

from __future__ import annotations

from pathlib import Path

from worker_gpu.joblog import MAX_BEHIND, LogFollower, complete_utf8
from worker_gpu.runtime_process import trim_log


def _append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def test_chunks_follow_the_output_and_name_their_offsets(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    follower = LogFollower(log, chunk_bytes=8)
    assert follower.read() == []  # no log yet
    _append(log, b"first line\n")
    chunks = follower.read()
    assert [(c.offset, c.size) for c in chunks] == [(0, 8), (8, 3)]
    assert "".join(c.text for c in chunks) == "first line\n"
    assert follower.read() == []
    _append(log, b"second\n")
    (chunk,) = follower.read()
    assert (chunk.offset, chunk.text) == (11, "second\n")


def test_a_character_cut_by_the_read_waits_for_its_end(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    follower = LogFollower(log)
    euro = "€".encode()
    _append(log, b"price " + euro[:2])
    (chunk,) = follower.read()
    assert chunk.text == "price "
    _append(log, euro[2:] + b"\n")
    (chunk,) = follower.read()
    assert (chunk.offset, chunk.text) == (6, "€\n")
    assert complete_utf8(b"ab" + euro[:1]) == 2 and complete_utf8(b"ab" + euro) == 5


def test_offsets_count_the_output_a_trim_dropped(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    follower = LogFollower(log, chunk_bytes=1 << 20)
    _append(log, b"a" * 100)
    assert sum(c.size for c in follower.read()) == 100
    _append(log, b"b" * 100)
    assert trim_log(log, max_bytes=150, keep=50) == 150  # 100 read, 50 unread are cut
    _append(log, b"c" * 10)
    (chunk,) = follower.read()
    # 50 bytes of b went unread; what follows is placed where it was in the output.
    assert (chunk.offset, chunk.text) == (150, "b" * 50 + "c" * 10)
    _append(log, b"d" * 200)
    trim_log(log, max_bytes=150, keep=50)  # a second trim counts both
    assert log.read_bytes().startswith(b"gpgpu: the log passed 150 bytes; 360 earlier bytes")
    (chunk,) = follower.read()
    assert (chunk.offset, chunk.text) == (360, "d" * 50)


def test_a_reader_far_behind_skips_to_the_newest(tmp_path: Path) -> None:
    log = tmp_path / "job.log"
    follower = LogFollower(log, chunk_bytes=10)
    _append(log, b"x" * 1000)
    chunks = follower.read()
    assert len(chunks) == MAX_BEHIND and chunks[0].offset == 1000 - 10 * MAX_BEHIND
    assert follower.offset == 1000
