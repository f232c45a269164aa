"""The control step that plans a run (prepare_transfers) is the one that opens a job's sealed
env (infra/job_env.py): the plan a provider gets has the values; an env that does not open
refuses the run for good, naming `env`, rather than run the job without it."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from activities.control import ControlActivities
from infra.job_env import seal_env
from infra.row_cipher import RowCipher
from protocol.spec import parse_job_spec
from tests.support.control import control_activities
from tests.support.stores import store_settings
from workflows import contracts as c

ENV = {"API_TOKEN": f"tok-secret-{secrets.token_hex(8)}", "MODE": "fast"}


@pytest.fixture
def acts(tmp_path: Path) -> Iterator[ControlActivities]:
    with store_settings("sqlite", tmp_path) as settings, control_activities(settings) as acts:
        acts.network.open_client("alice", 100_000_000)
        acts.network.register_provider("p1", "local", 3_600_000, [
            {"index": 0, "model": "H100", "memory_mb": 81920}])
        with acts.views.transaction() as cur:
            cur.execute("INSERT INTO provider_liveness (provider_id, last_heartbeat_at)"
                        " VALUES ('p1', ?)", (time.time() + 3600,))
        yield acts


def planned(acts: ControlActivities, job_id: str, cipher: RowCipher) -> c.TransferPlan:
    spec = parse_job_spec({"name": "j", "command": "true", "max_price_per_gpu_hour": "4",
                           "timeout": 60, "env": ENV})
    acts.network.submit_job(job_id, "alice", spec, seal_env(cipher, job_id, spec.env))
    acts.admit_job(c.JobInput(job_id, "alice"))
    acts.allocate_gpus(c.AllocateRequest(job_id, 1))
    return acts.prepare_transfers(c.AllocateRequest(job_id, 1))


def test_a_runs_plan_has_the_jobs_env_opened(acts: ControlActivities) -> None:
    plan = planned(acts, "job-env", acts.cipher)
    assert plan.env == ENV
    assert acts.network.job("job-env").spec["env"] == {"API_TOKEN": "", "MODE": ""}


def test_an_env_that_does_not_open_refuses_the_run_naming_env(acts: ControlActivities) -> None:
    stranger = RowCipher([secrets.token_bytes(32)])  # a key the control plane does not list
    with pytest.raises(ApplicationError) as refused:
        planned(acts, "job-stranger", stranger)
    assert refused.value.non_retryable
    assert refused.value.type == "DomainError"
    assert refused.value.message.startswith("env: jobs.env of 'job-stranger' was sealed under")
