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

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
)
from strawberry.extensions import (
    MaxTokensLimiter,
    ParserCache,
    SchemaExtension,
    ValidationCache,
)

MAX_DEPTH = 10
MAX_TOKENS = 2_000
MAX_ALIASES = 20
MAX_SELECTIONS = 1_000  # fields after every fragment spread is expanded


@dataclass(frozen=True)
class Cost:
    """A selection set's measures with every fragment expanded."""

    depth: int = 0  # levels of nested selection sets below its fields
    aliases: int = 0
    selections: int = 0  # fields

    def __add__(self, other: Cost) -> Cost:
        return Cost(max(self.depth, other.depth), self.aliases + other.aliases,
                    self.selections + other.selections)


class _Measure:
    """Costs of a document's selection sets, each fragment measured once.

    A spread of a fragment already being measured (a cycle, which graphql-core's
    NoFragmentCyclesRule refuses) and a spread of an unknown fragment cost nothing here."""

    def __init__(self, document: DocumentNode):
        self.fragments = {d.name.value: d for d in document.definitions
                          if isinstance(d, FragmentDefinitionNode)}
        self.known: dict[str, Cost] = {}
        self.open: set[str] = set()

    def fragment(self, name: str) -> Cost:
        if name in self.known:
            return self.known[name]
        definition = self.fragments.get(name)
        if definition is None or name in self.open:
            return Cost()
        self.open.add(name)
        cost = self.selection_set(definition.selection_set)
        self.open.discard(name)
        self.known[name] = cost
        return cost

    def selection_set(self, node: SelectionSetNode | None) -> Cost:
        total = Cost()
        if node is None:
            return total
        for selection in node.selections:
            if isinstance(selection, FieldNode):
                inner = self.selection_set(selection.selection_set)
                introspection = selection.name.value.startswith("__")
                nested = selection.selection_set is not None and not introspection
                total += Cost(inner.depth + 1 if nested else 0,
                              inner.aliases + (selection.alias is not None),
                              inner.selections + 1)
            elif isinstance(selection, InlineFragmentNode):
                total += self.selection_set(selection.selection_set)
            elif isinstance(selection, FragmentSpreadNode):
                total += self.fragment(selection.name.value)
        return total


def document_errors(document: DocumentNode) -> list[GraphQLError]:
    """Each operation over a limit, with the limit it passed (linear in the document)."""
    measure, errors = _Measure(document), []
    for definition in document.definitions:
        if not isinstance(definition, OperationDefinitionNode):
            continue
        name = definition.name.value if definition.name else "anonymous"
        cost = measure.selection_set(definition.selection_set)
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
    return errors


class LimitedValidation(ValidationCache):
    """The limits above, then graphql-core's validation (cached) for a document within them."""

    def on_validate(self) -> Iterator[None]:
        context = self.execution_context
        if context.graphql_document is not None and context.pre_execution_errors is None:
            refused = document_errors(context.graphql_document)
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
