"""A run's outputs in its client's storage: the key each is written under, and when storage's
refusal of one for the client's quota is the client's doing rather than the run's.

A run writes each declared output once, through a grant for its own key (api/storage.py).
When the client's storage quota refuses that upload, the storage API records it on the job
(Job `OutputRefused`): the network's own witness, which no provider or client can write.
A run whose missing output storage refused so does not vote (activities/verify.py): the
client, which controls what its space holds, could otherwise have the network's check and
tie-break refused their uploads and outvote an honest run that delivered, or the other way
round. A provider's own word that storage refused it (its report's `refused`) is shown in
messages, never judged on.
"""

from __future__ import annotations

RUNS = "jobs/{job_id}/runs/{attempt}/"


def output_key(job_id: str, path: str, attempt: int) -> str:
    """Each run writes its own keys, so replicas and retries never overwrite each other."""
    return RUNS.format(job_id=job_id, attempt=attempt) + path


def output_path(job_id: str, attempt: int, key: str, outputs: list[str]) -> str | None:
    """The declared output (one of `outputs`) that this run writes under `key`; None for a key
    that is no output of this run (a checkpoint, another run's, anything else)."""
    prefix = RUNS.format(job_id=job_id, attempt=attempt)
    if not key.startswith(prefix):
        return None
    path = key[len(prefix):]
    return path if path in outputs else None


def refused_for_quota(size: int, quota_bytes: int, usage: int) -> bool:
    """Whether a refusal for the quota says the client's space was too full for this object:
    the declared size would have fit in the client's whole quota, but not beside what the
    space held (`usage`). A declared size past the whole quota is a fact of the job (or a
    provider's lie), as an object past the per-object limit is, and counts for nothing; and
    an uploader cannot make storage refuse an object that fits by sending more bytes than it
    declared (storage checks the quota as the bytes come: the refusal may come first)."""
    return 0 <= size <= quota_bytes and usage + size > quota_bytes
