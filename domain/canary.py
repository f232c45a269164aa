"""Known-answer canary jobs: work the network already knows the answer to.

A canary is an ordinary job that the network itself submits to one provider:
from a random seed it builds a small program that computes something
non-trivial (a chain of sha256 rounds folded into a checksum), and it computes
the same answer itself with the same code (`sweep` below is both the control
plane's reference and, by its source text, the program the provider runs). A
provider that returns anything else is caught with certainty, without a second
provider. BOINC does this per host; here the rate falls with the provider's
verified streak (domain/verification.py `canary_rate`).

How a canary is recorded: as a Job aggregate (so its allocation, staging,
execution, upload, verdict and settlement are the same events as any job's,
the read models show it and the GPU-side activities need nothing new) plus a
small Canary aggregate, keyed by the job that triggered it and the provider,
that is the marker: it holds the seed, the expected outputs and, at the end,
the outcome and what the provider was paid. The Canary's events are not
projected into any view a provider can read, so nothing marks the job as a
canary while it runs; the marker is in the event log for the operator and for
anyone who recomputes reputation.

What a provider sees is shaped like an ordinary job: a uuid4-looking job id,
attempt 1, a client id (a pseudonym derived from the seed, different for every
canary, never "network"), a staged script with an ordinary name, a command like
`python3 train.py out/result.txt`, env SEED and STEPS, a timeout, outputs under
`jobs/<job_id>/runs/1/` in that client's storage through presigned URLs, names
and sizes drawn from the seed. What a determined provider could still tell
apart, and what is not mitigated:

- the program: every canary is one of two programs (python, or sh with
  sha256sum for container-only providers) with varying names and sizes; a
  provider that fingerprints the staged script or the command recognises it.
  The strong answer is to replay past verified client jobs as canaries; not done.
- the client: each pseudonym submits exactly one job, has no deposit and its job
  holds no escrow; anyone who impersonates that client id against the API (the
  API trusts the X-Gpgpu-Client header) can read that history.
- the timing: a canary follows one of the provider's accepted jobs, after a
  random delay of up to GPGPU_CANARY_MAX_DELAY_S.
- the payment: an honest provider is paid from protocol:verification, with
  the same transfer kind and memo as the network's own replicated checks, but
  only after the canary ended, so this never tells a canary apart while it runs.
"""

from __future__ import annotations

import hashlib
import inspect
import re
import textwrap
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from eventsourcing.domain import Aggregate, event

from domain.ids import business_id
from protocol import digest
from protocol.money import micro_to_credits
from protocol.spec import InputRef, JobSpec

# What a canary's Canary record may end with: a reputation outcome, or "void" (the run could
# not be judged: e.g. a transfer failed for reasons that need not be the provider's).
CANARY_OUTCOMES = ("success", "failure", "timeout", "mismatch", "lost", "void")
SEED_PATTERN = re.compile(r"[0-9a-f]{32}")

# Names drawn from the seed so that canaries do not all look alike.
_JOB_NAMES = ("train", "eval", "finetune", "sweep", "bench", "embed", "infer", "preprocess",
              "simulate", "score")
_SCRIPTS = ("train.py", "main.py", "run.py", "job.py", "task.py", "sweep.py")
_OUTPUTS = ("out/result.txt", "results/metrics.txt", "output.txt", "out/log.txt",
            "metrics.txt", "results/summary.txt")
_TIMEOUTS_S = (300, 600, 900, 1200, 1800)
# Work per canary: ~0.1-0.3 s of CPU in python; the shell form forks a process per round.
PY_STEPS = (60_000, 240_000)
SH_STEPS = (40, 120)


# The reference computation. Its source text is the provider's program: keep it
# self-contained (imports inside), plain (python3 of any recent version), and without
# a docstring or comments that would say what it is for.
def sweep(seed: str, steps: int) -> str:
    import hashlib

    state = hashlib.sha256(seed.encode()).digest()
    acc = 0
    mod = (1 << 61) - 1
    for _ in range(steps):
        state = hashlib.sha256(state).digest()
        acc = (acc * 1000003 + int.from_bytes(state[:8], "big")) % mod
    return f"steps {steps}\ndigest {state.hex()}\nchecksum {acc}\n"


_PROGRAM = """import os
import sys


{kernel}

if __name__ == "__main__":
    out = sys.argv[1]
    if os.path.dirname(out):
        os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        f.write(sweep(os.environ["SEED"], int(os.environ["STEPS"])))
"""


def program() -> bytes:
    """The python program a canary stages: `sweep` and a main that writes its answer."""
    return _PROGRAM.format(kernel=textwrap.dedent(inspect.getsource(sweep))).encode()


def shell_chain(seed: str, steps: int) -> str:
    """The shell form's answer: `steps` rounds of sha256 over the hex text, as sha256sum does."""
    h = seed
    for _ in range(steps):
        h = hashlib.sha256(h.encode()).hexdigest()
    return f"steps {steps}\ndigest {h}\n"


def shell_command(output: str) -> str:
    """The shell form: busybox or coreutils sh, printf, sha256sum, cut, mkdir."""
    parent = output.rpartition("/")[0]
    make_dir = f'mkdir -p "{parent}"; ' if parent else ""
    return (
        'h="$SEED"; i=0; while [ "$i" -lt "$STEPS" ]; do '
        'h=$(printf %s "$h" | sha256sum | cut -c1-64); i=$((i+1)); done; '
        f"{make_dir}printf 'steps %s\\ndigest %s\\n' \"$STEPS\" \"$h\" > \"{output}\""
    )


@dataclass(frozen=True)
class ExpectedOutput:
    path: str
    digest: str  # protocol/digest.py; a canary issued before BLAKE3 holds a sha256 one
    size: int


@dataclass(frozen=True)
class CanaryTask:
    """A canary as the control plane builds it: the job to submit and its known answer."""

    seed: str
    job_id: str
    client_id: str
    spec: JobSpec
    files: dict[str, bytes] = field(default_factory=dict)  # storage key -> bytes to stage
    expected: tuple[ExpectedOutput, ...] = ()
    answer: bytes = b""  # the expected output's bytes


def new_seed(random_bytes: bytes) -> str:
    """A seed from 16 random bytes (the caller draws them: the domain holds no randomness)."""
    if len(random_bytes) != 16:
        raise ValueError("a canary seed takes 16 random bytes")
    return random_bytes.hex()


def _check_seed(seed: str) -> None:
    if not SEED_PATTERN.fullmatch(seed):
        raise ValueError(f"a canary seed is 32 lower-case hex digits, got {seed!r}")


def _derive(seed: str, purpose: str) -> bytes:
    return hashlib.sha256(f"{purpose}:{seed}".encode()).digest()


def _pick(seed: str, purpose: str, choices: Sequence[Any]) -> Any:
    return choices[int.from_bytes(_derive(seed, purpose)[:4], "big") % len(choices)]


def _between(seed: str, purpose: str, low: int, high: int) -> int:
    return low + int.from_bytes(_derive(seed, purpose)[:4], "big") % (high - low + 1)


def canary_job_id(seed: str) -> str:
    """Shaped like the API's uuid4 job ids (a uuid5 would give itself away by its version)."""
    return str(uuid.UUID(bytes=_derive(seed, "job")[:16], version=4))


def canary_client_id(seed: str) -> str:
    """A pseudonym per canary: never "network", never the same twice."""
    return "u" + _derive(seed, "client").hex()[:11]


def make_canary(
    seed: str, price_micro: int, runtimes: Sequence[str], image: str | None = None
) -> CanaryTask | None:
    """The canary job for a provider at this price, or None when no runtime of it fits.

    A provider with the process runtime gets the python form; a container-only
    provider gets the shell form in `image` (an image with sh and sha256sum that
    the provider has), or no canary when no image is configured.
    """
    _check_seed(seed)
    job_id, client_id = canary_job_id(seed), canary_client_id(seed)
    name = f"{_pick(seed, 'name', _JOB_NAMES)}-{_between(seed, 'n', 1, 99)}"
    output = _pick(seed, "output", _OUTPUTS)
    base: dict[str, Any] = {
        "name": name,
        "outputs": [output],
        "max_price_per_gpu_hour": micro_to_credits(price_micro),
        "timeout": _pick(seed, "timeout", _TIMEOUTS_S),
    }
    files: dict[str, bytes] = {}
    if "process" in runtimes:
        steps = _between(seed, "steps", *PY_STEPS)
        script = _pick(seed, "script", _SCRIPTS)
        code = program()
        key = f"inputs/{name}/{script}"
        files[key] = code
        spec = JobSpec.model_validate({
            **base,
            "command": ["python3", script, output],
            "env": {"SEED": seed, "STEPS": str(steps)},
            "inputs": [{"key": key, "name": script, "size": len(code),
                        "digest": digest.of_bytes(code)}],
        })
        answer = sweep(seed, steps).encode()
    elif "docker" in runtimes and image:
        steps = _between(seed, "steps", *SH_STEPS)
        spec = JobSpec.model_validate({
            **base,
            "command": shell_command(output),
            "env": {"SEED": seed, "STEPS": str(steps)},
            "image": image,
        })
        answer = shell_chain(seed, steps).encode()
    else:
        return None
    expected = (ExpectedOutput(output, digest.of_bytes(answer), len(answer)),)
    return CanaryTask(seed, job_id, client_id, spec, files, expected, answer)


def staged_inputs(spec: JobSpec) -> list[tuple[InputRef, bytes]]:
    """Each input of a canary's spec with the bytes to put in storage for it (the program)."""
    return [(ref, program()) for ref in spec.inputs]


@dataclass(frozen=True)
class CanaryStarted:
    """What starting a canary did: reserved GPUs on the provider, or why it was skipped."""

    started: bool
    reason: str
    job_id: str = ""
    client_id: str = ""
    gpu_indexes: tuple[int, ...] = ()
    price_micro: int = 0


@dataclass(frozen=True)
class CanaryEnded:
    outcome: str
    reason: str
    paid_micro: int


@dataclass(frozen=True)
class Judgement:
    outcome: str  # a reputation outcome (success, failure, timeout, mismatch), or void
    reason: str

    @property
    def honest(self) -> bool:
        return self.outcome == "success"


def judge_canary(
    expected: Sequence[ExpectedOutput],
    exit_code: int | None,
    timed_out: bool,
    manifest: Sequence[tuple[str, str, int]],
    missing: Sequence[str],
    integrity_problems: Sequence[str] = (),
) -> Judgement:
    """Compare a provider's report of a canary with the known answer.

    `manifest` is what the provider reported uploading, (path, digest, size);
    `integrity_problems` what storage says about that report (activities/verify.py).
    A report that storage contradicts, or outputs other than the known answer, are a
    mismatch; a timeout is a timeout; a known-good program that exits non-zero or
    writes nothing is a failure. A known answer recorded as a sha256 (a canary issued
    before BLAKE3) cannot be compared with a BLAKE3 report: void, no one's fault.
    """
    if integrity_problems:
        return Judgement("mismatch", "the report does not match storage: "
                         + "; ".join(integrity_problems))
    if timed_out:
        return Judgement("timeout", "the run timed out")
    if exit_code != 0:
        return Judgement("failure", f"the command exited with code {exit_code}")
    if missing:
        return Judgement("failure", "outputs missing: " + ", ".join(missing))
    reported = {path: (sha, size) for path, sha, size in manifest}
    for want in expected:
        got = reported.get(want.path)
        if got is None:
            return Judgement("failure", f"{want.path}: not uploaded")
        if digest.algorithm_of(got[0]) != digest.algorithm_of(want.digest):
            return Judgement("void", f"{want.path}: the known answer is a "
                             f"{digest.algorithm_of(want.digest)} digest, the report's "
                             f"{digest.algorithm_of(got[0])}")
        if got != (want.digest, want.size):
            return Judgement(
                "mismatch",
                f"{want.path}: {digest.short(got[0])} ({got[1]} B), "
                f"the known answer is {digest.short(want.digest)} ({want.size} B)",
            )
    return Judgement("success", "outputs equal the known answer")


class Canary(Aggregate):
    """The marker: this job was a canary, its known answer, and how it ended."""

    @staticmethod
    def create_id(origin_job_id: str, provider_id: str, **_: Any) -> UUID:
        return business_id("canary", f"{origin_job_id}/{provider_id}")

    class CanaryIssued(Aggregate.Created):
        """Version 2: each expected output's `digest` (before, a bare `sha256`)."""

        class_version = 2
        origin_job_id: str
        provider_id: str
        job_id: str
        client_id: str
        seed: str
        gpu_indexes: list[int]
        price_micro: int
        expected: list[dict[str, Any]]

        @staticmethod
        def upcast_v1_v2(state: dict[str, Any]) -> None:
            digest.upcast_records(state.get("expected"))

    @event(CanaryIssued)
    def __init__(
        self,
        origin_job_id: str,
        provider_id: str,
        job_id: str,
        client_id: str,
        seed: str,
        gpu_indexes: list[int],
        price_micro: int,
        expected: list[dict[str, Any]],
    ):
        self.origin_job_id = origin_job_id
        self.provider_id = provider_id
        self.job_id = job_id
        self.client_id = client_id
        self.seed = seed
        self.gpu_indexes = gpu_indexes
        self.price_micro = price_micro
        self.expected = expected
        self.outcome: str | None = None
        self.reason = ""
        self.paid_micro = 0

    def expected_outputs(self) -> list[ExpectedOutput]:
        return [ExpectedOutput(**e) for e in self.expected]

    def close(self, outcome: str, reason: str, paid_micro: int) -> None:
        if outcome not in CANARY_OUTCOMES:
            raise ValueError(f"unknown canary outcome {outcome!r}")
        if self.outcome is None:
            self._closed(outcome=outcome, reason=reason, paid_micro=paid_micro)

    @event("CanaryClosed")
    def _closed(self, outcome: str, reason: str, paid_micro: int) -> None:
        self.outcome, self.reason, self.paid_micro = outcome, reason, paid_micro
