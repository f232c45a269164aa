"""A verifying job's page says what it waits for, in a real browser: the network's check of
an A100 job finds no A100 of another owner (the network has one), so the job waits in
VERIFYING for the check's bounded wait, and its page says why."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.network import Network, network
from tests.liveness.flow_support import PATIENT
from tests.web.test_browser import (  # noqa: F401 (fixtures)
    browser,
    enter,
    gql_as,
    has_accounts,
    page,
    shots,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def net(browser: Any, tmp_path_factory: pytest.TempPathFactory,  # noqa: F811
        temporal_server: str) -> Iterator[Network]:
    env = {**PATIENT, "GPGPU_ADAPTIVE_CHECKS": "true", "GPGPU_CHECK_WAIT_S": "20",
           "GPGPU_STARTING_BALANCE_MICRO": "100000000"}
    with network(tmp_path_factory.mktemp("web-verifying"), temporal_server,
                 [("lone-a100", "1xA100:80", "1.0", [])], env) as n:
        yield n


def test_a_verifying_job_says_what_it_waits_for(
    page: Any, net: Network, has_accounts: bool  # noqa: F811
) -> None:
    enter(page, has_accounts, "web-verifier", ["client"])
    spec = {"name": "checked", "command": "echo 3.14159 > out.txt", "outputs": ["out.txt"],
            "max_price_per_gpu_hour": "2", "timeout": "2m",
            "resources": {"gpus": 1, "gpu_model": "A100"},
            "verification": {"reproducible": True}}
    job_id = gql_as(net, page, """mutation($s: JSON!) { submitJob(spec: $s) {
        ... on JobSubmitted { job { id } } } }""", s=spec)["submitJob"]["job"]["id"]
    page.goto(f"/client/jobs/{job_id}")
    page.wait_for_selector("[data-testid=job-state] >> text=VERIFYING", timeout=60_000)
    page.wait_for_selector("[data-testid=waiting-for] >> text=another run of this job",
                           timeout=20_000)
    said = page.inner_text("[data-testid=waiting-for]")
    assert "on a provider of another owner" in said, said
    shots(page, "client-job-verifying", axe=True)
    page.wait_for_selector("[data-testid=job-state] >> text=SUCCEEDED", timeout=60_000)
    assert page.locator("[data-testid=waiting-for]").count() == 0
