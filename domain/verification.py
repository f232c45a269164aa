"""Result verification: how hard to check a provider's results, and whether two results agree.

Pure functions of what the network has recorded (a provider's outcomes, as kept
on the Provider aggregate) and of what the caller passes in (output manifests, a
random draw): no I/O, no clock, no randomness inside, so workflow code can call
them and replay them.

Every job gets the always-on checks (exit code, declared outputs present, the
manifest of digests matches what storage holds). On top of them:

- adaptive replication, after BOINC's per-host adaptive replication: a result
  is re-run on a second, distinct provider with probability `check_rate`, 1.0
  while the provider is on probation (its first results, again after each of its
  runs was outvoted, and for longer after it was caught), then falling with the
  square of its verified streak, never below a floor, so no provider can ever
  assume it is unwatched;
- a quorum of agreeing manifests decides (`quorum`), by byte equality or, for
  outputs declared numeric, numbers within a tolerance (`manifests_agree`);
- a caught provider's latest accepted results are re-verified
  (`recheck_after_mismatch`): a cheater caught late then leaves few wrong
  results with clients;
- known-answer canaries (`canary_rate`): a small share of a provider's work,
  falling with trust like the check rate.

The constants were tuned with `python -m bench verification`, which simulates
these functions over 10,000 jobs with 10% of providers turning dishonest.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

# Tuned with the bench (10,000 jobs, 100 providers, seeds 0-29): extra GPU time 15.5% on
# average (16.8% at most), wrong accepted 0.01% (0.09% at most). The floor is the long-run
# cost and what catches a provider that turns late; a BOINC-like 1/streak decay caught
# cheaters sooner but cost 18.4%; without re-checks, wrong accepted rose to 0.3%.

# A new provider's first results are all checked: it has no record to trust.
PROBATION = 5
# After a mismatch the provider is checked on every result until it has this many
# agreeing results again: a caught cheater does not get a second cheap start.
REPROBATION = 50
# The check rate after probation is (probation / streak) ** DECAY_POWER, at least:
FLOOR = 0.08
# A provider once caught is never checked less often than this.
CAUGHT_FLOOR = 0.25
DECAY_POWER = 2
# Known-answer canaries, as a share of the provider's work: this fraction of its check rate.
CANARY_FRACTION = 0.05
# At most this many of a caught provider's latest accepted results are re-verified.
RECHECK_LIMIT = 100

MISMATCH = "mismatch"
OUTVOTED = "outvoted"
SUCCESS = "success"


def _successes_since(outcomes: Sequence[str], ends: tuple[str, ...]) -> int:
    streak = 0
    for outcome in reversed(outcomes):
        if outcome in ends:
            break
        if outcome == SUCCESS:
            streak += 1
    return streak


def verified_streak(outcomes: Sequence[str]) -> int:
    """Successes since the provider's last mismatch or outvoted run (all its successes if
    it has neither).

    An outvoted run ends the streak as a mismatch does, but is not a catch: the
    client's command may have chosen which answer it gave (workflows/runs.py
    `outvoted`), so it puts the provider back on probation (PROBATION successes
    checked, then the rate falls as a new provider's does) without the longer
    reprobation or the higher floor of a provider caught lying. Failures, timeouts
    and losses neither add to it nor reset it: they cost the provider reputation,
    but they say nothing about whether its results are honest.
    """
    return _successes_since(outcomes, (MISMATCH, OUTVOTED))


def ever_caught(outcomes: Sequence[str]) -> bool:
    """Whether storage ever contradicted this provider's report or it failed a canary
    (a `mismatch`; an outvoted run is not a catch)."""
    return MISMATCH in outcomes


def probation_length(outcomes: Sequence[str]) -> int:
    """How many agreeing results a provider needs before it is checked less than always."""
    return REPROBATION if ever_caught(outcomes) else PROBATION


def check_rate(outcomes: Sequence[str]) -> float:
    """The probability that a result from this provider is re-run on another provider.

    1.0 on probation (a new provider's first PROBATION successes; after a
    mismatch, REPROBATION successes; after an outvoted run, the same again: its
    next PROBATION successes, REPROBATION for a provider ever caught), then
    (probation / streak) ** 2, falling as the verified streak grows, but never
    below FLOOR (CAUGHT_FLOOR for a provider that was ever caught). So a provider
    that returns a wrong result and is outvoted for it is checked on every one of
    its next results until PROBATION of them agreed, and more often than a trusted
    one for a while after: each wrong answer it tries costs it that.
    """
    probation = probation_length(outcomes)
    streak = verified_streak(outcomes)
    if streak < probation:
        return 1.0
    floor = CAUGHT_FLOOR if ever_caught(outcomes) else FLOOR
    return max(floor, (probation / streak) ** DECAY_POWER)


def _check_draw(draw: float) -> None:
    if not 0.0 <= draw < 1.0:
        raise ValueError(f"draw must be in [0, 1), got {draw!r}")


def decide_check(outcomes: Sequence[str], draw: float, comparable: bool = True) -> bool:
    """Whether to re-run this result elsewhere; `draw` is a uniform number in [0, 1).

    The caller supplies the draw (the workflow, from its deterministic random), so
    the same outcomes and draw always give the same decision. A job that is not known
    to be reproducible (`comparable` False: two honest runs may differ) is never
    re-run to compare: a difference would say nothing about the provider, and an
    honest one would be blamed. Its provider is checked with canaries instead
    (`canary_rate`).
    """
    _check_draw(draw)
    return comparable and draw < check_rate(outcomes)


def canary_rate(outcomes: Sequence[str], comparable: bool = True) -> float:
    """The share of this provider's work that should be known-answer canary jobs.

    After a job whose outputs cannot be compared (`comparable` False) a canary takes
    the place of the check run the job could not have: at the whole check rate.
    """
    if not comparable:
        return check_rate(outcomes)
    return CANARY_FRACTION * check_rate(outcomes)


def decide_canary(outcomes: Sequence[str], draw: float, comparable: bool = True) -> bool:
    """Whether the provider's next task is a canary; `draw` is a uniform number in [0, 1).
    After a job that could not be compared, at the rate a check would have had."""
    _check_draw(draw)
    return draw < canary_rate(outcomes, comparable)


def recheck_after_mismatch(outcomes: Sequence[str]) -> int:
    """How many of a just-caught provider's latest accepted jobs to re-verify.

    Called when the last outcome is the new mismatch. The results it accepted
    while on probation were all checked already, so only the ones after that are
    worth re-running (at most RECHECK_LIMIT; the caller skips any that a second
    provider already confirmed). A provider caught again within its reprobation
    gets none: every result since its previous mismatch was checked.
    """
    if not outcomes or outcomes[-1] != MISMATCH:
        return 0
    before = outcomes[:-1]
    # Counted since its last mismatch, not since an outvoted run: the results before
    # that run were not all checked (the caller skips the ones that were).
    streak = _successes_since(before, (MISMATCH,))
    probation = probation_length(before)
    if streak < probation:
        return 0
    return min(RECHECK_LIMIT, streak - probation)


# Comparing results


@dataclass(frozen=True)
class Comparator:
    """How two outputs of one path count as equal.

    "exact": same digest and size. "numeric": same bytes, or the same text with
    every number within `rel_tol` (relative) or `abs_tol` (absolute) of the
    other, as `math.isclose` says, for outputs that may differ in the last bits.
    """

    kind: Literal["exact", "numeric"] = "exact"
    rel_tol: float = 0.0
    abs_tol: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("exact", "numeric"):
            raise ValueError(f"comparator kind must be 'exact' or 'numeric', got {self.kind!r}")
        for name in ("rel_tol", "abs_tol"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"comparator {name} must be a number, got {value!r}")
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"comparator {name} must be finite and not negative")
        if self.kind == "exact" and (self.rel_tol or self.abs_tol):
            raise ValueError("an exact comparator takes no tolerance")

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None) -> Comparator:
        """{"kind": "exact"} or {"kind": "numeric", "rel_tol": 1e-6, "abs_tol": 0}; None: exact.

        A numeric comparator without tolerances gets rel_tol 1e-6.
        """
        if spec is None:
            return EXACT
        unknown = set(spec) - {"kind", "rel_tol", "abs_tol"}
        if unknown:
            raise ValueError(f"unknown comparator fields: {', '.join(sorted(unknown))}")
        kind = spec.get("kind", "exact")
        if kind == "numeric":
            return cls("numeric", spec.get("rel_tol", NUMERIC_REL_TOL), spec.get("abs_tol", 0.0))
        return cls(kind, spec.get("rel_tol", 0.0), spec.get("abs_tol", 0.0))


EXACT = Comparator()
NUMERIC_REL_TOL = 1e-6


class OutputFile(NamedTuple):
    """One line of an output manifest; `text` (the contents) only a numeric comparator reads.

    A plain (path, digest, size) tuple is read as OutputFile(path, digest, size). Digests
    are compared as written (protocol/digest.py): a sha256 recorded before BLAKE3 does not
    equal the BLAKE3 digest of the same bytes.
    """

    path: str
    digest: str
    size: int
    text: str | None = None


Manifest = Sequence[OutputFile | tuple[str, str, int] | tuple[str, str, int, str | None]]

# A decimal number as programs print them: 3, -0.5, .25, 1e-3, 6.02E+23.
_NUMBER = re.compile(r"([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)")


def _by_path(manifest: Manifest) -> dict[str, OutputFile]:
    files = [OutputFile(*entry) for entry in manifest]
    by_path = {f.path: f for f in files}
    if len(by_path) != len(files):
        raise ValueError("a manifest lists the same path twice")
    return by_path


def numbers_close(a: str, b: str, rel_tol: float, abs_tol: float) -> bool:
    """The same text around the numbers, and each pair of numbers within the tolerance."""
    parts_a, parts_b = _NUMBER.split(a), _NUMBER.split(b)
    if len(parts_a) != len(parts_b):
        return False
    for i, (x, y) in enumerate(zip(parts_a, parts_b, strict=True)):
        if i % 2 == 0:  # re.split puts the text between numbers at even indexes
            if x != y:
                return False
        elif x != y and not math.isclose(float(x), float(y), rel_tol=rel_tol, abs_tol=abs_tol):
            return False
    return True


def _as_comparator(comparator: Comparator | Mapping[str, Any] | None) -> Comparator:
    return comparator if isinstance(comparator, Comparator) else Comparator.from_spec(comparator)


def files_agree(a: OutputFile, b: OutputFile, comparator: Comparator) -> bool:
    if (a.digest, a.size) == (b.digest, b.size):
        return True
    if comparator.kind != "numeric" or a.text is None or b.text is None:
        return False
    return numbers_close(a.text, b.text, comparator.rel_tol, comparator.abs_tol)


def manifests_agree(
    a: Manifest, b: Manifest, comparator: Comparator | Mapping[str, Any] | None = EXACT
) -> bool:
    """Whether two providers' results for one job count as the same result.

    Both must list the same paths, and each path must agree: same digest and size
    or, under a numeric comparator, texts whose numbers are within its tolerance
    (sizes may then differ: 0.30000000000000004 is longer than 0.3). A numeric
    comparison needs both texts; without them only identical bytes agree.
    """
    comp = _as_comparator(comparator)
    files_a, files_b = _by_path(a), _by_path(b)
    if files_a.keys() != files_b.keys():
        return False
    return all(files_agree(files_a[p], files_b[p], comp) for p in files_a)


def quorum(
    results: Sequence[Manifest], k: int, comparator: Comparator | Mapping[str, Any] | None = EXACT
) -> int | None:
    """The index of a result that a majority of k agrees with, or None.

    The majority is k // 2 + 1 agreeing results (with k=2 both must agree). When
    there is none the caller runs the job on one more distinct provider and asks
    again with all results so far: with k=2 and a third result, any two agreeing
    decide. The winner is the lowest index among those with the most agreeing
    results; None if a result that disagrees with it has as many (a tie).
    """
    if k < 1:
        raise ValueError("k must be at least 1")
    comp = _as_comparator(comparator)
    need = k // 2 + 1
    agreeing = [
        [j for j, other in enumerate(results) if manifests_agree(result, other, comp)]
        for result in results
    ]
    if not agreeing:
        return None
    best = max(range(len(results)), key=lambda i: (len(agreeing[i]), -i))
    if len(agreeing[best]) < need:
        return None
    rivals = [
        i for i in range(len(results))
        if len(agreeing[i]) == len(agreeing[best]) and i not in agreeing[best]
    ]
    return None if rivals else best


def outvoted(
    results: Sequence[Manifest], winner: int,
    comparator: Comparator | Mapping[str, Any] | None = EXACT,
) -> list[int]:
    """The indexes of the results that disagree with the winner: not paid, and not blamed
    (a client's command can write another answer where it likes; workflows/runs.py)."""
    comp = _as_comparator(comparator)
    return [i for i, r in enumerate(results) if not manifests_agree(r, results[winner], comp)]
