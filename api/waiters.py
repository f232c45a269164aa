"""Coroutines of this process waiting for news of a key (a provider's assignments, a job's
log), each for a bounded time; whoever learns of news wakes every waiter of that key."""

from __future__ import annotations

import asyncio


class Waiters:
    def __init__(self) -> None:
        self._by_key: dict[str, set[asyncio.Event]] = {}

    def __bool__(self) -> bool:
        return bool(self._by_key)

    def keys(self) -> set[str]:
        return set(self._by_key)

    def wake(self, key: str) -> None:
        for woken in self._by_key.get(key, ()):
            woken.set()

    async def wait(self, key: str, timeout_s: float) -> bool:
        """Until `key` is woken (True) or `timeout_s` has passed (False), whichever comes
        first."""
        woken = asyncio.Event()
        self._by_key.setdefault(key, set()).add(woken)
        try:
            await asyncio.wait_for(woken.wait(), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            waiting = self._by_key.get(key, set())
            waiting.discard(woken)
            if not waiting:
                self._by_key.pop(key, None)
