"""The job spec: what a client asks for, checked before anything is recorded.

Every refusal names the field it is about ("resources.gpus: ..."), unknown
fields are errors (never silently dropped), and money is parsed exactly.

Numbers are strict: `priority: true` or `gpus: "2"` is refused, not read as 1 or 2.
Every string is text a process can be handed: Unicode that UTF-8 can encode (JSON
may carry a lone surrogate such as "\\ud800", which is not) and no NUL character.
Sizes are bounded, so that one spec can neither bloat the event log nor overflow a
provider's execve (argv and environment share its ARG_MAX, 2 MiB on Linux):

| field | at most |
| --- | --- |
| `command`, `verification.verifier` | 64 KiB: UTF-8 bytes and a NUL per argument |
| `env` | 256 variables, a value 32 KiB; 256 KiB in all (`NAME=value` and a NUL each) |
| `inputs`, `outputs` | 256 each |
| a path (`outputs.N`, `inputs.N.name`) | 901 bytes of UTF-8, so that an output's storage key fits |
| a key (`inputs.N.key`) | 959 bytes of UTF-8 (`<client id>/<key>` fits S3's 1024) |
| a part of a path or key (between '/') | 255 bytes of UTF-8, as a file system names a file |
| `resources.gpu_model`, `resources.region` | 128 characters |

A spec read back as the network recorded it (`JobSpec.recorded`) is not held to bounds
added since it was admitted (a path's or key's bytes, a price's written form): those
apply to what is submitted.
"""

from __future__ import annotations

import json
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protocol import digest as digest_rules
from protocol.fields import (
    Command,
    EnvValue,
    Label,
    SpecPath,
    StrictFloat,
    StrictInt,
    Text,
    as_recorded,
    check_storage_key,
    kib,
    parse_duration,
    shown,
)
from protocol.limits import (
    MAX_BYTES,
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    MAX_FILES,
    MAX_GPU_MEMORY_GB,
    MAX_JOB_GPUS,
    MAX_PRIORITY_LEVELS,
    MAX_REPLICAS,
)
from protocol.money import (
    cost_of_gpu_time,
    micro_to_credits,
    price_to_micro,
    recorded_credits_to_micro,
)

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUEUE = re.compile(r"(?:[a-z0-9][a-z0-9._-]{0,62}/)?[a-z0-9][a-z0-9._-]{0,62}")
# name[:tag][@digest], as Docker writes image references (lower-case repository).
_IMAGE = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)


class SpecError(ValueError):
    """A refused spec: a list of (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))




class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    gpus: Annotated[StrictInt, Field(ge=1, le=MAX_JOB_GPUS)] = 1
    gpu_model: Label | None = None
    min_gpu_memory_gb: Annotated[StrictInt, Field(ge=0, le=MAX_GPU_MEMORY_GB)] = 0
    region: Label | None = None
    min_reputation: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    # "full": only a provider whose sandbox holds each job in control groups of its own
    # (bubblewrap with cgroups, or Docker): a job beside yours can neither take your memory
    # or CPU nor see your processes. "any" also takes one that limits each process alone
    # (bwrap-rlimits), or none at all (an agent started with --unsafe-no-sandbox).
    isolation: Literal["any", "full"] = "any"


class Comparator(_Strict):
    """How two providers' outputs are compared: byte for byte, or numbers within a tolerance."""

    kind: Literal["exact", "numeric"] = "exact"
    rel_tol: Annotated[StrictFloat, Field(ge=0, le=1)] = 0.0
    abs_tol: Annotated[StrictFloat, Field(ge=0)] = 0.0


class Verification(_Strict):
    """What the client asks beyond the checks every job gets (exit code, outputs' digests)."""

    # Run on this many distinct providers; a quorum of matching outputs decides.
    replicas: Annotated[StrictInt, Field(ge=1, le=MAX_REPLICAS)] = 1
    comparator: Comparator = Comparator()
    # The job gives the same outputs on any honest provider: the network may check a run by
    # running it again elsewhere and comparing. Unset (and no numeric comparator), the
    # network checks the provider with known-answer canaries instead, never by comparing
    # this job's outputs, so a job's own nondeterminism never blames an honest provider.
    reproducible: StrictBool = False
    # A command run on a different provider over the accepted outputs: exit 0 accepts them.
    verifier: Command | None = None

    @field_validator("verifier", mode="before")
    @classmethod
    def _verifier(cls, v: Any) -> Any:
        if isinstance(v, str):
            return ["/bin/sh", "-c", v] if v.strip() else []
        return v

    @field_validator("verifier")
    @classmethod
    def _verifier_not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and not v:
            raise ValueError("must not be empty")
        return v

    @property
    def comparable(self) -> bool:
        """Whether two honest runs of this job are expected to agree (as compared)."""
        return self.reproducible or self.comparator.kind == "numeric"

    @property
    def runs(self) -> int:
        """The most executions the client pays for: replicas, a tie-break, the verifier."""
        tie_break = 1 if self.replicas == 2 else 0
        return self.replicas + tie_break + (1 if self.verifier else 0)


class InputRef(_Strict):
    """An input as the API takes it: an object already in the client's storage.

    Pinned when the job is submitted (`digest`, `size`): staging refuses bytes that
    changed since. A client may pin them itself; a bare `sha256` (as specs before BLAKE3
    pinned an input) is read as the digest "sha256:<hex>".
    """

    key: str
    name: SpecPath | None = None  # where the job sees it; defaults to the key's last part
    digest: str | None = Field(default=None, pattern=digest_rules.PATTERN)
    size: Annotated[StrictInt, Field(ge=0, le=MAX_BYTES)] | None = None
    # Never kept: read into `digest` as it is taken, left out of what is recorded.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$", exclude=True,
                               repr=False)

    @field_validator("key")
    @classmethod
    def _key(cls, v: str, info: ValidationInfo) -> str:
        return check_storage_key(v, bounded=not as_recorded(info))

    @model_validator(mode="after")
    def _legacy_sha256(self) -> InputRef:
        if self.sha256 is None:
            return self
        if self.digest is not None:
            raise ValueError("give the input's digest, or its sha256, not both")
        return self.model_copy(update={"digest": f"sha256:{self.sha256}", "sha256": None})

    @property
    def target(self) -> str:
        return self.name or PurePosixPath(self.key).name


class InputFile(_Strict):
    """An input as a spec file may give it: a local path to upload, or a stored key."""

    path: Text | None = None
    key: str | None = None
    name: SpecPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputFile:
        if (self.path is None) == (self.key is None):
            raise ValueError("give exactly one of 'path' (a local file) or 'key' (in storage)")
        if self.key is not None:
            check_storage_key(self.key)
        return self


class _SpecBase(_Strict):
    name: Text
    command: Command
    # A container image runs the command in Docker; without one, the provider's process
    # runtime runs it. Only providers with the matching runtime are eligible.
    image: Text | None = None
    network: bool = False  # the job asks for network access; a provider must also allow it
    queue: Text = "default"  # "<node>/<queue>", or a queue of the default node
    # Higher goes first within the queue; the queue says how many levels it has.
    priority: Annotated[StrictInt, Field(ge=0, le=MAX_PRIORITY_LEVELS - 1)] = 0
    verification: Verification = Verification()
    outputs: Annotated[list[SpecPath], Field(max_length=MAX_FILES)] = []
    resources: Resources = Resources()
    max_price_per_gpu_hour: str | int | float
    timeout: str | int = 600
    env: dict[str, EnvValue] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.fullmatch(v):
            raise ValueError("must be 1-63 letters, digits, '.', '_' or '-', starting alnum")
        return v

    @field_validator("queue")
    @classmethod
    def _queue(cls, v: str) -> str:
        if not _QUEUE.fullmatch(v):
            raise ValueError(f"{shown(v)} is not a queue like 'default' or 'gpu-eu/batch'")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 255 or not _IMAGE.fullmatch(v)):
            raise ValueError(f"{shown(v)} is not an image reference like 'python:3.11-slim'")
        return v

    @property
    def runtime(self) -> str:
        return "docker" if self.image else "process"

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        if isinstance(v, str):
            if not v.strip():
                raise ValueError("must not be empty")
            return ["/bin/sh", "-c", v]
        if isinstance(v, list) and not v:
            raise ValueError("must not be empty")
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        first: dict[str, int] = {}
        for n, path in enumerate(v):  # each one already checked and normalised (SpecPath)
            if path in first:
                raise ValueError(f"lists the same output twice ({path!r} is outputs.{first[path]} "
                                 f"and outputs.{n})")
            first[path] = n
        return v

    @field_validator("max_price_per_gpu_hour", mode="before")
    @classmethod
    def _price(cls, v: Any, info: ValidationInfo) -> str:
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ValueError("must be a number of credits such as \"2.5\"")
        if as_recorded(info):  # as admitted: perhaps a form refused since ("1e3")
            return str(v)
        micro = price_to_micro(v)
        # A number (JSON's, YAML's) is kept in the written form, never a float's "1e-05".
        return v if isinstance(v, str) else micro_to_credits(micro)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> int:
        return parse_duration(v)

    @field_validator("env", mode="before")
    @classmethod
    def _env_count(cls, v: Any) -> Any:
        # Before each value is validated: a dict's max_length is checked only after.
        if isinstance(v, dict) and len(v) > MAX_ENV_VARS:
            raise ValueError(f"has {len(v)} variables, more than the {MAX_ENV_VARS} allowed")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(f"{shown(k)} is not a valid environment variable name")
            if k in ("CUDA_VISIBLE_DEVICES", "PATH", "HOME"):
                raise ValueError(f"{k} is set by the provider and cannot be overridden")
        size = sum(len(k) + len(x.encode("utf-8")) + 2 for k, x in v.items())
        if size > MAX_ENV_BYTES:
            raise ValueError(f"is {size} bytes in all (NAME=value and a NUL each), more than "
                             f"the {kib(MAX_ENV_BYTES)} allowed")
        return v

    @property
    def timeout_s(self) -> int:
        return int(self.timeout)

    @property
    def max_price_micro(self) -> int:
        return recorded_credits_to_micro(self.max_price_per_gpu_hour)

    @property
    def max_run_cost_micro(self) -> int:
        """The most one execution can cost: every GPU at the max price for the whole timeout."""
        return cost_of_gpu_time(self.resources.gpus * self.timeout_s * 1000, self.max_price_micro)

    @property
    def max_cost_micro(self) -> int:
        """What escrow holds: one run's maximum for every run the verification may need."""
        return self.max_run_cost_micro * self.verification.runs


class JobSpec(_SpecBase):
    """A job as submitted to the API: inputs are keys in the client's storage."""

    inputs: Annotated[list[InputRef], Field(max_length=MAX_FILES)] = []

    @classmethod
    def recorded(cls, data: Any) -> JobSpec:
        """A spec as the network recorded it when it admitted the job (Job.spec): read
        without the bounds added since, so that no job already admitted becomes unreadable
        (a run whose output storage refuses is judged so: activities/verify.py)."""
        return cls.model_validate(data, context={"recorded": True})

    @model_validator(mode="after")
    def _distinct_inputs(self) -> JobSpec:
        targets = [i.target for i in self.inputs]
        if len(set(targets)) != len(targets):
            raise ValueError("inputs: two inputs would land on the same name")
        return self


class JobSpecFile(_SpecBase):
    """A job spec file (YAML) as a person writes it: inputs may be local files."""

    inputs: Annotated[list[InputFile], Field(max_length=MAX_FILES)] = []


def _kind(value: Any) -> str:
    """What a person wrote, in their words (JSON's and YAML's, not Python's)."""
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list | tuple):
        return "a list"
    return "null" if value is None else type(value).__name__


def _format(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "spec"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known field"
        elif e["type"] == "missing":
            msg = "is required"
        elif e["type"] in ("model_type", "dict_type"):  # not "Input should be ... InputRef"
            example = ""
            if len(e["loc"]) == 2 and e["loc"][0] == "inputs" and isinstance(e["input"], str):
                example = f' such as {{"key": {json.dumps(e["input"][:40])}}}'
            msg = f"must be a mapping of fields{example}, not {_kind(e['input'])}"
        out.append((loc, msg))
    return out


def parse_job_spec(data: Any) -> JobSpec:
    """Validate a submitted spec, or raise SpecError naming every bad field."""
    if not isinstance(data, dict):
        raise SpecError([("spec", "must be a mapping of fields")])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format(err)) from None


def parse_job_spec_file(data: Any) -> JobSpecFile:
    if not isinstance(data, dict):
        raise SpecError([("spec", "must be a mapping of fields")])
    try:
        return JobSpecFile.model_validate(data)
    except ValidationError as err:
        raise SpecError(_format(err)) from None
