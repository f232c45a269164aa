"""Judging runs: each provider's report against storage, then runs against each other."""

from __future__ import annotations

from domain.verification import Comparator, OutputFile, outvoted, quorum
from infra.storage import ObjectNotFound, ObjectStore
from protocol.spec import JobSpec
from workflows import contracts as c

TEXT_LIMIT = 1 << 20  # a numeric comparator reads outputs up to this size


def output_key(job_id: str, path: str, attempt: int) -> str:
    """Each run writes its own keys, so replicas and retries never overwrite each other."""
    return f"jobs/{job_id}/runs/{attempt}/{path}"


def integrity_problems(
    store: ObjectStore, client_id: str, job_id: str, spec: JobSpec, report: c.ReplicaReport
) -> list[str]:
    """What in a provider's report does not hold: storage is the witness.

    What `stat` answers for a run's output is what the storage endpoint computed while it
    received the upload, and nothing can change it after: the output's key is under
    `jobs/`, which no client may write or delete (api/storage.py); only this run's grant
    writes it, once (write-once, If-None-Match on S3), and only until the run has reported
    its outputs; the sha256 and size live in the backend's own metadata, which no key can
    name (infra/storage.py). So this is the digest recorded at upload time, not a later
    one: no separate event is needed to hold it.
    """
    problems = []
    for entry in report.manifest:
        if entry.path not in spec.outputs or entry.key != output_key(
            job_id, entry.path, report.attempt
        ):
            problems.append(f"{entry.path}: not a declared output of this run")
            continue
        try:
            info = store.stat(client_id, entry.key)
        except ObjectNotFound:
            problems.append(f"{entry.path}: reported uploaded but not in storage")
            continue
        if (info.sha256, info.size) != (entry.sha256, entry.size):
            problems.append(
                f"{entry.path}: storage holds sha256 {info.sha256[:12]}… ({info.size} B), "
                f"the provider reported {entry.sha256[:12]}… ({entry.size} B)"
            )
    listed = {e.path for e in report.manifest} | set(report.missing)
    problems += [f"{p}: neither uploaded nor reported missing" for p in spec.outputs
                 if p not in listed]
    return problems


def outcome(spec: JobSpec, report: c.ReplicaReport) -> tuple[bool, str]:
    """Did the job do what it was asked (given an intact report)?"""
    if report.timed_out:
        return False, f"timed out after {spec.timeout_s} s"
    if report.exit_code != 0:
        return False, f"the command exited with code {report.exit_code}"
    if report.missing:
        why = "".join(f"; storage refused {p}: {report.refused[p][:c.MAX_REFUSAL_CHARS]}"
                      for p in report.missing if p in report.refused)
        return False, "declared outputs missing: " + ", ".join(report.missing) + why
    return True, "exit code 0, every output present and intact"


def comparable(
    store: ObjectStore, client_id: str, report: c.ReplicaReport, comparator: Comparator
) -> list[OutputFile]:
    files = []
    for e in report.manifest:
        text = None
        if comparator.kind == "numeric" and e.size <= TEXT_LIMIT:
            _, chunks = store.open(client_id, e.key)
            text = b"".join(chunks).decode("utf-8", errors="replace")
        files.append(OutputFile(e.path, e.sha256, e.size, text))
    return files


def judge(
    store: ObjectStore, client_id: str, job_id: str, spec: JobSpec,
    reports: list[c.ReplicaReport], may_add_run: bool,
) -> tuple[c.Verdict, int | None]:
    """The verdict over every run so far, and the attempt whose outputs become the job's."""
    corrupt = {
        r.attempt: p for r in reports
        if (p := integrity_problems(store, client_id, job_id, spec, r))
    }
    intact = [r for r in reports if r.attempt not in corrupt]
    if len(reports) == 1:
        r = reports[0]
        if corrupt:
            return c.Verdict(False, False, "manifest mismatch: " + "; ".join(corrupt[r.attempt]),
                             [], [r.attempt]), None
        succeeded, reason = outcome(spec, r)
        return c.Verdict(True, succeeded, reason, [r.attempt], []), r.attempt

    comp = Comparator.from_spec(spec.verification.comparator.model_dump())
    files = [comparable(store, client_id, r, comp) for r in intact]
    winner = quorum(files, len(files), comp) if len(files) >= 2 else None
    if winner is None:
        if may_add_run:
            undecided = c.Verdict(False, False, "runs disagree", [], sorted(corrupt), decided=False)
            return undecided, None
        reason = f"no majority among {len(reports)} runs on distinct providers"
        return c.Verdict(False, False, reason, [], [r.attempt for r in reports]), None
    losers = {intact[i].attempt for i in outvoted(files, winner, comp)} | set(corrupt)
    accepted = [r.attempt for r in reports if r.attempt not in losers]
    succeeded, reason = outcome(spec, intact[winner])
    if losers:
        reason += f"; {len(losers)} of {len(reports)} runs disagreed and were rejected"
    else:
        reason += f"; {len(reports)} runs on distinct providers agree"
    return c.Verdict(True, succeeded, reason, accepted, sorted(losers)), intact[winner].attempt
