"""A request's estimated cost (api/limits.py, api/cost.py): aliases of list fields, each
multiplied by the rows it may return, are refused by name before anything runs; every
document our own clients send stays under the limit, at the most its variables allow."""

from __future__ import annotations

import asyncio

from graphql import (
    GraphQLObjectType,
    OperationDefinitionNode,
    get_named_type,
    get_nullable_type,
    is_list_type,
    is_scalar_type,
    parse,
)

from api.cost import ROWS
from api.limits import MAX_COST, _Measure
from tests.reliability.test_bad_input import limited_schema, our_documents

UNAUTHENTICATED = "unauthenticated: sign in, or send Authorization: Bearer <token>"


def aliased(body: str, n: int = 20) -> str:
    return "query Q { " + " ".join(f"a{i}: {body}" for i in range(n)) + " }"


def cost(document: str, variables: dict[str, object] | None = None) -> int:
    schema = limited_schema()._schema
    parsed = parse(document)
    op = next(d for d in parsed.definitions if isinstance(d, OperationDefinitionNode))
    measured = _Measure(parsed, schema, variables).selection_set(
        op.selection_set, schema.get_root_type(op.operation))
    return measured.cost + measured.first


def errors(document: str, variables: dict[str, object] | None = None) -> list[str]:
    result = asyncio.run(limited_schema().execute(document, variable_values=variables))
    return [e.message for e in result.errors or []]


def test_every_list_of_objects_says_how_many_rows_it_returns() -> None:
    schema = limited_schema()._schema
    lists = set()
    for type_ in schema.type_map.values():
        if not isinstance(type_, GraphQLObjectType) or type_.name.startswith("__"):
            continue
        for name, field in type_.fields.items():
            if is_list_type(get_nullable_type(field.type)) and not is_scalar_type(
                    get_named_type(field.type)):
                lists.add((type_.name, name))
    assert lists == set(ROWS), (
        lists ^ set(ROWS))


def test_aliases_of_a_list_field_are_refused_by_name_before_anything_runs() -> None:
    attacks = {
        "jobs with events": aliased("jobs(limit: 500) { id events { seq type at data } "
                                    "outputs { path key } }"),
        "the market with its details": aliased(
            "providers { gpus { index } reputationDetail { score } telemetry { at } "
            "earningsMicro }"),
        "explain": aliased("explain(spec: {}) { __typename }", 6),
        "what each job waits for": "query Q { jobs(limit: 500) { id waitingFor } }",
    }
    for what, document in attacks.items():
        found = errors(document)
        # Refused as a whole: no resolver ran (each would have said who may call it).
        assert len(found) == 1 and UNAUTHENTICATED not in found, (what, found)
        assert found[0].startswith("'Q' may cost ") and found[0].endswith(
            f"at most {MAX_COST}"), (what, found)


def test_a_list_counts_the_rows_its_variable_asks_for() -> None:
    document = "query Q($n: Int!) { jobs(limit: $n) { id events { seq type at data } } }"
    assert cost(document, {"n": 10}) < MAX_COST < cost(document)  # unknown: the most, 500
    assert errors(document, {"n": 10}) == [UNAUTHENTICATED]  # within the limit: it runs
    assert "may cost" in errors(document, {"n": 500})[0]
    assert cost(document, {"n": 10**9}) == cost(document, {"n": 500})  # as the resolver clamps


def test_one_explain_or_market_passes_and_the_queue_pays_for_its_first_twenty() -> None:
    assert errors("{ providers { providerId gpus { index } } }") == [UNAUTHENTICATED]
    queue = "{ queue(limit: %d) { jobId waitingFor } }"
    assert cost(queue % 1000) - cost(queue % 100) == 900 * 2  # two values a row, no more matches


def test_our_own_documents_stay_under_the_cost_limit() -> None:
    costs = {name: cost(doc) for name, doc in our_documents().items()}
    assert max(costs.values()) <= MAX_COST, sorted(costs.items(), key=lambda kv: -kv[1])[:5]
    assert max(costs.values()) > MAX_COST // 2  # the limit is not far above what we send
