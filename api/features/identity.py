"""Identity: who you are, signing up, in and out, passwords, roles, and API keys."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Annotated

import strawberry

from api import auth
from api.context import I, run_command, signed_in
from api.errors import FieldError, refusable, refused
from domain.errors import DomainError
from domain.identity import ROLES, Caller, UserView


@strawberry.type
class User:
    id: strawberry.ID
    email: str
    roles: list[str] = strawberry.field(description="client, provider, operator, admin")
    client_id: str | None = strawberry.field(description="your storage space and jobs' owner")
    provider_ids: list[str]
    node_ids: list[str]

    @classmethod
    def of(cls, caller: Caller) -> User:
        """As this credential may act: an API key's scopes narrow the roles."""
        return cls(
            id=strawberry.ID(caller.user_id), email=caller.email,
            roles=[r for r in ROLES if r in caller.roles], client_id=caller.client_id,
            provider_ids=sorted(caller.provider_ids), node_ids=sorted(caller.node_ids),
        )

    @classmethod
    def of_account(cls, view: UserView) -> User:
        """The account itself, every role it holds."""
        return cls(
            id=strawberry.ID(view.id), email=view.email, roles=list(view.roles),
            client_id=view.client_id if "client" in view.roles else None,
            provider_ids=sorted(view.provider_ids), node_ids=sorted(view.node_ids),
        )


@strawberry.type
class Session:
    token: str = strawberry.field(description="send it as Authorization: Bearer <token>")
    user: User


@strawberry.type
class ApiKey:
    id: strawberry.ID
    name: str
    scopes: list[str]
    created_at: str


@strawberry.type
class ApiKeyCreated:
    id: strawberry.ID
    name: str
    scopes: list[str]
    key: str = strawberry.field(description="shown only this once: only its hash is kept")
    created_at: str


@strawberry.type
class PasswordReset:
    email: str
    temporary_password: str = strawberry.field(
        description="shown only this once: the account's holder signs in with it and chooses "
        "a new one")


@strawberry.type
class ApiKeyRevoked:
    id: strawberry.ID


SessionResult = Annotated[Session | FieldError, strawberry.union(
    "SessionResult", description="A new session, or why it was refused")]
UserResult = Annotated[User | FieldError, strawberry.union(
    "UserResult", description="The account as it is now, or why the change was refused")]
PasswordResetResult = Annotated[PasswordReset | FieldError, strawberry.union(
    "PasswordResetResult", description="A temporary password, or why it was refused")]
SignUpResult = Annotated[Session | FieldError, strawberry.union(
    "SignUpResult", description="The new account's session, or why it was refused (the "
    "email taken, the password too short, a role not offered)")]
SignInResult = Annotated[Session | FieldError, strawberry.union(
    "SignInResult", description="A new session, or why it was refused (a wrong password, "
    "or too many of them lately)")]
ApiKeyCreatedResult = Annotated[ApiKeyCreated | FieldError, strawberry.union(
    "ApiKeyCreatedResult", description="The new key, or why it was refused")]
ApiKeyRevokedResult = Annotated[ApiKeyRevoked | FieldError, strawberry.union(
    "ApiKeyRevokedResult", description="The key revoked, or why it was refused")]


def _source_address(info: I) -> str:
    """The address the request came from, as the API's socket saw it (behind a proxy: the
    proxy's, so run the throttle where it sees clients, or one replica per proxy)."""
    request = getattr(info.context, "request", None)
    client = getattr(request, "client", None)
    return str(client.host) if client is not None else ""


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).isoformat(timespec="seconds")


async def _session(info: I, token: str) -> Session:
    caller = await info.context.services.auth.authenticate(token)
    if caller is None:
        raise RuntimeError("the session was recorded but cannot be read back")
    return Session(token=token, user=User.of(caller))


@strawberry.type
class IdentityQuery:
    @strawberry.field(description="Who you are; null when anonymous or the token is not valid",
                      permission_classes=[auth.Public])
    async def me(self, info: I) -> User | None:
        caller = info.context.caller
        return None if caller is None else User.of(caller)

    @strawberry.field(description="Your API keys (never the keys themselves)",
                      permission_classes=[auth.SignedIn])
    async def api_keys(self, info: I) -> list[ApiKey]:
        keys = await run_command(info.context.services.identity.api_keys, signed_in(info).user_id)
        return [ApiKey(id=strawberry.ID(k.id), name=k.name, scopes=k.scopes,
                       created_at=_iso(k.created_at)) for k in keys]


@strawberry.type
class IdentityMutation:
    @strawberry.mutation(
        description="Create an account with the roles you need (client, provider, operator) "
        "and sign in",
        permission_classes=[auth.Public],
    )
    @refusable
    async def sign_up(
        self, info: I, email: str, password: str, roles: list[str]
    ) -> SignUpResult:
        services = info.context.services
        source = _source_address(info)
        await asyncio.to_thread(services.sign_ups.check, source, "")
        async with services.password_slots:
            issued = await run_command(services.identity.sign_up, email, password, roles,
                                       time.time(), services.settings.session_ttl_s)
        await asyncio.to_thread(services.sign_ups.signed_up, source)
        return await _session(info, issued.token)

    @strawberry.mutation(description="Sign in: a session token for `Authorization: Bearer`",
                         permission_classes=[auth.Public])
    @refusable
    async def sign_in(self, info: I, email: str, password: str) -> SignInResult:
        services = info.context.services
        source = _source_address(info)
        await asyncio.to_thread(services.sign_ins.check, email, source)
        try:
            async with services.password_slots:
                issued = await asyncio.to_thread(services.identity.sign_in, email, password,
                                                 time.time(), services.settings.session_ttl_s)
        except DomainError as err:
            if err.field == "password":
                await asyncio.to_thread(services.sign_ins.failed, email, source)
            raise refused(err) from None
        await asyncio.to_thread(services.sign_ins.succeeded, email)
        return await _session(info, issued.token)

    @strawberry.mutation(
        description="Choose a new password (the current one is asked again); every other "
        "session of the account ends, and this answer is a new session",
        permission_classes=[auth.SignedIn],
    )
    @refusable
    async def change_password(
        self, info: I, current_password: str, new_password: str
    ) -> SessionResult:
        caller, services = signed_in(info), info.context.services
        if caller.via != "session":
            raise auth.Denied("forbidden: change a password from a signed-in session, "
                              "not with an API key")
        source = _source_address(info)
        await asyncio.to_thread(services.sign_ins.check, caller.email, source,
                                "currentPassword")
        try:
            async with services.password_slots:
                issued = await asyncio.to_thread(
                    services.identity.change_password, caller.user_id, current_password,
                    new_password, time.time(), services.settings.session_ttl_s)
        except DomainError as err:
            if err.field == "current_password":
                await asyncio.to_thread(services.sign_ins.failed, caller.email, source)
            raise refused(err) from None
        services.auth.forget(user_id=caller.user_id)
        return await _session(info, issued.token)

    @strawberry.mutation(
        description="Admin: a temporary password for a locked-out account (answered once); "
        "every session of it ends",
        permission_classes=[auth.AdminRole],
    )
    @refusable
    async def reset_password(self, info: I, email: str) -> PasswordResetResult:
        services = info.context.services
        async with services.password_slots:
            temporary = await run_command(services.identity.reset_password, email, time.time())
        await asyncio.to_thread(services.sign_ins.succeeded, email)
        user = await asyncio.to_thread(services.identity.user_by_email, email)
        if user is not None:
            services.auth.forget(user_id=str(user.id))
        return PasswordReset(email=email, temporary_password=temporary)

    @strawberry.mutation(
        description="Take on more roles (client, provider, operator): a client who also "
        "offers GPUs, say. Make a new API key to use them from a program",
        permission_classes=[auth.SignedIn],
    )
    @refusable
    async def add_roles(self, info: I, roles: list[str]) -> UserResult:
        caller, services = signed_in(info), info.context.services
        view = await run_command(services.identity.add_roles, caller.user_id, roles)
        services.auth.forget(user_id=caller.user_id)
        return User.of_account(view)

    @strawberry.mutation(
        description="Admin: take a role away from an account (it keeps one at least); its "
        "sessions and API keys stop acting as that role",
        permission_classes=[auth.AdminRole],
    )
    @refusable
    async def revoke_role(self, info: I, email: str, role: str) -> UserResult:
        services = info.context.services
        view = await run_command(services.identity.revoke_role, email, role)
        services.auth.forget(user_id=view.id)
        return User.of_account(view)

    @strawberry.mutation(
        description="End this session (its token stops working); false for an API key",
        permission_classes=[auth.SignedIn],
    )
    async def sign_out(self, info: I) -> bool:
        caller, services = signed_in(info), info.context.services
        if caller.via != "session":
            return False
        ended = await run_command(services.identity.sign_out, caller.credential_id, time.time())
        services.auth.forget(credential_id=caller.credential_id)
        return ended

    @strawberry.mutation(
        description="A new API key for programs and provider agents, acting as some of your "
        "roles (scopes); the key is shown only in this answer",
        permission_classes=[auth.SignedIn],
    )
    @refusable
    async def create_api_key(
        self, info: I, name: str, scopes: list[str]
    ) -> ApiKeyCreatedResult:
        caller = signed_in(info)
        auth.require(auth.can_mint_keys(caller),
                     "forbidden: API keys are made from a signed-in session, not with a key")
        allowed = [r for r in ROLES if r in caller.roles]
        issued = await run_command(info.context.services.identity.create_api_key, caller.user_id,
                            name, scopes, allowed, time.time())
        view = issued.view
        return ApiKeyCreated(id=strawberry.ID(view.id), name=view.name, scopes=view.scopes,
                             key=issued.key, created_at=_iso(view.created_at))

    @strawberry.mutation(description="Revoke one of your API keys: it stops working at once",
                         permission_classes=[auth.SignedIn])
    @refusable
    async def revoke_api_key(self, info: I, id: strawberry.ID) -> ApiKeyRevokedResult:
        caller, services = signed_in(info), info.context.services
        owner = None if caller.admin else caller.user_id
        await run_command(services.identity.revoke_api_key, owner, str(id), time.time())
        services.auth.forget(credential_id=str(id))
        return ApiKeyRevoked(id=id)
