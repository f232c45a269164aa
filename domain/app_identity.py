"""Identity: users, sessions, API keys and ownership claims; `Ownership`, the reads of
who owns which provider that the Network needs."""

from __future__ import annotations

from collections.abc import Mapping
from uuid import UUID

from eventsourcing.domain import Aggregate
from eventsourcing.persistence import ApplicationRecorder

from domain.app_base import NAME, Base
from domain.identity import (
    API_KEY_PREFIX,
    ENV_PROVIDERS_PER_ACCOUNT,
    PROVIDERS_PER_ACCOUNT,
    ROLES,
    SELF_SERVICE_ROLES,
    SESSION_PREFIX,
    ApiKey,
    Caller,
    Claim,
    IdentityError,
    Issued,
    KeyIssued,
    KeyView,
    Passwords,
    Session,
    User,
    UserView,
    caller_of,
    check_key_name,
    check_password,
    check_roles,
    env_number,
    new_api_key,
    new_session_token,
    new_temporary_password,
    normalise_email,
    secret_hash,
    user_view,
)


class Ownership(Base):
    """Who owns which provider: the reads of identity's records that placing a job needs
    (a job's check runs go to providers of distinct owners). The Network reads them from
    the one store; only Identity writes them."""

    name = NAME

    def user(self, user_id: str | UUID) -> User | None:
        found = self._get_or_none(UUID(str(user_id)))
        return found if isinstance(found, User) else None

    def same_owner(self, provider_ids: set[str]) -> set[str]:
        """These providers and every other provider of their owners' accounts: a job's check
        runs are on providers of distinct owners, or one owner could agree with itself."""
        return set(self.with_mates({pid: self.owner_of("provider", pid) or pid
                                    for pid in provider_ids}))

    def with_mates(self, owners: dict[str, str]) -> dict[str, str]:
        """`owners` (provider id -> the user id owning it, itself where none claimed it),
        with every other provider of those owners' accounts."""
        found = dict(owners)
        for owner in {owner for pid, owner in owners.items() if owner != pid}:  # claimed
            user = self.user(owner)
            for mate in user.provider_ids if user is not None else ():
                found[mate] = owner
        return found

    def owner_of(self, kind: str, key: str) -> str | None:
        """The user id that owns this provider or node id, if anyone does."""
        claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
        return str(claim.user_id) if isinstance(claim, Claim) else None


class Identity(Ownership):
    """Accounts of people, their sessions and API keys, and who owns which provider or node
    id. An application of its own, used by the API directly (services.identity): the
    Network has none of its commands, and the read model folds none of its events.

    `recorder`: the Network's, to run over the very same store (one event log; with the
    in-memory store, the only way two applications see each other's events)."""

    name = NAME  # eventsourcing names an application after its class otherwise

    def __init__(self, env: Mapping[str, str] | None = None,
                 recorder: ApplicationRecorder | None = None) -> None:
        self._shared_recorder = recorder
        super().__init__(env)
        # argon2id's cost: ARGON2_TIME_COST / _MEMORY_KIB in its environment
        # (infra/settings.py passes GPGPU_PASSWORD_HASH_* on), bounded in Passwords.
        self.passwords = Passwords.from_env(self.env)
        # The provider ids an account may own (GPGPU_MAX_PROVIDERS_PER_ACCOUNT, passed on
        # the same way): the one place a provider id is claimed counts them.
        self.providers_per_account = env_number(self.env, ENV_PROVIDERS_PER_ACCOUNT,
                                                PROVIDERS_PER_ACCOUNT)

    def construct_recorder(self) -> ApplicationRecorder:
        if self._shared_recorder is not None:
            return self._shared_recorder
        return super().construct_recorder()

    @classmethod
    def beside(cls, app: Base) -> Identity:
        """Identity over the same store as `app` (the Network)."""
        return cls(app.env, recorder=app.recorder)

    # Identity

    def user_by_email(self, email: str) -> User | None:
        try:
            normal = normalise_email(email)
        except IdentityError:
            return None
        return self._get_or_none(User.create_id(email=normal))

    def _start_session(self, user: User, now: float, ttl_s: float) -> tuple[str, Session]:
        token = new_session_token()
        session = Session(token_hash=secret_hash(token), user_id=user.id, started_at=now,
                          expires_at=now + ttl_s)
        return token, session

    def sign_up(
        self, email: str, password: str, roles: list[str], now: float, session_ttl_s: float
    ) -> Issued:
        """A new account with the roles asked for (never admin) and a session for it."""
        normal = normalise_email(email)
        check_password(password)
        chosen = check_roles(roles, SELF_SERVICE_ROLES)
        if self._get_or_none(User.create_id(email=normal)) is not None:  # before the hash
            raise IdentityError("email", "already registered")
        password_hash = self.passwords.hash(password)

        def attempt() -> tuple[Issued, list[Aggregate]]:
            if self._get_or_none(User.create_id(email=normal)) is not None:
                raise IdentityError("email", "already registered")
            user = User(email=normal, password_hash=password_hash, roles=chosen, at=now)
            token, session = self._start_session(user, now, session_ttl_s)
            return Issued(token, user_view(user)), [user, session]

        return self._save_retrying(attempt)

    def sign_in(self, email: str, password: str, now: float, session_ttl_s: float) -> Issued:
        user = self.user_by_email(email)
        known = user.password_hash if user else None
        if not self.passwords.matches(known, password) or user is None:
            raise IdentityError("password", "the email and password do not match an account")
        changed: list[Aggregate] = []
        if self.passwords.needs_rehash(user.password_hash):
            user.rehash_password(self.passwords.hash(password))
            changed.append(user)
        token, session = self._start_session(user, now, session_ttl_s)
        self.save(*changed, session)
        return Issued(token, user_view(user))

    def change_password(
        self, user_id: str, current: str, new: str, now: float, session_ttl_s: float
    ) -> Issued:
        """The account's own new password; its other sessions end, this answer is a new one."""
        check_password(new, "new_password")
        password_hash = self.passwords.hash(new)
        user = self.user(user_id)
        if user is None:
            raise IdentityError("user", "no such account")
        if not self.passwords.matches(user.password_hash, current):
            raise IdentityError("current_password", "does not match the account's password")
        user.set_password(password_hash, now)
        token, session = self._start_session(user, now, session_ttl_s)
        self.save(user, session)
        return Issued(token, user_view(user))

    def reset_password(self, email: str, now: float) -> str:
        """An admin's reset for someone locked out: a temporary password, returned once, in
        place of theirs; every session of the account ends."""
        user = self.user_by_email(email)
        if user is None:
            raise IdentityError("email", f"no account has {normalise_email(email)!r}")
        temporary = new_temporary_password()
        user.set_password(self.passwords.hash(temporary), now)
        self.save(user)
        return temporary

    def add_roles(self, user_id: str, roles: list[str]) -> UserView:
        """More roles for yourself (never admin): a client who also offers GPUs, say."""
        chosen = check_roles(roles, SELF_SERVICE_ROLES)

        def attempt() -> tuple[UserView, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user", "no such account")
            for role in chosen:
                user.grant_role(role)
            return user_view(user), [user]

        return self._save_retrying(attempt)

    def revoke_role(self, email: str, role: str) -> UserView:
        """An admin takes a role from an account (it keeps one at least)."""

        def attempt() -> tuple[UserView, list[Aggregate]]:
            user = self.user_by_email(email)
            if user is None:
                raise IdentityError("email", f"no account has {normalise_email(email)!r}")
            user.revoke_role(role)
            return user_view(user), [user]

        return self._save_retrying(attempt)

    def create_user(
        self, email: str, password: str, roles: list[str], now: float
    ) -> UserView:
        """An account made by an operator on the stores (any roles, admin too). An existing
        account keeps its password and gains the roles it lacked."""
        normal = normalise_email(email)
        chosen = check_roles(roles, ROLES)
        user = self.user_by_email(normal)
        if user is None:
            check_password(password)
            user = User(email=normal, password_hash=self.passwords.hash(password),
                        roles=chosen, at=now)
        for role in chosen:
            user.grant_role(role)
        self.save(user)
        return user_view(user)

    def sign_out(self, session_id: str, now: float) -> bool:
        session = self._get_or_none(UUID(session_id))
        if not isinstance(session, Session) or session.ended_at is not None:
            return False
        session.end(now)
        self.save(session)
        return True

    def create_api_key(
        self, user_id: str, name: str, scopes: list[str], allowed: list[str], now: float
    ) -> KeyIssued:
        """A new key for the user, scoped to some of the roles the caller acts as (`allowed`)."""
        name = check_key_name(name)
        chosen = check_roles(scopes, tuple(allowed), "scopes")

        def attempt() -> tuple[KeyIssued, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user", "no such account")
            key = new_api_key()
            api_key = ApiKey(key_hash=secret_hash(key), user_id=user.id, name=name,
                             scopes=chosen, at=now)
            user.add_api_key(str(api_key.id), name, chosen, now)
            view = KeyView(str(api_key.id), name, chosen, now)
            return KeyIssued(key, view), [user, api_key]

        return self._save_retrying(attempt)

    def api_keys(self, user_id: str) -> list[KeyView]:
        user = self.user(user_id)
        if user is None:
            return []
        return [KeyView(k, v["name"], list(v["scopes"]), v["created_at"])
                for k, v in sorted(user.active_keys().items(), key=lambda kv: kv[1]["created_at"])]

    def revoke_api_key(self, user_id: str | None, key_id: str, now: float) -> bool:
        """Revoke one of the user's keys (user_id None: an admin revokes anyone's)."""
        try:
            aggregate_id = UUID(key_id)
        except ValueError:
            raise IdentityError("id", f"no API key {key_id!r} of yours") from None

        def attempt() -> tuple[bool, list[Aggregate]]:
            api_key = self._get_or_none(aggregate_id)
            if not isinstance(api_key, ApiKey) or (
                user_id is not None and str(api_key.user_id) != user_id
            ):
                raise IdentityError("id", f"no API key {key_id!r} of yours")
            if api_key.revoked_at is not None:
                return False, []
            owner = self.user(api_key.user_id)
            api_key.revoke(now)
            if owner is None:
                return True, [api_key]
            owner.revoke_api_key(key_id, now)
            return True, [api_key, owner]

        return self._save_retrying(attempt)

    def authenticate(self, token: str, now: float) -> Caller | None:
        """The caller a bearer token (a session token or an API key) stands for, or None."""
        if token.startswith(SESSION_PREFIX):
            session = self._get_or_none(Session.create_id(token_hash=secret_hash(token)))
            if not isinstance(session, Session) or not session.valid_at(now):
                return None
            user = self.user(session.user_id)
            if user is None or not user.session_current(session):
                return None
            return caller_of(user, "session", str(session.id))
        if token.startswith(API_KEY_PREFIX):
            api_key = self._get_or_none(ApiKey.create_id(key_hash=secret_hash(token)))
            if not isinstance(api_key, ApiKey) or api_key.revoked_at is not None:
                return None
            user = self.user(api_key.user_id)
            if user is None:
                return None
            return caller_of(user, "api_key", str(api_key.id), list(api_key.scopes))
        return None

    def hand_over(self, kind: str, key: str, user_id: str) -> None:
        """An operator's command on the stores: this provider or node id is the user's now
        (its former owner's sessions and keys stop managing it)."""

        def attempt() -> tuple[None, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user", "no such account")
            claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
            if claim is None:
                claim = Claim(kind=kind, key=key, user_id=user.id)
                changed: list[Aggregate] = [claim, user]
            elif claim.user_id == user.id:
                changed = [claim, user]
            else:
                former = self.user(claim.user_id)
                claim.hand_over(user.id)
                changed = [claim, user]
                if former is not None:
                    former.release(kind, key)
                    changed.append(former)
            user.own(kind, key)
            return None, changed

        self._save_retrying(attempt)

    def claim(self, kind: str, key: str, user_id: str) -> None:
        """The user owns this provider or node id from now on; refused if another user does,
        or if it would be a provider id past the most one account may own (an id it owns
        already is no new one). The user is saved with the claim, so two claims of one
        account at once conflict and the second counts the first, in any process."""
        field = "provider_id" if kind == "provider" else "node_id"

        def attempt() -> tuple[None, list[Aggregate]]:
            user = self.user(user_id)
            if user is None:
                raise IdentityError("user", "no such account")
            claim = self._get_or_none(Claim.create_id(kind=kind, key=key))
            if claim is None:
                claim = Claim(kind=kind, key=key, user_id=user.id)
            elif claim.user_id != user.id:
                raise IdentityError(field, f"{key!r} belongs to another account")
            most = self.providers_per_account
            if kind == "provider" and key not in user.provider_ids \
                    and len(user.provider_ids) >= most:
                raise IdentityError(field, f"an account owns at most {most} providers and "
                                    f"this one owns {len(user.provider_ids)}; register again "
                                    "under a provider id it owns")
            user.own(kind, key)
            return None, [claim, user]

        self._save_retrying(attempt)
