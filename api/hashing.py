"""Password hashing, a few at a time: argon2id takes 64 MiB and ~0.2 CPU-s a hash by
default, and sign-up is public, so a burst of sign-ups (or sign-ins) hashing at once took
every thread and core the API has and starved everyone else's requests.

A command that hashes (sign-up, sign-in, a changed or reset password) waits for one of
`GPGPU_PASSWORD_HASH_CONCURRENCY` slots in this process before it takes a thread; the
wait is on the event loop, so a waiting request holds no thread. It waits at most
`GPGPU_PASSWORD_HASH_WAIT_S`, then is refused: the API is busy, try again.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

from api.errors import Refusal


class PasswordSlots:
    """`async with slots:` around a command that hashes a password."""

    def __init__(self, slots: int = 2, wait_s: float = 5.0):
        self.slots, self.wait_s = slots, wait_s
        self._free = asyncio.Semaphore(slots)
        self.running = 0  # commands hashing now

    async def __aenter__(self) -> None:
        try:
            await asyncio.wait_for(self._free.acquire(), self.wait_s)
        except TimeoutError:
            raise Refusal("", f"busy: too many passwords are being checked right now; try "
                          f"again in {math.ceil(self.wait_s)} s") from None
        self.running += 1

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.running -= 1
        self._free.release()
