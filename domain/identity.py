"""Who calls the network: users, their roles, sessions and API keys, and what they own.

A User is found by its normalised email (its id is a business id of it, so one email
is one account). It holds its roles among client, provider, operator and admin (one
person may hold several), the client id it owns (a client gets one on sign-up, derived
from the user id), the providers and nodes it owns, and its API keys' names and scopes.

Secrets are never stored: a password as its argon2id hash, a session token or an API
key as the sha256 of the random string (high entropy, so a plain hash is enough). A
Session and an ApiKey are aggregates found by that hash, so authenticating one costs a
hash and two loads (which the API caches for a few seconds). A Claim says which user
owns a provider id or a node id; the first to register one owns it.

Time is passed in (`at`, `expires_at`: unix seconds), never read in an `@event` body.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from eventsourcing.domain import Aggregate, event

from domain.errors import DomainError
from domain.ids import business_id
from protocol.fields import check_text

ROLES = ("client", "provider", "operator", "admin")
SELF_SERVICE_ROLES = ("client", "provider", "operator")  # "admin" is never self-granted
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
MAX_API_KEYS = 100
SESSION_PREFIX = "gps_"
API_KEY_PREFIX = "gpk_"
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s]+\.[^@\s.]{1,63}")
_KEY_NAME = re.compile(r"\S.{0,63}")

# argon2id's cost (RFC 9106's second recommended profile by default: 3 passes over 64 MiB),
# an operator's choice within these bounds (GPGPU_PASSWORD_HASH_TIME_COST / _MEMORY_KIB,
# infra/settings.py); OWASP's floor for argon2id is 19 MiB with 2 passes.
TIME_COST = (1, 10, 3)  # (least, most, default)
MEMORY_KIB = (1024, 1 << 20, 64 << 10)
# Their keys in an application's environment. Not named after the settings: eventsourcing
# looks `<app name>_<key>` (GPGPU_...) up in os.environ first, which would then override
# what the settings passed on.
ENV_TIME_COST = "ARGON2_TIME_COST"
ENV_MEMORY_KIB = "ARGON2_MEMORY_KIB"
# The provider ids one account may claim (GPGPU_MAX_PROVIDERS_PER_ACCOUNT): accounts are
# free to open, and every provider stays in the directory that scheduling walks.
PROVIDERS_PER_ACCOUNT = (1, 10_000, 64)
ENV_PROVIDERS_PER_ACCOUNT = "PROVIDERS_PER_ACCOUNT_MOST"


def env_number(env: Mapping[str, str], key: str, bounds: tuple[int, int, int]) -> int:
    """A whole number from an application's environment, within (least, most), or the
    default where it names none."""
    least, most, default = bounds
    raw = env.get(key)
    try:
        value = default if raw in (None, "") else int(str(raw))
    except ValueError:
        raise IdentityError(key.lower(), f"not a whole number: {raw!r}") from None
    if not least <= value <= most:
        raise IdentityError(key.lower(), f"must be between {least} and {most}, not {value}")
    return value


class Passwords:
    """Password hashes (argon2id) at one cost. A hash made at another cost still verifies,
    and is made again at this one at its owner's next sign-in (`needs_rehash`)."""

    def __init__(self, time_cost: int = TIME_COST[2], memory_kib: int = MEMORY_KIB[2]):
        for name, value, (least, most, _) in (("time_cost", time_cost, TIME_COST),
                                              ("memory_kib", memory_kib, MEMORY_KIB)):
            if not least <= value <= most:
                raise IdentityError(name, f"must be between {least} and {most}, not {value}")
        self._hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_kib)
        self._dummy: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Passwords:
        """The cost an application's environment names (defaults where it names none)."""
        return cls(env_number(env, ENV_TIME_COST, TIME_COST),
                   env_number(env, ENV_MEMORY_KIB, MEMORY_KIB))

    def _dummy_hash(self) -> str:
        """Checked when the email is unknown, so that a miss takes as long as a wrong
        password. Made at the first such sign-in, not before: every process that builds
        an application would spend a hash on it."""
        if self._dummy is None:
            self._dummy = self._hasher.hash(secrets.token_hex(16))
        return self._dummy

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    def matches(self, password_hash: str | None, password: str) -> bool:
        try:
            matches = self._hasher.verify(password_hash or self._dummy_hash(), password)
            return matches and password_hash is not None
        except (VerifyMismatchError, VerificationError, InvalidHashError, UnicodeEncodeError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


class IdentityError(DomainError):
    """Refused; the message starts with the field it is about ("email: already registered")."""


# Secrets and their hashes


def new_temporary_password() -> str:
    """A password an admin hands over after a reset; its owner then chooses their own."""
    return "tmp-" + secrets.token_urlsafe(12)


def new_session_token() -> str:
    return SESSION_PREFIX + secrets.token_urlsafe(32)


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def secret_hash(secret: str) -> str:
    """sha256 of a random bearer secret (32 random bytes: no salt or stretching needed)."""
    return hashlib.sha256(secret.encode()).hexdigest()


# Checks of what people type


def _check_text(value: str, field: str) -> None:
    """Text we hash or store: the same rule as a job spec's text (protocol.fields.check_text)."""
    try:
        check_text(value)
    except ValueError as err:
        raise IdentityError(field, f"{err}") from None


def normalise_email(email: str) -> str:
    _check_text(email, "email")
    normal = email.strip().lower()
    if not _EMAIL.fullmatch(normal) or len(normal) > 254:
        raise IdentityError("email", f"{email.strip()!r} is not an email address")
    return normal


def check_password(password: str, field: str = "password") -> str:
    _check_text(password, field)
    if len(password) < MIN_PASSWORD:
        raise IdentityError(field, f"at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise IdentityError(field, f"at most {MAX_PASSWORD} characters")
    return password


def check_roles(roles: list[str], allowed: tuple[str, ...], field: str = "roles") -> list[str]:
    unknown = [r for r in roles if r not in allowed]
    if unknown:
        raise IdentityError(field, f"{', '.join(map(repr, unknown))} is not one of "
                            f"{', '.join(allowed)}")
    chosen = [r for r in ROLES if r in roles]  # a fixed order, no repeats
    if not chosen:
        raise IdentityError(field, f"pick at least one of {', '.join(allowed)}")
    return chosen


def check_key_name(name: str) -> str:
    _check_text(name, "name")
    name = name.strip()
    if not _KEY_NAME.fullmatch(name):
        raise IdentityError("name", "1 to 64 characters")
    return name


def client_id_of(user_id: UUID) -> str:
    """The client id a user owns: derived from its id, so it is fixed and unique."""
    return f"c-{user_id.hex[:16]}"


# Aggregates


class User(Aggregate):
    # Sessions started before this time are over (a changed or reset password ends them).
    # A class default: accounts from before it was recorded have never set a password.
    sessions_valid_from: float = 0.0

    @staticmethod
    def create_id(email: str, **_: Any) -> UUID:
        return business_id("user", email)

    @event("UserSignedUp")
    def __init__(self, email: str, password_hash: str, roles: list[str], at: float):
        self.email = email
        self.password_hash = password_hash
        self.roles: list[str] = []
        self.client_id: str | None = None
        self.provider_ids: list[str] = []
        self.node_ids: list[str] = []
        self.signed_up_at = at
        # key id -> {"name", "scopes", "created_at", "revoked_at"}; the key itself is not here
        self.api_keys: dict[str, dict[str, Any]] = {}
        for role in roles:
            self._grant(role)

    def grant_role(self, role: str) -> None:
        if role not in ROLES:
            raise IdentityError("roles", f"{role!r} is not one of {', '.join(ROLES)}")
        if role not in self.roles:
            self._role_granted(role=role)

    @event("RoleGranted")
    def _role_granted(self, role: str) -> None:
        self._grant(role)

    def revoke_role(self, role: str) -> None:
        """Take a role away (its API keys stop acting as it); an account keeps one at least."""
        if role not in ROLES:
            raise IdentityError("role", f"{role!r} is not one of {', '.join(ROLES)}")
        if role not in self.roles:
            return
        if self.roles == [role]:
            raise IdentityError("role", f"{role!r} is the account's only role; it keeps one")
        self._role_revoked(role=role)

    @event("RoleRevoked")
    def _role_revoked(self, role: str) -> None:
        # The client id stays: the storage space and the jobs are still the account's.
        self.roles = [r for r in self.roles if r != role]

    def _grant(self, role: str) -> None:
        self.roles = [r for r in ROLES if r in (*self.roles, role)]
        if role == "client" and self.client_id is None:
            self.client_id = client_id_of(self.id)

    def rehash_password(self, password_hash: str) -> None:
        self._password_changed(password_hash=password_hash)

    @event("PasswordChanged")
    def _password_changed(self, password_hash: str) -> None:
        self.password_hash = password_hash

    def set_password(self, password_hash: str, at: float) -> None:
        """A new password, chosen or reset: every session started before it ends."""
        self._password_set(password_hash=password_hash, at=at)

    @event("PasswordSet")
    def _password_set(self, password_hash: str, at: float) -> None:
        self.password_hash = password_hash
        self.sessions_valid_from = at

    def session_current(self, session: Session) -> bool:
        return session.started_at >= self.sessions_valid_from

    def own(self, kind: str, key: str) -> None:
        owned = self.provider_ids if kind == "provider" else self.node_ids
        if key not in owned:
            self._claimed(kind=kind, key=key)

    @event("OwnershipClaimed")
    def _claimed(self, kind: str, key: str) -> None:
        (self.provider_ids if kind == "provider" else self.node_ids).append(key)

    def release(self, kind: str, key: str) -> None:
        owned = self.provider_ids if kind == "provider" else self.node_ids
        if key in owned:
            self._released(kind=kind, key=key)

    @event("OwnershipReleased")
    def _released(self, kind: str, key: str) -> None:
        if kind == "provider":
            self.provider_ids = [k for k in self.provider_ids if k != key]
        else:
            self.node_ids = [k for k in self.node_ids if k != key]

    def active_keys(self) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.api_keys.items() if v["revoked_at"] is None}

    def add_api_key(self, key_id: str, name: str, scopes: list[str], at: float) -> None:
        if len(self.active_keys()) >= MAX_API_KEYS:
            raise IdentityError("name", f"at most {MAX_API_KEYS} keys; revoke one first")
        if any(v["name"] == name for v in self.active_keys().values()):
            raise IdentityError("name", f"you already have a key named {name!r}")
        self._api_key_added(key_id=key_id, name=name, scopes=scopes, at=at)

    @event("ApiKeyAdded")
    def _api_key_added(self, key_id: str, name: str, scopes: list[str], at: float) -> None:
        self.api_keys[key_id] = {"name": name, "scopes": scopes, "created_at": at,
                                 "revoked_at": None}

    def revoke_api_key(self, key_id: str, at: float) -> None:
        if key_id in self.active_keys():
            self._api_key_removed(key_id=key_id, at=at)

    @event("ApiKeyRemoved")
    def _api_key_removed(self, key_id: str, at: float) -> None:
        self.api_keys[key_id]["revoked_at"] = at


class Session(Aggregate):
    """A signed-in browser or CLI: a bearer token until it expires or signs out."""

    @staticmethod
    def create_id(token_hash: str, **_: Any) -> UUID:
        return business_id("session", token_hash)

    @event("SessionStarted")
    def __init__(self, token_hash: str, user_id: UUID, started_at: float, expires_at: float):
        self.user_id = user_id
        self.started_at = started_at
        self.expires_at = expires_at
        self.ended_at: float | None = None

    def valid_at(self, now: float) -> bool:
        return self.ended_at is None and now < self.expires_at

    def end(self, at: float) -> None:
        if self.ended_at is None:
            self._ended(at=at)

    @event("SessionEnded")
    def _ended(self, at: float) -> None:
        self.ended_at = at


class ApiKey(Aggregate):
    """A named, scoped key for programs and provider agents; its id is shown, never its hash."""

    @staticmethod
    def create_id(key_hash: str, **_: Any) -> UUID:
        return business_id("api-key", key_hash)

    @event("ApiKeyCreated")
    def __init__(self, key_hash: str, user_id: UUID, name: str, scopes: list[str], at: float):
        self.user_id = user_id
        self.name = name
        self.scopes = scopes
        self.created_at = at
        self.revoked_at: float | None = None

    def revoke(self, at: float) -> None:
        if self.revoked_at is None:
            self._revoked(at=at)

    @event("ApiKeyRevoked")
    def _revoked(self, at: float) -> None:
        self.revoked_at = at


class Claim(Aggregate):
    """One user owns a provider id or a node id: the first to register it."""

    @staticmethod
    def create_id(kind: str, key: str, **_: Any) -> UUID:
        return business_id(f"claim:{kind}", key)

    @event("Claimed")
    def __init__(self, kind: str, key: str, user_id: UUID):
        self.kind = kind
        self.key = key
        self.user_id = user_id

    def hand_over(self, user_id: UUID) -> None:
        if user_id != self.user_id:
            self._handed_over(user_id=user_id)

    @event("ClaimHandedOver")
    def _handed_over(self, user_id: UUID) -> None:
        self.user_id = user_id


# What the API works with


@dataclass(frozen=True)
class Caller:
    """Who is calling and what they may act as (a key's scopes narrow its user's roles)."""

    user_id: str
    email: str
    roles: frozenset[str]
    client_id: str | None
    provider_ids: frozenset[str]
    node_ids: frozenset[str]
    via: str  # "session" or "api_key"
    credential_id: str  # the session's or the key's aggregate id

    def has(self, role: str) -> bool:
        return role in self.roles

    @property
    def admin(self) -> bool:
        return "admin" in self.roles


def caller_of(user: User, via: str, credential_id: str, scopes: list[str] | None = None) -> Caller:
    roles = frozenset(r for r in user.roles if scopes is None or r in scopes)
    return Caller(
        user_id=str(user.id), email=user.email, roles=roles,
        client_id=user.client_id if "client" in roles else None,
        provider_ids=frozenset(user.provider_ids), node_ids=frozenset(user.node_ids),
        via=via, credential_id=credential_id,
    )


@dataclass(frozen=True)
class UserView:
    id: str
    email: str
    roles: list[str]
    client_id: str | None
    provider_ids: list[str]
    node_ids: list[str]


def user_view(user: User) -> UserView:
    return UserView(str(user.id), user.email, list(user.roles), user.client_id,
                    list(user.provider_ids), list(user.node_ids))


@dataclass(frozen=True)
class Issued:
    """A new bearer secret (shown once) and whose it is."""

    token: str
    user: UserView


@dataclass(frozen=True)
class KeyView:
    id: str
    name: str
    scopes: list[str]
    created_at: float


@dataclass(frozen=True)
class KeyIssued:
    key: str
    view: KeyView
