"""The contracts of the GPU steps (stage, execute, upload) and of what they move: the
transfers a run is given, its checkpoint, and what each step answers.

The provider agent (worker_gpu/) imports these from here; workflows/contracts.py names
them too, with every other step's contracts.
"""

from dataclasses import dataclass, field

# No `from __future__ import annotations` here (workflows/contracts.py says why).


# A digest is "blake3:<hex>" (protocol/digest.py). Histories and rows written before BLAKE3
# hold a bare sha256 in a `sha256` field instead: `digest` then reads it as "sha256:<hex>"
# (the defaults are there for that; every new contract names digest and size).


def _from_sha256(digest: str, sha256: str) -> tuple[str, str]:
    """(digest, sha256) of a contract as read: a bare sha256 of before BLAKE3 as the digest
    "sha256:<hex>" (where no digest is named), the field then emptied."""
    if not digest and sha256:
        return f"sha256:{sha256.lower()}", ""
    return digest, sha256


@dataclass
class InputTransfer:
    name: str  # path inside the job's working directory
    url: str  # presigned GET
    digest: str = ""
    size: int = 0
    sha256: str = ""  # before BLAKE3 only

    def __post_init__(self) -> None:
        self.digest, self.sha256 = _from_sha256(self.digest, self.sha256)


@dataclass
class OutputTransfer:
    path: str  # path inside the job's working directory
    key: str  # storage key under the client's space
    url: str  # presigned PUT


@dataclass
class ManifestEntry:
    path: str
    key: str
    digest: str = ""
    size: int = 0
    sha256: str = ""  # before BLAKE3 only

    def __post_init__(self) -> None:
        self.digest, self.sha256 = _from_sha256(self.digest, self.sha256)

    def record(self) -> dict[str, object]:
        """As a domain event records it (domain/job.py OutputsUploaded)."""
        return {"path": self.path, "key": self.key, "digest": self.digest, "size": self.size}


# Checkpoints (worker_gpu/checkpoint.py): a job's checkpoint/ directory, uploaded while it
# runs, staged into the next attempt when its provider is lost.


@dataclass
class CheckpointPlan:
    """Where one run uploads its job's checkpoint while it runs.

    Files go to `slots` (presigned PUTs, taken in turn so that no file of the last
    complete checkpoint is ever overwritten), then the manifest to `manifest_url`.
    """

    manifest_key: str  # jobs/<job_id>/checkpoint/<attempt>/manifest.json
    manifest_url: str  # presigned PUT
    slots: list[OutputTransfer]  # presigned PUTs for the files, twice max_files of them
    max_bytes: int
    max_files: int
    interval_s: float = 5.0
    # The checkpoint this run starts from (staged into checkpoint/ as inputs): paths
    # relative to checkpoint/, keys where its files already are.
    resumed: list[ManifestEntry] = field(default_factory=list)
    resumed_from_attempt: int = 0


@dataclass
class TransferPlan:
    """What the provider needs for one attempt: where the bytes are, what to run."""

    job_id: str
    attempt: int
    inputs: list[InputTransfer]
    outputs: list[OutputTransfer]
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    timeout_s: int = 600
    image: str | None = None
    network: bool = False
    checkpoint: CheckpointPlan | None = None  # None: this run keeps no checkpoint


# Every GPU step's request names the provider it is assigned to, how long that provider has
# to pick it up, how long it may be silent once it has, and how long the network's own
# outages are borne (workflows/steps.py gpu_step fills them in); the agent ignores them.


@dataclass
class StageRequest:
    job_id: str
    attempt: int
    inputs: list[InputTransfer]
    provider_id: str = ""
    pickup_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 10.0
    outage_grace_s: float = 60.0


@dataclass
class StageResult:
    files: int
    bytes: int


@dataclass
class ExecuteRequest:
    job_id: str
    attempt: int
    command: list[str]
    gpu_indexes: list[int]
    timeout_s: int
    env: dict[str, str] = field(default_factory=dict)
    image: str | None = None  # run in this container image (the docker runtime)
    network: bool = False  # the job asked for network access
    checkpoint: CheckpointPlan | None = None  # upload the job's checkpoint/ while it runs
    provider_id: str = ""
    pickup_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 10.0
    outage_grace_s: float = 60.0


@dataclass
class ExecuteResult:
    exit_code: int | None  # None when killed for the timeout
    timed_out: bool
    wall_ms: int
    gpu_ms: int  # wall time times the number of GPUs held
    log_tail: str


@dataclass
class UploadRequest:
    job_id: str
    attempt: int
    outputs: list[OutputTransfer]
    provider_id: str = ""
    pickup_timeout_s: float = 30.0
    heartbeat_timeout_s: float = 10.0
    outage_grace_s: float = 60.0


# The most of a storage answer a provider may pass on for an output the store refused.
MAX_REFUSAL_CHARS = 512


@dataclass
class UploadResult:
    manifest: list[ManifestEntry]
    missing: list[str]
    # Outputs the storage refused (larger than one object may be, past the client's quota),
    # with its answer: they are in `missing` too, and the client is told why. The provider's
    # word only: what verification judges on is the storage API's own record of a refusal
    # for the quota (Job `OutputRefused`: such a run does not vote, activities/verify.py).
    refused: dict[str, str] = field(default_factory=dict)
