"""What one GraphQL request may ask for: size, depth, aliases and selections, refused
before it is validated or run, in time linear in the document.

The schema has no cycles, so the deepest query our own clients send (client/queries.py,
web/src/queries.ts) is 4 levels; GraphiQL's introspection query is about 250 tokens, has
no aliases and expands to about 200 selections. The limits leave room above that and
stop the cheap attacks on a GraphQL server: a document of a million tokens (parsing alone
costs CPU), a thousand aliases of one expensive field (each resolved in full), selections
nested past any real use, and fragments that spread each other: a chain of n fragments,
each spreading the next twice, is a few hundred bytes that expands to 2^n selections.
strawberry's depth and alias validators walked every spread again (time doubling per
fragment, on the event loop: n = 24 froze the whole API for 75 s), so the measures here
are computed once per fragment and memoised, and a document over a limit is refused
before graphql-core's own rules (some of which also expand fragments) see it.

A refused request gets a GraphQL error that says which limit and what it is ("'Q'
exceeds maximum operation depth of 10", "'Q' expands to 1073741824 selections; at most
1000 are allowed"). Introspection fields (`__schema`, `__type`) do not count towards
depth (as in strawberry); they count towards selections, and the token limit bounds them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLObjectType,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    VariableNode,
    get_named_type,
    get_nullable_type,
    is_list_type,
)
from strawberry.extensions import (
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)

from api.cost import BOUND_BY_PARENT, FIRST_OF_LIST, ROWS, WAITING_REASONS_SHOWN, WEIGHTS, Rows

MAX_DEPTH = 10
MAX_TOKENS = 2_000
MAX_ALIASES = 20
MAX_SELECTIONS = 1_000  # fields after every fragment spread is expanded
MAX_COST = 60_000  # values resolved and resolvers' weights, estimated (api/cost.py)


@dataclass(frozen=True)
class Cost:
    """A selection set's measures with every fragment expanded."""

    depth: int = 0  # levels of nested selection sets below its fields
    aliases: int = 0
    selections: int = 0  # fields
    cost: int = 0  # estimated work for each time the selection set is answered
    first: int = 0  # ... only for the first WAITING_REASONS_SHOWN items of its list

    def __add__(self, other: Cost) -> Cost:
        return Cost(max(self.depth, other.depth), self.aliases + other.aliases,
                    self.selections + other.selections, self.cost + other.cost,
                    self.first + other.first)


class _Measure:
    """Costs of a document's selection sets, each fragment measured once (for each bound
    its parent list puts on it, where that matters: `ProviderEarnings.entries`).

    A spread of a fragment already being measured (a cycle, which graphql-core's
    NoFragmentCyclesRule refuses), of an unknown fragment, and a field the schema does not
    have (refused by validation after this) cost nothing beyond being counted."""

    def __init__(self, document: DocumentNode, schema: GraphQLSchema | None = None,
                 variables: dict[str, Any] | None = None):
        self.fragments = {d.name.value: d for d in document.definitions
                          if isinstance(d, FragmentDefinitionNode)}
        self.schema, self.variables = schema, variables or {}
        self.known: dict[tuple[str, int], Cost] = {}
        self.open: set[str] = set()

    def type_named(self, name: str | None) -> GraphQLObjectType | None:
        found = self.schema.get_type(name) if self.schema and name else None
        return found if isinstance(found, GraphQLObjectType) else None

    def fragment(self, name: str, bound: int) -> Cost:
        if (name, bound) in self.known:
            return self.known[name, bound]
        definition = self.fragments.get(name)
        if definition is None or name in self.open:
            return Cost()
        self.open.add(name)
        parent = self.type_named(definition.type_condition.name.value)
        cost = self.selection_set(definition.selection_set, parent, bound)
        self.open.discard(name)
        self.known[name, bound] = cost
        return cost

    def argument(self, node: FieldNode, rows: Rows) -> int:
        """How many items the field asks for: its argument, the most where a variable has
        no value here, its default where it is absent."""
        for arg in node.arguments or ():
            if arg.name.value != rows.arg:
                continue
            value = arg.value
            if isinstance(value, VariableNode):
                given = self.variables.get(value.name.value)
                number = given if isinstance(given, int) else rows.most
            elif isinstance(value, IntValueNode):
                number = int(value.value)
            else:
                number = rows.most
            return max(1, min(number, rows.most))
        return rows.default

    def field(self, node: FieldNode, parent: GraphQLObjectType | None, bound: int) -> Cost:
        name = node.name.value
        key = (parent.name if parent else "", name)
        definition = parent.fields.get(name) if parent else None
        returns = definition.type if definition else None
        child = self.type_named(get_named_type(returns).name) if returns else None
        inherited = BOUND_BY_PARENT.get(child.name) if child is not None else None
        inner = self.selection_set(node.selection_set, child,
                                   self.argument(node, inherited) if inherited else 0)
        size, rows = 1, ROWS.get(key)
        if rows is not None and rows.of_parent:
            size = bound
        elif rows is not None:
            size = self.argument(node, rows) if rows.arg else rows.estimate
        if returns is not None and is_list_type(get_nullable_type(returns)):
            work = 1 + size * inner.cost + min(size, WAITING_REASONS_SHOWN) * inner.first
        else:
            work = 1 + inner.cost + inner.first
        weight = WEIGHTS.get(key, 0)
        first = weight if key in FIRST_OF_LIST else 0
        nested = node.selection_set is not None and not name.startswith("__")
        return Cost(inner.depth + 1 if nested else 0,
                    inner.aliases + (node.alias is not None), inner.selections + 1,
                    work + weight - first, first)

    def selection_set(self, node: SelectionSetNode | None, parent: GraphQLObjectType | None,
                      bound: int = 0) -> Cost:
        total = Cost()
        if node is None:
            return total
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                total += self.field(selection, parent, bound)
            elif isinstance(selection, InlineFragmentNode):
                condition = selection.type_condition
                total += self.selection_set(
                    selection.selection_set,
                    self.type_named(condition.name.value) if condition else parent, bound)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value, bound)
        return total


def document_errors(document: DocumentNode, schema: GraphQLSchema | None = None,
                    variables: dict[str, Any] | None = None) -> list[GraphQLError]:
    """Each operation over a limit, with the limit it passed (linear in the document).
    Without a schema its cost is its selections (no field is known to be a list)."""
    measure, errors = _Measure(document, schema, variables), []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        name = definition.name.value if definition.name else "anonymous"
        root = schema.get_root_type(definition.operation) if schema else None
        cost = measure.selection_set(definition.selection_set, root)
        if cost.depth > MAX_DEPTH:
            errors.append(GraphQLError(
                f"'{name}' exceeds maximum operation depth of {MAX_DEPTH}", definition))
        if cost.aliases > MAX_ALIASES:
            errors.append(GraphQLError(
                f"{cost.aliases} aliases found. Allowed: {MAX_ALIASES}", definition))
        if cost.selections > MAX_SELECTIONS:
            errors.append(GraphQLError(
                f"'{name}' expands to {cost.selections} selections (its fragments spread "
                f"in full); at most {MAX_SELECTIONS} are allowed", definition))
        elif cost.cost + cost.first > MAX_COST:
            errors.append(GraphQLError(
                f"'{name}' may cost {cost.cost + cost.first} (values resolved, each list's "
                f"by its limit, and each expensive resolver's weight: api/cost.py); at most "
                f"{MAX_COST}", definition))
    return errors


class LimitedValidation(ValidationCache):
    """The limits above, then graphql-core's validation (cached) for a document within them."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and context.pre_execution_errors is None:
            schema = context.schema._schema
            refused = document_errors(context.graphql_document, schema, context.variables)
            if refused:
                context.pre_execution_errors = refused
                yield
                return
        yield from super().on_validate()


DOCUMENT_CACHE = 512  # distinct documents remembered, parsed and validated

# Factories, not instances: strawberry makes a fresh extension for each request. The token
# limit first (it sets the parser's token cap), then caches of parsed and validated
# documents with the other limits in front of validation: our clients send the same few
# dozen documents over and over, and parsing and validating each again was the API's
# largest cost per request (bench/pipeline.py).
LIMIT_EXTENSIONS: list[Callable[[], SchemaExtension]] = [
    partial(MaxTokensLimiter, max_token_count=MAX_TOKENS),
    partial(ParserCache, maxsize=DOCUMENT_CACHE),
    partial(LimitedValidation, maxsize=DOCUMENT_CACHE),
]
