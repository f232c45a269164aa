"""What each job and provider event changes in its view row, besides its history: the
folds (readmodel/folding.py) apply these."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from readmodel.decoding import Event

# What a job event changes in the job's row besides its history, seq and state.
JobChange = Callable[[dict[str, Any], Event], dict[str, Any]]


def _reason(job: dict[str, Any], e: Event) -> dict[str, Any]:
    return {"reason": e.data["reason"]}


def _queued(job: dict[str, Any], e: Event) -> dict[str, Any]:
    changes = {"attempt": e.data["attempt"], "provider_id": None, "allocated_at": None}
    if job["queued_position"] is None:
        changes["queued_position"] = job["queued_position"] = e.nid
    return changes


def _outputs(job: dict[str, Any], e: Event) -> dict[str, Any]:
    # The latest upload until verification accepts one run's outputs as the job's.
    return {"outputs": json.dumps(e.data["manifest"])}


def _allocated(job: dict[str, Any], e: Event) -> dict[str, Any]:
    # The job's provider is its run's: a check run, a verifier or a tie-break placed while
    # the job has one does not replace it (nor does its loss clear it).
    if job["provider_id"] is None:
        return {"provider_id": e.data["provider_id"], "allocated_at": e.at}
    return {"allocated_at": e.at}


def _lost(job: dict[str, Any], e: Event) -> dict[str, Any]:
    if job["provider_id"] == e.data["provider_id"]:
        return {"provider_id": None, "allocated_at": None}
    return {"allocated_at": None}


def _accepted(job: dict[str, Any], e: Event) -> dict[str, Any]:
    changes = _outputs(job, e)
    if e.data.get("provider_id"):
        # The job's provider is the one whose result was accepted, not the last one
        # allocated (a check run, a tie-break).
        changes["provider_id"] = e.data["provider_id"]
    return changes


JOB_CHANGES: dict[str, JobChange] = {
    "JobRejected": _reason, "JobFailed": _reason, "JobCancelled": _reason,
    "JobVerified": _reason, "VerificationFailed": _reason,
    "JobQueued": _queued,
    "GpusAllocated": _allocated,
    "ProviderLost": _lost,
    "RunFailed": _lost,
    "OutputsUploaded": _outputs,
    "ResultAccepted": _accepted,
    "JobSettled": lambda _, e: {"cost_micro": e.data["charged_micro"]},
}

# What a provider event changes besides its history: the row's columns it returns, and
# `kept` (the JSON lists, written once per batch) in place.
ProviderChange = Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]


def _rejoined(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {"region": data["region"], "price_micro": data["price_per_gpu_hour_micro"],
            "gpus": json.dumps(data["gpus"]), "status": "online", "status_reason": ""}


def _reserved(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["reservations"][data["job_id"]] = data["gpu_indexes"]
    kept["reservation_clients"][data["job_id"]] = data.get("client_id", "")
    return {}


def _released(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["reservations"].pop(data["job_id"], None)
    kept["reservation_clients"].pop(data["job_id"], None)
    return {}


def _suspended(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["suspended"] = sorted({*kept["suspended"], data["index"]})
    return {}


def _resumed(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["suspended"] = [i for i in kept["suspended"] if i != data["index"]]
    return {}


def _degraded(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["degraded"][str(data["index"])] = data["reason"]
    return {}


def _recovered(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["degraded"].pop(str(data["index"]), None)
    return {}


def _outcome(kept: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    kept["outcomes"].append(data["outcome"])
    kept["outcome_times"].append(data["at"])
    kept["outcome_clients"].append(data["client_id"])
    kept["outcome_spent"].append(data["client_spent_micro"])
    kept["outcome_outvotes"].append(data["client_outvotes_before"])
    return {}


PROVIDER_CHANGES: dict[str, ProviderChange] = {
    "ProviderRejoined": _rejoined,
    "RuntimesDeclared": lambda _, data: {"runtimes": json.dumps(data["runtimes"])},
    "SandboxDeclared": lambda _, data: {"sandbox": data["sandbox"]},
    "ProviderMarkedLost": lambda _, data: {"status": "lost", "status_reason": data["reason"]},
    "ProviderWentOffline": lambda _, data: {"status": "offline",
                                            "status_reason": data["reason"]},
    "ProviderCameOnline": lambda _, data: {"status": "online", "status_reason": ""},
    "PriceChanged": lambda _, data: {"price_micro": data["price_per_gpu_hour_micro"]},
    "GpusReserved": _reserved,
    "GpusReleased": _released,
    "GpuSuspended": _suspended,
    "GpuResumed": _resumed,
    "GpuDegraded": _degraded,
    "GpuRecovered": _recovered,
    "ReputationRecorded": _outcome,
}

# The provider events the views fold (those with no change past the history included).
PROVIDER_EVENTS = ("ProviderRegistered", *PROVIDER_CHANGES)
