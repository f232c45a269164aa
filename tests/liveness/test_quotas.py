"""Quotas and limits by default, each against a real network (API, control worker, one
simulated provider): the storage quota counts every byte a client stores (its jobs'
outputs too), one object and one request body are bounded, a job's log is cut to its
tail, sign-up gives no credits (accounts are granted credits through the ledger), and
wrong passwords are throttled per source address as well as per e-mail.

The network runs with small limits where the default would take gigabytes to reach;
`test_the_defaults` pins the defaults the README's configuration table states.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from infra.settings import Settings
from tests.e2e.network import CREDITS_MICRO, Network, network
from tests.support.graphql import SUBMIT
from worker_gpu.joblog import JOB_LOG_KEPT_BYTES
from worker_gpu.runtime_process import ProcessRuntime

pytestmark = pytest.mark.e2e

# One provider and no fault under test: a provider slowed by a loaded machine must not
# count as lost (it would be excluded, and the job wait for another that never comes).
PATIENT = {"GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "30",
           "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "60"}

KIB = 1024
QUOTA = 1024 * KIB
MAX_OBJECT = 256 * KIB
ADDRESS_FAILURES = 4


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    with network(tmp_path_factory.mktemp("quotas"), temporal_server,
                 [("quota-a", "1xH100:80", "2.0", [])], {
                     "GPGPU_STORAGE_QUOTA_BYTES": str(QUOTA),
                     "GPGPU_MAX_OBJECT_BYTES": str(MAX_OBJECT),
                     "GPGPU_SIGN_IN_MAX_FAILURES_PER_ADDRESS": str(ADDRESS_FAILURES),
                     # A run whose output the store refused is empty-handed: the network's
                     # check of it (no other owner here) gives up after this.
                     "GPGPU_CHECK_WAIT_S": "5",
                     **PATIENT,
                 }) as n:
        yield n


def submit(net: Network, client: str, spec: dict[str, object]) -> str:
    data = net.gql(SUBMIT, client, s=spec)["submitJob"]
    assert data["__typename"] == "JobSubmitted", data
    return str(data["job"]["id"])


def stored_bytes(net: Network, client: str) -> dict[str, int]:
    r = net.http.get(f"/storage/{net.client_id(client)}", headers=net.headers(client))
    return {o["key"]: o["size"] for o in r.json()}


def test_the_defaults() -> None:
    defaults = Settings()
    assert defaults.storage_quota_bytes == 10 << 30
    assert defaults.max_object_bytes == 4 << 30
    assert defaults.max_request_bytes == 1 << 20
    assert defaults.starting_balance_micro == 0
    assert defaults.sign_in_max_failures_per_address == 20
    assert defaults.max_subscriptions_per_account == 32
    assert defaults.max_live_jobs_per_client == 1000
    assert defaults.max_submissions_per_client_per_minute == 600
    assert defaults.max_providers_per_account == 64


def test_the_quota_counts_every_byte_outputs_too(net: Network) -> None:
    for n in range(5):  # 1000 KiB of the 1024 KiB quota, each object under the maximum
        net.put("filler", f"in-{n}.bin", b"x" * (200 * KIB))
    r = net.http.put(f"/storage/{net.client_id('filler')}/big.bin", content=b"x" * (300 * KIB),
                     headers=net.headers("filler"))
    assert r.status_code == 413 and "the most one object may hold" in r.json()["detail"], r.text
    # A job's output is stored in the same space: 100 KiB more passes the quota.
    job_id = submit(net, "filler", {
        "name": "fills", "command": "head -c 102400 /dev/zero > out.bin", "outputs": ["out.bin"],
        "max_price_per_gpu_hour": "3", "timeout": 60})
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), "filler")
    assert job["state"] == "FAILED" and "quota" in job["reason"], job
    stored = stored_bytes(net, "filler")
    assert not any(k.endswith("out.bin") for k in stored), stored
    assert sum(stored.values()) <= QUOTA, stored


def test_every_request_body_is_bounded(net: Network) -> None:
    limit = Settings().max_request_bytes
    big = json.dumps({"query": "{ me { id } }", "pad": "x" * limit})
    r = net.http.post("/graphql", content=big, headers={**net.headers("bodies"),
                                                       "content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["detail"].startswith("a request body may be at most 1 MiB"), r.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams
        yield b'{"telemetry": ['
        for _ in range(limit // 1000 + 1):
            yield b"0" * 999 + b","
        yield b"0]}"

    r = net.http.post("/providers/quota-a/heartbeat", content=chunks(),
                      headers=net.headers("bodies"))
    assert r.status_code == 413, r.text

    async def too_big_message() -> int | None:
        url = net.url.replace("http://", "ws://") + "/graphql"
        async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as ws:  # type: ignore[list-item]
            await ws.send(json.dumps({"type": "connection_init", "pad": "x" * limit}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
            return closed.value.rcvd.code if closed.value.rcvd else None

    assert asyncio.run(too_big_message()) == 1009  # "message too big"
    # Under the limit, the same endpoint answers.
    assert net.gql("{ me { email } }", "bodies")["me"]["email"] == "bodies@e2e.test"


def test_a_jobs_log_keeps_its_tail(tmp_path: Path) -> None:
    """The provider's process runtime (what runs every job under `gpgpu up`): a job that
    prints 8 MiB with the cap at 2 MiB leaves a log that never passed the cap by more than
    what one tick wrote, that says what was cut, and ends with the job's last line."""
    script = ("import sys,time\n"
              "for i in range(64):\n"
              "    sys.stdout.write(('%06d ' % i) * 18724 + '\\n'); sys.stdout.flush()\n"
              "    time.sleep(0.03)\n"
              "print('the last line')\n")
    runtime = ProcessRuntime(tick_s=0.1, log_max_bytes=2 * JOB_LOG_KEPT_BYTES)
    log = tmp_path / "job.log"
    sizes: list[int] = []

    def progress(_elapsed: float, _tail: str) -> None:
        sizes.append(log.stat().st_size)

    # The system python: the sandbox shows /usr, not this venv.
    outcome = runtime.run(["python3", "-c", script], tmp_path / "work", [], 60, {},
                          on_progress=progress, log_path=log)
    assert outcome.exit_code == 0, outcome
    text = log.read_text()
    assert text.startswith("gpgpu: the log passed 2097152 bytes;"), text[:200]
    assert text.rstrip().endswith("the last line") and outcome.log_tail.rstrip().endswith(
        "the last line")
    assert log.stat().st_size < 3 * JOB_LOG_KEPT_BYTES, log.stat().st_size
    assert max(sizes) < 4 * JOB_LOG_KEPT_BYTES, sizes  # 8 MiB written, never all kept


def test_sign_up_gives_no_credits_and_test_accounts_are_granted_through_the_ledger(
    net: Network,
) -> None:
    r = net.http.post("/graphql", json={"query": """mutation { signUp(email: "fresh@q.test",
        password: "a password", roles: ["client"]) { ... on Session { token } } }"""})
    token = r.json()["data"]["signUp"]["token"]
    fresh = httpx.Client(base_url=net.url, headers={"Authorization": f"Bearer {token}"},
                         timeout=30)
    with fresh:
        account = fresh.post("/graphql", json={"query": "{ account { balanceMicro } }"}).json()
        assert account["data"]["account"]["balanceMicro"] == 0, account
        # No free GPU time: its job is refused at once (nothing recorded:
        # tests/liveness/test_floods.py).
        spec = {"name": "free", "command": "true", "max_price_per_gpu_hour": "3",
                "timeout": 60}
        body = fresh.post("/graphql", json={"query": SUBMIT, "variables": {"s": spec}}).json()
        refused = body["data"]["submitJob"]
        assert refused["__typename"] == "SpecRejected", refused
        [error] = refused["errors"]
        assert error["field"] == "balance", error
        assert error["message"].endswith("your balance is 0 micro-credits"), error
    # The fixtures' accounts: a grant, in the ledger (recorded on the stores; the API's read
    # model shows it once its projection has caught up).
    client = net.client_id("granted")
    deadline = time.monotonic() + 15
    while not (ledger := net.gql("{ ledger { transferId amountMicro kind } }",
                                 "granted")["ledger"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [(e["transferId"], e["amountMicro"], e["kind"]) for e in ledger] == [
        (f"deposit:grant:e2e:{client}", CREDITS_MICRO, "deposit")], ledger


def test_wrong_passwords_are_throttled_per_address_across_emails(net: Network) -> None:
    sign_in = """mutation($e: String!) { signIn(email: $e, password: "wrong guess") {
      ... on Session { token } ... on FieldError { field message } } }"""

    def guess(email: str) -> str:
        r = net.http.post("/graphql", json={"query": sign_in, "variables": {"e": email}})
        refused = r.json()["data"]["signIn"]
        return f"{refused['field']}: {refused['message']}"

    for n in range(ADDRESS_FAILURES):  # one guess at each of several accounts: no email locks
        assert guess(f"victim-{n}@q.test").startswith("password: the email and password"), n
    refused = guess("victim-new@q.test")
    assert refused.startswith(f"password: {ADDRESS_FAILURES} wrong passwords from your "
                              f"address in 5 min; try again in"), refused
    # The same from another process is the same address (127.0.0.1): still refused, so
    # the count lives in the API, not in this client.
    done = subprocess.run([sys.executable, "-c", (
        "import httpx,sys; print(httpx.post(sys.argv[1] + '/graphql', json={'query': "
        "sys.argv[2], 'variables': {'e': 'other@q.test'}}).json()['data']['signIn']['message'])"),
        net.url, sign_in], capture_output=True, text=True, timeout=60)
    assert "wrong passwords from your address" in done.stdout, done


def test_outputs_per_job_and_bytes_per_output_are_capped(net: Network) -> None:
    spec = {"name": "many", "command": "true", "max_price_per_gpu_hour": "3", "timeout": 60,
            "outputs": [f"out-{n}.txt" for n in range(257)]}
    refused = net.gql(SUBMIT, "outputter", s=spec)["submitJob"]
    assert refused["__typename"] == "SpecRejected", refused
    assert [e["field"] for e in refused["errors"]] == ["outputs"], refused
    assert "at most 256 items" in refused["errors"][0]["message"], refused
    # One output past the per-object maximum fails the job, saying so; nothing is stored.
    job_id = submit(net, "outputter", {
        "name": "big-out", "command": f"head -c {MAX_OBJECT + 1} /dev/zero > out.bin",
        "outputs": ["out.bin"], "max_price_per_gpu_hour": "3", "timeout": 60})
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED"), "outputter")
    assert job["state"] == "FAILED" and "the most one object may hold" in job["reason"], job
    assert stored_bytes(net, "outputter") == {}
