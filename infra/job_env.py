"""A job's `env` at rest: sealed in its JobSubmitted event, opened only to plan a run.

The event store keeps a job's spec with its `env`'s names alone (domain/job.py) and the
env itself sealed by the row cipher (infra/row_cipher.py: AES-256-GCM under a key derived
from the Temporal payload keys), bound to the job's id, so a sealed env copied into
another job's event does not open. The API seals it when the job is submitted; the control
step that plans a run (prepare_transfers) opens it, and from there it travels as before:
in Temporal's encrypted payloads, then in the run's sealed assignment row.

An event recorded before envs were sealed, and a canary's, has no sealed env: its spec's
env is the env itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from infra.row_cipher import RowCipher, RowSealError

TABLE, COLUMN = "jobs", "env"  # what the sealed value is bound to, with the job's id


def seal_env(cipher: RowCipher, job_id: str, env: Mapping[str, str]) -> str:
    """The env sealed for this job; "" for no env."""
    if not env:
        return ""
    return cipher.seal(TABLE, COLUMN, job_id, json.dumps(dict(env), sort_keys=True).encode())


def open_env(cipher: RowCipher, job_id: str, recorded: Mapping[str, str], sealed: str
             ) -> dict[str, str]:
    """The job's env: `sealed` opened, or the recorded spec's env where nothing was sealed.

    RowSealError where the sealed env does not open (changed, another job's, a key no
    longer listed) or names other variables than the recorded spec does."""
    if not sealed:
        return dict(recorded)
    env = json.loads(cipher.open(TABLE, COLUMN, job_id, sealed))
    if not isinstance(env, dict) or set(env) != set(recorded):
        raise RowSealError(f"the sealed env of job {job_id!r} names other variables than"
                           " its spec")
    return {str(k): str(v) for k, v in env.items()}
