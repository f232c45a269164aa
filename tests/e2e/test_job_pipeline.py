"""One job through the whole network: real Temporal, API, control worker and provider processes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.worker import Replayer

from client.sdk import GpgpuClient
from domain.application import Network as DomainNetwork
from infra.payload_codec import decrypt_history
from protocol import digest
from tests.e2e.network import CREDITS_MICRO, PROVIDER_OWNER, Network, network
from tests.support.graphql import CANCEL, SUBMIT, accepted
from workflows.job import JobWorkflow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
pytestmark = pytest.mark.e2e

SUCCESS_EVENTS = [
    "JobSubmitted", "FundsEscrowed", "JobQueued", "GpusAllocated", "InputsStaged",
    "ExecutionStarted", "ExecutionFinished", "OutputsUploaded",
    "GpusReleased",  # the run's GPUs go back as soon as it has finished
    "ResultAccepted", "JobVerified", "JobSettled",
    "ReputationRecorded",  # the provider's reputation, shown on the job too
    "JobSucceeded",
]
SCRIPT = b"""import os, sys
text = open("data/words.txt").read()
os.makedirs("out", exist_ok=True)
open("out/upper.txt", "w").write(text.upper())
open("out/gpus.txt", "w").write(os.environ["CUDA_VISIBLE_DEVICES"])
print("done", flush=True)
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, temporal_server: str) -> Iterator[Network]:
    home = tmp_path_factory.mktemp("pipeline")
    with network(home, temporal_server, [
        ("pipe-a", "1xH100:80", "2.0", []),
        ("pipe-b", "1xA100:40", "3.0", []),
        ("pipe-liar", "1xL4:24", "5.0", ["--corrupt-outputs"]),
    ]) as n:
        yield n


def spec(name: str, command: object, **extra: object) -> dict[str, object]:
    return {"name": name, "command": command, "max_price_per_gpu_hour": "4",
            "timeout": "2m", **extra}


def submit(net: Network, client: str, body: dict[str, object]) -> str:
    result = net.gql(SUBMIT, client, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def ledger(net: Network) -> DomainNetwork:
    return DomainNetwork(env=net.stack.settings.eventsourcing_env())


def test_job_runs_end_to_end(net: Network) -> None:
    client = "alice"
    net.put(client, "inputs/words.txt", b"gpu cloud\nverified\n")
    net.put(client, "inputs/job.py", SCRIPT)
    job_id = submit(net, client, spec(
        "upper", ["python3", "job.py"],
        inputs=[{"key": "inputs/job.py"}, {"key": "inputs/words.txt", "name": "data/words.txt"}],
        outputs=["out/upper.txt", "out/gpus.txt"],
    ))

    with GpgpuClient(api_url=net.url, api_key=net.token(client)) as sdk:
        events = list(sdk.follow(job_id))
    assert [e.type for e in events] == SUCCESS_EVENTS
    assert [e.seq for e in events] == list(range(1, len(SUCCESS_EVENTS) + 1))
    allocated = events[3].data
    assert allocated["provider_id"] == "pipe-a"  # the cheapest GPU that fits

    job = net.gql("query($id: ID!) { job(id: $id) { state costMicro outputs { path key digest } }"
                  " account { balanceMicro escrowMicro } }", client, id=job_id)
    assert job["job"]["state"] == "SUCCEEDED"
    outputs = {o["path"]: o for o in job["job"]["outputs"]}
    upper = net.get(client, outputs["out/upper.txt"]["key"])
    assert upper == b"GPU CLOUD\nVERIFIED\n"
    assert outputs["out/upper.txt"]["digest"] == digest.of_bytes(upper)
    assert outputs["out/upper.txt"]["digest"].startswith("blake3:")
    assert net.get(client, outputs["out/gpus.txt"]["key"]) == b"0"

    settled = next(e.data for e in events if e.type == "JobSettled")
    charged = job["job"]["costMicro"]
    assert charged == settled["charged_micro"] > 0
    assert settled["provider_paid_micro"] + settled["fee_micro"] == charged
    start = CREDITS_MICRO
    assert job["account"] == {"balanceMicro": start - charged, "escrowMicro": 0}

    store = ledger(net)
    assert store.balance(f"client:{net.client_id(client)}") == start - charged
    assert store.balance(f"escrow:{job_id}") == 0
    assert store.balance("provider:pipe-a") == settled["provider_paid_micro"]
    assert store.balance("protocol:fees") >= settled["fee_micro"]
    names = [str(r["name"]) for r in store_accounts(net)]
    assert sum(store.balance(n) for n in names) == 0  # double entry: the ledger sums to zero


def store_accounts(net: Network) -> list[dict[str, object]]:
    from readmodel.schema import ViewDB

    return ViewDB(net.stack.settings).query("SELECT name FROM accounts")


def activity_types(events: Any) -> list[str]:
    """Each activity a history ran, in order: regular ones and local ones (markers)."""
    names = []
    for e in events:
        if e.HasField("activity_task_scheduled_event_attributes"):
            names.append(e.activity_task_scheduled_event_attributes.activity_type.name)
        elif (e.HasField("marker_recorded_event_attributes")
              and e.marker_recorded_event_attributes.marker_name == "core_local_activity"):
            data = e.marker_recorded_event_attributes.details["data"].payloads[0].data
            names.append(json.loads(data)["activity_type"])
    return names


async def test_workflow_is_visible_and_replays(net: Network, temporal_server: str) -> None:
    net.put("bob", "inputs/a.txt", b"a")
    job_id = submit(net, "bob", spec("visible", "cat a.txt > b.txt",
                                     inputs=[{"key": "inputs/a.txt"}], outputs=["b.txt"]))
    net.wait_job(job_id, ("SUCCEEDED",), client="bob")
    # The read model says SUCCEEDED as soon as the verdict's event is stored, which is before
    # the workflow task that ran the (local) verify step completes and records its marker:
    # read the history once the workflow has ended.
    temporal = await Client.connect(temporal_server,
                                    data_converter=net.stack.settings.temporal_converter())
    handle = temporal.get_workflow_handle(f"job-{job_id}")
    await asyncio.wait_for(handle.result(), 60)
    history = await handle.fetch_history()
    scheduled = activity_types(history.events)
    for name in ("admit_job", "allocate_gpus", "stage_inputs", "execute_job", "upload_outputs",
                 "verify_job", "close_job"):  # close: settle, reputation, release, finish
        assert name in scheduled
    ARTIFACTS.mkdir(exist_ok=True)
    # Decrypted, as a replay fixture is committed (tests/replay/ replays without a key).
    plain = decrypt_history(history, net.stack.settings.payload_keys,
                            net.stack.settings.temporal_namespace)
    (ARTIFACTS / "job_workflow_history.json").write_text(plain.to_json())
    replayed = await Replayer(workflows=[JobWorkflow]).replay_workflow(plain)
    assert replayed.replay_failure is None


def test_cli_submit_wait_and_outputs(net: Network, tmp_path: Path) -> None:
    env = {**os.environ, "GPGPU_API_URL": net.url, "GPGPU_API_KEY": net.token("carol")}
    gpgpu = [sys.executable, "-m", "client"]
    done = subprocess.run(
        [*gpgpu, "job", "submit", str(ROOT / "examples/hello/job.yaml"), "--wait", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    job_id = job.get("id") or job["job"]["id"]
    shown = subprocess.run([*gpgpu, "job", "show", job_id], env=env, capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "SUCCEEDED" in shown.stdout and "JobSettled" in shown.stdout
    got = subprocess.run([*gpgpu, "job", "outputs", job_id, str(tmp_path)], env=env,
                         capture_output=True, text=True, timeout=60)
    assert got.returncode == 0, got.stderr
    result = (tmp_path / "out" / "result.txt").read_text()
    assert "HELLO" in result
    logs = subprocess.run([*gpgpu, "job", "logs", job_id], env=env, capture_output=True,
                          text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    assert "--- run 1 on " in logs.stdout and "exit 0" in logs.stdout


def test_cli_offers_filters_gpus_and_refuses_bad_filters(net: Network) -> None:
    env = {**os.environ, "GPGPU_API_URL": net.url, "GPGPU_API_KEY": net.token("carol")}
    gpgpu = [sys.executable, "-m", "client", "offers"]
    found = subprocess.run([*gpgpu, "--json", "--all", "--model", "A100"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    rows = json.loads(found.stdout)
    assert rows and all(r["eligible"] == ("A100" in r["model"]) for r in rows), rows
    assert all(r["reason"].startswith("model ") for r in rows if not r["eligible"])
    bad = subprocess.run([*gpgpu, "--min-reputation", "2"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert bad.returncode != 0
    assert "min_reputation" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_bad_spec_is_refused_and_nothing_recorded(net: Network) -> None:
    store = ledger(net)
    net.account("dave")  # signing up is recorded; the refusals after it are not
    before = store.recorder.max_notification_id()
    bad = spec("bad", ["true"], resources={"gpus": 0, "colour": "red"}, timeout="forever")
    result = net.gql(SUBMIT, "dave", s=bad)["submitJob"]
    assert result["__typename"] == "SpecRejected"
    fields = {e["field"]: e["message"] for e in result["errors"]}
    assert set(fields) == {"resources.gpus", "resources.colour", "timeout"}
    assert "not a known field" in fields["resources.colour"]
    missing = net.gql(SUBMIT, "dave", s=spec("m", ["true"], inputs=[{"key": "nope.bin"}]))
    assert missing["submitJob"]["errors"] == [
        {"field": "inputs.0.key", "message": "no object 'nope.bin' in your storage"}
    ]
    assert store.recorder.max_notification_id() == before
    assert net.gql("{ jobs { id } }", "dave")["jobs"] == []


def test_job_beyond_balance_is_refused_and_nothing_recorded(net: Network) -> None:
    """Refused at submission, before anything is recorded (admission still checks the
    balance when it takes the escrow: tests/domain/test_job_lifecycle.py)."""
    store = ledger(net)
    net.account("erin")
    before = store.recorder.max_notification_id()
    result = net.gql(SUBMIT, "erin", s=spec("huge", ["true"], timeout="7d",
                                            max_price_per_gpu_hour="1", resources={"gpus": 8}))
    assert result["submitJob"] == {"__typename": "SpecRejected", "errors": [{
        "field": "balance", "message": "the job holds up to 1344000000 micro-credits in escrow"
        " until it settles (its GPUs for its whole timeout at its max price); your balance is"
        f" {CREDITS_MICRO} micro-credits"}]}, result
    assert net.gql("{ jobs { id } }", "erin")["jobs"] == []
    assert store.recorder.max_notification_id() == before
    account = net.gql("{ account { balanceMicro escrowMicro } }", "erin")["account"]
    assert account == {"balanceMicro": CREDITS_MICRO,
                       "escrowMicro": 0}


def test_failing_command_fails_the_job_and_charges_for_time_used(net: Network) -> None:
    """A failed run is checked on another owner's provider (docs/security.md row 7f); here
    every provider is one owner's, so the check is skipped after GPGPU_CHECK_WAIT_S: the
    client is charged for the run, its provider is not paid, no reputation changes."""
    job_id = submit(net, "frank", spec("fails", "echo oops >&2; exit 3"))
    job = net.wait_job(job_id, ("FAILED",), client="frank")
    assert job["reason"] == "the command exited with code 3"
    assert int(job["costMicro"]) > 0, job
    events = net.gql("query($id: ID!) { job(id: $id) { events { type data } } }", "frank",
                     id=job_id)["job"]["events"]
    finished = next(e for e in events if e["type"] == "ExecutionFinished")
    assert finished["data"]["exit_code"] == 3 and "oops" in finished["data"]["log_tail"]
    # The run's GPUs went back when it finished (GpusReleased, before the verdict).
    types = [e["type"] for e in events]
    assert types[-3:] == ["JobVerified", "JobSettled", "JobFailed"], types
    assert "CheckSkipped" in types and "ReputationRecorded" not in types, types
    assert "GpusReleased" in types


def test_dishonest_provider_is_caught_and_not_paid(net: Network) -> None:
    job_id = submit(net, "gina", spec("checked", "echo 42 > answer.txt", outputs=["answer.txt"],
                                      resources={"gpu_model": "L4"},
                                      max_price_per_gpu_hour="6"))
    job = net.wait_job(job_id, ("FAILED",), client="gina")
    assert job["providerId"] == "pipe-liar"
    assert job["reason"].startswith("manifest mismatch: answer.txt: storage holds blake3:")
    assert job["costMicro"] == 0
    providers = {p["providerId"]: p for p in net.gql(
        "{ providers { providerId reputation earningsMicro } }", PROVIDER_OWNER)["providers"]}
    assert providers["pipe-liar"]["earningsMicro"] == 0
    assert providers["pipe-liar"]["reputation"] < 0.5
    account = net.gql("{ account { balanceMicro escrowMicro } }", "gina")["account"]
    assert account["balanceMicro"] == CREDITS_MICRO


def test_cancel_running_job_stops_it_and_charges_time_used(net: Network) -> None:
    job_id = submit(net, "ivan", spec("sleepy", "echo started; sleep 61.25; echo never"))
    net.wait_job(job_id, ("RUNNING",), client="ivan")
    time.sleep(1.5)
    cancelled_at = time.monotonic()
    accepted(net.gql(CANCEL, "ivan", id=job_id)["cancelJob"])
    job = net.wait_job(job_id, ("CANCELLED",), client="ivan", timeout_s=30)
    assert time.monotonic() - cancelled_at < 15
    assert job["reason"] == "cancelled by the client"
    assert subprocess.run(["pgrep", "-f", "sleep 61.25"], capture_output=True).returncode == 1
    # Paid for a few seconds of one GPU at 2 credits/hour: more than nothing, far below the max.
    assert 0 < job["costMicro"] < 2_000_000 * 20 // 3600
    account = net.gql("{ account { balanceMicro escrowMicro } }", "ivan")["account"]
    start = CREDITS_MICRO
    assert account == {"balanceMicro": start - job["costMicro"], "escrowMicro": 0}
    again = net.gql(CANCEL, "ivan", id=job_id)["cancelJob"]  # a FieldError, not an error
    assert again == {"__typename": "FieldError", "field": "id",
                     "message": f"job {job_id} is already CANCELLED"}, again


def test_cancel_queued_job_refunds_everything(net: Network) -> None:
    job_id = submit(net, "judy", spec("nowhere", ["true"], resources={"gpu_model": "B200"}))
    net.wait_job(job_id, ("QUEUED",), client="judy")
    accepted(net.gql(CANCEL, "judy", id=job_id)["cancelJob"])
    job = net.wait_job(job_id, ("CANCELLED",), client="judy", timeout_s=30)
    assert job["costMicro"] in (None, 0)
    account = net.gql("{ account { balanceMicro escrowMicro } }", "judy")["account"]
    assert account == {"balanceMicro": CREDITS_MICRO,
                       "escrowMicro": 0}


def test_rebuild_projections_gives_identical_views(net: Network) -> None:
    from readmodel.schema import VIEW_TABLES, ViewDB

    views = ViewDB(net.stack.settings)

    def dump() -> dict[str, list[dict[str, object]]]:
        return {t: views.query(f"SELECT * FROM {t} ORDER BY 1, 2") for t in VIEW_TABLES}

    before = dump()
    assert before["jobs"] and before["ledger_entries"]
    env = {**os.environ, "GPGPU_HOME": str(net.stack.home)}
    done = subprocess.run(
        [sys.executable, "-m", "ops", "admin", "rebuild-projections", "--json"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["rows"]["jobs"] == len(before["jobs"])
    assert dump() == before


def test_nodes_and_queues(net: Network) -> None:
    refused = net.gql(SUBMIT, "kim", s=spec("q", ["true"], queue="mars/fast"))["submitJob"]
    assert refused["errors"] == [{"field": "queue", "message": "node: no node 'mars'"}]
    net.sign_up("ops", ["operator"])
    net.gql('mutation { registerNode(nodeId: "mars", region: "mars-1", operator: "ops")'
            ' { __typename } }', "ops")
    net.gql('mutation { configureQueue(nodeId: "mars", name: "fast", gpuModels: ["B200"])'
            ' { __typename } }', "ops")
    job_id = submit(net, "kim", spec("q", ["true"], queue="mars/fast"))
    net.wait_job(job_id, ("QUEUED",), client="kim")
    nodes = {n["nodeId"]: n for n in net.gql(
        "{ nodes { nodeId providerIds queues { name gpuModels waiting } } }")["nodes"]}
    assert set(nodes["local"]["providerIds"]) == {"pipe-a", "pipe-b", "pipe-liar"}
    assert {"name": "fast", "gpuModels": ["B200"], "waiting": 1} in nodes["mars"]["queues"]
    queue = net.gql('{ queue(name: "mars/fast") { position jobId mine } }', "ops")["queue"]
    assert queue == [{"position": 1, "jobId": job_id, "mine": False}]  # the operator's view
    accepted(net.gql(CANCEL, "kim", id=job_id)["cancelJob"])
    net.wait_job(job_id, ("CANCELLED",), client="kim")


def test_explain_says_where_a_job_could_run_and_why_not_elsewhere(net: Network,
                                                                   tmp_path: Path) -> None:
    query = """query($s: JSON!) { explain(spec: $s) { __typename
      ... on Explanation { eligible { providerId quoteMicro expectedStart }
                           rejected { providerId reason } }
      ... on SpecRejected { errors { field message } } } }"""
    body = spec("where", ["true"], resources={"min_gpu_memory_gb": 60}, timeout="1h")
    found = net.gql(query, "lee", s=body)["explain"]
    assert found["eligible"] == [{"providerId": "pipe-a", "quoteMicro": 2_000_000,
                                  "expectedStart": "now"}]
    assert {r["providerId"]: r["reason"] for r in found["rejected"]} == {
        "pipe-b": "no GPUs of the requested model and memory",  # an A100 with 40 GB
        # every reason: too dear, and an L4 with 24 GB
        "pipe-liar": "price above the job's maximum; no GPUs of the requested model and memory",
    }
    bad = net.gql(query, "lee", s=spec("where", ["true"], resources={"gpu": 1}))["explain"]
    assert bad["errors"] == [{"field": "resources.gpu", "message": "is not a known field"}]

    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: where\ncommand: ['true']\nmax_price_per_gpu_hour: '4'\n"
                         "resources: {gpu_model: A100}\n")
    env = {**os.environ, "GPGPU_API_URL": net.url, "GPGPU_API_KEY": net.token("lee")}
    shown = subprocess.run([sys.executable, "-m", "client", "job", "explain", str(spec_file)],
                           env=env, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "pipe-b" in shown.stdout and "pipe-a: no GPUs of the requested model" in shown.stdout


def test_the_readmes_ten_lines_of_python_run_a_job(net: Network, tmp_path: Path) -> None:
    """The SDK example in README.md, run as a user would: in a folder with data.csv."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    section = readme.split("## The Python SDK", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert len(code.strip().splitlines()) <= 12  # ten, and the import and a blank line
    (tmp_path / "data.csv").write_text("a,1\nb,2\nc,3\n")
    env = {**os.environ, "GPGPU_API_URL": net.url,
           "GPGPU_API_KEY": net.api_key("readme", ["client"]), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "JobSubmitted" in lines and "JobSucceeded" in lines, done.stdout
    assert lines[-1].startswith("SUCCEEDED ") and lines[-1].endswith(" credits; 3 rows"), lines[-1]
    assert (tmp_path / "count.txt").read_text().strip() == "3"
