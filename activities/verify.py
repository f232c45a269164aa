"""Judging runs: each provider's report against storage, then runs against each other."""

from __future__ import annotations

from collections.abc import Collection, Mapping

from domain.outputs import output_key
from domain.verification import Comparator, OutputFile, outvoted, quorum
from infra.storage import ObjectNotFound, ObjectStore, StorageError
from protocol import digest
from protocol.spec import JobSpec
from workflows import contracts as c

__all__ = ["judge", "output_key"]

TEXT_LIMIT = 1 << 20  # a numeric comparator reads outputs up to this size


def stored(store: ObjectStore, client_id: str, key: str) -> bool:
    """Whether storage holds `key`. A key storage refuses to name (a spec admitted before its
    output's path was bounded: its key past the key's bound) holds nothing: no upload to it
    was taken, and the verdict must not fail on what a client wrote in its spec."""
    try:
        store.stat(client_id, key)
    except StorageError:  # ObjectNotFound, or a key refused (infra/storage.py check_object_key)
        return False
    return True


def integrity_problems(
    store: ObjectStore, client_id: str, job_id: str, spec: JobSpec, report: c.ReplicaReport
) -> list[str]:
    """What in a provider's report does not hold: storage is the witness.

    What `stat` answers for a run's output is what the storage endpoint computed while it
    received the upload, and nothing can change it after: the output's key is under
    `jobs/`, which no client may write or delete (api/storage.py); only this run's grant
    writes it, once (write-once, If-None-Match on S3), and only until the run has reported
    its outputs; the digest and size live in the backend's own metadata, which no key can
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
        except StorageError as err:  # a key storage refuses: no upload to it was taken
            problems.append(f"{entry.path}: reported uploaded but storage refuses its key "
                            f"({str(err)[:200]})")
            continue
        if (info.digest, info.size) != (entry.digest, entry.size):
            problems.append(
                f"{entry.path}: storage holds {digest.short(info.digest)} ({info.size} B), "
                f"the provider reported {digest.short(entry.digest)} ({entry.size} B)"
            )
    # Missing is what storage says, not the provider: an output it calls missing that this
    # run's grant did write contradicts the store (and would make a run look empty-handed).
    for path in report.missing:
        if path in spec.outputs and stored(store, client_id, output_key(job_id, path,
                                                                        report.attempt)):
            problems.append(f"{path}: reported missing but in storage")
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


STATUS = "\0status"  # the pseudo-output by which compared runs show their ending


def ending(report: c.ReplicaReport) -> str:
    """How a run ended, as runs are compared: it timed out, exited 0, or failed. A failure
    is one whatever its code: the code a failing job exits with is not a fact of the job
    (a signal, the sandbox's kill at a limit, a library's error number on another GPU), and
    a job's own nondeterminism must not make honest runs disagree."""
    if report.timed_out:
        return "timed out"
    return "exit 0" if report.exit_code == 0 else "failed"


def by_presence(spec: JobSpec) -> bool:
    """Runs of a job not declared reproducible (and not replicated by the client) are compared
    only by how they ended and which outputs they left, never by bytes: the network's check
    of a failed or empty-handed run (workflows/runs.py `unproven_ending`) asks "does this
    job fail, or leave its outputs?", and a job's own nondeterminism must not make honest
    runs disagree."""
    return not spec.verification.comparable and spec.verification.replicas == 1


def comparable(
    store: ObjectStore, client_id: str, report: c.ReplicaReport, comparator: Comparator,
    presence: bool = False,
) -> list[OutputFile]:
    """What of a run is compared: its ending (runs that ended differently never agree: a
    failed run is not a successful one that wrote the same bytes), and its outputs, by bytes
    or, with `presence`, by which are there."""
    status = OutputFile(STATUS, ending(report), 0)
    if presence:
        return [status] + [OutputFile(e.path, "present", 0) for e in report.manifest]
    files = [status]
    for e in report.manifest:
        text = None
        if comparator.kind == "numeric" and e.size <= TEXT_LIMIT:
            _, chunks = store.open(client_id, e.key)
            text = b"".join(chunks).decode("utf-8", errors="replace")
        files.append(OutputFile(e.path, e.digest, e.size, text))
    return files


def abstains(report: c.ReplicaReport, refused: Collection[str]) -> bool:
    """A run that does not vote: one of its missing outputs is one storage refused for its
    client's quota, as the storage API recorded it (`refused`, never the provider's report:
    domain/outputs.py). It delivered nothing the others could be compared with, and the
    client, which controls its storage, chose that. A run that timed out votes as it ended."""
    return not report.timed_out and any(path in refused for path in report.missing)


def judge(
    store: ObjectStore, client_id: str, job_id: str, spec: JobSpec,
    reports: list[c.ReplicaReport], may_add_run: bool,
    refused: Mapping[int, Collection[str]] | None = None,
) -> tuple[c.Verdict, int | None]:
    """The verdict over every run so far, and the attempt whose outputs become the job's.

    `refused`: by attempt, the outputs whose upload storage refused for the client's quota
    (Job.refused_outputs). Such a run abstains (`abstains`): neither accepted nor rejected,
    so neither paid nor blamed (workflows/runs.py: an empty-handed run nothing reproduced),
    and the runs that delivered are judged among themselves. Fewer than two of them while
    another run may be added: one is (the network's tie-break, or the client's). None at
    all: nothing was delivered, the job fails and no one is blamed. One alone once no run
    may be added: it stands alone, as a run whose check could not be placed, where the
    other runs were the network's check and tie-break; a job whose client asked for
    replicas has no majority."""
    corrupt = {
        r.attempt: p for r in reports
        if (p := integrity_problems(store, client_id, job_id, spec, r))
    }
    intact = [r for r in reports if r.attempt not in corrupt]
    if len(reports) == 1:
        r = reports[0]
        if corrupt:
            return c.Verdict(False, False, "manifest mismatch: " + "; ".join(corrupt[r.attempt]),
                             [], [r.attempt], contradicted_attempts=[r.attempt]), None
        succeeded, reason = outcome(spec, r)
        return c.Verdict(True, succeeded, reason, [r.attempt], []), r.attempt

    refused = refused or {}
    abstaining = [r.attempt for r in intact if abstains(r, refused.get(r.attempt, ()))]
    voters = [r for r in intact if r.attempt not in abstaining]
    blamed = sorted(corrupt)
    if abstaining and len(voters) < 2:
        note = (f"storage refused the outputs of {len(abstaining)} of {len(reports)} runs for "
                "the client's storage quota: they did not vote")
        if voters and may_add_run:
            return c.Verdict(False, False, f"too few runs to compare; {note}", [], blamed,
                             decided=False, contradicted_attempts=blamed), None
        if voters and spec.verification.replicas == 1:
            succeeded, reason = outcome(spec, voters[0])
            return c.Verdict(True, succeeded, f"{reason}; {note}", [voters[0].attempt], blamed,
                             contradicted_attempts=blamed), voters[0].attempt
        what = "no run delivered its outputs" if not voters else "no majority"
        return c.Verdict(False, False, f"{what}; {note}; no provider is blamed", [], blamed,
                         contradicted_attempts=blamed), None

    comp = Comparator.from_spec(spec.verification.comparator.model_dump())
    files = [comparable(store, client_id, r, comp, by_presence(spec)) for r in voters]
    winner = quorum(files, len(files), comp) if len(files) >= 2 else None
    if winner is None:
        if may_add_run:
            undecided = c.Verdict(False, False, "runs disagree", [], blamed,
                                  decided=False, contradicted_attempts=blamed)
            return undecided, None
        # Independent providers (distinct owners) that all disagree say more about the job
        # than about any of them: no provider is blamed but those whose report storage
        # contradicts; the client, who declared the job reproducible, pays for its runs
        # (workflows/runs.py) and the job fails, saying so.
        reason = (f"no majority among {len(reports)} runs on distinct providers: the job's "
                  "outputs are not reproducible as declared; no provider is blamed")
        return c.Verdict(False, False, reason, [], blamed, contradicted_attempts=blamed), None
    losers = {voters[i].attempt for i in outvoted(files, winner, comp)} | set(corrupt)
    accepted = [r.attempt for r in voters if r.attempt not in losers]
    succeeded, reason = outcome(spec, voters[winner])
    if losers:
        reason += f"; {len(losers)} of {len(reports)} runs disagreed and were rejected"
    else:
        reason += f"; {len(accepted)} runs on distinct providers agree"
    if abstaining:
        reason += (f"; storage refused the outputs of {len(abstaining)} for the client's "
                   "storage quota: they did not vote")
    verdict = c.Verdict(True, succeeded, reason, accepted, sorted(losers),
                        contradicted_attempts=blamed)
    return verdict, voters[winner].attempt
