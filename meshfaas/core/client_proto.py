"""The client protocol: what the SDK and a node's client ROUTER say to each other.

Theory of operation
-------------------
A client holds a zmq DEALER connected to one node's client ROUTER (CURVE
encrypted). Each request is one frame, each response one frame::

    canonical CBOR [CLIENT_PROTOCOL_VERSION, ClientRequest]     client -> node
    canonical CBOR [CLIENT_PROTOCOL_VERSION, ClientResponse]    node -> client

(the ROUTER adds and strips the DEALER's identity frame as usual; the DEALER
sends no empty delimiter). Frames are capped at ``MAX_FRAME_BYTES`` both ways
and decoded with the codec's typed checks, so a malformed frame is a
:class:`~meshfaas.core.codec.DecodeError` the node counts and drops.

Every :class:`ClientRequest` carries the caller's ``request_id`` (unique per
request, chosen by the client; the response echoes it, so a DEALER can have
several requests in flight) and the ``api_key``; its ``body`` is one of the
operation messages below. The node authenticates the key against the
replicated state, checks the role with :func:`meshfaas.core.auth.is_allowed`
for :func:`operation_of` the body, and answers a :class:`ClientResponse`:
``ok=True`` with a ``value``, or ``ok=False`` with a :class:`ClientError` of
one :data:`ErrorKind`. A handler's own exception is the kind
``FunctionError`` carrying Lambda's ``errorType`` and ``errorMessage``.

Code larger than a frame is uploaded first, in chunks (:class:`UploadChunk`,
``CHUNK_BYTES`` each) to the blob store under its SHA-256, then named by the
:class:`Deploy`; :class:`HasBlob` skips the upload when the mesh already has it.

Events (logs, finished invocations) leave on each node's PUB socket as two
frames ``[topic, canonical CBOR [version, event]]``; see :func:`log_topic`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import attrs

from meshfaas.core.auth import Operation, Role
from meshfaas.core.codec import (
    DecodeError,
    EncodeError,
    from_cbor,
    message,
    message_decoder,
    parse_cbor,
    to_cbor,
)
from meshfaas.core.faas import (
    AliasRecord,
    CodeRef,
    ConfigPatch,
    FaasError,
    FunctionRecord,
    VersionRecord,
)

T = TypeVar("T")
CLIENT_PROTOCOL_VERSION = 1
MAX_FRAME_BYTES = 8 * 1024 * 1024
CHUNK_BYTES = 4 * 1024 * 1024
SYNC_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024  # Lambda's limit for a synchronous payload
LOG_TAIL_MAX_BYTES = 4 * 1024

ErrorKind = Literal[
    "NotFound", "Unauthorized", "Forbidden", "Throttled", "Timeout", "Unavailable",
    "BadRequest", "Conflict", "FunctionError", "Internal",
]
InvocationType = Literal["RequestResponse", "Event"]
InvocationStatus = Literal[
    "pending", "running", "succeeded", "failed", "timeout", "dead_letter",
]

# ---------------------------------------------------------------------------
# Envelope
# ---------------------------------------------------------------------------


@message(402)
@attrs.frozen(kw_only=True)
class ClientError:
    """Why a request failed. ``error_type``/``error_message`` are a handler's (FunctionError).

    ``retryable`` means the request had no effect at all (the node was catching
    up, shutting down, or found no peer to run it), so a client may send it to
    another node whatever it is; without it, an ``Unavailable`` answer to a
    request that is not :data:`IDEMPOTENT` is final (an invocation may have run).
    """

    kind: ErrorKind
    message: str
    error_type: str = ""
    error_message: str = ""
    stack_trace: tuple[str, ...] = ()
    invocation_id: str = ""
    retry_after_ms: int = 0
    retryable: bool = False


@message(400)
@attrs.frozen(kw_only=True)
class ClientRequest:
    """One request. ``timeout_ms`` is how long the client will wait (0: its default)."""

    request_id: str
    api_key: str
    body: Any
    timeout_ms: int = 0


@message(401)
@attrs.frozen(kw_only=True)
class ClientResponse:
    request_id: str
    ok: bool
    value: Any = None
    error: ClientError | None = None


# ---------------------------------------------------------------------------
# Operations (bodies of ClientRequest)
# ---------------------------------------------------------------------------


@message(410)
@attrs.frozen(kw_only=True)
class Ping:
    """Answers :class:`Pong`; the SDK uses it to check an endpoint before failing over,
    and, with ``awaiting`` (the id of a request it sent on this same connection and
    still waits for), to learn whether the node still has that request: a node
    restarted under a reconnecting connection has not."""

    awaiting: str = ""


@message(411)
@attrs.frozen(kw_only=True)
class HasBlob:
    """Answers a bool: is this code blob stored on a majority already."""

    sha256: str


@message(412)
@attrs.frozen(kw_only=True)
class UploadChunk:
    """Part of a code blob. Answers :class:`BlobProgress`; chunks go in offset order."""

    sha256: str
    total_bytes: int
    offset: int
    data: bytes


@message(413)
@attrs.frozen(kw_only=True)
class Deploy:
    """Create the function, or update its code and configuration. Answers
    :class:`~meshfaas.core.faas.Deployed`."""

    name: str
    code: CodeRef
    handler: str
    runtime: str = "python3.11"
    memory_mb: int = 128
    timeout_s: int = 3
    env: dict[str, str] = attrs.field(factory=dict)
    requirements: tuple[str, ...] = ()
    reserved_concurrency: int | None = None
    description: str = ""
    publish: bool = False


@message(414)
@attrs.frozen(kw_only=True)
class Invoke:
    """Run a function. ``RequestResponse`` answers :class:`InvokeResult`, ``Event`` :class:`AsyncAccepted`."""

    name: str
    payload: bytes
    qualifier: str | None = None
    invocation_type: InvocationType = "RequestResponse"
    idempotency_key: str = ""


@message(415)
@attrs.frozen(kw_only=True)
class GetResult:
    """Answers the :class:`InvocationRecord` of an invocation id."""

    invocation_id: str


@message(416)
@attrs.frozen(kw_only=True)
class ListFunctions:
    """Answers ``list[FunctionRecord]`` sorted by name."""


@message(417)
@attrs.frozen(kw_only=True)
class GetFunction:
    """Answers :class:`FunctionDetails`."""

    name: str


@message(418)
@attrs.frozen(kw_only=True)
class DeleteFunctionRequest:
    """Answers :class:`~meshfaas.core.faas.Deleted`."""

    name: str


@message(419)
@attrs.frozen(kw_only=True)
class UpdateConfig:
    """Answers the updated :class:`~meshfaas.core.faas.FunctionRecord`."""

    name: str
    patch: ConfigPatch


@message(420)
@attrs.frozen(kw_only=True)
class PublishVersionRequest:
    """Answers the :class:`~meshfaas.core.faas.VersionRecord`."""

    name: str
    description: str = ""


@message(421)
@attrs.frozen(kw_only=True)
class ListVersions:
    """Answers ``list[VersionRecord]``."""

    name: str


@message(422)
@attrs.frozen(kw_only=True)
class PutAlias:
    """Create (``create=True``) or update an alias. Answers the :class:`AliasRecord`."""

    name: str
    alias: str
    version: str
    extra_version: str | None = None
    extra_weight_bp: int = 0
    description: str = ""
    create: bool = True


@message(423)
@attrs.frozen(kw_only=True)
class DeleteAliasRequest:
    name: str
    alias: str


@message(424)
@attrs.frozen(kw_only=True)
class ListAliases:
    """Answers ``list[AliasRecord]``."""

    name: str


@message(425)
@attrs.frozen(kw_only=True)
class Members:
    """Answers ``list[MemberInfo]`` sorted by node."""


@message(426)
@attrs.frozen(kw_only=True)
class Status:
    """Answers :class:`StatusInfo`."""


@message(427)
@attrs.frozen(kw_only=True)
class RecentLogs:
    """Answers ``list[LogEvent]``: the newest ``limit`` the node kept for the function."""

    name: str
    limit: int = 100


@message(428)
@attrs.frozen(kw_only=True)
class CreateKey:
    """Answers :class:`KeyCreated` (the only time the secret is shown)."""

    name: str
    role: Role


@message(429)
@attrs.frozen(kw_only=True)
class ListKeys:
    """Answers ``list[KeyInfo]``."""


@message(430)
@attrs.frozen(kw_only=True)
class RevokeKey:
    """Answers the revoked :class:`KeyInfo`."""

    key_id: str


# ---------------------------------------------------------------------------
# Values in responses and events
# ---------------------------------------------------------------------------


@message(450)
@attrs.frozen(kw_only=True)
class Pong:
    node: str
    awaiting: str = ""  # the Ping's ``awaiting``
    known: bool = True  # whether this node has ``awaiting`` from this connection in hand


@message(451)
@attrs.frozen(kw_only=True)
class BlobProgress:
    received_bytes: int
    complete: bool


@message(453)
@attrs.frozen(kw_only=True)
class InvokeResult:
    """A synchronous invocation's outcome (success; a handler error is a FunctionError)."""

    invocation_id: str
    payload: bytes
    executed_version: str
    node: str
    log_tail: str = ""


@message(454)
@attrs.frozen(kw_only=True)
class AsyncAccepted:
    invocation_id: str


@message(455)
@attrs.frozen(kw_only=True)
class InvocationRecord:
    """What is known about one invocation, from the result store (or the async record)."""

    invocation_id: str
    function: str
    status: InvocationStatus
    version: str = ""
    node: str = ""
    start_wall_ns: int = 0
    duration_ns: int = 0
    billed_duration_ms: int = 0
    memory_mb: int = 0
    max_memory_used_mb: int = 0
    cold_start: bool = False
    attempts: int = 0
    log_tail: str = ""
    payload: bytes | None = None
    error_type: str = ""
    error_message: str = ""


@message(456)
@attrs.frozen(kw_only=True)
class FunctionDetails:
    function: FunctionRecord
    versions: list[VersionRecord]
    aliases: list[AliasRecord]


@message(457)
@attrs.frozen(kw_only=True)
class MemberInfo:
    node: str
    state: Literal["alive", "suspect", "dead", "left"]
    client_endpoint: str = ""
    events_endpoint: str = ""
    runtimes: tuple[str, ...] = ()
    capacity: int = 0
    load: int = 0
    warm: int = 0


@message(458)
@attrs.frozen(kw_only=True)
class StatusInfo:
    """The answering node's view: the leader, log indices and load per node."""

    node: str
    leader: str | None
    commit_index: int
    applied_index: int
    functions: int
    load: dict[str, int]


@message(459)
@attrs.frozen(kw_only=True)
class KeyCreated:
    key_id: str
    name: str
    role: Role
    api_key: str


@message(460)
@attrs.frozen(kw_only=True)
class KeyInfo:
    key_id: str
    name: str
    role: Role
    created_wall_ns: int
    revoked_wall_ns: int = 0


@message(461)
@attrs.frozen(kw_only=True)
class LogEvent:
    """Log lines an invocation wrote, published on ``log_topic(function)``."""

    function: str
    invocation_id: str
    node: str
    wall_ns: int
    text: str


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def encode(msg: ClientRequest | ClientResponse | LogEvent | InvocationRecord) -> bytes:
    """One frame; raises EncodeError over ``MAX_FRAME_BYTES``."""
    frame = to_cbor([CLIENT_PROTOCOL_VERSION, msg])
    if len(frame) > MAX_FRAME_BYTES:
        raise EncodeError(f"frame of {len(frame)} bytes over the {MAX_FRAME_BYTES}-byte limit")
    return frame


def _decode(frame: bytes, expect: type) -> Any:
    if len(frame) > MAX_FRAME_BYTES:
        raise DecodeError(f"frame of {len(frame)} bytes over the {MAX_FRAME_BYTES}-byte limit")
    decoded = from_cbor(bytes(frame))  # (``expect`` would compile a converter per call)
    if type(decoded) is not list or len(decoded) != 2 or type(decoded[0]) is not int:
        raise DecodeError("a client frame is an array of 2: version, message")
    version, msg = decoded
    if version != CLIENT_PROTOCOL_VERSION:
        raise DecodeError(f"client protocol version {version}, expected {CLIENT_PROTOCOL_VERSION}")
    if not isinstance(msg, expect):
        raise DecodeError(f"expected {expect.__qualname__}, got {type(msg).__qualname__}")
    return msg


def _decode_typed(frame: bytes, decode: Callable[[Any, int], T]) -> T:
    """A frame of one message class, on the path of every request (the node's) and
    every response (the SDK's): the envelope is checked here and the message
    decoded straight by its class's typed decoder (every field checked, the values
    and DecodeErrors of :func:`_decode`), without the generic walk of the array."""
    if len(frame) > MAX_FRAME_BYTES:
        raise DecodeError(f"frame of {len(frame)} bytes over the {MAX_FRAME_BYTES}-byte limit")
    raw = parse_cbor(bytes(frame))
    if type(raw) is not list or len(raw) != 2 or type(raw[0]) is not int:
        raise DecodeError("a client frame is an array of 2: version, message")
    if raw[0] != CLIENT_PROTOCOL_VERSION:
        raise DecodeError(f"client protocol version {raw[0]}, expected {CLIENT_PROTOCOL_VERSION}")
    return decode(raw[1], 2)  # the depth the generic walk gives it: array, then tag


def decode_request(frame: bytes) -> ClientRequest:
    return _decode_typed(frame, _REQUEST)


def decode_response(frame: bytes) -> ClientResponse:
    return _decode_typed(frame, _RESPONSE)


_REQUEST = message_decoder(ClientRequest)
_RESPONSE = message_decoder(ClientResponse)


class RequestEncoder:
    """Request frames for one API key: the bytes of ``encode(ClientRequest(...))``
    without building the request (the frame's head and the key are encoded once)."""

    def __init__(self, api_key: str) -> None:
        self._head = _REQUEST_HEAD
        self._key = to_cbor(api_key)

    def encode(self, request_id: str, body: Any, timeout_ms: int = 0) -> bytes:
        """One request frame; raises EncodeError over ``MAX_FRAME_BYTES``."""
        frame = b"".join((self._head, to_cbor(request_id), self._key, to_cbor(body),
                          to_cbor(timeout_ms)))
        if len(frame) > MAX_FRAME_BYTES:
            raise EncodeError(f"frame of {len(frame)} bytes over the {MAX_FRAME_BYTES}-byte limit")
        return frame


def _request_head() -> bytes:
    """``[version, ClientRequest(...)]`` up to its first field: a request of empty
    strings, null and 0 without its last four bytes (those four fields)."""
    probe = encode(ClientRequest(request_id="", api_key="", body=None, timeout_ms=0))
    fields = b"\x60\x60\xf6\x00"  # "", "", null, 0
    if not probe.endswith(fields) or len(attrs.fields(ClientRequest)) != 4:
        raise RuntimeError("ClientRequest changed shape: update RequestEncoder")
    return probe[: -len(fields)]


_REQUEST_HEAD = _request_head()


def decode_event(frame: bytes) -> Any:
    """A PUB event's body frame (a :class:`LogEvent` or :class:`InvocationRecord`)."""
    return _decode(frame, (LogEvent, InvocationRecord))  # type: ignore[arg-type]


LOG_TOPIC_PREFIX = b"log\x00"
INVOCATION_TOPIC_PREFIX = b"inv\x00"


def log_topic(function: str) -> bytes:
    """The PUB topic of a function's logs; NUL-terminated so ``f`` does not match ``fg``."""
    return LOG_TOPIC_PREFIX + function.encode() + b"\x00"


def invocation_topic(function: str) -> bytes:
    """The PUB topic of a function's finished-invocation records."""
    return INVOCATION_TOPIC_PREFIX + function.encode() + b"\x00"


# ---------------------------------------------------------------------------
# Operations and errors
# ---------------------------------------------------------------------------

_OPERATIONS: dict[type, Operation] = {
    Ping: "ping", HasBlob: "upload_blob", UploadChunk: "upload_blob", Deploy: "deploy",
    GetResult: "result", ListFunctions: "list_functions", GetFunction: "get_function",
    DeleteFunctionRequest: "delete_function", UpdateConfig: "update_config",
    PublishVersionRequest: "publish_version", ListVersions: "list_versions",
    DeleteAliasRequest: "delete_alias", ListAliases: "list_aliases", Members: "members",
    Status: "status", RecentLogs: "logs", CreateKey: "create_key", ListKeys: "list_keys",
    RevokeKey: "revoke_key",
}


def operation_of(body: Any) -> Operation | None:
    """The permission-table operation a request body needs; None if not an operation."""
    if isinstance(body, Invoke):
        return "invoke_async" if body.invocation_type == "Event" else "invoke"
    if isinstance(body, PutAlias):
        return "create_alias" if body.create else "update_alias"
    return _OPERATIONS.get(type(body))


READ_ONLY: frozenset[type] = frozenset(
    {Ping, HasBlob, GetResult, ListFunctions, GetFunction, ListVersions, ListAliases,
     Members, Status, RecentLogs, ListKeys}
)
"""Bodies that change nothing."""

IDEMPOTENT: frozenset[type] = READ_ONLY | frozenset(
    {Deploy, UpdateConfig, PublishVersionRequest, RevokeKey}
)
"""Bodies a client may resend to another node after a lost reply or an
``Unavailable`` answer: doing them twice is doing them once (a deploy of the
same code and configuration changes nothing; publishing an unchanged function
answers the same version). An ``Event`` invocation is resent too: its
idempotency key makes the second accept answer the first."""


def error_from_faas(error: FaasError) -> ClientError:
    """The client error for a state machine refusal."""
    kind: ErrorKind = {
        "NotFound": "NotFound", "Conflict": "Conflict", "BadRequest": "BadRequest",
        "LimitExceeded": "BadRequest", "Throttled": "Throttled",
    }[error.kind]  # type: ignore[assignment]
    return ClientError(kind=kind, message=error.message)


def ok(request_id: str, value: Any = None) -> ClientResponse:
    return ClientResponse(request_id=request_id, ok=True, value=value)


def fail(request_id: str, kind: ErrorKind, text: str, **details: Any) -> ClientResponse:
    return ClientResponse(
        request_id=request_id, ok=False, error=ClientError(kind=kind, message=text, **details))


def node_of_invocation(invocation_id: str) -> str | None:
    """The node named in an invocation id ``<node>~<hex>``, where its record is stored."""
    node, sep, rest = invocation_id.partition("~")
    return node if sep and node and rest else None


def make_invocation_id(node: str, random_hex: str) -> str:
    """An invocation id naming the node whose result store keeps its record."""
    if "~" in node or not random_hex:
        raise ValueError("node ids may not contain '~' and the random part must not be empty")
    return f"{node}~{random_hex}"
