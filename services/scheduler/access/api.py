"""``vigil.v1.Access``: users, roles and API tokens (the interceptor checks who may call)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
from vigil.v1 import access_pb2, access_pb2_grpc

from services.core import paging
from services.core.access.permissions import (
    ANYWHERE,
    BUILTIN_ROLES,
    DefinitionError,
    Grant,
    Scope,
)
from services.core.access.principal import caller
from services.core.errors import InvalidArgumentError
from services.core.grpcerrors import handle_errors
from services.core.timeutil import set_timestamp
from services.scheduler.access.authority import AccessAuthority, parse_grants
from services.scheduler.access.store import TokenRow, UserRow

Ctx = grpc.aio.ServicerContext[Any, Any]
SERVICE_NAME = "vigil.v1.Access"


def scope_pb(scope: Scope) -> access_pb2.Scope:
    """The wire form of a scope."""
    return access_pb2.Scope(location=scope.location or "", node=scope.node or "")


def scope_of(msg: access_pb2.Scope, field: str = "scope") -> Scope:
    """A scope from the wire; errors name ``field``."""
    try:
        return Scope(location=msg.location or None, node=msg.node or None)
    except DefinitionError as exc:
        raise InvalidArgumentError(f"{field}.{exc.field.partition('.')[2]}", str(exc)) from None


def grants_pb(grants: Sequence[Grant]) -> list[access_pb2.Grant]:
    """The wire form of grants."""
    return [access_pb2.Grant(permission=g.permission, scope=scope_pb(g.scope)) for g in grants]


def user_pb(row: UserRow) -> access_pb2.User:
    """The wire form of a user (never its password hash)."""
    msg = access_pb2.User(name=row.name, role=row.role, disabled=row.disabled)
    set_timestamp(msg.create_time, row.created_at.timestamp())
    set_timestamp(msg.update_time, row.updated_at.timestamp())
    return msg


def token_pb(row: TokenRow) -> access_pb2.Token:
    """The wire form of a token's record (never the token)."""
    msg = access_pb2.Token(
        id=row.id,
        name=row.name,
        role=row.role,
        scope=scope_pb(row.scope),
        created_by=row.created_by,
    )
    set_timestamp(msg.create_time, row.created_at.timestamp())
    if row.expires_at is not None:
        set_timestamp(msg.expire_time, row.expires_at.timestamp())
    return msg


def _page(items: list[Any], key: Any, request: Any, filters: Any) -> tuple[list[Any], str]:
    size = paging.page_size(request.page_size)
    items = sorted(items, key=key)
    after = paging.decode_str(request.page_token, filters)
    if after is not None:
        items = [i for i in items if key(i) > after]
    page = items[:size]
    more = len(items) > size
    return page, paging.encode_token(key(page[-1]), filters) if more and page else ""


class AccessServicer(access_pb2_grpc.AccessServicer):
    """Thin wire layer over :class:`AccessAuthority`."""

    def __init__(self, authority: AccessAuthority) -> None:
        self.authority = authority

    @handle_errors
    async def Login(
        self, request: access_pb2.LoginRequest, context: Ctx
    ) -> access_pb2.LoginResponse:
        token, expires, role = await self.authority.login(request.user, request.password)
        resp = access_pb2.LoginResponse(token=token, role=role)
        set_timestamp(resp.expire_time, expires.timestamp())
        return resp

    @handle_errors
    async def WhoAmI(
        self, request: access_pb2.WhoAmIRequest, context: Ctx
    ) -> access_pb2.WhoAmIResponse:
        who = caller()
        return access_pb2.WhoAmIResponse(
            principal=who.key,
            role=who.role,
            scope=scope_pb(who.restriction),
            grants=grants_pb(who.grants),
        )

    # -- users -------------------------------------------------------------------------------

    @handle_errors
    async def PutUser(self, request: access_pb2.PutUserRequest, context: Ctx) -> access_pb2.User:
        if not request.role:
            raise InvalidArgumentError("role", "is required")
        row = await self.authority.put_user(
            caller(), request.name, request.role, request.password, request.disabled
        )
        return user_pb(row)

    @handle_errors
    async def GetUser(self, request: access_pb2.GetUserRequest, context: Ctx) -> access_pb2.User:
        return user_pb(await self.authority.user(request.name))

    @handle_errors
    async def ListUsers(
        self, request: access_pb2.ListUsersRequest, context: Ctx
    ) -> access_pb2.ListUsersResponse:
        users = await self.authority.store.users()
        page, token = _page(users, lambda u: u.name, request, {"list": "users"})
        return access_pb2.ListUsersResponse(
            users=[user_pb(u) for u in page], next_page_token=token, total_size=len(users)
        )

    @handle_errors
    async def DeleteUser(
        self, request: access_pb2.DeleteUserRequest, context: Ctx
    ) -> access_pb2.DeleteUserResponse:
        await self.authority.delete_user(caller(), request.name)
        return access_pb2.DeleteUserResponse()

    # -- roles -------------------------------------------------------------------------------

    @handle_errors
    async def PutRole(self, request: access_pb2.PutRoleRequest, context: Ctx) -> access_pb2.Role:
        role = request.role
        grants = parse_grants([(g.permission, g.scope.location, g.scope.node) for g in role.grants])
        await self.authority.put_role(caller(), role.name, grants)
        return access_pb2.Role(name=role.name, grants=grants_pb(grants))

    @handle_errors
    async def ListRoles(
        self, request: access_pb2.ListRolesRequest, context: Ctx
    ) -> access_pb2.ListRolesResponse:
        snapshot = self.authority.snapshot
        roles = [
            access_pb2.Role(name=name, grants=grants_pb(snapshot.grants(name)), builtin=True)
            for name in BUILTIN_ROLES
        ]
        roles += [
            access_pb2.Role(name=name, grants=grants_pb(grants))
            for name, grants in sorted(snapshot.roles.items())
        ]
        return access_pb2.ListRolesResponse(roles=roles)

    @handle_errors
    async def DeleteRole(
        self, request: access_pb2.DeleteRoleRequest, context: Ctx
    ) -> access_pb2.DeleteRoleResponse:
        await self.authority.delete_role(caller(), request.name)
        return access_pb2.DeleteRoleResponse()

    # -- tokens ------------------------------------------------------------------------------

    @handle_errors
    async def CreateToken(
        self, request: access_pb2.CreateTokenRequest, context: Ctx
    ) -> access_pb2.CreateTokenResponse:
        if not request.role:
            raise InvalidArgumentError("role", "is required")
        scope = scope_of(request.scope) if request.HasField("scope") else ANYWHERE
        ttl: float | None = None
        if request.HasField("ttl") and (request.ttl.seconds or request.ttl.nanos):
            ttl = request.ttl.seconds + request.ttl.nanos / 1e9
        row, token = await self.authority.create_token(
            caller(), request.name, request.role, scope, ttl
        )
        return access_pb2.CreateTokenResponse(token=token_pb(row), secret=token)

    @handle_errors
    async def ListTokens(
        self, request: access_pb2.ListTokensRequest, context: Ctx
    ) -> access_pb2.ListTokensResponse:
        tokens = await self.authority.tokens()
        page, token = _page(tokens, lambda t: t.id, request, {"list": "tokens"})
        return access_pb2.ListTokensResponse(
            tokens=[token_pb(t) for t in page], next_page_token=token, total_size=len(tokens)
        )

    @handle_errors
    async def RevokeToken(
        self, request: access_pb2.RevokeTokenRequest, context: Ctx
    ) -> access_pb2.RevokeTokenResponse:
        await self.authority.revoke_token(caller(), request.id)
        return access_pb2.RevokeTokenResponse()
