"""A spec no registered provider could ever run says so at submit, on a real network (issue
13 item 1, issue 14 item 2): four GPUs on one machine where the only provider has one. The
submit result warns, the queued job's waiting reason and `explain` name what is missing on
each provider, and it is a notice, not a refusal: once a provider that fits joins, the
notice is gone and the job runs."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.network import Network, network
from tests.liveness.flow_support import PATIENT, finish, wait_state

pytestmark = pytest.mark.e2e

FLEET = [("small", "1xH100:80", "1.0", [])]
SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id } warnings }
  ... on SpecRejected { errors { field message } } } }"""
WAITING = "query($id: ID!) { job(id: $id) { state waitingFor } }"
EXPLAIN = """query($s: JSON!) { explain(spec: $s) { ... on Explanation { unsatisfiable
  rejected { providerId reason } } } }"""
NOTICE = ("no provider of node local could ever run this job as specified: it needs 4 GPUs on "
          "one machine with the process runtime (small: 1 of its 1 GPUs fit the job's model "
          "and memory, 4 needed on one machine); it waits until such a provider joins")


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("never"), temporal_server, FLEET, PATIENT) as n:
        yield n


def spec(gpus: int) -> dict[str, object]:
    return {"name": f"wants-{gpus}", "command": "true", "max_price_per_gpu_hour": "2",
            "timeout": 60, "resources": {"gpus": gpus}}


def test_a_spec_no_provider_could_run_is_told_at_submit_and_runs_once_one_joins(
    net: Network, tmp_path: Path
) -> None:
    plain = net.gql(SUBMIT, "nia", s=spec(1))["submitJob"]
    assert plain["__typename"] == "JobSubmitted" and plain["warnings"] == [], plain
    submitted = net.gql(SUBMIT, "nia", s=spec(4))["submitJob"]
    assert submitted["__typename"] == "JobSubmitted", submitted  # a notice, not a refusal
    assert submitted["warnings"] == [NOTICE]
    job_id = submitted["job"]["id"]
    wait_state(net, "nia", job_id, "QUEUED")
    assert NOTICE in net.gql(WAITING, "nia", id=job_id)["job"]["waitingFor"]
    explained = net.gql(EXPLAIN, "nia", s=spec(4))["explain"]
    assert explained["unsatisfiable"] == NOTICE
    assert net.gql(EXPLAIN, "nia", s=spec(1))["explain"]["unsatisfiable"] is None
    # The CLI prints the warning (on stderr; stdout keeps the job's id alone).
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: cli\ncommand: ['true']\nmax_price_per_gpu_hour: '2'\n"
                         "timeout: 60\nresources: {gpus: 4}\n")
    env = {**os.environ, "GPGPU_API_URL": net.url, "GPGPU_API_KEY": net.token("nia")}
    shown = subprocess.run([sys.executable, "-m", "client", "job", "submit", str(spec_file)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"warning: {NOTICE}" in " ".join(shown.stderr.split()), shown.stderr
    cli_job = shown.stdout.strip()

    net.stack.start_provider("big", "4xH100:80", "1.0")  # a provider that fits joins
    net.wait_providers_online(["big"])
    assert net.gql(EXPLAIN, "nia", s=spec(4))["explain"]["unsatisfiable"] is None
    for job in (job_id, cli_job):
        record = finish(net, "nia", job, timeout_s=90)
        assert record["state"] == "SUCCEEDED" and record["providerId"] == "big", record
