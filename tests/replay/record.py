"""Record the JobWorkflow histories that tests/test_replay.py replays, on a real network.

    .venv/bin/python -m tests.replay.record            # writes tests/replay/job_workflow_*.json

A Temporal dev server, the API, the control worker and three provider agents (of two
owners) run the scenarios below, one job each; each job's history is written as
`job_workflow_<scenario>.json` and the files of scenarios no longer listed are removed.
The network runs with the public test key (tests/support/temporal.py TEST_PAYLOAD_KEYS): the
histories are kept as Temporal stored them, every payload encrypted and sealed for its
workflow (its id is in the history's first event; the namespace is Temporal's `default`), a
step's for its activity id too (in the history beside it), and tests/test_replay.py replays
them with the network's codec, which refuses a payload in the clear or sealed for another
workflow or step.
Record again (and commit the files) whenever JobWorkflow changes before a release; after a
release a change goes behind `workflow.patched`, and the histories of the release stay.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.worker import Replayer

from infra.payload_codec import data_converter
from ops.launch import free_port, start_listening, temporal_dev_args
from tests.e2e.network import Network, network
from tests.support.temporal import TEST_PAYLOAD_KEYS
from workflows.contracts import job_workflow_id
from workflows.job import JobWorkflow

HERE = Path(__file__).resolve().parent
CLIENT = "recorder"
SUBMIT = """mutation($s: JSON!) { submitJob(spec: $s) { __typename
  ... on JobSubmitted { job { id } } ... on SpecRejected { errors { field message } } } }"""
CANCEL = "mutation($id: ID!) { cancelJob(id: $id) { ... on Job { state } __typename } }"
# rec-a is the cheapest: every first run lands there. rec-b (another owner) takes what must
# be on a distinct owner (replicas, the network's check); rec-c is rec-a's owner's second.
# (Scenarios: success, failure (checked), the network's check, replicas, a verifier, a
# cancel, a timeout with no output, providers failing their step, a lost provider.)
PROVIDERS: list[tuple[str, str, str, list[str]]] = [
    ("rec-a", "1xH100:80", "1.0", []),
    ("rec-b", "1xH100:80", "2.0", []),
    ("rec-c", "1xH100:80", "3.0", []),
]
OWNERS = {"rec-b": "other-owner"}
ENV = {
    "GPGPU_ADAPTIVE_CHECKS": "true",  # the reproducible job gets the network's check
    "GPGPU_CHECKPOINT_INTERVAL_S": "0.5",
    # Patient with a loaded machine, but a killed provider is found lost within seconds.
    "GPGPU_GPU_ACTIVITY_HEARTBEAT_TIMEOUT_S": "5",
    "GPGPU_GPU_SCHEDULE_TO_START_TIMEOUT_S": "20",
    "GPGPU_REPLICA_WAIT_S": "10",  # how long a run a provider failed waits for another
    "GPGPU_TEMPORAL_PAYLOAD_KEYS": ",".join(k.hex() for k in TEST_PAYLOAD_KEYS),
}
COUNTER = (  # counts to 8, a step a second, checkpointing each step
    'd="$GPGPU_CHECKPOINT_DIR"; i=$(cat "$d/n" 2>/dev/null || echo 0); '
    'while [ "$i" -lt 8 ]; do i=$((i+1)); echo "$i" > "$d/.n"; mv "$d/.n" "$d/n"; sleep 1; '
    'done; echo "$i" > result.txt'
)


def spec(name: str, command: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": command, "max_price_per_gpu_hour": "4", "timeout": "2m",
            **extra}


def submit(net: Network, body: dict[str, Any]) -> str:
    result = net.gql(SUBMIT, CLIENT, s=body)["submitJob"]
    assert result["__typename"] == "JobSubmitted", result
    return str(result["job"]["id"])


def ended(net: Network, job_id: str, state: str) -> None:
    job = net.wait_job(job_id, ("SUCCEEDED", "FAILED", "CANCELLED"), CLIENT, timeout_s=180)
    assert job["state"] == state, job


def succeeded(net: Network) -> str:
    net.put(CLIENT, "inputs/words.txt", b"gpu cloud\n")
    job_id = submit(net, spec("upper", "tr a-z A-Z < words.txt > upper.txt",
                              inputs=[{"key": "inputs/words.txt", "name": "words.txt"}],
                              outputs=["upper.txt"]))
    ended(net, job_id, "SUCCEEDED")
    return job_id


def failed(net: Network) -> str:
    """Fails on rec-a; the network's check of every failed run (rec-b) fails too."""
    job_id = submit(net, spec("fails", "echo no; exit 3", outputs=["never.txt"]))
    ended(net, job_id, "FAILED")
    return job_id


def checked(net: Network) -> str:
    job_id = submit(net, spec("checked", "echo 42 > answer.txt", outputs=["answer.txt"],
                              verification={"reproducible": True}))
    ended(net, job_id, "SUCCEEDED")
    return job_id


def replicas(net: Network) -> str:
    job_id = submit(net, spec("replicas", "echo 42 > answer.txt", outputs=["answer.txt"],
                              verification={"replicas": 2}))
    ended(net, job_id, "SUCCEEDED")
    return job_id


def verifier(net: Network) -> str:
    job_id = submit(net, spec("verified", "echo 42 > answer.txt", outputs=["answer.txt"],
                              verification={"verifier": "grep -q 42 answer.txt"}))
    ended(net, job_id, "SUCCEEDED")
    return job_id


def cancelled(net: Network) -> str:
    job_id = submit(net, spec("cancelled", "sleep 100"))
    net.wait_job(job_id, ("RUNNING",), CLIENT, timeout_s=60)
    time.sleep(1.0)
    assert net.gql(CANCEL, CLIENT, id=job_id)["cancelJob"]["__typename"] == "Job"
    ended(net, job_id, "CANCELLED")
    return job_id


def timed_out(net: Network) -> str:
    """Times out with no output, and nothing checked it: charged, its provider not paid."""
    job_id = submit(net, spec("slow", "sleep 100", outputs=["never.txt"], timeout=3))
    ended(net, job_id, "FAILED")
    return job_id


def input_changed(net: Network) -> str:
    """The client changes its input after submitting: each provider fails its stage step
    (RunFailed), the run goes to the next, and with none left the job fails refunded."""
    net.put(CLIENT, "inputs/pinned.txt", b"as submitted\n")
    job_id = submit(net, spec("changed", "cat pinned.txt",
                              inputs=[{"key": "inputs/pinned.txt", "name": "pinned.txt"}]))
    net.put(CLIENT, "inputs/pinned.txt", b"changed after submission\n")
    ended(net, job_id, "FAILED")
    return job_id


def provider_lost(net: Network) -> str:
    """rec-a is killed while it runs the job (having checkpointed a few steps): the run
    goes to another provider. Last: rec-a stays down."""
    job_id = submit(net, spec("counter", COUNTER, outputs=["result.txt"]))
    net.wait_job(job_id, ("RUNNING",), CLIENT, timeout_s=60)
    time.sleep(3.0)  # a few steps checkpointed
    victim = next(c for c in net.stack.children if c.name == "rec-a")
    victim.proc.send_signal(signal.SIGKILL)
    victim.proc.wait()
    ended(net, job_id, "SUCCEEDED")
    return job_id


SCENARIOS: dict[str, Callable[[Network], str]] = {
    "succeeded": succeeded,
    "failed": failed,
    "checked": checked,
    "replicas": replicas,
    "verifier": verifier,
    "cancelled": cancelled,
    "timed_out": timed_out,
    "input_changed": input_changed,
    "provider_lost": provider_lost,
}


async def fetch(address: str, job_id: str) -> str:
    temporal = await Client.connect(address)  # no codec: the history as Temporal keeps it
    history = await temporal.get_workflow_handle(job_workflow_id(job_id)).fetch_history()
    replayed = await Replayer(workflows=[JobWorkflow], namespace=temporal.namespace,
                              data_converter=data_converter(TEST_PAYLOAD_KEYS)
                              ).replay_workflow(history)
    assert replayed.replay_failure is None, replayed.replay_failure
    return history.to_json()


def record(out: Path, only: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="gpgpu-record-") as tmp:
        home = Path(tmp)
        port = free_port()
        temporal = start_listening(
            lambda: subprocess.Popen(temporal_dev_args(port, home / "temporal.db"),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
            "127.0.0.1", port, "the Temporal dev server", 30,
        )
        address = f"127.0.0.1:{port}"
        try:
            (home / "net").mkdir()
            with network(home / "net", address, PROVIDERS, ENV, owners=OWNERS) as net:
                for name, scenario in SCENARIOS.items():
                    if only and name not in only:
                        continue
                    job_id = scenario(net)
                    path = out / f"job_workflow_{name}.json"
                    path.write_text(asyncio.run(fetch(address, job_id)))
                    print(f"{path}: job {job_id}", flush=True)
        finally:
            temporal.terminate()
            temporal.wait(timeout=10)
    if not only:
        kept = {f"job_workflow_{n}.json" for n in SCENARIOS}
        for old in out.glob("job_workflow_*.json"):
            if old.name not in kept:
                old.unlink()
                print(f"removed {old.name}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"only these of {', '.join(SCENARIOS)} (default: all, and "
                             "remove the files of others)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"scenarios: no such scenario {', '.join(sorted(unknown))}")
    record(args.out, args.scenarios)
    return 0


if __name__ == "__main__":
    sys.exit(main())
