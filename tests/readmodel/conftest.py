"""The read model's tests run on every event store, with the domain tests' fixtures
(`settings` parametrised over memory, SQLite and PostgreSQL; `app` a Network over it)."""

from tests.domain.conftest import app, settings  # noqa: F401
