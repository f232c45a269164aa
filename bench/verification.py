"""`python -m bench verification`: what result verification costs, and what it catches.

A seeded discrete simulation of the verify step, calling the functions of
`domain/verification.py` as the workflow does. 10,000 jobs of one unit of GPU
time each go, one after another, to providers drawn with weights equal to their
reputation (`domain.reputation.reputation_score` of their recorded outcomes);
a provider below the minimum reputation gets no work. 10% of the providers are
dishonest: honest until they have 10 accepted results, then wrong on 30% of
everything they run. 30% of the jobs print floating-point numbers that differ in
the last bits from one honest GPU to another, and declare a numeric comparator
(rel_tol 1e-6); a wrong result is off by 0.1% to 10%. Another 20% are honest but
nondeterministic (like examples/hello, which writes the GPU it was given into its result):
two honest runs differ, and the job does not declare itself reproducible.

Policies:
- none: every result is accepted.
- redundant: every job runs on k=2 distinct providers; on disagreement a third
  (then a fourth, a fifth) distinct provider breaks the tie; outvoted results
  are caught and their providers get a "mismatch".
- adaptive: a result of a reproducible job (exact or numeric) is re-run on a second
  provider when `decide_check` says so (a quorum as above); a nondeterministic job is
  never compared, its provider gets a canary at the check's rate instead; a caught
  provider's latest accepted, unconfirmed results are re-run (`recheck_after_mismatch`);
  known-answer canaries are mixed into each provider's work (`decide_canary`).

Figures, one JSON line each on stdout, labelled with `policy` (progress on stderr):
- wrong_accepted_share: jobs whose accepted result is wrong at the end ÷ accepted jobs.
- detection_rate: wrong results caught ÷ wrong results returned for client jobs
  (by the first provider, a checker or a tie-breaker).
- extra_gpu_time_share: GPU time beyond one run per job (replicas, tie-breaks,
  re-checks, canaries) ÷ the jobs' own GPU time.
- honest_penalised_share: honest providers given at least one mismatch ÷ honest
  providers (goal 0: a job's own nondeterminism never blames an honest provider).
and, from the redundant run, labelled with `comparator`:
- false_alarm_share: comparisons of two honest results that the comparator calls
  different, with byte equality for every job (exact) and with each job's declared
  comparator (numeric).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from domain.reputation import reputation_score
from domain.verification import (
    EXACT,
    Comparator,
    OutputFile,
    decide_canary,
    decide_check,
    manifests_agree,
    outvoted,
    quorum,
    recheck_after_mismatch,
)

POLICIES = ("none", "redundant", "adaptive")
DISHONEST_SHARE = 0.10
TURN_AFTER = 10  # accepted results before a dishonest provider starts cheating
WRONG_SHARE = 0.30
FLOAT_JOB_SHARE = 0.30
NONDETERMINISTIC_SHARE = 0.20  # honest runs differ; the job is not declared reproducible
NUMERIC = Comparator("numeric", rel_tol=1e-6)
NUMBERS_PER_OUTPUT = 8
MAX_RUNS = 5  # a job whose results never reach a quorum in this many runs is not accepted
MAX_CANARIES_PER_JOB = 3
OUTPUT_PATH = "out/result.txt"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def emit(metric: str, value: float, unit: str, **labels: Any) -> None:
    line = {"bench": "verification", "metric": metric, "value": round(value, 5), "unit": unit,
            **labels}
    print(json.dumps(line), flush=True)


@dataclass
class Provider:
    index: int
    dishonest: bool
    outcomes: list[str] = field(default_factory=list)
    reputation: float = 0.5
    accepted: list[int] = field(default_factory=list)  # jobs whose accepted result is its own

    def record(self, outcome: str) -> None:
        self.outcomes.append(outcome)
        self.reputation = reputation_score(self.outcomes)

    @property
    def cheating(self) -> bool:
        return self.dishonest and self.outcomes.count("success") >= TURN_AFTER


@dataclass(frozen=True)
class Result:
    provider: int
    manifest: tuple[OutputFile, ...]
    wrong: bool


@dataclass
class Job:
    index: int
    floats: bool
    values: tuple[float, ...]
    nondeterministic: bool = False
    accepted: Result | None = None
    confirmed: bool = False  # a second provider's result agreed with the accepted one

    @property
    def reproducible(self) -> bool:
        return not self.nondeterministic

    @property
    def comparator(self) -> Comparator:
        return NUMERIC if self.floats else EXACT


@dataclass
class Tally:
    jobs: int = 0
    accepted: int = 0
    gpu_units: int = 0
    wrong_returned: int = 0
    wrong_caught: int = 0
    wrong_caught_late: int = 0  # by a re-check, after the client had it
    wrong_delivered: int = 0  # accepted when delivered, whether or not a re-check caught it later
    checks: int = 0
    rechecks: int = 0
    canaries: int = 0
    canaries_failed: int = 0
    no_quorum: int = 0
    honest_pairs: int = 0
    honest_pairs_differ_exact: int = 0
    honest_pairs_differ_declared: int = 0


def manifest_of(text: str) -> tuple[OutputFile, ...]:
    data = text.encode()
    return (OutputFile(OUTPUT_PATH, hashlib.sha256(data).hexdigest(), len(data), text),)


class Simulation:
    def __init__(self, policy: str, args: argparse.Namespace, dishonest: set[int],
                 jobs: list[Job]) -> None:
        self.policy = policy
        self.min_reputation = args.min_reputation
        self.rng = random.Random(f"{args.seed}/{policy}")
        self.providers = [Provider(i, i in dishonest) for i in range(args.providers)]
        self.jobs = jobs
        self.tally = Tally()
        self.caught: deque[int] = deque()  # providers just given a mismatch, for re-checks

    # Providers and their results

    def pick(self, exclude: set[int]) -> Provider:
        eligible = [p for p in self.providers
                    if p.index not in exclude and p.reputation >= self.min_reputation]
        if not eligible:
            raise RuntimeError("no eligible provider left: lower --min-reputation")
        return self.rng.choices(eligible, weights=[p.reputation for p in eligible])[0]

    def output(self, job: Job, provider: Provider) -> tuple[str, bool]:
        wrong = provider.cheating and self.rng.random() < WRONG_SHARE
        values = list(job.values)
        if wrong:
            values = [v * (1 + self.rng.choice((-1, 1)) * self.rng.uniform(1e-3, 1e-1))
                      for v in values]
        elif job.floats:  # the last bits differ from one GPU to another
            values = [v * (1 + self.rng.randint(-4, 4) * 2.0**-52) for v in values]
        if job.nondeterministic:  # e.g. the GPU it ran on: every honest run differs
            device = f"device {self.rng.randrange(1 << 30)}\n"
            return device + "".join(f"step {i} loss {v:.6f}\n" for i, v in enumerate(values)), wrong
        if job.floats or wrong:
            return "".join(f"step {i} loss {v!r}\n" for i, v in enumerate(values)), wrong
        return "".join(f"step {i} loss {v:.6f}\n" for i, v in enumerate(values)), wrong

    def run(self, job: Job, provider: Provider) -> Result:
        self.tally.gpu_units += 1
        text, wrong = self.output(job, provider)
        self.tally.wrong_returned += wrong
        return Result(provider.index, manifest_of(text), wrong)

    def mismatch(self, provider: Provider) -> None:
        provider.record("mismatch")
        self.caught.append(provider.index)

    # Verification

    def agree(self, job: Job, results: list[Result], recorded: set[int]) -> Result | None:
        """Add distinct providers until a quorum of 2 agrees; record the new providers' outcomes."""
        while (win := quorum([r.manifest for r in results], 2, job.comparator)) is None:
            if len(results) >= MAX_RUNS:
                self.tally.no_quorum += 1
                return None
            extra = self.pick({r.provider for r in results})
            results.append(self.run(job, extra))
        self.count_honest_pairs(job, results)
        losers = set(outvoted([r.manifest for r in results], win, job.comparator))
        for i, r in enumerate(results):
            if i in losers:
                self.tally.wrong_caught += r.wrong
            if r.provider in recorded and i not in losers:
                continue  # already recorded as a success for this job
            if i in losers:
                self.mismatch(self.providers[r.provider])
            else:
                self.providers[r.provider].record("success")
        return results[win]

    def count_honest_pairs(self, job: Job, results: list[Result]) -> None:
        if self.policy != "redundant" or len(results) < 2:
            return
        first, second = results[0], results[1]
        if first.wrong or second.wrong:
            return
        self.tally.honest_pairs += 1
        self.tally.honest_pairs_differ_exact += not manifests_agree(
            first.manifest, second.manifest, EXACT)
        self.tally.honest_pairs_differ_declared += not manifests_agree(
            first.manifest, second.manifest, job.comparator)

    def accept(self, job: Job, result: Result, confirmed: bool) -> None:
        job.accepted, job.confirmed = result, confirmed
        self.providers[result.provider].accepted.append(job.index)
        self.tally.wrong_delivered += result.wrong

    def run_job(self, job: Job) -> None:
        self.tally.jobs += 1
        provider = self.pick(set())
        first = self.run(job, provider)
        if self.policy == "none":
            provider.record("success")
            self.accept(job, first, confirmed=False)
            return
        # A job that is not reproducible is never compared: its client asks no replicas
        # (redundant) and the network checks its provider with canaries (adaptive).
        check = decide_check(provider.outcomes, self.rng.random(), comparable=job.reproducible)
        if self.policy == "redundant":
            check = job.reproducible
        if check:
            self.tally.checks += 1
            second = self.run(job, self.pick({provider.index}))
            winner = self.agree(job, [first, second], recorded=set())
            if winner is not None:
                self.accept(job, winner, confirmed=True)
        else:
            provider.record("success")
            self.accept(job, first, confirmed=False)
        if self.policy == "adaptive":
            self.canaries(provider, job.reproducible)
            self.recheck_caught()

    def canaries(self, provider: Provider, comparable: bool = True) -> None:
        """Known-answer jobs: a wrong answer needs no second provider to be caught."""
        for _ in range(MAX_CANARIES_PER_JOB):
            if not decide_canary(provider.outcomes, self.rng.random(), comparable):
                return
            self.tally.canaries += 1
            self.tally.gpu_units += 1
            if provider.cheating and self.rng.random() < WRONG_SHARE:
                self.tally.canaries_failed += 1
                self.mismatch(provider)
            else:
                provider.record("success")

    def recheck_caught(self) -> None:
        """Re-run the latest unconfirmed accepted results of each provider just caught."""
        while self.caught:
            provider = self.providers[self.caught.popleft()]
            count = recheck_after_mismatch(provider.outcomes)
            if count == 0:
                continue
            for index in provider.accepted[-count:]:
                job = self.jobs[index]
                if not job.reproducible:
                    continue  # nothing to compare a re-run with
                if job.confirmed or job.accepted is None or job.accepted.provider != provider.index:
                    continue
                self.tally.rechecks += 1
                original = job.accepted
                rerun = self.run(job, self.pick({provider.index}))
                winner = self.agree(job, [original, rerun], recorded={provider.index})
                if winner is None:
                    continue
                if winner is not original:
                    self.tally.wrong_caught_late += original.wrong
                    provider.accepted.remove(index)
                    self.providers[winner.provider].accepted.append(index)
                job.accepted, job.confirmed = winner, True

    def figures(self) -> dict[str, float]:
        t = self.tally
        accepted = [j for j in self.jobs if j.accepted is not None]
        wrong = sum(j.accepted.wrong for j in accepted if j.accepted is not None)
        t.accepted = len(accepted)
        return {
            "wrong_accepted_share": wrong / max(1, len(accepted)),
            "detection_rate": t.wrong_caught / t.wrong_returned if t.wrong_returned else 0.0,
            "extra_gpu_time_share": (t.gpu_units - t.jobs) / t.jobs,
            "honest_penalised_share": self.honest_penalised_share(),
        }

    def honest_penalised_share(self) -> float:
        honest = [p for p in self.providers if not p.dishonest]
        blamed = [p for p in honest if "mismatch" in p.outcomes]
        return len(blamed) / max(1, len(honest))


def make_jobs(args: argparse.Namespace) -> list[Job]:
    rng = random.Random(f"{args.seed}/jobs")
    jobs = []
    for i in range(args.jobs):
        draw = rng.random()
        values = tuple(rng.uniform(0.01, 10.0) for _ in range(NUMBERS_PER_OUTPUT))
        jobs.append(Job(i, draw < FLOAT_JOB_SHARE, values,
                        nondeterministic=draw >= 1 - NONDETERMINISTIC_SHARE))
    return jobs


def simulate(policy: str, args: argparse.Namespace) -> Simulation:
    rng = random.Random(f"{args.seed}/providers")
    dishonest = set(rng.sample(range(args.providers), round(DISHONEST_SHARE * args.providers)))
    sim = Simulation(policy, args, dishonest, make_jobs(args))
    for job in sim.jobs:
        sim.run_job(job)
    return sim


def report(sim: Simulation, figures: dict[str, float]) -> None:
    t = sim.tally
    cheaters = [p for p in sim.providers if p.dishonest]
    shut_out = sum(p.reputation < sim.min_reputation for p in cheaters)
    say(f"{sim.policy}: {t.accepted}/{t.jobs} accepted, wrong returned {t.wrong_returned}, "
        f"caught {t.wrong_caught} ({t.wrong_caught_late} by re-checks after delivery), "
        f"wrong when delivered {t.wrong_delivered / max(1, t.accepted):.4f}, "
        f"wrong at the end {figures['wrong_accepted_share']:.4f}")
    say(f"  gpu units {t.gpu_units}: checks {t.checks}, re-checks {t.rechecks}, "
        f"canaries {t.canaries} ({t.canaries_failed} failed), no quorum {t.no_quorum}; "
        f"dishonest providers below min reputation {shut_out}/{len(cheaters)}, "
        f"their jobs {sum(len(p.accepted) for p in cheaters)}")


def parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench verification", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, help="client jobs (10000; 2000 with --quick)")
    p.add_argument("--providers", type=int, help="providers (100; 20 with --quick)")
    p.add_argument("--seed", type=int, default=2024, help="random seed (2024)")
    p.add_argument("--min-reputation", type=float, default=0.5,
                   help="providers below this reputation get no work (0.5)")
    p.add_argument("--quick", action="store_true", help="a small run, for tests")
    args = p.parse_args(list(argv))
    args.jobs = args.jobs or (2000 if args.quick else 10_000)
    args.providers = args.providers or (20 if args.quick else 100)
    if args.jobs < 1 or args.providers < 5:
        p.error("need at least 1 job and 5 providers")
    return args


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    say(f"verification: {args.jobs} jobs, {args.providers} providers "
        f"({DISHONEST_SHARE:.0%} dishonest after {TURN_AFTER} accepted results, wrong on "
        f"{WRONG_SHARE:.0%}), seed {args.seed}, min reputation {args.min_reputation}")
    results: dict[str, dict[str, float]] = {}
    false_alarms: dict[str, float] = {}
    for policy in POLICIES:
        sim = simulate(policy, args)
        results[policy] = sim.figures()
        report(sim, results[policy])
        if policy == "redundant":
            pairs = max(1, sim.tally.honest_pairs)
            false_alarms = {
                "exact": sim.tally.honest_pairs_differ_exact / pairs,
                "numeric": sim.tally.honest_pairs_differ_declared / pairs,
            }
    for metric in ("wrong_accepted_share", "detection_rate", "extra_gpu_time_share",
                   "honest_penalised_share"):
        for policy in POLICIES:
            emit(metric, results[policy][metric], "fraction", policy=policy)
    for comparator, share in false_alarms.items():
        emit("false_alarm_share", share, "fraction", comparator=comparator)
    adaptive = results["adaptive"]
    meets = (adaptive["wrong_accepted_share"] < 0.01 and adaptive["extra_gpu_time_share"] < 0.20
             and adaptive["honest_penalised_share"] == 0)
    say(f"adaptive {'meets' if meets else 'misses'} the goal (under 1% wrong accepted, "
        f"under 20% extra GPU time, no honest provider penalised)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
