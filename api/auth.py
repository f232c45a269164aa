"""Who is calling, and what they may do: one function per rule, deny by default.

A caller is named by `Authorization: Bearer <session token or API key>` (on the
websocket: `{"Authorization": "Bearer ..."}` in connection_init). `Authenticator`
asks the domain once per token and remembers the answer for `auth_cache_ttl_s`, so a
request costs a dict lookup; a key revoked or a session ended on another replica stops
working within that time (at once on this one).

Every root field of the schema names exactly one gate below (`permission_classes`);
`check_every_field_guarded` refuses to build a schema where one does not, so a new
field can't skip authorisation. The gates check roles; the rules after them check
ownership, inside the resolvers, once the row in question is loaded.

| rule | who |
| --- | --- |
| a job: read, follow | its client; the provider it is (or was last) assigned to; admin |
| a job: cancel | its client; admin |
| jobs, account, ledger, explain, submitJob, storage | its own client id (client role); admin |
| a provider: GPU status, price, reputation | anyone signed in (the market's catalogue) |
| a provider: telemetry, which job holds a GPU, events | its owner; its node's operator; admin |
| a provider: earnings, suspend/resume/setPrice, heartbeat | its owner; admin |
| registerProvider | provider role; the id is new or already the caller's; admin |
| registerNode | operator role; the id is new or already the caller's; admin |
| configureQueue, queue (who waits) | the node's operator; admin |
| nodes and their queues | anyone signed in |
| createApiKey | a signed-in session (a key can't mint keys), scopes among the caller's roles |
| apiKeys, revokeApiKey, signOut | anyone signed in, their own; admin revokes any key |
| changePassword | anyone signed in with a session, their own |
| resetPassword | admin |
| signUp, signIn, me, introspection | anyone |

`SignInThrottle` stops password guessing: after `max_failures` wrong passwords for one
email within `window_s`, signIn for it is refused until the oldest failure leaves the
window, right password or not. The failures are kept in the read-model database, so
every API replica counts the same guesses.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import strawberry
from strawberry.permission import BasePermission
from strawberry.types import Info

from api.errors import Refusal
from domain.app_identity import Identity
from domain.identity import Caller, secret_hash
from readmodel.schema import ViewDB

ROLE_WORDS = {"client": "client", "provider": "provider", "operator": "node operator",
              "admin": "admin"}


class Denied(PermissionError):
    """Refused; the message says what would be allowed."""


def bearer(header: str | None) -> str | None:
    """The token of `Bearer <token>`, or None when there is no such header."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class Authenticator:
    """Tokens to callers, remembered for a few seconds (keyed by the token's sha256)."""

    def __init__(self, identity: Identity, ttl_s: float, max_entries: int = 50_000):
        self.identity, self.ttl_s, self.max_entries = identity, ttl_s, max_entries
        self._cache: dict[str, tuple[float, Caller | None]] = {}
        self._asking: dict[str, asyncio.Future[Caller | None]] = {}  # one lookup per token
        self._forgets = 0  # a lookup that overlapped a forget() is not remembered

    async def authenticate(self, token: str | None, fresh: bool = False) -> Caller | None:
        """Who the token stands for; `fresh` asks the domain again unless it was asked within
        the last second (a provider or node registered through another replica just now)."""
        if not token:
            return None
        key, now = secret_hash(token), time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now and (not fresh or now - hit[0] + self.ttl_s < 1.0):
            return hit[1]
        if key in self._asking:
            return await asyncio.shield(self._asking[key])
        asking = self._asking[key] = asyncio.get_running_loop().create_future()
        forgets = self._forgets
        try:
            caller = await asyncio.to_thread(self.identity.authenticate, token, time.time())
        except Exception as err:
            asking.set_exception(err)
            asking.exception()  # retrieved: a lookup nobody else waited for is not "lost"
            raise
        except BaseException:
            asking.cancel()
            raise
        finally:
            del self._asking[key]
        asking.set_result(caller)
        if forgets == self._forgets:
            self._remember(key, now, caller)
        return caller

    def _remember(self, key: str, now: float, caller: Caller | None) -> None:
        if len(self._cache) >= self.max_entries:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
        if self.ttl_s > 0:
            self._cache[key] = (now + self.ttl_s, caller)

    def forget(self, *, user_id: str | None = None, credential_id: str | None = None) -> None:
        """Drop what is remembered for a user (it changed) or a credential (it was revoked)."""
        self._forgets += 1
        self._cache = {
            k: (until, c) for k, (until, c) in self._cache.items()
            if c is None or (c.user_id != user_id and c.credential_id != credential_id)
        }


class SignInThrottle:
    """Failed sign-ins in a sliding window, per email and per source address; a locked
    email or address is refused by name.

    Per email stops guesses at one account; per address stops one machine guessing a few
    passwords at each of many accounts. The failures live in the read-model database
    (table sign_in_failures), so every API process behind a load balancer counts the same
    guesses. Each call is one short statement: call it off the event loop.
    """

    def __init__(self, db: ViewDB, max_failures: int = 5, window_s: float = 300.0,
                 clock: Callable[[], float] = time.time, max_source_failures: int = 20):
        self.db, self.max_failures, self.window_s = db, max_failures, window_s
        self.max_source_failures = max_source_failures
        self.clock = clock

    @staticmethod
    def _key(email: str) -> str:
        return email.strip().lower()  # as accounts are found (domain.identity.normalise_email)

    def check(self, email: str, source: str = "", field: str = "password") -> None:
        """Raise a Refusal on `field` (the password argument, as the schema names it),
        saying when to try again, while the email or the address is locked: a wait the
        caller can mend, so signIn answers it as a FieldError."""
        now = self.clock()
        (row,) = self.db.query(
            "SELECT COUNT(*) AS n, MIN(at) AS first FROM sign_in_failures"
            " WHERE email = ? AND at > ?", (self._key(email), now - self.window_s),
        )
        if row["n"] >= self.max_failures:
            wait = math.ceil(row["first"] + self.window_s - now)
            raise Refusal(field, f"{row['n']} wrong passwords for this email in "
                          f"{self.window_s / 60:g} min; try again in {wait} s")
        if not source:
            return
        (row,) = self.db.query(
            "SELECT COUNT(*) AS n, MIN(at) AS first FROM sign_in_failures"
            " WHERE source = ? AND at > ?", (source, now - self.window_s),
        )
        if row["n"] >= self.max_source_failures:
            wait = math.ceil(row["first"] + self.window_s - now)
            raise Refusal(field, f"{row['n']} wrong passwords from your address in "
                          f"{self.window_s / 60:g} min; try again in {wait} s")

    def failed(self, email: str, source: str = "") -> None:
        now = self.clock()
        with self.db.transaction() as cur:  # everyone's old failures go: the table stays small
            cur.execute("DELETE FROM sign_in_failures WHERE at <= ?", (now - self.window_s,))
            cur.execute("INSERT INTO sign_in_failures (email, at, source) VALUES (?, ?, ?)",
                        (self._key(email), now, source))

    def succeeded(self, email: str) -> None:
        """The email's own failures go; an address keeps its count (a guesser who also
        holds one account of its own does not clear it by signing in)."""
        with self.db.transaction() as cur:
            cur.execute("UPDATE sign_in_failures SET email = '' WHERE email = ?",
                        (self._key(email),))


class SignUpThrottle:
    """Accounts made per source address in a sliding window (an hour): each costs a
    password hash, and accounts are free, so one machine may open only so many. Counted in
    the read-model database (table sign_ups) so that every API process agrees (two at one
    moment may both pass the check). One short statement each: call them off the event
    loop."""

    def __init__(self, db: ViewDB, per_address: int = 20, window_s: float = 3600.0,
                 clock: Callable[[], float] = time.time):
        self.db, self.per_address, self.window_s, self.clock = db, per_address, window_s, clock

    def check(self, source: str, field: str = "email") -> None:
        """Raise a Refusal saying when to try again while `source` has signed up its most
        accounts in the window."""
        now = self.clock()
        (row,) = self.db.query("SELECT COUNT(*) AS n, MIN(at) AS first FROM sign_ups"
                               " WHERE source = ? AND at > ?", (source, now - self.window_s))
        if row["n"] >= self.per_address:
            wait = math.ceil(row["first"] + self.window_s - now)
            raise Refusal(field, f"{row['n']} accounts signed up from your address in the "
                          f"last {self.window_s / 3600:g} h; try again in {wait} s")

    def signed_up(self, source: str) -> None:
        """Count an account made from `source`. Only accounts made count: a refused sign-up
        (a malformed email, one already registered, a short password) is refused before
        any password is hashed, and must not lock out everyone behind one address."""
        now = self.clock()
        with self.db.transaction() as cur:  # everyone's old sign-ups go: the table stays small
            cur.execute("DELETE FROM sign_ups WHERE at <= ?", (now - self.window_s,))
            cur.execute("INSERT INTO sign_ups (source, at) VALUES (?, ?)", (source, now))


# Rules


def acts_as(caller: Caller | None, role: str) -> bool:
    return caller is not None and (caller.admin or caller.has(role))


def client_of(caller: Caller | None) -> str:
    """The caller's own client id; refused without the client role."""
    if caller is None:
        raise Denied("unauthenticated: sign in, or send Authorization: Bearer <token>")
    if caller.client_id is None:
        raise Denied("forbidden: this needs the client role (an account or API key that "
                     "holds it)")
    return caller.client_id


def can_read_job(caller: Caller | None, client_id: str, provider_id: str | None) -> bool:
    if caller is None:
        return False
    return (caller.admin or client_id == caller.client_id
            or (caller.has("provider") and provider_id in caller.provider_ids))


def can_read_job_log(caller: Caller | None, client_id: str) -> bool:
    """A job's output is its owner's (and an admin's): not a provider's, whose check run
    could copy what another provider's run printed."""
    return caller is not None and (caller.admin or client_id == caller.client_id)


def can_cancel_job(caller: Caller | None, client_id: str) -> bool:
    return caller is not None and (caller.admin or client_id == caller.client_id)


def can_manage_provider(caller: Caller | None, provider_id: str) -> bool:
    return caller is not None and (
        caller.admin or (caller.has("provider") and provider_id in caller.provider_ids)
    )


def holds_provider_key(caller: Caller | None, provider_id: str) -> bool:
    """The caller acts as the provider itself: a provider-scoped key (or session) of the
    account that owns it. An admin is not the provider: what only the provider's agent
    does (renew its run's grants) wants this, not can_manage_provider."""
    return caller is not None and caller.has("provider") and provider_id in caller.provider_ids


def can_watch_provider(caller: Caller | None, provider_id: str, nodes: set[str]) -> bool:
    """Its owner, or the operator of a node it belongs to (`nodes`)."""
    return can_manage_provider(caller, provider_id) or (
        caller is not None and caller.has("operator") and bool(nodes & caller.node_ids)
    )


def can_claim(caller: Caller | None, role: str, owner: str | None, exists: bool) -> bool:
    """Register a provider or node id: a new one, or one the caller already owns."""
    if caller is None:
        return False
    if caller.admin:
        return True
    return caller.has(role) and (owner == caller.user_id or (owner is None and not exists))


def can_operate_node(caller: Caller | None, node_id: str) -> bool:
    return caller is not None and (
        caller.admin or (caller.has("operator") and node_id in caller.node_ids)
    )


def can_use_storage(caller: Caller | None, client_id: str) -> bool:
    return caller is not None and (caller.admin or caller.client_id == client_id)


def can_mint_keys(caller: Caller | None) -> bool:
    return caller is not None and caller.via == "session"


def require(allowed: bool, message: str) -> None:
    if not allowed:
        raise Denied(message)


# Gates on the schema's root fields


def _caller(info: Info[Any, Any]) -> Caller | None:
    return getattr(info.context, "caller", None)


class Gate(BasePermission):
    """A root field's gate; `check_every_field_guarded` wants exactly one on each."""

    message = "unauthenticated: sign in, or send Authorization: Bearer <token>"


class Public(Gate):
    def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        return True


class SignedIn(Gate):
    def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
        return _caller(info) is not None


def _role_gate(role: str) -> type[Gate]:
    class RoleGate(Gate):
        message = (f"forbidden: this needs the {ROLE_WORDS[role]} role (sign in with an "
                   "account, or send an API key, that holds it)")

        def has_permission(self, source: Any, info: Info[Any, Any], **kwargs: Any) -> bool:
            if _caller(info) is None:  # say what is missing: who, before which role
                raise Denied(Gate.message)
            return acts_as(_caller(info), role)

    RoleGate.__name__ = RoleGate.__qualname__ = f"{role.capitalize()}Role"
    return RoleGate


ClientRole = _role_gate("client")
ProviderRole = _role_gate("provider")
OperatorRole = _role_gate("operator")
AdminRole = _role_gate("admin")


def check_every_field_guarded(schema: strawberry.Schema) -> None:
    """Deny by default: each query, mutation and subscription names exactly one gate."""
    unguarded = []
    for root in (schema.query, schema.mutation, schema.subscription):
        if root is None:
            continue
        definition = root.__strawberry_definition__  # type: ignore[attr-defined]
        for field in definition.fields:
            gates = [p for p in field.permission_classes if issubclass(p, Gate)]
            if len(gates) != 1:
                unguarded.append(f"{definition.name}.{field.python_name}")
    if unguarded:
        raise RuntimeError(f"fields without exactly one auth gate: {', '.join(unguarded)}")
