"""A job's live log: what it printed since the last look, in bounded chunks, across trims.

The runtime writes the job's output to job.log and, past its limit, trims the file to its
tail behind a header line that says how many bytes of output were dropped in all
(runtime_process.trim_log). `LogFollower` reads what was appended since its last read,
naming each chunk by its offset in the job's whole output (trims included), so that the
API can tell a resent chunk from a new one and a gap from a repeat.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# At most this much of the job's output in one chunk (the API refuses more: api/assignments.py).
CHUNK_BYTES = 16 << 10
# A read passes over what is further behind than this many chunks.
MAX_BEHIND = 4
_HEADER = re.compile(rb"^gpgpu: the log passed \d+ bytes; (\d+) earlier bytes were dropped")


@dataclass(frozen=True)
class LogChunk:
    """`size` bytes of the job's output from `offset` (0: its first byte), as text."""

    offset: int
    size: int
    text: str

    def as_json(self) -> dict[str, int | str]:
        return {"offset": self.offset, "bytes": self.size, "text": self.text}


def complete_utf8(data: bytes) -> int:
    """How much of `data` ends on a whole UTF-8 character (a character cut by the end of
    a read waits for the next one)."""
    n = len(data)
    for back in range(1, min(4, n) + 1):
        byte = data[n - back]
        if byte & 0xC0 != 0x80:  # not a continuation byte: the last character starts here
            need = (1 if byte < 0x80 else 2 if byte >> 5 == 0b110 else 3 if byte >> 4 == 0b1110
                    else 4 if byte >> 3 == 0b11110 else 0)
            return n if back >= need else n - back
    return n  # not UTF-8 here: read as it is


def trim_header(first: bytes) -> tuple[int, int]:
    """(bytes of output dropped in all, length of the header line) of a trimmed log's first
    bytes; (0, 0) for a log never trimmed."""
    found = _HEADER.match(first)
    end = first.find(b"\n")
    if found is None or end < 0:
        return 0, 0
    return int(found.group(1)), end + 1


class LogFollower:
    """Reads a job log's new output; one reader, on the thread that also trims the log."""

    def __init__(self, path: Path, chunk_bytes: int = CHUNK_BYTES) -> None:
        self.path, self.chunk_bytes = path, chunk_bytes
        self.offset = 0  # the next byte of output to read

    def read(self, final: bool = False) -> list[LogChunk]:
        """The output appended since the last read, in chunks of at most `chunk_bytes`;
        when more than `MAX_BEHIND` chunks' worth waits, the oldest of it is passed over
        (the next chunk's offset says how much). `final`: the job has stopped, so a
        character cut at the end is read as it is."""
        limit = self.chunk_bytes * MAX_BEHIND
        try:
            with self.path.open("rb") as f:
                dropped, header = trim_header(f.read(256))
                start = self.offset - dropped + header
                if start < header:  # trimmed away before it was read
                    start, self.offset = header, dropped
                size = f.seek(0, 2)
                if size - start > limit:  # far behind: the newest is what a watcher wants
                    self.offset += size - limit - start
                    start = size - limit
                f.seek(start)
                data = f.read(max(0, min(size - start, limit)))
        except FileNotFoundError:
            return []
        usable = len(data) if final else complete_utf8(data)
        chunks, at = [], 0
        while at < usable:
            part = data[at:min(usable, at + self.chunk_bytes)]
            if at + len(part) < usable:  # a cut inside the read: on a whole character
                part = part[:complete_utf8(part) or len(part)]
            chunks.append(LogChunk(self.offset, len(part),
                                   part.decode("utf-8", errors="replace")))
            self.offset += len(part)
            at += len(part)
        return chunks
