"""The job spec: what a client asks for, checked before anything is recorded.

Every refusal names the field it is about ("resources.gpus: ..."), unknown
fields are errors (never silently dropped), and money is parsed exactly.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from domain.money import cost_of_gpu_time, credits_to_micro

MAX_TIMEOUT_S = 7 * 24 * 3600
_DURATION = re.compile(r"\s*(\d+)\s*(s|m|h|d)?\s*")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_QUEUE = re.compile(r"(?:[a-z0-9][a-z0-9._-]{0,62}/)?[a-z0-9][a-z0-9._-]{0,62}")
# name[:tag][@digest], as Docker writes image references (lower-case repository).
_IMAGE = re.compile(
    r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?::[0-9]+)?(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?"
)
# Far above any real price, and it keeps every cost inside a signed 64-bit integer.
MAX_PRICE_MICRO = 1_000_000 * 1_000_000


class SpecError(ValueError):
    """A refused spec: a list of (field, message) pairs."""

    def __init__(self, errors: list[tuple[str, str]]):
        self.errors = errors
        super().__init__("; ".join(f"{f}: {m}" for f, m in errors))


def parse_duration(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90, '90s', '10m' or '2h'")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value)):
        seconds = int(m.group(1)) * _UNITS[m.group(2)]
    else:
        raise ValueError("must be a duration like 90, '90s', '10m' or '2h'")
    if not 1 <= seconds <= MAX_TIMEOUT_S:
        raise ValueError(f"must be between 1 second and {MAX_TIMEOUT_S // 86400} days")
    return seconds


def check_relative_path(value: str) -> str:
    """A path inside the job's working directory: relative, no '..', no NUL."""
    if not value or "\x00" in value or "\\" in value:
        raise ValueError("must be a non-empty relative path")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; use a path relative to the job's directory")
    norm = posixpath.normpath(value)
    if norm == "." or norm.startswith("../") or norm == "..":
        raise ValueError(f"{value!r} leaves the job's directory")
    return norm


def check_storage_key(value: str) -> str:
    """A key inside the client's own storage space."""
    if not value or len(value) > 1024 or "\x00" in value or "\\" in value:
        raise ValueError("must be a non-empty key of at most 1024 characters")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; keys are relative to your storage space")
    parts = value.split("/")
    if any(p in ("..", ".", "") for p in parts):
        raise ValueError(f"{value!r} is not a plain key (no '.', '..' or trailing '/')")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Strict):
    gpus: Annotated[int, Field(ge=1, le=64, strict=True)] = 1
    gpu_model: str | None = None
    min_gpu_memory_gb: Annotated[int, Field(ge=0, le=4096, strict=True)] = 0
    region: str | None = None
    min_reputation: Annotated[float, Field(ge=0, le=1)] = 0.0


class Comparator(_Strict):
    """How two providers' outputs are compared: byte for byte, or numbers within a tolerance."""

    kind: Literal["exact", "numeric"] = "exact"
    rel_tol: Annotated[float, Field(ge=0, le=1)] = 0.0
    abs_tol: Annotated[float, Field(ge=0)] = 0.0


class Verification(_Strict):
    """What the client asks beyond the checks every job gets (exit code, outputs, sha256s)."""

    # Run on this many distinct providers; a quorum of matching outputs decides.
    replicas: Annotated[int, Field(ge=1, le=5, strict=True)] = 1
    comparator: Comparator = Comparator()
    # A command run on a different provider over the accepted outputs: exit 0 accepts them.
    verifier: list[str] | None = None

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
    def runs(self) -> int:
        """The most executions the client pays for: replicas, a tie-break, the verifier."""
        tie_break = 1 if self.replicas == 2 else 0
        return self.replicas + tie_break + (1 if self.verifier else 0)


class InputRef(_Strict):
    """An input as the API takes it: an object already in the client's storage."""

    key: str
    name: str | None = None  # where the job sees it; defaults to the key's last part
    # Pinned when the job is submitted: staging refuses bytes that changed since.
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    size: Annotated[int, Field(ge=0)] | None = None

    _key = field_validator("key")(check_storage_key)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        return None if v is None else check_relative_path(v)

    @property
    def target(self) -> str:
        return self.name or PurePosixPath(self.key).name


class InputFile(_Strict):
    """An input as a spec file may give it: a local path to upload, or a stored key."""

    path: str | None = None
    key: str | None = None
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputFile:
        if (self.path is None) == (self.key is None):
            raise ValueError("give exactly one of 'path' (a local file) or 'key' (in storage)")
        if self.key is not None:
            check_storage_key(self.key)
        if self.name is not None:
            check_relative_path(self.name)
        return self


class _SpecBase(_Strict):
    name: str
    command: list[str]
    # A container image runs the command in Docker; without one, the provider's process
    # runtime runs it. Only providers with the matching runtime are eligible.
    image: str | None = None
    network: bool = False  # the job asks for network access; a provider must also allow it
    queue: str = "default"  # "<node>/<queue>", or a queue of the default node
    # Higher goes first within the queue; the queue says how many levels it has.
    priority: int = Field(0, ge=0, le=9)
    verification: Verification = Verification()
    outputs: list[str] = []
    resources: Resources = Resources()
    max_price_per_gpu_hour: str | int | float
    timeout: str | int = 600
    env: dict[str, str] = {}

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
            raise ValueError(f"{v!r} is not a queue like 'default' or 'gpu-eu/batch'")
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is not None and (len(v) > 255 or not _IMAGE.fullmatch(v)):
            raise ValueError(f"{v!r} is not an image reference like 'python:3.11-slim'")
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
        paths = [check_relative_path(p) for p in v]
        if len(set(paths)) != len(paths):
            raise ValueError("lists the same output twice")
        return paths

    @field_validator("max_price_per_gpu_hour", mode="before")
    @classmethod
    def _price(cls, v: Any) -> str:
        if not isinstance(v, str | int | float) or isinstance(v, bool):
            raise ValueError("must be a number of credits such as \"2.5\"")
        micro = credits_to_micro(v)
        if micro <= 0:
            raise ValueError("must be more than 0 credits")
        if micro > MAX_PRICE_MICRO:
            raise ValueError(f"must be at most {MAX_PRICE_MICRO // 1_000_000} credits")
        return str(v)

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: Any) -> int:
        return parse_duration(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if not _ENV_NAME.fullmatch(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
            if k in ("CUDA_VISIBLE_DEVICES", "PATH", "HOME"):
                raise ValueError(f"{k} is set by the provider and cannot be overridden")
        return v

    @property
    def timeout_s(self) -> int:
        return int(self.timeout)

    @property
    def max_price_micro(self) -> int:
        return credits_to_micro(self.max_price_per_gpu_hour)

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

    inputs: list[InputRef] = []

    @model_validator(mode="after")
    def _distinct_inputs(self) -> JobSpec:
        targets = [i.target for i in self.inputs]
        if len(set(targets)) != len(targets):
            raise ValueError("inputs: two inputs would land on the same name")
        return self


class JobSpecFile(_SpecBase):
    """A job spec file (YAML) as a person writes it: inputs may be local files."""

    inputs: list[InputFile] = []


def _format(err: ValidationError) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "spec"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "is not a known field"
        elif e["type"] == "missing":
            msg = "is required"
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
