"""What each field of the schema costs to answer, for the estimate api/limits.py makes of a
request before it runs (its cost limit).

A request's cost is the number of values it would resolve, each list multiplying what it
selects by how many items it may return, plus a weight for each resolver that does more
than read a value it was handed:

- any field: 1 for each time it is resolved;
- a resolver that runs a database query of its own each time (`Job.events`,
  `Provider.telemetry`, a job's place in its queue): `QUERY` more;
- a resolver that matches a spec against a node's whole fleet or scores every provider
  (`Job.waitingFor`, `QueuedJob.waitingFor` for the first 20 of a queue, `providers`):
  `FLEET` more; `explain` five times that (it judges every GPU of the node too, about 8 a
  provider, and says why none could ever run the spec).

How many items a list returns: its `limit` argument where it has one (a variable's value
where the request gives it, else the most the resolver returns, which is what a request
may ask for), else the estimate in `ROWS`. Lists that no argument bounds (the market's
providers, a job's events) count their estimate: a node larger than the estimate is
charged less than it costs, and `FLEET` covers what the walk over the whole node costs.

Every list field of an object type in the schema is in `ROWS` (tests/api/test_query_cost.py
checks it); a list of scalars (`providerIds`, `waitingFor`) is one value.
"""

from __future__ import annotations

from dataclasses import dataclass

QUERY = 10
FLEET = 2_000
WAITING_REASONS_SHOWN = 20  # QueuedJob.waitingFor: each is a match over the node's providers

# The most a list argument returns (each resolver clamps its argument to it).
MAX_JOBS_LISTED = 500
MAX_LEDGER_ENTRIES = 1_000
MAX_QUEUE_LISTED = 1_000
MAX_TELEMETRY_SAMPLES = 120  # GPGPU_PROVIDER_SAMPLES_KEPT's default: the ring keeps no more


@dataclass(frozen=True)
class Rows:
    """How many items a list field returns: its argument `arg` (absent: `default`, at most
    `most`), or `estimate` where no argument says; `of_parent`: the argument is the
    parent field's (`providerEarnings(limit)` bounds its `entries`)."""

    estimate: int = 1
    arg: str | None = None
    default: int = 0
    most: int = 0
    of_parent: bool = False


def limited(arg: str, default: int, most: int, of_parent: bool = False) -> Rows:
    return Rows(most, arg, default, most, of_parent)


ROWS: dict[tuple[str, str], Rows] = {
    ("Query", "jobs"): limited("limit", 50, MAX_JOBS_LISTED),
    ("Query", "ledger"): limited("limit", 100, MAX_LEDGER_ENTRIES),
    ("Query", "queue"): limited("limit", 100, MAX_QUEUE_LISTED),
    ("ProviderEarnings", "entries"): limited("limit", 100, MAX_LEDGER_ENTRIES, of_parent=True),
    ("Provider", "telemetry"): limited("limit", 120, MAX_TELEMETRY_SAMPLES),
    ("Query", "providers"): Rows(100),  # the market: a node's fleet
    ("Query", "nodes"): Rows(20),
    ("Query", "apiKeys"): Rows(100),  # domain/identity.py MAX_API_KEYS
    ("Node", "queues"): Rows(5),
    ("Provider", "gpus"): Rows(8),  # a machine's GPUs (at most 256 declared)
    ("TelemetrySample", "gpus"): Rows(8),
    ("Job", "events"): Rows(30),
    ("Job", "outputs"): Rows(10),
    ("Explanation", "eligible"): Rows(100),  # a provider each
    ("Explanation", "rejected"): Rows(100),
    ("Explanation", "gpus"): Rows(800),  # a GPU each
    ("SpecRejected", "errors"): Rows(5),
}

# Weights of resolvers beyond reading a value; ("QueuedJob", "waitingFor") is paid for the
# first WAITING_REASONS_SHOWN jobs of a queue only (api/features/nodes.py).
WEIGHTS: dict[tuple[str, str], int] = {
    ("Query", "explain"): 5 * FLEET,
    ("Query", "providers"): FLEET,
    ("Job", "waitingFor"): FLEET,
    ("QueuedJob", "waitingFor"): FLEET,
    ("Job", "events"): QUERY,
    ("Provider", "telemetry"): QUERY,
    ("Job", "queuePosition"): QUERY,  # the job's queue in order: once a queue a request
    ("Job", "expectedStart"): QUERY,
}
FIRST_OF_LIST = {("QueuedJob", "waitingFor")}
# A type whose list field takes its bound from the field that returned the type (by name:
# `providerEarnings(limit)` bounds its `entries`), looked up once per field measured.
BOUND_BY_PARENT: dict[str, Rows] = {t: r for (t, _), r in ROWS.items() if r.of_parent}
