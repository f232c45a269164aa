"""The GraphQL API by feature: each module holds a feature's types, its loaders and its
root fields (a `...Query`, `...Mutation` and `...Subscription` class), and api/schema.py
composes the schema from them.

jobs       submitting, cancelling and reading jobs; their events and output live
nodes      nodes and their queues, the jobs waiting in one
providers  the market's catalogue of GPUs, owners' controls, live events
agents     what a provider's agent calls: registration, heartbeats, drain
market     where a spec could run now, with quotes and every reason why not
accounts   credit balances, escrow, the ledger, providers' earnings, grants
identity   users, sessions, passwords, roles, API keys

Storage is not in the GraphQL API: its REST routes are api/storage.py.
"""
