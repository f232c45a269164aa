"""A client's job tries to escape the process runtime's sandbox, on the real network.

Each test is one named attack, run as a job through the real API, Temporal, control
worker and provider agents (tests/e2e/network.py), on the default runtime (bubblewrap).
Each asserts that the attack failed and that nothing leaked or changed: the job's own
report holds no secret, the victim's bytes are intact, no process is left on the host.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.job import TERMINAL_STATES
from tests.e2e.network import Network, network
from tests.support.graphql import SUBMIT
from tests.worker_gpu.processes import host_pids
from worker_gpu.sandbox import Bwrap

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not Bwrap.installed(), reason="bubblewrap is not installed"),
]

PROVIDER = "sbx-a"
UNSAFE = "sbx-unsafe"
PIDS, DISK_MB = 64, 64
ATTACKER, VICTIM = "mallory", "victor"
OUTPUTS = "query($id: ID!) { job(id: $id) { state reason outputs { path key } } }"
ADMIN_KEY = f"gpgpu_admin_{uuid.uuid4().hex}"  # what `gpgpu up` keeps in dev-account.json
# A job that leaves its outputs missing is checked by another provider's run, which no
# provider here can take (UNSAFE is too dear): it is skipped after this, not the default 60 s.
CHECK_WAIT_S = 5


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("sandbox-escape")
    home.mkdir(exist_ok=True)
    (home / "dev-account.json").write_text(json.dumps({"api_key": ADMIN_KEY}))
    with network(home, temporal_server, [
        (PROVIDER, "2xH100:80", "2.0", ["--job-pids", str(PIDS), "--job-disk-mb", str(DISK_MB)]),
        # Dearer than any job here will pay: it runs none of them, it is only looked at.
        (UNSAFE, "1xL4:24", "9.0", ["--unsafe-no-sandbox"]),
    ], extra_env={"GPGPU_CHECK_WAIT_S": str(CHECK_WAIT_S)}) as n:
        yield n


def submit(net: Network, client: str, name: str, script: str, *args: str,
           outputs: tuple[str, ...] = ("report.json",),
           inputs: tuple[dict[str, str], ...] = (), **extra: Any) -> str:
    key = f"inputs/{name}-{uuid.uuid4().hex[:8]}.py"
    net.put(client, key, script.encode())
    spec = {"name": name, "command": ["python3", "job.py", *args], "max_price_per_gpu_hour": "4",
            "timeout": "2m", "inputs": [{"key": key, "name": "job.py"}, *inputs],
            "outputs": list(outputs), **extra}
    result = net.gql(SUBMIT, client, s=spec)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def finish(net: Network, client: str, job_id: str) -> dict[str, Any]:
    net.wait_job(job_id, TERMINAL_STATES, client, timeout_s=120)
    job: dict[str, Any] = net.gql(OUTPUTS, client, id=job_id)["job"]
    return job


def output(net: Network, client: str, job: dict[str, Any], path: str) -> bytes:
    keys = {o["path"]: o["key"] for o in job["outputs"]}
    return net.get(client, keys[path])


def run_attack(net: Network, name: str, script: str, *args: str) -> dict[str, Any]:
    """Run `script` as the attacker's job; the report (JSON) it wrote."""
    job = finish(net, ATTACKER, submit(net, ATTACKER, name, script, *args))
    assert job["state"] == "SUCCEEDED", job
    report: dict[str, Any] = json.loads(output(net, ATTACKER, job, "report.json"))
    return report


def agent_pid(net: Network) -> int:
    return next(c.proc.pid for c in net.stack.children if c.name == PROVIDER)


def test_the_network_shows_which_providers_run_jobs_without_a_sandbox(net: Network) -> None:
    providers = net.gql("{ providers { providerId sandbox } }", ATTACKER)["providers"]

    shown = {p["providerId"]: p["sandbox"] for p in providers}
    assert shown == {PROVIDER: "bwrap", UNSAFE: "none"}


READ_SECRETS = r"""
import json, os, sys
found = {}
for path in sys.argv[1:]:
    try:
        found[path] = open(path, errors="replace").read()
    except OSError as err:
        found[path] = type(err).__name__
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        found["/proc/%s/environ" % pid] = open("/proc/%s/environ" % pid, errors="replace").read()
    except OSError as err:
        found["/proc/%s/environ" % pid] = type(err).__name__
json.dump(found, open("report.json", "w"))
"""


def test_job_cannot_read_the_networks_secrets_or_the_agents_environment(net: Network) -> None:
    home = net.stack.settings.home
    signing_key = net.stack.settings.signing_secret.hex()  # made on first use, as the API does
    agent_key = net.stack.env["GPGPU_API_KEY"]
    pid = agent_pid(net)
    assert agent_key in Path(f"/proc/{pid}/environ").read_text()  # there to be stolen

    report = run_attack(net, "read-secrets", READ_SECRETS, str(home / "dev-account.json"),
                        str(home / "signing.key"), f"/proc/{pid}/environ",
                        "../../../../dev-account.json", "/root/.gpgpu/dev-account.json")

    text = json.dumps(report)
    assert ADMIN_KEY not in text and signing_key not in text and agent_key not in text
    assert "/proc/1/environ" in report  # bwrap's own PID 1: it was read, and held no secret
    for path in (str(home / "dev-account.json"), str(home / "signing.key"),
                 f"/proc/{pid}/environ", "../../../../dev-account.json"):
        assert report[path] in ("FileNotFoundError", "PermissionError"), (path, report[path])


FIND_MARKER = r"""
import json, os, sys
marker, hits, seen = sys.argv[1], [], 0
for top in ["..", "../..", "../../..", "/"]:
    for folder, dirs, files in os.walk(top):
        dirs[:] = [d for d in dirs if os.path.abspath(os.path.join(folder, d))
                   not in ("/proc", "/sys", "/usr", "/dev")]
        for name in files:
            seen += 1
            try:
                if marker in open(os.path.join(folder, name), errors="ignore").read(1 << 20):
                    hits.append(os.path.join(folder, name))
            except OSError:
                pass
json.dump({"hits": hits, "seen": seen}, open("report.json", "w"))
"""

VICTIM_JOB = r"""
import os, sys, time
time.sleep(float(sys.argv[2]))
open("result.txt", "w").write(sys.argv[1])
"""


def start_victim(net: Network, secret: str, hold_s: str = "8") -> str:
    """A job of another client, holding `secret` in its input and writing it as its output."""
    key = f"inputs/victim-{uuid.uuid4().hex[:8]}.txt"
    net.put(VICTIM, key, secret.encode())
    job_id = submit(net, VICTIM, "victim", VICTIM_JOB, secret, hold_s, outputs=("result.txt",),
                    inputs=({"key": key, "name": "secret-input.txt"},))
    net.wait_job(job_id, ("RUNNING",), VICTIM, timeout_s=60)
    return job_id


def test_job_cannot_read_a_neighbouring_jobs_input(net: Network) -> None:
    secret = f"victim-secret-{uuid.uuid4().hex}"
    victim = start_victim(net, secret)
    scratch = net.stack.home / "providers" / PROVIDER
    assert any(secret in p.read_text() for p in scratch.rglob("secret-input.txt"))

    report = run_attack(net, "find-neighbour", FIND_MARKER, secret)

    assert report["hits"] == [] and report["seen"] > 0
    job = finish(net, VICTIM, victim)
    assert job["state"] == "SUCCEEDED"
    assert output(net, VICTIM, job, "result.txt") == secret.encode()


OVERWRITE = r"""
import json, os, sys
tried, written = 0, []
for folder, dirs, files in os.walk("/"):
    dirs[:] = [d for d in dirs if os.path.join(folder, d) not in (
        "/proc", "/sys", "/work", "/usr/lib", "/usr/share", "/usr/include", "/usr/src")]
    for name in files + ["result.txt"]:
        path = os.path.join(folder, name)
        tried += 1
        try:
            with open(path, "a") as f:
                f.write("attacker bytes")
            written.append(path)
        except OSError:
            pass
json.dump({"tried": tried, "written": written}, open("report.json", "w"))
"""


def test_job_cannot_overwrite_another_jobs_output(net: Network) -> None:
    secret = f"victim-output-{uuid.uuid4().hex}"
    victim = start_victim(net, secret, hold_s="6")

    report = run_attack(net, "overwrite", OVERWRITE)

    # Only its own private /tmp and its device nodes (/dev/null...) take a write.
    assert all(p.startswith(("/tmp/", "/dev/")) for p in report["written"]), report["written"]
    assert report["tried"] > 500
    job = finish(net, VICTIM, victim)
    assert job["state"] == "SUCCEEDED"
    assert output(net, VICTIM, job, "result.txt") == secret.encode()


LIST_PROCESSES = r"""
import json, os, subprocess
procs = {}
for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
    try:
        procs[pid] = open("/proc/%s/cmdline" % pid).read().replace("\0", " ")
    except OSError:
        pass
ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
json.dump({"procs": procs, "ps": ps}, open("report.json", "w"))
"""


def test_job_cannot_see_other_processes(net: Network) -> None:
    assert len(host_pids("worker_gpu")) >= 1  # the agent, and more, are there to be seen

    report = run_attack(net, "list-processes", LIST_PROCESSES)

    seen = " ".join(report["procs"].values()) + report["ps"]
    assert len(report["procs"]) <= 5, report["procs"]  # bwrap's init, prlimit's job, ps
    for other in ("worker_gpu", "activities.worker", "api", "temporal", "pytest"):
        assert other not in seen.replace("job.py", ""), (other, seen)


CONNECT = r"""
import json, socket, sys
result = {}
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=3).close()
        result[port] = "connected"
    except OSError as err:
        result[port] = type(err).__name__
json.dump(result, open("report.json", "w"))
"""


@pytest.mark.parametrize("asks_for_network", [False, True])
def test_job_cannot_reach_the_control_planes_services_on_127_0_0_1(
    net: Network, asks_for_network: bool
) -> None:
    api_port = net.stack.settings.api_port
    temporal_port = int(net.stack.settings.temporal_address.rsplit(":", 1)[1])
    with socket.socket() as postgres_like:  # PostgreSQL's port, where it is free here
        try:
            postgres_like.bind(("127.0.0.1", 5432))
            postgres_like.listen()
        except OSError:
            pass  # a real PostgreSQL holds it: all the better
        for port in (api_port, temporal_port, 5432):
            socket.create_connection(("127.0.0.1", port), timeout=3).close()  # reachable here

        job = finish(net, ATTACKER, submit(
            net, ATTACKER, "connect", CONNECT, str(api_port), str(temporal_port), "5432",
            network=asks_for_network,
        ))

    assert job["state"] == "SUCCEEDED", job
    report = json.loads(output(net, ATTACKER, job, "report.json"))
    assert set(report.values()) <= {"ConnectionRefusedError", "OSError", "TimeoutError"}, report


DAEMON = r"""
import json, subprocess, sys
subprocess.Popen(["setsid", "sh", "-c", "sleep %s" % sys.argv[1]], start_new_session=True)
subprocess.Popen(["sh", "-c", "nohup sleep %s >/dev/null 2>&1 &" % sys.argv[1]])
json.dump({"started": True}, open("report.json", "w"))
"""


def test_job_leaves_no_setsid_daemon_behind(net: Network) -> None:
    marker = f"1000.{uuid.uuid4().int % 10**9}"

    report = run_attack(net, "daemon", DAEMON, marker)

    assert report == {"started": True}
    assert host_pids(marker) == []


LINKS = r"""
import json, os
os.makedirs("out", exist_ok=True)
os.symlink("/etc/passwd", "out/symlink.txt")
os.symlink("/", "out/root")
try:
    os.link("/etc/passwd", "out/hardlink.txt")
    hard = "linked"
except OSError as err:
    hard = type(err).__name__
open("mine.txt", "w").write("mine")
os.link("mine.txt", "out/second-name.txt")
json.dump({"hard": hard}, open("report.json", "w"))
"""


def test_job_cannot_upload_a_symlink_or_a_hard_link_as_an_output(net: Network) -> None:
    outputs = ("report.json", "out/symlink.txt", "out/root/etc/passwd", "out/hardlink.txt",
               "out/second-name.txt")
    job_id = submit(net, ATTACKER, "links", LINKS, outputs=outputs)

    job = finish(net, ATTACKER, job_id)

    assert job["state"] == "FAILED", job
    assert "out/symlink.txt" in job["reason"], job
    uploaded = {o["path"] for o in job["outputs"]}
    assert not uploaded & set(outputs[1:]), uploaded
    passwd = Path("/etc/passwd").read_bytes()[:40]
    stored = [p for p in net.stack.settings.storage_root.rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if passwd in p.read_bytes()]


BOMB = r"""
import json, os, time
n, error = 0, None
try:
    while n < 5000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as err:
    error = err.errno
json.dump({"forked": n, "error": error}, open("report.json", "w"))
"""


def test_fork_bomb_stops_at_the_providers_process_limit(net: Network) -> None:
    started = time.monotonic()

    report = run_attack(net, "fork-bomb", BOMB)

    assert report["forked"] < PIDS and report["error"] == 11, report  # EAGAIN
    assert time.monotonic() - started < 60
    assert_provider_still_serves(net)


FILL = r"""
import json, time
written, error = 0, None
try:
    with open("fill.bin", "wb") as f:
        while written < (1 << 30):
            f.write(b"x" * (1 << 20))
            f.flush()
            written += 1 << 20
except OSError as err:
    error = err.errno
json.dump({"written": written, "error": error}, open("report.json", "w"))
time.sleep(5)  # long enough to be seen holding it all
"""


def test_disk_fill_stops_at_the_providers_disk_limit(net: Network) -> None:
    job_id = submit(net, ATTACKER, "fill", FILL)

    job = finish(net, ATTACKER, job_id)

    assert job["state"] == "FAILED", job
    assert job["reason"] == "the command exited with code 137", job
    scratch = net.stack.home / "providers" / PROVIDER
    assert not [p for p in scratch.rglob("*") if p.is_file() and p.stat().st_size > DISK_MB << 20]
    assert_provider_still_serves(net)


def assert_provider_still_serves(net: Network) -> None:
    after = finish(net, ATTACKER, submit(net, ATTACKER, "after", "open('report.json', 'w')"
                                         ".write('{}')"))
    assert after["state"] == "SUCCEEDED", after


EXPLAIN = """query($s: JSON!) { explain(spec: $s) { __typename
  ... on Explanation { eligible { providerId } rejected { providerId reason } }
  ... on SpecRejected { errors { field message } } } }"""
NEVER = "sandbox none does not hold each job in control groups of its own"


def test_a_job_that_asks_for_full_isolation_never_lands_on_a_provider_without_it(
        net: Network) -> None:
    """A client can keep its job off providers that would run it beside others without a
    sandbox of its own: the unsandboxed L4 is the only one that fits, and is passed by."""
    wanted = {"name": "iso", "command": ["true"], "max_price_per_gpu_hour": "10",
              "resources": {"gpu_model": "L4"}}
    anyone = net.gql(EXPLAIN, VICTIM, s=wanted)["explain"]
    assert [e["providerId"] for e in anyone["eligible"]] == [UNSAFE]  # by default: allowed

    full = {**wanted, "resources": {"gpu_model": "L4", "isolation": "full"}}
    found = net.gql(EXPLAIN, VICTIM, s=full)["explain"]
    assert found["eligible"] == []
    assert NEVER in {r["providerId"]: r["reason"] for r in found["rejected"]}[UNSAFE]
    result = net.gql("""mutation($s: JSON!) { submitJob(spec: $s) { __typename
        ... on JobSubmitted { job { id } warnings } } }""", VICTIM, s=full)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    assert any(NEVER in w for w in result["warnings"]), result  # no provider could ever
    job_id = str(result["job"]["id"])
    time.sleep(2)  # the scheduler has had its rounds: still waiting, never placed there
    shown = net.gql("query($id: ID!) { job(id: $id) { state waitingFor } }", VICTIM,
                    id=job_id)["job"]
    assert shown["state"] == "QUEUED" and any(NEVER in w for w in shown["waitingFor"]), shown
    net.gql("mutation($id: ID!) { cancelJob(id: $id) { __typename } }", VICTIM, id=job_id)
    net.wait_job(job_id, ("CANCELLED",), VICTIM)

    bad = net.gql(EXPLAIN, VICTIM, s={**wanted, "resources": {"isolation": "strict"}})["explain"]
    assert bad["errors"][0]["field"] == "resources.isolation", bad
