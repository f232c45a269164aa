"""Checkpoints, the control plane's side: where a run writes its checkpoint, which earlier
one it resumes, and dropping a succeeded job's (worker_gpu/checkpoint.py has the provider's
side and the convention)."""

from __future__ import annotations

import json
import logging

from activities.grants import Grants
from infra.settings import Settings
from infra.storage import ObjectNotFound, ObjectStore, StorageError, delete_each
from protocol import digest
from protocol.fields import check_relative_path
from workflows import contracts as c

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
MANIFEST_NAME = "manifest.json"
MANIFEST_LIMIT = 1 << 20  # bytes of a checkpoint manifest worth reading


def checkpoint_manifest_key(job_id: str, attempt: int) -> str:
    """Each run has its own manifest: no run can name what another run resumes from."""
    return f"jobs/{job_id}/{CHECKPOINT_DIR}/{attempt}/{MANIFEST_NAME}"


def checkpoint_slot_key(job_id: str, attempt: int, slot: int) -> str:
    """Each run uploads into slots of its own, so no run overwrites another's checkpoint."""
    return f"jobs/{job_id}/{CHECKPOINT_DIR}/{attempt}/{slot}"


def plan(
    store: ObjectStore, settings: Settings, grants: Grants, allocations: dict[int, str],
    req: c.AllocateRequest, taken: set[str], kin: set[str],
) -> c.CheckpointPlan:
    """Grants for this run's checkpoint and, after a lost run, the last one to resume.

    Only a checkpoint that a provider of this run's owner (`kin`: its providers) wrote is
    resumed: another owner's lost provider could have uploaded anything through its own
    grants, and this run's result, judged as its provider's, would be what it planted."""
    manifest_key = checkpoint_manifest_key(req.job_id, req.attempt)
    slots = []
    for n in range(2 * settings.checkpoint_max_files):
        key = checkpoint_slot_key(req.job_id, req.attempt, n)
        slots.append(c.OutputTransfer(str(n), key, grants.put(key, settings.checkpoint_max_bytes)))
    resumed: list[c.ManifestEntry] | None = None
    source = 0
    # The latest earlier run of this job that left a checkpoint, written through that
    # run's own grants (no client writes under jobs/): the first attempt has none.
    for earlier in range(req.attempt - 1, 0, -1):
        if earlier not in allocations:
            continue
        if allocations[earlier] not in kin:
            log.info("job %s: attempt %d does not resume the checkpoint of attempt %d "
                     "(another owner's provider)", req.job_id, req.attempt, earlier)
            continue
        try:
            resumed = checkpoint_of(store, settings, grants.client_id, req.job_id, earlier)
        except (StorageError, ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning("job %s: not resuming from the checkpoint of attempt %d: %s",
                        req.job_id, earlier, err)
            break
        if resumed is not None:
            source = earlier
            break
    # A declared input keeps its place; a checkpoint file of the same name stays behind.
    kept = [e for e in resumed or [] if f"{CHECKPOINT_DIR}/{e.path}" not in taken]
    return c.CheckpointPlan(
        manifest_key, grants.put(manifest_key, MANIFEST_LIMIT),
        slots, settings.checkpoint_max_bytes, settings.checkpoint_max_files,
        settings.checkpoint_interval_s, kept, source if kept else 0,
    )


def checkpoint_of(
    store: ObjectStore, settings: Settings, client_id: str, job_id: str, attempt: int
) -> list[c.ManifestEntry] | None:
    """The last complete checkpoint of this run, each file checked against storage; None:
    the run wrote none."""
    key = checkpoint_manifest_key(job_id, attempt)
    try:
        info, chunks = store.open(client_id, key)
    except ObjectNotFound:
        return None
    if info.size > MANIFEST_LIMIT:
        raise ValueError(f"{key} is larger than {MANIFEST_LIMIT} bytes")
    doc = json.loads(b"".join(chunks))
    if doc.get("job_id") != job_id or doc.get("attempt") != attempt:
        raise ValueError(f"{key} is not the manifest of attempt {attempt} of job {job_id}")
    entries = []
    for f in doc["files"]:
        path, file_key, size = f["path"], f["key"], f["size"]
        recorded = digest.of_record(f)  # a manifest from before BLAKE3 names a sha256
        if not isinstance(path, str) or check_relative_path(path) != path:
            raise ValueError(f"checkpoint path {path!r} is not a plain relative path")
        if not checkpoint_file_of(file_key, job_id, attempt):
            raise ValueError(f"checkpoint file {path!r} is not stored in a checkpoint of "
                             f"attempt {attempt} or before")
        stored = store.stat(client_id, file_key)
        if (stored.digest, stored.size) != (recorded, size):
            raise ValueError(f"checkpoint file {path!r} in storage does not match the manifest")
        entries.append(c.ManifestEntry(path, file_key, recorded, size))
    if len(entries) > settings.checkpoint_max_files:
        raise ValueError(f"{len(entries)} files, more than {settings.checkpoint_max_files}")
    if sum(e.size for e in entries) > settings.checkpoint_max_bytes:
        raise ValueError(f"more than {settings.checkpoint_max_bytes} bytes")
    return entries


def checkpoint_file_of(file_key: object, job_id: str, attempt: int) -> bool:
    """A slot of this run or of an earlier one (a resumed run keeps the files it did not
    change where they are)."""
    if not isinstance(file_key, str):
        return False
    prefix = f"jobs/{job_id}/{CHECKPOINT_DIR}/"
    owner, _, slot = file_key.removeprefix(prefix).partition("/")
    return (file_key.startswith(prefix) and owner.isdigit() and slot.isdigit()
            and 1 <= int(owner) <= attempt and len(owner) < 8)


def drop(store: ObjectStore, client_id: str, job_id: str) -> None:
    """A succeeded job's checkpoint is of no more use: its files leave the client's
    storage (and quota). A failed or cancelled job keeps its last one to start from.
    Best effort: the job has finished either way, and a retry finds less to delete."""
    try:
        stored = [o.key for o in store.list(client_id, f"jobs/{job_id}/{CHECKPOINT_DIR}/")]
        # The manifests first: no half-deleted checkpoint is ever named as complete.
        manifests = [k for k in stored if k.endswith(f"/{MANIFEST_NAME}")]
        delete_each(store, client_id, manifests + [k for k in stored if k not in manifests])
    except (StorageError, OSError) as err:
        log.warning("job %s: its checkpoint stays in storage: %s", job_id, err)
