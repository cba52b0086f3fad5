"""From a client request to what the node must do: the pure application layer.

Theory of operation
-------------------
A node's client ROUTER hands every decoded :class:`ClientRequest` to
:func:`plan` together with the local replica of the FaaS state, the proposer's
wall time and a source of random bytes. ``plan`` authenticates the API key
against the replicated key table, checks the role against the permission
table, validates the body, and answers one of:

* :class:`Reply` -- answer now (errors, and reads of the replicated state:
  list/get functions, versions, aliases, keys);
* :class:`Propose` -- propose ``command`` to Paxos; once it is chosen and
  applied, pass the state machine's result to :func:`finish` for the answer
  (so a client is acknowledged only after the entry is durable on a majority);
* :class:`Invoke` -- a synchronous invocation, already resolved to the version
  to run (a weighted alias is drawn here); the node routes it
  (:mod:`meshfaas.core.router`), runs or forwards it, and answers
  :class:`~meshfaas.core.client_proto.InvokeResult` or a ``FunctionError``;
* :class:`Local` -- something only the node knows (ping, blobs, results,
  members, status, recent logs); the node answers it itself.

Reads are served from the local replica, which may lag the leader by a few
entries (documented in docs/faas.md). Random values (invocation ids, key
secrets and salts) come from ``random_bytes`` so the proposer decides them
and the log carries them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from meshfaas.core import auth, faas
from meshfaas.core import client_proto as proto
from meshfaas.core.faas import FaasError, FaasStateMachine, FunctionConfig

RandomBytes = Callable[[int], bytes]


@attrs.frozen(kw_only=True)
class Reply:
    response: proto.ClientResponse


@attrs.frozen(kw_only=True)
class Propose:
    """Propose ``command``; ``new_key_token`` is the secret of a key being created,
    kept by the node for :func:`finish` and never put in the log."""

    request_id: str
    command: Any
    new_key_token: str = ""


@attrs.frozen(kw_only=True)
class Invoke:
    request_id: str
    invocation_id: str
    resolved: faas.Resolved
    payload: bytes
    caller_key_id: str


@attrs.frozen(kw_only=True)
class Local:
    request_id: str
    body: Any
    key: faas.ApiKeyRecord


Plan = Reply | Propose | Invoke | Local

_LOCAL = (proto.Ping, proto.HasBlob, proto.UploadChunk, proto.GetResult, proto.Members,
          proto.Status, proto.RecentLogs)


def plan(sm: FaasStateMachine, request: proto.ClientRequest, *, node: str, wall_ns: int,
         random_bytes: RandomBytes) -> Plan:
    """What to do with ``request`` (see the module docstring)."""
    rid = request.request_id
    key = sm.authenticate(request.api_key)
    if key is None:
        return Reply(response=proto.fail(rid, "Unauthorized", "unknown or revoked API key"))
    operation = proto.operation_of(request.body)
    if operation is None:
        return Reply(response=proto.fail(rid, "BadRequest", "not a client operation"))
    if not auth.is_allowed(key.role, operation):
        return Reply(response=proto.fail(rid, "Forbidden", f"role {key.role} may not {operation}"))
    body = request.body
    if isinstance(body, _LOCAL):
        return Local(request_id=rid, body=body, key=key)
    if isinstance(body, proto.Invoke):
        return _plan_invoke(sm, rid, body, key, node, wall_ns, random_bytes)
    return _plan_state(sm, rid, body, wall_ns, random_bytes)


def _plan_state(sm: FaasStateMachine, rid: str, body: Any, wall_ns: int,
                random_bytes: RandomBytes) -> Plan:
    read = _read(sm, body)
    if read is not None:
        return Reply(response=read if read.request_id else attrs.evolve(read, request_id=rid))
    if isinstance(body, proto.CreateKey):
        put, token = create_key_command(body, wall_ns, random_bytes)
        return Propose(request_id=rid, command=put, new_key_token=token)
    command = _command(body, wall_ns)
    if command is None:
        return Reply(response=proto.fail(rid, "BadRequest", f"unsupported {type(body).__name__}"))
    return Propose(request_id=rid, command=command)


def _read(sm: FaasStateMachine, body: Any) -> proto.ClientResponse | None:
    if isinstance(body, proto.ListFunctions):
        return proto.ok("", sm.list_functions())
    if isinstance(body, proto.GetFunction):
        record = sm.get_function(body.name)
        if record is None:
            return proto.fail("", "NotFound", f"function {body.name} not found")
        return proto.ok("", proto.FunctionDetails(
            function=record, versions=sm.list_versions(body.name),
            aliases=sm.list_aliases(body.name)))
    if isinstance(body, (proto.ListVersions, proto.ListAliases)):
        if sm.get_function(body.name) is None:
            return proto.fail("", "NotFound", f"function {body.name} not found")
        listed = (sm.list_versions if isinstance(body, proto.ListVersions) else sm.list_aliases)
        return proto.ok("", listed(body.name))
    if isinstance(body, proto.ListKeys):
        return proto.ok("", [key_info(k) for k in sm.list_keys()])
    return None


def _command(body: Any, wall_ns: int) -> Any:
    make = _COMMANDS.get(type(body))
    return None if make is None else make(body, wall_ns)


# Body type -> the command it proposes, from the body and the proposer's wall time
# (one table for the module: plan runs for every request).
_COMMANDS: dict[type, Callable[[Any, int], Any]] = {
    proto.Deploy: lambda b, wall_ns: faas.DeployFunction(
        name=b.name, code=b.code, wall_ns=wall_ns, publish=b.publish,
        description=b.description, config=config_of(b)),
    proto.DeleteFunctionRequest: lambda b, wall_ns: faas.DeleteFunction(
        name=b.name, wall_ns=wall_ns),
    proto.UpdateConfig: lambda b, wall_ns: faas.UpdateFunctionConfig(
        name=b.name, patch=b.patch, wall_ns=wall_ns),
    proto.PublishVersionRequest: lambda b, wall_ns: faas.PublishVersion(
        name=b.name, description=b.description, wall_ns=wall_ns),
    proto.PutAlias: lambda b, wall_ns: (faas.CreateAlias if b.create else faas.UpdateAlias)(
        name=b.name, alias=b.alias, version=b.version, extra_version=b.extra_version,
        extra_weight_bp=b.extra_weight_bp, description=b.description, wall_ns=wall_ns),
    proto.DeleteAliasRequest: lambda b, wall_ns: faas.DeleteAlias(
        name=b.name, alias=b.alias, wall_ns=wall_ns),
    proto.RevokeKey: lambda b, wall_ns: faas.RevokeApiKey(key_id=b.key_id, wall_ns=wall_ns),
}


def config_of(deploy: proto.Deploy) -> FunctionConfig:
    return FunctionConfig(
        handler=deploy.handler, runtime=deploy.runtime, memory_mb=deploy.memory_mb,
        timeout_s=deploy.timeout_s, env=dict(deploy.env), requirements=deploy.requirements,
        reserved_concurrency=deploy.reserved_concurrency, description=deploy.description)


def create_key_command(body: proto.CreateKey, wall_ns: int, random_bytes: RandomBytes
                       ) -> tuple[faas.PutApiKey, str]:
    """The command storing a new key, and the key string to show once.

    The secret must reach the caller but never the log: the node keeps the
    token from this call beside the pending proposal (see :func:`finish`).
    """
    key = auth.make_api_key(random_bytes(auth.random_bytes_needed()))
    command = faas.PutApiKey(key_id=key.key_id, name=body.name, role=body.role, salt=key.salt,
                             secret_hash=key.secret_hash, wall_ns=wall_ns)
    return command, key.token


def _plan_invoke(sm: FaasStateMachine, rid: str, body: proto.Invoke, key: faas.ApiKeyRecord,
                 node: str, wall_ns: int, random_bytes: RandomBytes) -> Plan:
    invocation_id = proto.make_invocation_id(node, random_bytes(12).hex())
    if body.invocation_type == "Event":
        if len(body.payload) > faas.ASYNC_PAYLOAD_MAX_BYTES:
            return Reply(response=proto.fail(rid, "BadRequest", "async payload over 256 KB"))
        if sm.get_function(body.name) is None:
            return Reply(response=proto.fail(rid, "NotFound", f"function {body.name} not found"))
        return Propose(request_id=rid, command=faas.AcceptAsyncInvocation(
            request_id=invocation_id, idempotency_key=body.idempotency_key or invocation_id,
            function=body.name, qualifier=body.qualifier or "", payload=body.payload,
            wall_ns=wall_ns, next_attempt_at_wall_ns=wall_ns))
    if len(body.payload) > proto.SYNC_PAYLOAD_MAX_BYTES:
        return Reply(response=proto.fail(rid, "BadRequest", "payload over 6 MB"))
    draw_bp = int.from_bytes(random_bytes(4), "big") % faas.WEIGHT_BP_MAX
    resolved = sm.resolve(body.name, body.qualifier, draw_bp)
    if isinstance(resolved, FaasError):
        return Reply(response=proto.ClientResponse(
            request_id=rid, ok=False, error=proto.error_from_faas(resolved)))
    return Invoke(request_id=rid, invocation_id=invocation_id, resolved=resolved,
                  payload=body.payload, caller_key_id=key.key_id)


def finish(request_id: str, result: Any, *, new_key_token: str = "") -> proto.ClientResponse:
    """The answer to a proposed request once the state machine applied it."""
    if isinstance(result, FaasError):
        return proto.ClientResponse(request_id=request_id, ok=False,
                                    error=proto.error_from_faas(result))
    if isinstance(result, faas.AsyncRecord):
        return proto.ok(request_id, proto.AsyncAccepted(invocation_id=result.request_id))
    if isinstance(result, faas.ApiKeyRecord):
        if new_key_token:
            return proto.ok(request_id, proto.KeyCreated(
                key_id=result.key_id, name=result.name, role=result.role,
                api_key=new_key_token))
        return proto.ok(request_id, key_info(result))
    return proto.ok(request_id, result)


def key_info(record: faas.ApiKeyRecord) -> proto.KeyInfo:
    """A key as shown to people: never the salt or hash."""
    return proto.KeyInfo(key_id=record.key_id, name=record.name, role=record.role,
                         created_wall_ns=record.created_wall_ns,
                         revoked_wall_ns=record.revoked_wall_ns)
