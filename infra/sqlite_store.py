"""eventsourcing's SQLite event store, with a connection pool that waits as long as
SQLite does.

The API and the control worker write the same SQLite file. eventsourcing's pool hands
out connections one thread at a time, and a writer waits there for this process's
previous writer, which may itself be waiting (up to SQLITE_LOCK_TIMEOUT) for the other
process's write lock. The pool gives up after 5 s, so under a burst (500 jobs submitted
at once) reads that could have run at once failed with "Timed out waiting for connection
pool semaphore"; their activities were retried while the stalled threads kept going, and
the pile grew (tests/reliability/test_fair_share_load.py; the stall that never ended was
a lock leaked by a cancelled step, see activities/control.py). Here the pool waits as
long as SQLite's own lock does: a burst is slower, not an error. (An flock that makes
writers of all processes take turns was tried: the API's writers then held the lock
back to back and the control worker starved worse.)
"""

from __future__ import annotations

from eventsourcing.persistence import Environment, EnvType
from eventsourcing.sqlite import SQLiteFactory

DEFAULT_WAIT_S = 30.0


class PatientSQLiteFactory(SQLiteFactory):
    def __init__(self, env: Environment | EnvType | None):
        super().__init__(env)
        lock_timeout = (self.env.get(self.SQLITE_LOCK_TIMEOUT) or "").strip()
        self.datastore.pool.pool_timeout = float(lock_timeout or DEFAULT_WAIT_S)
