"""The GraphQL schema, composed of the features' root fields (api/features/).

Every root field names its gate (api/auth.py); ownership is checked in the resolvers."""

from __future__ import annotations

from collections import Counter

import strawberry
from strawberry.tools import merge_types
from strawberry.types.base import get_object_definition

from api import auth
from api.features.accounts import AccountMutation, AccountQuery
from api.features.agents import AgentMutation
from api.features.identity import IdentityMutation, IdentityQuery
from api.features.jobs import JobMutation, JobQuery, JobSubscription
from api.features.market import MarketQuery
from api.features.nodes import NodeMutation, NodeQuery
from api.features.providers import ProviderMutation, ProviderQuery, ProviderSubscription
from api.limits import LIMIT_EXTENSIONS
from api.scalars import BIG_INT_SCALAR, BigInt


def merged(name: str, parts: tuple[type, ...], order: str) -> type:
    """The parts' root fields as one type (strawberry's merge_types), in `order`: the order
    api/schema.graphql has always printed them in, which clients' generated code follows and
    which no one feature decides. A field missing from `order`, or one named twice, is an
    error at import, naming it."""
    names = order.split()
    defined = Counter(
        f.python_name for part in parts for f in get_object_definition(part, strict=True).fields
    )
    if twice := sorted(n for n, count in (Counter(names) + defined).items() if count > 2):
        raise RuntimeError(f"{name}: {', '.join(twice)} defined or ordered twice")
    if unordered := sorted(set(defined) ^ set(names)):
        raise RuntimeError(f"{name}: {', '.join(unordered)} missing from the order or "
                           "from the features: list each root field once, where it prints")
    root = merge_types(name, parts)
    fields = get_object_definition(root, strict=True).fields
    fields.sort(key=lambda f: names.index(f.python_name))
    return root


Query = merged("Query", (JobQuery, AccountQuery, ProviderQuery, MarketQuery, NodeQuery,
                         IdentityQuery), """
    job jobs account providers provider provider_earnings ledger explain nodes queue
    me api_keys
""")

Mutation = merged("Mutation", (JobMutation, NodeMutation, ProviderMutation, AccountMutation,
                               AgentMutation, IdentityMutation), """
    submit_job cancel_job register_node configure_queue suspend_gpu resume_gpu set_price
    grant_credits register_provider provider_heartbeat drain_provider sign_up sign_in
    change_password reset_password add_roles revoke_role sign_out create_api_key
    revoke_api_key
""")

Subscription = merged("Subscription", (JobSubscription, ProviderSubscription), """
    job_events job_log provider_events
""")

schema = strawberry.Schema(
    query=Query,
    mutation=Mutation,
    subscription=Subscription,
    scalar_overrides={BigInt: BIG_INT_SCALAR},  # type: ignore[dict-item]
    extensions=LIMIT_EXTENSIONS,  # size, depth, aliases; parse and validation caches
)
auth.check_every_field_guarded(schema)
