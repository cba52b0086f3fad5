"""The meshfaas client SDK: ``Client`` (synchronous) and ``AsyncClient`` (trio).

How it works
------------
Both clients speak :mod:`meshfaas.core.client_proto` over a zmq DEALER
connected to one node's client ROUTER at a time, CURVE-encrypted when a
server public key is given. The operations are written once, as generators
(:class:`_Operations`) that yield :class:`_Call` values (a request body, a
timeout, whether it may be resent) and receive the decoded value; the two
clients only differ in how they drive a round trip (zmq poller vs trio's
edge-triggered FD wait).

Failover: each client keeps one DEALER, created with ``IMMEDIATE`` so a send
succeeds only on a completed connection (TCP and the CURVE handshake); if none
completes within ``connect_timeout_s`` the endpoint counts as down and the next
one is tried. While a request waits, :class:`_Watch` pings the node on the same
connection every ``liveness_interval_s``; a dropped connection, or
``liveness_timeout_s`` without any frame from the node, means the node is gone
(a kill -9 is noticed within a quarter interval, a hung node in ``liveness_timeout_s``,
where the call's own timeout may be 900 s and more). A request that is safe to
resend (reads, idempotent writes, ``Event`` invocations with their idempotency
key) then moves on to the next endpoint; anything else raises
:class:`Unavailable` at once, saying it may or may not have taken effect. A
node's own ``Unavailable`` answer (no leader, no quorum) moves on too when the
request is safe to resend or the answer is ``retryable``. Stale replies to
earlier requests (and pongs) are recognised by request id and dropped.

Neither client is safe to share between threads; an ``AsyncClient`` serialises
its requests with a lock (open several clients for parallel calls).
"""

from __future__ import annotations

import contextlib
import heapq
import json
import math
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import trio
import zmq

from meshfaas.core import client_proto as proto
from meshfaas.core.auth import Role
from meshfaas.core.codec import DecodeError
from meshfaas.core.faas import CodeRef, ConfigPatch, Deployed, FunctionRecord, VersionRecord
from meshfaas.core.faas_package import Entry, Package, PackageError, build_zip, normalize_zip

__all__ = [
    "AsyncClient", "BadRequest", "Client", "Conflict", "FunctionError", "InternalError",
    "MeshfaasError", "NotFound", "Throttled", "Timeout", "Unauthorized", "Forbidden",
    "Unavailable", "load_credentials", "package_code",
]

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 30.0
DEFAULT_CONNECT_TIMEOUT_S = 2.0
INVOKE_MARGIN_S = 30.0  # over the longest function timeout, for routing and cold starts
LIVENESS_INTERVAL_S = 1.0  # a request waiting this long pings its node, and again every interval
LIVENESS_TIMEOUT_S = 3.0  # this long without a frame from the node: it is gone
SKIP_DIRS = frozenset({"__pycache__", ".git", ".hg", ".svn", ".mypy_cache", ".pytest_cache"})

# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class MeshfaasError(Exception):
    """A request failed; ``kind`` is the protocol's error kind."""

    kind = "Internal"

    def __init__(self, message: str, *, error: proto.ClientError | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.error = error


class NotFound(MeshfaasError):
    kind = "NotFound"


class Unauthorized(MeshfaasError):
    kind = "Unauthorized"


class Forbidden(MeshfaasError):
    kind = "Forbidden"


class Throttled(MeshfaasError):
    kind = "Throttled"


class Timeout(MeshfaasError):
    kind = "Timeout"


class Unavailable(MeshfaasError):
    kind = "Unavailable"


class BadRequest(MeshfaasError):
    kind = "BadRequest"


class Conflict(MeshfaasError):
    kind = "Conflict"


class InternalError(MeshfaasError):
    kind = "Internal"


class FunctionError(MeshfaasError):
    """The handler raised. ``errorType``/``errorMessage`` are Lambda's names for them."""

    kind = "FunctionError"

    def __init__(self, message: str, *, error: proto.ClientError | None = None) -> None:
        super().__init__(message, error=error)
        self.errorType = error.error_type if error else ""
        self.errorMessage = error.error_message if error else message
        self.stackTrace = list(error.stack_trace) if error else []
        self.invocation_id = error.invocation_id if error else ""


_ERRORS: dict[str, type[MeshfaasError]] = {
    cls.kind: cls for cls in (NotFound, Unauthorized, Forbidden, Throttled, Timeout,
                              Unavailable, BadRequest, Conflict, FunctionError, InternalError)
}


def error_for(error: proto.ClientError) -> MeshfaasError:
    """The typed exception for a protocol error."""
    cls = _ERRORS.get(error.kind, InternalError)
    if cls is FunctionError:
        return FunctionError(f"{error.error_type}: {error.error_message}", error=error)
    return cls(error.message, error=error)


# ---------------------------------------------------------------------------
# Code packaging (the directory walk is IO, so it lives here, not in the core)
# ---------------------------------------------------------------------------


def read_directory(root: Path) -> list[Entry]:
    """Every regular file under ``root`` as an entry; symlinks are refused."""
    entries: list[Entry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise PackageError(f"{here / name}: symbolic links are refused")
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for name in sorted(filenames):
            entries.append(_read_file(root, here / name))
    return entries


def _read_file(root: Path, path: Path) -> Entry:
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise PackageError(f"{path}: symbolic links are refused")
    if not stat.S_ISREG(st.st_mode):
        raise PackageError(f"{path}: not a regular file")
    relative = path.relative_to(root).as_posix()
    return Entry(path=relative, data=path.read_bytes(), executable=bool(st.st_mode & 0o111))


def package_code(code: str | os.PathLike[str] | bytes) -> Package:
    """A canonical zip from a directory, a ``.zip`` file path, or zip bytes."""
    if isinstance(code, (bytes, bytearray, memoryview)):
        return normalize_zip(bytes(code))
    path = Path(code)
    if path.is_dir():
        return build_zip(read_directory(path))
    if path.is_file():
        return normalize_zip(path.read_bytes())
    raise PackageError(f"{path}: neither a directory nor a zip file")


# ---------------------------------------------------------------------------
# Credentials
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Credentials:
    """What a client needs: endpoints, an API key, and the CURVE keys if any."""

    endpoints: tuple[str, ...]
    api_key: str
    server_public_key: bytes | None = None
    client_public_key: bytes | None = None
    client_secret_key: bytes | None = None
    events_endpoints: tuple[str, ...] = ()


def _key(raw: Any) -> bytes | None:
    return raw.encode() if isinstance(raw, str) and raw else None


def load_credentials(data_dir: str | os.PathLike[str]) -> Credentials:
    """Read ``DATA_DIR/credentials.json`` (written by ``meshfaas up``).

    Keys: ``endpoints`` (list), ``api_key``, and optionally
    ``server_public_key``, ``client_public_key``, ``client_secret_key`` (z85)
    and ``events_endpoints`` (the nodes' event PUB sockets, for ``logs -f``).
    Without client keys, the cluster key file ``DATA_DIR/keys/cluster.json``
    (when present) supplies the server key and a keypair the nodes admit.
    """
    path = Path(data_dir) / "credentials.json"
    raw = json.loads(path.read_text())
    endpoints = raw.get("endpoints") or []
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    creds = Credentials(
        endpoints=tuple(endpoints), api_key=str(raw.get("api_key", "")),
        server_public_key=_key(raw.get("server_public_key")),
        client_public_key=_key(raw.get("client_public_key")),
        client_secret_key=_key(raw.get("client_secret_key")),
        events_endpoints=tuple(raw.get("events_endpoints") or ()),
    )
    cluster = Path(data_dir) / "keys" / "cluster.json"
    if creds.client_secret_key is None and cluster.exists():
        keys = json.loads(cluster.read_text())
        creds = attrs.evolve(
            creds, server_public_key=_key(keys.get("public_key")),
            client_public_key=_key(keys.get("public_key")),
            client_secret_key=_key(keys.get("secret_key")))
    return creds


# ---------------------------------------------------------------------------
# Operations, written once as generators
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class _Call:
    body: Any
    timeout_s: float
    retry_safe: bool


Op = Generator[_Call, Any, T]


class _Operations:
    """The API as generators: each yields calls and returns the method's result."""

    timeout_s: float

    def _call(self, body: Any, *, timeout_s: float | None = None) -> _Call:
        return _Call(body=body, timeout_s=timeout_s or self.timeout_s,
                     retry_safe=type(body) in proto.IDEMPOTENT)

    def _deploy(self, name: str, code: Any, progress: Callable[[int, int], None] | None,
                **config: Any) -> Op[Deployed]:
        package = package_code(code)
        try:
            yield from self._store_code(package, progress)
        except (Unavailable, Timeout, BadRequest):
            # The upload moved to another node midway (its chunks restart at 0
            # there), or the node failed: start the upload over, once.
            yield from self._store_code(package, progress)
        ref = CodeRef(sha256=package.sha256, size_bytes=package.size_bytes)
        result: Deployed = yield self._call(proto.Deploy(name=name, code=ref, **config))
        return result

    def _store_code(self, package: Package,
                    progress: Callable[[int, int], None] | None) -> Op[None]:
        have = yield self._call(proto.HasBlob(sha256=package.sha256))
        if not have:
            yield from self._upload(package, progress)
        elif progress is not None:
            progress(package.size_bytes, package.size_bytes)

    def _upload(self, package: Package, progress: Callable[[int, int], None] | None) -> Op[None]:
        data, total = package.zip_bytes, package.size_bytes
        for offset in range(0, total, proto.CHUNK_BYTES):
            chunk = data[offset : offset + proto.CHUNK_BYTES]
            yield self._call(proto.UploadChunk(
                sha256=package.sha256, total_bytes=total, offset=offset, data=chunk))
            if progress is not None:
                progress(offset + len(chunk), total)

    def _invoke(self, name: str, payload: Any, qualifier: str | None,
                timeout_s: float | None) -> Op[proto.InvokeResult]:
        body = proto.Invoke(name=name, payload=_encode_payload(payload), qualifier=qualifier)
        result: proto.InvokeResult = yield self._call(
            body, timeout_s=timeout_s or proto_invoke_timeout_s())
        return result

    def _invoke_async(self, name: str, payload: Any, qualifier: str | None,
                      idempotency_key: str | None) -> Op[str]:
        key = idempotency_key or os.urandom(16).hex()
        body = proto.Invoke(name=name, payload=_encode_payload(payload), qualifier=qualifier,
                            invocation_type="Event", idempotency_key=key)
        call = attrs.evolve(self._call(body), retry_safe=True)  # the key makes resends safe
        accepted: proto.AsyncAccepted = yield call
        return accepted.invocation_id

    def _simple(self, body: Any) -> Op[Any]:
        value = yield self._call(body)
        return value


def proto_invoke_timeout_s() -> float:
    return 900 + INVOKE_MARGIN_S


def _encode_payload(payload: Any) -> bytes:
    if isinstance(payload, (bytes, bytearray)):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":")).encode()


def decode_payload(data: bytes) -> Any:
    """A handler's result: JSON-decoded when it is JSON, else the bytes."""
    if not data:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data


def _weights(version: str | int, weights: dict[str | int, float] | None
             ) -> tuple[str | None, int]:
    """Lambda-style ``{other_version: share}`` to ``(extra_version, basis points)``."""
    if not weights:
        return None, 0
    others = {str(v): w for v, w in weights.items() if str(v) != str(version)}
    if len(others) != 1:
        raise ValueError("weights name exactly one version besides the alias's own")
    (extra, share), = others.items()
    if not 0.0 <= share <= 1.0:
        raise ValueError("a weight is a share between 0.0 and 1.0")
    return extra, round(share * 10_000)


# ---------------------------------------------------------------------------
# Shared connection logic
# ---------------------------------------------------------------------------

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_POLLOUT = int(zmq.POLLOUT)
_NOBLOCK = int(zmq.NOBLOCK)


class _Endpoints:
    """The endpoint list, the current one, the socket settings and request framing."""

    def __init__(self, endpoints: str | Sequence[str], api_key: str | None,
                 server_public_key: bytes | str | None, client_public_key: bytes | str | None,
                 client_secret_key: bytes | str | None) -> None:
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("at least one endpoint is needed")
        key = api_key or os.environ.get("MESHFAAS_API_KEY", "")
        if not key:
            raise ValueError("an API key is needed (api_key= or MESHFAAS_API_KEY)")
        self.api_key = key
        self._encoder = proto.RequestEncoder(key)
        self.server_key = _as_bytes(server_public_key)
        public, secret = _as_bytes(client_public_key), _as_bytes(client_secret_key)
        if self.server_key is not None and (public is None or secret is None):
            public, secret = zmq.curve_keypair()
        self.client_keys = (public, secret)
        self.current = 0
        self._id_prefix = os.urandom(8).hex()  # request ids: this prefix and a counter
        self._next_id = 0
        self.ping_id = f"{self._id_prefix}-ping"

    def ping_frame(self, awaiting: str) -> bytes:
        """The watch's ping while waiting for request ``awaiting``."""
        return self._encoder.encode(self.ping_id, proto.Ping(awaiting=awaiting))

    def configure(self, sock: zmq.Socket[Any]) -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, proto.MAX_FRAME_BYTES + 1024)
        if self.server_key is not None:
            sock.curve_serverkey = self.server_key
            sock.curve_publickey = self.client_keys[0]
            sock.curve_secretkey = self.client_keys[1]

    def dealer(self, ctx: zmq.Context[Any]) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = ctx.socket(zmq.DEALER)
        self.configure(sock)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.connect(self.endpoints[self.current])
        return sock

    def advance(self) -> None:
        self.current = (self.current + 1) % len(self.endpoints)

    def request(self, call: _Call) -> tuple[str, bytes]:
        self._next_id += 1
        request_id = f"{self._id_prefix}{self._next_id:x}"
        return request_id, self._encoder.encode(request_id, call.body, int(call.timeout_s * 1000))


def _as_bytes(value: bytes | str | None) -> bytes | None:
    return value.encode() if isinstance(value, str) else value


_decode_response = proto.decode_response  # (one name for the tests of both paths)


def _forgot(value: Any, request_id: str) -> bool:
    """Whether a watch ping's answer says the node does not have ``request_id``."""
    return type(value) is proto.Pong and value.awaiting == request_id and not value.known


def _value(response: proto.ClientResponse) -> Any:
    if response.ok:
        return response.value
    raise error_for(response.error or proto.ClientError(kind="Internal", message="no error"))


def _try_elsewhere(call: _Call, response: proto.ClientResponse) -> bool:
    """Whether an ``Unavailable`` answer sends this request on to the next endpoint."""
    error = response.error
    if error is None or error.kind != "Unavailable":
        return False
    return call.retry_safe or error.retryable


class _Attempt:
    """Why one endpoint did not answer: down (never connected), lost mid-request, too slow."""

    DOWN = "down"
    LOST = "lost"  # the connection dropped, or the node went silent (see _Watch)
    TIMEOUT = "timeout"


class _Watch:
    """Is the node still there, while one request waits for its reply?

    The waiter ticks every ``interval_s / CHECKS_PER_INTERVAL`` of waiting. At a
    tick the node is taken for gone when the socket cannot send (the DEALER has
    ``IMMEDIATE``, so that means the connection dropped -- a kill -9 does that
    at once -- and a reply could no longer find this client even after a
    reconnection) or when nothing at all has come from it for ``silence_s``.
    Otherwise, every ``interval_s`` the tick says to send a :class:`proto.Ping`
    on the same connection (one pre-encoded frame; its answer matches no request
    and is dropped). Any frame from the node -- a pong, a stale reply, the reply
    itself -- counts as a sign of life. ``clock`` is the waiter's monotonic
    clock in seconds.
    """

    CHECKS_PER_INTERVAL = 4
    GONE, PING, WAIT = "gone", "ping", "wait"

    def __init__(self, clock: Callable[[], float], interval_s: float, silence_s: float) -> None:
        self.clock = clock
        self.interval_s = interval_s
        self.check_s = interval_s / self.CHECKS_PER_INTERVAL
        self.silence_s = silence_s
        self.last_heard = clock()
        self.next_tick = self.last_heard + self.check_s
        self.next_ping = self.last_heard + interval_s
        self.why = ""
        self.forgotten = False

    def heard(self) -> None:
        self.last_heard = self.clock()

    def forgot(self) -> None:
        """The node answered a ping saying it does not have the awaited request: it
        restarted (and the connection reconnected) since the request was sent."""
        self.forgotten = True
        self.next_tick = float("-inf")  # say GONE at the next look

    def tick(self, now: float, writable: bool) -> str:
        """GONE (``why`` says how), PING (send one now) or WAIT."""
        if self.forgotten:
            self.why = "the node no longer has the request: it restarted"
            return self.GONE
        if not writable:
            self.why = "the connection dropped"
            return self.GONE
        if now - self.last_heard >= self.silence_s:
            self.why = f"no answer, not even to pings, for {now - self.last_heard:.1f} s"
            return self.GONE
        self.next_tick = now + self.check_s
        if now < self.next_ping:
            return self.WAIT
        self.next_ping = now + self.interval_s
        return self.PING


def _ping(sock: zmq.Socket[Any], watch: _Watch, now: float, frame: Callable[[], bytes]) -> bool:
    """At a tick of ``watch``: False when the node is gone, else ping it if due and True."""
    verdict = watch.tick(now, bool(_events(sock) & _POLLOUT))
    if verdict == _Watch.PING:
        with contextlib.suppress(zmq.Again):  # dropped just now: the next tick says so
            sock.send(frame(), _NOBLOCK)
    return verdict != _Watch.GONE


def _give_up(call: _Call, outcome: str, endpoint: str, why: str = "") -> MeshfaasError | None:
    """The error to raise after ``outcome`` on ``endpoint``, or None to try the next one."""
    if outcome == _Attempt.DOWN:
        return None  # nothing was sent: always safe to try another endpoint
    if call.retry_safe:
        return None
    if outcome == _Attempt.LOST:
        return Unavailable(f"contact with {endpoint} lost while waiting for the reply "
                           f"({why or 'the connection dropped'}); {_maybe_ran(call)}")
    return Timeout(f"no reply from {endpoint} within {call.timeout_s:g} s")


def _maybe_ran(call: _Call) -> str:
    if isinstance(call.body, proto.Invoke):
        return ("the invocation may or may not have run; it was not resent, since running "
                "a synchronous invocation twice is not safe")
    return "the request may or may not have taken effect"


# ---------------------------------------------------------------------------
# The synchronous client
# ---------------------------------------------------------------------------


class Client(_Operations):
    """A synchronous client. ``Client(endpoints, api_key=...)``; a context manager.

    ``liveness_interval_s`` / ``liveness_timeout_s``: while a request waits
    longer than the interval, the node is pinged on the same connection every
    interval; silence for the timeout (or a dropped connection) ends the wait
    (see :class:`_Watch`).
    """

    def __init__(self, endpoints: str | Sequence[str], api_key: str | None = None, *,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
                 server_public_key: bytes | str | None = None,
                 client_public_key: bytes | str | None = None,
                 client_secret_key: bytes | str | None = None,
                 events_endpoints: Sequence[str] = (),
                 context: zmq.Context[Any] | None = None,
                 liveness_interval_s: float = LIVENESS_INTERVAL_S,
                 liveness_timeout_s: float = LIVENESS_TIMEOUT_S) -> None:
        if not 0 < liveness_interval_s < liveness_timeout_s:
            raise ValueError("liveness_timeout_s must be longer than liveness_interval_s > 0")
        self._ep = _Endpoints(endpoints, api_key, server_public_key, client_public_key,
                              client_secret_key)
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.liveness_interval_s = liveness_interval_s
        self.liveness_timeout_s = liveness_timeout_s
        self.events_endpoints = list(events_endpoints)
        self._ctx = context or zmq.Context.instance()
        self._sock: zmq.Socket[Any] | None = None
        self._poll_items: list[tuple[zmq.Socket[Any], int]] = []
        self._fd = -1  # the socket's FD, for trio's edge-triggered wait

    @classmethod
    def from_credentials(cls, data_dir: str | os.PathLike[str], **kwargs: Any) -> Client:
        c = load_credentials(data_dir)
        return cls(list(c.endpoints), c.api_key, server_public_key=c.server_public_key,
                   client_public_key=c.client_public_key, client_secret_key=c.client_secret_key,
                   events_endpoints=c.events_endpoints, **kwargs)

    @property
    def endpoint(self) -> str:
        return self._ep.endpoints[self._ep.current]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
        self._sock = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- driving ------------------------------------------------------------

    def _run(self, op: Op[T]) -> T:
        try:
            call = next(op)
            while True:
                try:
                    value = self._roundtrip(call)
                except MeshfaasError as exc:  # the operation may handle it
                    call = op.throw(exc)
                    continue
                call = op.send(value)
        except StopIteration as stop:
            return cast(T, stop.value)

    def _roundtrip(self, call: _Call) -> Any:
        last = ""
        for _ in range(len(self._ep.endpoints)):
            endpoint = self.endpoint
            outcome, response, why = self._attempt(call)
            if response is not None and not _try_elsewhere(call, response):
                return _value(response)
            last = self._next_endpoint(call, endpoint, outcome, response, why)
        raise Unavailable(f"no endpoint could serve the request (last: {last})")

    def _next_endpoint(self, call: _Call, endpoint: str, outcome: str,
                       response: proto.ClientResponse | None, why: str) -> str:
        """Move on after a failed attempt (raising if the call must not be resent)."""
        self._fail_over()
        if response is not None:
            return f"{endpoint}: {response.error.message if response.error else ''}"
        error = _give_up(call, outcome, endpoint, why)
        if error is not None:
            raise error
        return f"{endpoint}: {why or outcome}"

    def _fail_over(self) -> None:
        self.close()
        self._ep.advance()

    def _socket(self) -> zmq.Socket[Any]:
        if self._sock is None:
            self._sock = self._ep.dealer(self._ctx)
            self._poll_items = [(self._sock, _POLLIN)]
            self._fd = cast(int, self._sock.get(zmq.FD))
        return self._sock

    def _attempt(self, call: _Call) -> tuple[str, proto.ClientResponse | None, str]:
        sock = self._socket()
        request_id, frame = self._ep.request(call)
        try:
            sock.send(frame, _NOBLOCK)  # connected already: the usual case
        except zmq.Again:
            if not sock.poll(int(self.connect_timeout_s * 1000), zmq.POLLOUT):
                return _Attempt.DOWN, None, ""
            try:
                sock.send(frame, _NOBLOCK)
            except zmq.Again:
                return _Attempt.DOWN, None, ""
        return self._await_reply(sock, request_id, call.timeout_s)

    def _await_reply(self, sock: zmq.Socket[Any], request_id: str, timeout_s: float
                     ) -> tuple[str, proto.ClientResponse | None, str]:
        watch = _Watch(time.monotonic, self.liveness_interval_s, self.liveness_timeout_s)
        now = watch.last_heard
        deadline = now + timeout_s
        while True:
            wait_s = min(deadline, watch.next_tick) - now
            if zmq.zmq_poll(self._poll_items, max(int(wait_s * 1000), 0)):
                response = self._drain(sock, request_id, watch)
                if response is not None:
                    return "ok", response, ""
            now = time.monotonic()
            if now >= deadline:
                return _Attempt.TIMEOUT, None, ""
            if now >= watch.next_tick and not _ping(
                    sock, watch, now, lambda: self._ep.ping_frame(request_id)):
                return _Attempt.LOST, None, watch.why

    def _drain(self, sock: zmq.Socket[Any], request_id: str,
               watch: _Watch | None) -> proto.ClientResponse | None:
        """Read every frame waiting; the matching reply, if one came (else the last
        read said EAGAIN). ``watch`` is None before the first wait: no ping was sent."""
        while True:
            try:
                frame = sock.recv(_NOBLOCK)
            except zmq.Again:
                return None
            if watch is not None:
                watch.heard()
            try:
                response = _decode_response(frame)
            except DecodeError:
                continue
            if response.request_id == request_id:
                return response
            if watch is not None and response.request_id == self._ep.ping_id \
                    and _forgot(response.value, request_id):
                watch.forgot()

    # -- the API ------------------------------------------------------------

    def ping(self) -> str:
        pong: proto.Pong = self._run(self._simple(proto.Ping()))
        return pong.node

    def deploy(self, name: str, code: str | os.PathLike[str] | bytes, *, handler: str,
               runtime: str = "python3.11", memory_mb: int = 128, timeout_s: int = 3,
               env: dict[str, str] | None = None, requirements: Sequence[str] = (),
               reserved_concurrency: int | None = None, description: str = "",
               publish: bool = False,
               progress: Callable[[int, int], None] | None = None) -> Deployed:
        """Create or update ``name`` from a directory, a zip path or zip bytes."""
        return self._run(self._deploy(
            name, code, progress, handler=handler, runtime=runtime, memory_mb=memory_mb,
            timeout_s=timeout_s, env=dict(env or {}), requirements=tuple(requirements),
            reserved_concurrency=reserved_concurrency, description=description,
            publish=publish))

    def invoke(self, name: str, payload: Any = None, qualifier: str | None = None, *,
               timeout_s: float | None = None) -> Any:
        """Run ``name`` and answer the handler's result (JSON-decoded when it is JSON)."""
        return decode_payload(self._run(self._invoke(name, payload, qualifier, timeout_s)).payload)

    def invoke_detailed(self, name: str, payload: Any = None, qualifier: str | None = None, *,
                        timeout_s: float | None = None) -> proto.InvokeResult:
        """Like :meth:`invoke`, but the whole result: invocation id, executed
        version, node, raw payload (``decode_payload`` it) and log tail."""
        return self._run(self._invoke(name, payload, qualifier, timeout_s))

    def invoke_async(self, name: str, payload: Any = None, qualifier: str | None = None, *,
                     idempotency_key: str | None = None) -> str:
        """Queue an invocation (durable on a majority once this returns); its id."""
        return self._run(self._invoke_async(name, payload, qualifier, idempotency_key))

    def result(self, invocation_id: str) -> proto.InvocationRecord:
        return cast(proto.InvocationRecord, self._run(self._simple(proto.GetResult(invocation_id=invocation_id))))

    def list_functions(self) -> list[FunctionRecord]:
        return cast(list[FunctionRecord], self._run(self._simple(proto.ListFunctions())))

    def get_function(self, name: str) -> proto.FunctionDetails:
        return cast(proto.FunctionDetails, self._run(self._simple(proto.GetFunction(name=name))))

    def delete(self, name: str) -> None:
        self._run(self._simple(proto.DeleteFunctionRequest(name=name)))

    def update_config(self, name: str, **changes: Any) -> FunctionRecord:
        patch = ConfigPatch(**changes)
        return cast(FunctionRecord, self._run(self._simple(proto.UpdateConfig(name=name, patch=patch))))

    def publish_version(self, name: str, description: str = "") -> VersionRecord:
        body = proto.PublishVersionRequest(name=name, description=description)
        return cast(VersionRecord, self._run(self._simple(body)))

    def list_versions(self, name: str) -> list[VersionRecord]:
        return cast(list[VersionRecord], self._run(self._simple(proto.ListVersions(name=name))))

    def create_alias(self, name: str, alias: str, version: str | int,
                     weights: dict[str | int, float] | None = None, *,
                     update: bool = False) -> Any:
        """Point ``alias`` at ``version``; ``weights={other: 0.1}`` sends 10% to ``other``."""
        extra, weight_bp = _weights(version, weights)
        body = proto.PutAlias(name=name, alias=alias, version=str(version),
                              extra_version=extra, extra_weight_bp=weight_bp, create=not update)
        return self._run(self._simple(body))

    def delete_alias(self, name: str, alias: str) -> None:
        self._run(self._simple(proto.DeleteAliasRequest(name=name, alias=alias)))

    def list_aliases(self, name: str) -> list[Any]:
        return cast(list[Any], self._run(self._simple(proto.ListAliases(name=name))))

    def members(self) -> list[proto.MemberInfo]:
        return cast(list[proto.MemberInfo], self._run(self._simple(proto.Members())))

    def status(self) -> proto.StatusInfo:
        return cast(proto.StatusInfo, self._run(self._simple(proto.Status())))

    def create_key(self, name: str, role: str) -> proto.KeyCreated:
        return cast(proto.KeyCreated, self._run(self._simple(proto.CreateKey(name=name, role=cast(Role, role)))))

    def list_keys(self) -> list[proto.KeyInfo]:
        return cast(list[proto.KeyInfo], self._run(self._simple(proto.ListKeys())))

    def revoke_key(self, key_id: str) -> proto.KeyInfo:
        return cast(proto.KeyInfo, self._run(self._simple(proto.RevokeKey(key_id=key_id))))

    def logs(self, name: str, follow: bool = False, *, limit: int = 100,
             idle_timeout_s: float | None = None) -> Iterator[proto.LogEvent]:
        """Recent log events of ``name``; with ``follow``, then new ones as they come.

        Following subscribes to the event PUB of every live member (from
        ``members()``) and yields until the caller stops iterating, or until
        ``idle_timeout_s`` passes without an event.
        """
        yield from self._run(self._simple(proto.RecentLogs(name=name, limit=limit)))
        if not follow:
            return
        yield from self._follow(name, idle_timeout_s)

    def _follow(self, name: str, idle_timeout_s: float | None) -> Iterator[proto.LogEvent]:
        members = [] if self.events_endpoints else self.members()
        subs = [self._subscribe(e, name) for e in _event_sources(self.events_endpoints, members)]
        poller = zmq.Poller()
        for sub in subs:
            poller.register(sub, zmq.POLLIN)
        try:
            while True:
                ready = poller.poll(None if idle_timeout_s is None else int(idle_timeout_s * 1000))
                if not ready:
                    return
                for sub, _ in ready:
                    event = _log_event(sub.recv_multipart(zmq.NOBLOCK))
                    if event is not None:
                        yield event
        finally:
            for sub in subs:
                sub.close(linger=0)

    def _subscribe(self, endpoint: str, name: str) -> zmq.Socket[Any]:
        sub: zmq.Socket[Any] = self._ctx.socket(zmq.SUB)
        self._ep.configure(sub)
        sub.setsockopt(zmq.SUBSCRIBE, proto.log_topic(name))
        sub.connect(endpoint)
        return sub


def _event_sources(given: Sequence[str], members: Sequence[proto.MemberInfo]) -> list[str]:
    """The event PUB endpoints to follow: those given, else every live member's."""
    found = list(given) or [m.events_endpoint for m in members
                            if m.events_endpoint and m.state in ("alive", "suspect")]
    if not found:
        raise Unavailable("no events endpoint known: the members publish none; "
                          "pass events_endpoints= (or events_endpoints in credentials.json)")
    return found


def _log_event(parts: list[bytes]) -> proto.LogEvent | None:
    if len(parts) != 2:
        return None
    try:
        event = proto.decode_event(parts[1])
    except DecodeError:
        return None
    return event if isinstance(event, proto.LogEvent) else None


# ---------------------------------------------------------------------------
# The trio client
# ---------------------------------------------------------------------------


def _events(sock: zmq.Socket[Any]) -> int:
    return cast(int, sock.get(_EVENTS))


async def _wait_for(sock: zmq.Socket[Any], mask: int) -> None:
    """Wait until ``sock`` has ``mask`` events (check EVENTS before the edge-triggered FD)."""
    while not _events(sock) & mask:
        await trio.lowlevel.wait_readable(cast(int, sock.getsockopt(zmq.FD)))


async def _first_of(*socks: zmq.Socket[Any]) -> int:
    """The index of the first socket that becomes readable."""
    for i, sock in enumerate(socks):
        if _events(sock) & zmq.POLLIN:
            return i
    winner: list[int] = []
    async with trio.open_nursery() as nursery:
        for i, sock in enumerate(socks):
            nursery.start_soon(_race, sock, i, winner, nursery.cancel_scope)
    return winner[0]


async def _race(sock: zmq.Socket[Any], i: int, winner: list[int],
                scope: trio.CancelScope) -> None:
    await _wait_for(sock, zmq.POLLIN)
    if not winner:
        winner.append(i)
    scope.cancel()


class _Alarm:
    """One wait's alarm: the FD whose waiter it wakes, and whether it still may."""

    __slots__ = ("active", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.active = True


class _Alarms:
    """Ends AsyncClient waits at their deadlines, without a cancel scope per wait.

    A trio cancel scope costs a waiting call about as much CPU as decoding its
    reply (tens of microseconds after an idle gap), and a call that waits needs
    a time limit (the call's deadline, or the liveness watch's next tick). So
    one system task per trio run keeps the alarms: a wait sets one (a heap push)
    and clears it when it ends, however it ends; the task sleeps until the
    earliest alarm still set and wakes that alarm's waiter with
    ``trio.lowlevel.notify_closing(fd)``, which raises ClosedResourceError in
    the waiter's ``wait_readable`` (the FD is not closed: the next wait
    registers it again). Only the client's own task waits on its DEALER's FD,
    and an alarm is only set while it does, so nothing else is woken. Cleared
    alarms are dropped when they reach the head of the heap; the task wakes
    about once per liveness tick (a quarter interval) while calls wait, else
    never.
    """

    def __init__(self) -> None:
        self.heap: list[tuple[float, int, _Alarm]] = []  # (deadline, order, alarm)
        self.count = 0
        self.scope = trio.CancelScope()  # the sleeping task's: its deadline is the next alarm
        self.wake_at = math.inf  # that deadline (reading it from the scope costs more)

    def set(self, deadline: float, fd: int) -> _Alarm:
        """An alarm for the task about to wait on ``fd``; clear it when the wait ends."""
        alarm = _Alarm(fd)
        self.count += 1
        heapq.heappush(self.heap, (deadline, self.count, alarm))
        if deadline < self.wake_at:  # rare: a shorter limit than the alarms set before
            self.wake_at = self.scope.deadline = deadline
        return alarm

    async def run(self) -> None:
        heap = self.heap
        while True:
            while heap and not heap[0][2].active:
                heapq.heappop(heap)  # a wait that ended: nothing to wake (most alarms)
            self.scope = trio.CancelScope(deadline=heap[0][0] if heap else math.inf)
            self.wake_at = self.scope.deadline
            with self.scope:
                await trio.sleep_forever()
            now = trio.current_time()
            while heap and heap[0][0] <= now:
                alarm = heapq.heappop(heap)[2]
                if alarm.active:
                    alarm.active = False
                    trio.lowlevel.notify_closing(alarm.fd)


_ALARMS: trio.lowlevel.RunVar[_Alarms] = trio.lowlevel.RunVar("meshfaas_sdk_alarms")


def _alarms() -> _Alarms:
    """This trio run's alarms (their task starts with the first wait of the run)."""
    try:
        return _ALARMS.get()
    except LookupError:
        alarms = _Alarms()
        _ALARMS.set(alarms)
        trio.lowlevel.spawn_system_task(alarms.run, name="meshfaas SDK alarms")
        return alarms


class AsyncClient(Client):
    """The trio client: the same API as :class:`Client`, every call awaited.

    ``logs(name, follow=...)`` is an async iterator. Requests are serialised by
    a lock; open several clients for parallel calls.
    """

    def __init__(self, endpoints: str | Sequence[str], api_key: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(endpoints, api_key, **kwargs)
        self._busy = False  # an operation holds the client (the lock, taken without a trio call)
        self._waiters = trio.lowlevel.ParkingLot()  # operations waiting for it, in order
        self._alarm = _Alarm(-1)  # the waiting call's (see _Alarms)
        self._alarm.active = False

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._alarm.active = False  # its FD is about to go (and its number may be reused)
        super().close()

    async def _acquire(self) -> None:
        """Take the client for one operation: a flag when it is free, else a place
        in line (no checkpoint either way once it is ours, so a cancellation
        cannot come between taking it and the caller's ``try``)."""
        if self._busy:
            await self._waiters.park()  # woken by _release, which hands the client over
        else:
            self._busy = True

    def _release(self) -> None:
        if self._waiters:
            self._waiters.unpark()  # the longest waiter has it now: still busy
        else:
            self._busy = False

    async def _simple_call(self, body: Any) -> Any:
        """One request, without an operation generator (most of the API)."""
        await self._acquire()
        try:
            return await self._aroundtrip(self._call(body))
        finally:
            self._release()

    async def _arun(self, op: Op[T]) -> T:
        await self._acquire()
        try:
            call = next(op)
            while True:
                try:
                    value = await self._aroundtrip(call)
                except MeshfaasError as exc:  # the operation may handle it
                    call = op.throw(exc)
                    continue
                call = op.send(value)
        except StopIteration as stop:
            return cast(T, stop.value)
        finally:
            self._release()

    async def _aroundtrip(self, call: _Call) -> Any:
        last = ""
        for _ in range(len(self._ep.endpoints)):
            endpoint = self.endpoint
            outcome, response, why = await self._aattempt(call)
            if response is not None and (response.ok or not _try_elsewhere(call, response)):
                return _value(response)
            last = self._next_endpoint(call, endpoint, outcome, response, why)
        raise Unavailable(f"no endpoint could serve the request (last: {last})")

    async def _aattempt(self, call: _Call) -> tuple[str, proto.ClientResponse | None, str]:
        sock = self._socket()
        request_id, frame = self._ep.request(call)
        try:
            sock.send(frame, _NOBLOCK)  # connected already: the usual case
        except zmq.Again:
            with trio.move_on_after(self.connect_timeout_s):
                await _wait_for(sock, _POLLOUT)
            try:
                sock.send(frame, _NOBLOCK)
            except zmq.Again:
                await trio.lowlevel.checkpoint()
                return _Attempt.DOWN, None, ""
        return await self._areply(sock, request_id, call.timeout_s)

    async def _areply(self, sock: zmq.Socket[Any], request_id: str, timeout_s: float
                      ) -> tuple[str, proto.ClientResponse | None, str]:
        """Wait for the matching reply on the DEALER's edge-triggered FD, watching the node.

        EVENTS is read right after the send (and after each tick of the watch,
        whose reads and ping may take the FD's edge): a reply already there is
        read without an alarm or a watch. Otherwise one alarm (:class:`_Alarms`;
        no cancel scope, task or nursery) ends the waits at the earlier of the
        call's deadline and the watch's next tick, and a wake reads at once (it
        is most likely the reply). Waiting on the FD needs EVENTS read, or a
        read that said EAGAIN, since the last frame came (either leaves libzmq's
        mailbox drained, so the next change signals the FD): :meth:`_drain`
        returns None only after an EAGAIN.
        """
        watch: _Watch | None = None
        deadline = 0.0
        while True:
            if _events(sock) & _POLLIN:
                response = self._drain(sock, request_id, watch)
                if response is not None:
                    return "ok", response, ""
            if watch is None:
                watch = _Watch(trio.current_time, self.liveness_interval_s,
                               self.liveness_timeout_s)
                deadline = watch.last_heard + timeout_s
            self._alarm = _alarms().set(min(deadline, watch.next_tick), self._fd)
            try:
                response = await self._await_reply_frames(sock, request_id, watch)
            finally:
                self._alarm.active = False
            if response is not None:
                return "ok", response, ""
            now = trio.current_time()  # the deadline or the tick came, or the node forgot
            if now >= deadline:
                return _Attempt.TIMEOUT, None, ""
            if not _ping(sock, watch, now, lambda: self._ep.ping_frame(request_id)):
                return _Attempt.LOST, None, watch.why

    async def _await_reply_frames(self, sock: zmq.Socket[Any], request_id: str,
                                  watch: _Watch) -> proto.ClientResponse | None:
        """Wait on the FD and read what comes until the reply; None when the
        caller's alarm rang (the deadline or the watch's tick) or the node says
        it forgot the request (the watch then says GONE at once)."""
        fd = self._fd
        while True:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:  # the alarm (see _Alarms): the FD stays open
                return None
            response = self._drain(sock, request_id, watch)
            if response is not None or watch.forgotten:
                return response

    # -- the API (awaitable versions of Client's) ---------------------------

    async def ping(self) -> str:  # type: ignore[override]
        pong: proto.Pong = await self._simple_call(proto.Ping())
        return pong.node

    async def deploy(self, name: str, code: str | os.PathLike[str] | bytes, *,  # type: ignore[override]
                     handler: str, runtime: str = "python3.11", memory_mb: int = 128,
                     timeout_s: int = 3, env: dict[str, str] | None = None,
                     requirements: Sequence[str] = (), reserved_concurrency: int | None = None,
                     description: str = "", publish: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> Deployed:
        return await self._arun(self._deploy(
            name, code, progress, handler=handler, runtime=runtime, memory_mb=memory_mb,
            timeout_s=timeout_s, env=dict(env or {}), requirements=tuple(requirements),
            reserved_concurrency=reserved_concurrency, description=description,
            publish=publish))

    async def invoke(self, name: str, payload: Any = None,  # type: ignore[override,unused-ignore]
                     qualifier: str | None = None, *, timeout_s: float | None = None) -> Any:
        result = await self._arun(self._invoke(name, payload, qualifier, timeout_s))
        return decode_payload(result.payload)

    async def invoke_detailed(self, name: str, payload: Any = None,  # type: ignore[override]
                              qualifier: str | None = None, *,
                              timeout_s: float | None = None) -> proto.InvokeResult:
        return await self._arun(self._invoke(name, payload, qualifier, timeout_s))

    async def invoke_async(self, name: str, payload: Any = None,  # type: ignore[override]
                           qualifier: str | None = None, *,
                           idempotency_key: str | None = None) -> str:
        return await self._arun(self._invoke_async(name, payload, qualifier, idempotency_key))

    async def result(self, invocation_id: str) -> proto.InvocationRecord:  # type: ignore[override]
        return cast(proto.InvocationRecord, await self._simple_call(proto.GetResult(invocation_id=invocation_id)))

    async def list_functions(self) -> list[FunctionRecord]:  # type: ignore[override]
        return cast(list[FunctionRecord], await self._simple_call(proto.ListFunctions()))

    async def get_function(self, name: str) -> proto.FunctionDetails:  # type: ignore[override]
        return cast(proto.FunctionDetails, await self._simple_call(proto.GetFunction(name=name)))

    async def delete(self, name: str) -> None:  # type: ignore[override]
        await self._simple_call(proto.DeleteFunctionRequest(name=name))

    async def update_config(self, name: str, **changes: Any) -> FunctionRecord:  # type: ignore[override]
        body = proto.UpdateConfig(name=name, patch=ConfigPatch(**changes))
        return cast(FunctionRecord, await self._simple_call(body))

    async def publish_version(self, name: str, description: str = "") -> VersionRecord:  # type: ignore[override]
        body = proto.PublishVersionRequest(name=name, description=description)
        return cast(VersionRecord, await self._simple_call(body))

    async def list_versions(self, name: str) -> list[VersionRecord]:  # type: ignore[override]
        return cast(list[VersionRecord], await self._simple_call(proto.ListVersions(name=name)))

    async def create_alias(self, name: str, alias: str, version: str | int,  # type: ignore[override,unused-ignore]
                           weights: dict[str | int, float] | None = None, *,
                           update: bool = False) -> Any:
        extra, weight_bp = _weights(version, weights)
        body = proto.PutAlias(name=name, alias=alias, version=str(version),
                              extra_version=extra, extra_weight_bp=weight_bp, create=not update)
        return await self._simple_call(body)

    async def delete_alias(self, name: str, alias: str) -> None:  # type: ignore[override]
        await self._simple_call(proto.DeleteAliasRequest(name=name, alias=alias))

    async def list_aliases(self, name: str) -> list[Any]:  # type: ignore[override]
        return cast(list[Any], await self._simple_call(proto.ListAliases(name=name)))

    async def members(self) -> list[proto.MemberInfo]:  # type: ignore[override]
        return cast(list[proto.MemberInfo], await self._simple_call(proto.Members()))

    async def status(self) -> proto.StatusInfo:  # type: ignore[override]
        return cast(proto.StatusInfo, await self._simple_call(proto.Status()))

    async def create_key(self, name: str, role: str) -> proto.KeyCreated:  # type: ignore[override]
        return cast(proto.KeyCreated, await self._simple_call(proto.CreateKey(name=name, role=cast(Role, role))))

    async def list_keys(self) -> list[proto.KeyInfo]:  # type: ignore[override]
        return cast(list[proto.KeyInfo], await self._simple_call(proto.ListKeys()))

    async def revoke_key(self, key_id: str) -> proto.KeyInfo:  # type: ignore[override]
        return cast(proto.KeyInfo, await self._simple_call(proto.RevokeKey(key_id=key_id)))

    async def logs(self, name: str, follow: bool = False, *,  # type: ignore[override]
                   limit: int = 100, idle_timeout_s: float | None = None
                   ) -> AsyncIterator[proto.LogEvent]:
        for event in await self._simple_call(proto.RecentLogs(name=name, limit=limit)):
            yield event
        if not follow:
            return
        async for event in self._afollow(name, idle_timeout_s):
            yield event

    async def _afollow(self, name: str, idle_timeout_s: float | None
                       ) -> AsyncIterator[proto.LogEvent]:
        members = [] if self.events_endpoints else await self.members()
        subs = [self._subscribe(e, name) for e in _event_sources(self.events_endpoints, members)]
        idle_s = idle_timeout_s if idle_timeout_s is not None else float("inf")
        try:
            while subs:
                events: list[proto.LogEvent] | None = None
                with trio.move_on_after(idle_s):
                    events = _drain_events(subs[await _first_of(*subs)])
                if events is None:
                    return
                for event in events:
                    yield event
        finally:
            for sub in subs:
                sub.close(linger=0)


def _drain_events(sub: zmq.Socket[Any]) -> list[proto.LogEvent]:
    events: list[proto.LogEvent] = []
    while True:
        try:
            parts = sub.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            return events
        event = _log_event(parts)
        if event is not None:
            events.append(event)
