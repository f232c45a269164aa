"""The search attributes of a job's workflow: who, where, on what, and how far it got.

Operators find workflows by them in Temporal's UI and with `gpgpu admin jobs`
(`GpgpuClient = "alice" AND GpgpuState = "RUNNING"`). The API sets them when it
starts a `JobWorkflow`; the workflow keeps `GpgpuState` current. A server must
have them registered as Keyword (the dev server: `--search-attribute`; a
cluster: `temporal operator search-attribute create`); without them jobs still
run, unsearchable.
"""

from __future__ import annotations

from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

from domain.states import STATE_OF_STEP as STATE_OF_STEP  # JobWorkflow reads it here

CLIENT = SearchAttributeKey.for_keyword("GpgpuClient")
STATE = SearchAttributeKey.for_keyword("GpgpuState")
GPU_MODEL = SearchAttributeKey.for_keyword("GpgpuGpuModel")
NODE = SearchAttributeKey.for_keyword("GpgpuNode")
KEYS = (CLIENT, STATE, GPU_MODEL, NODE)
ANY_MODEL = "any"  # a job that names no GPU model

# The job state each of JobWorkflow's steps stands for: domain.states.STATE_OF_STEP.


def registration_flags() -> list[str]:
    """`temporal server start-dev` arguments that register every key as a Keyword
    (on a new database only: a dev server's existing file keeps what it had)."""
    flags = []
    for key in KEYS:
        flags += ["--search-attribute", f"{key.name}=Keyword"]
    return flags


def create_command(temporal: str, address: str, namespace: str) -> list[str]:
    """`temporal operator search-attribute create` for every key; a no-op for those that
    exist. The CLI pairs each --name with a --type."""
    command = [temporal, "operator", "search-attribute", "create", "--address", address,
               "--namespace", namespace]
    for key in KEYS:
        command += ["--name", key.name, "--type", "Keyword"]
    return command


def job_search_attributes(
    client_id: str, gpu_model: str | None, node: str, state: str = "SUBMITTED"
) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(CLIENT, client_id),
        SearchAttributePair(STATE, state),
        SearchAttributePair(GPU_MODEL, gpu_model or ANY_MODEL),
        SearchAttributePair(NODE, node),
    ])


def job_query(
    state: str | None = None,
    client_id: str | None = None,
    gpu_model: str | None = None,
    node: str | None = None,
) -> str:
    """A visibility query over job workflows: each given value must match exactly."""
    parts = ["WorkflowType = 'JobWorkflow'"]
    for key, value in ((STATE, state), (CLIENT, client_id), (GPU_MODEL, gpu_model),
                       (NODE, node)):
        if value is None:
            continue
        if any(ch in value for ch in "'\"\\\n"):
            raise ValueError(f"{key.name}: quotes and backslashes are not allowed: {value!r}")
        parts.append(f'{key.name} = "{value}"')
    return " AND ".join(parts)
