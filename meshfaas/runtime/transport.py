"""The node's ZeroMQ sockets: peer transport, client ROUTER, event PUB.

Theory of operation
-------------------
:class:`Network` is one zmq context with its :class:`~meshfaas.runtime.keys.Security`
and, when CURVE is on, our :class:`~meshfaas.runtime.keys.ZapHandler`. Everything
else is made from it and run in the node's nursery.

:class:`PeerTransport` implements the core's ``Transport`` port
(``send(dst, frame) -> bool``, never blocking) with this topology:

* one ROUTER bound for *inbound* peer traffic (CURVE server). It only receives;
  each message is ``[routing id, frame]`` and the frame goes, as bytes, into a
  bounded channel (:attr:`PeerTransport.inbound`), or, once
  :meth:`PeerTransport.handle_inline` was called, straight to a callback from the
  socket's owner task (no channel hop and no task switch per frame; at most
  ``batch`` frames before the loop gets a turn, then ``on_burst_end``). Decoding
  is the caller's job (:meth:`PeerTransport.decode` counts a ``DecodeError`` as
  a drop);
* one DEALER per known peer for *outbound* traffic (CURVE client), created by
  :meth:`set_peer` from the address book that gossip metadata keeps up to date
  and closed by :meth:`forget_peer`. Each DEALER has its own owner task, its own
  small queue and ``IMMEDIATE`` set, so a dead or slow peer only ever drops its
  own frames and nothing stale piles up for it.

The alternatives and why they lost are in docs/runtime.md. Every drop is counted
(:meth:`counters`): ``dropped_unknown_peer``, ``dropped_queue_full`` (the peer's
channel is full), ``dealer.dropped_hwm`` (zmq refused: no connection or HWM
reached), ``dropped_inbound_full``, ``dropped_malformed``, ``dropped_oversize``,
``decode_errors``, ``handler_errors`` (an inline handler raised: logged, and
the socket keeps running); handshakes seen on the ROUTER are counted from a socket
monitor (``handshake_failed_*``, ``handshake_succeeded``) and ZAP answers as
``zap.allowed`` / ``zap.denied``.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
import zmq
from zmq.utils.monitor import parse_monitor_message

from meshfaas.core.codec import DEFAULT_MAX_FRAME_BYTES, Codec, DecodeError, Envelope
from meshfaas.core.types import NodeId
from meshfaas.runtime.keys import (
    CLIENT_DOMAIN,
    EVENTS_DOMAIN,
    PEER_DOMAIN,
    Security,
    ZapHandler,
)
from meshfaas.runtime.zsock import (
    DEFAULT_BATCH,
    EVENTS,
    POLLIN,
    Counters,
    Parts,
    ZSock,
    last_endpoint,
)

log = logging.getLogger(__name__)

DEFAULT_INBOUND_CAPACITY = 4096
DEFAULT_PEER_QUEUE = 1024
DEFAULT_SNDHWM = 1000
DEFAULT_RCVHWM = 10_000
RECONNECT_IVL_MS = 100
RECONNECT_IVL_MAX_MS = 500  # a restarted peer is reachable again within half a second
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 3000

_MONITOR_EVENTS: dict[int, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "handshake_failed_no_detail",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "handshake_failed_protocol",
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "handshake_failed_auth",
    zmq.EVENT_HANDSHAKE_SUCCEEDED: "handshake_succeeded",
    zmq.EVENT_ACCEPTED: "accepted",
    zmq.EVENT_DISCONNECTED: "disconnected",
}


_PEER_COUNTERS = (
    "sent", "received", "dropped_unknown_peer", "dropped_queue_full", "dropped_inbound_full",
    "dropped_malformed", "dropped_oversize", "decode_errors", "dropped_misaddressed",
    "dealer.sent", "dealer.dropped_hwm", "handler_errors",
)


def _monitor_event_name(parts: Parts) -> str | None:
    try:
        event = int(parse_monitor_message(parts)["event"])
    except Exception:  # a malformed monitor message: nothing to count
        return None
    return _MONITOR_EVENTS.get(event)


class Network:
    """One zmq context, its security, and the ZAP handler when CURVE is on."""

    def __init__(self, security: Security, *, counters: Counters | None = None) -> None:
        self.security = security
        self.counters = counters if counters is not None else Counters()
        self.ctx: zmq.Context[Any] = zmq.Context()
        self.zap = (ZapHandler(self.ctx, security.keys, self.counters)
                    if security.keys is not None else None)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer ZAP requests until cancelled."""
        if self.zap is None:
            task_status.started()
            await trio.sleep_forever()
        await self.zap.run(task_status=task_status)

    def socket(self, kind: int, *, server: bool, domain: bytes = PEER_DOMAIN) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if server:
            self.security.server(sock, domain)
        else:
            self.security.client(sock)
        return sock

    def open_domain(self, domain: bytes) -> None:
        """Admit any CURVE client key on ``domain`` (see keys.ZapHandler)."""
        if self.zap is not None:
            self.zap.open_domain(domain)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


@asynccontextmanager
async def open_network(security: Security) -> AsyncIterator[Network]:
    """A :class:`Network` whose ZAP task runs for the duration of the block."""
    net = Network(security)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(net.run)
            yield net
            nursery.cancel_scope.cancel()
    finally:
        net.close()


@attrs.define
class _Peer:
    endpoint: str
    zsock: ZSock
    monitor: ZSock | None = None
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class PeerTransport:
    """Datagram-like frames to and from peers; see the module docstring."""

    def __init__(
        self,
        net: Network,
        node_id: NodeId,
        *,
        bind: str = "tcp://127.0.0.1:*",
        codec: Codec | None = None,
        inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
        peer_queue: int = DEFAULT_PEER_QUEUE,
        sndhwm: int = DEFAULT_SNDHWM,
        rcvhwm: int = DEFAULT_RCVHWM,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.net = net
        self.node_id = node_id
        self.codec = codec
        self.max_frame_bytes = max_frame_bytes
        self._peer_queue = peer_queue
        self._sndhwm = sndhwm
        self.stats = Counters()
        for name in _PEER_COUNTERS:  # present from the start, so dashboards see zeros
            self.stats.inc(name, 0)
        self._peers: dict[NodeId, _Peer] = {}
        self.on_peer_event: Callable[[NodeId, str], None] | None = None
        self._nursery: trio.Nursery | None = None
        self._in_send, self.inbound = trio.open_memory_channel[bytes](inbound_capacity)
        self._handler: Callable[[bytes], None] | None = None
        self._burst_end: Callable[[], None] | None = None
        router = net.socket(zmq.ROUTER, server=True)
        router.setsockopt(zmq.RCVHWM, rcvhwm)
        router.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes + 64)
        router.bind(bind)
        self.endpoint = last_endpoint(router)
        monitor = router.get_monitor_socket(sum(_MONITOR_EVENTS))
        self._router = ZSock(router, name="router", on_recv=self._on_frame,
                             on_burst_end=self._on_burst_end, counters=self.stats, batch=batch)
        self._monitor = ZSock(monitor, name="monitor", on_recv=self._on_monitor,
                              counters=Counters())

    def handle_inline(self, on_frame: Callable[[bytes], None],
                      on_burst_end: Callable[[], None] | None = None) -> None:
        """Hand each frame to ``on_frame`` from the ROUTER's owner task instead of
        the :attr:`inbound` channel, and call ``on_burst_end`` after each burst of
        frames (before the loop gets a turn). Both run synchronously and must not
        block; an exception from either is logged and counted
        (``handler_errors``), never fatal to the socket. Frames that arrived
        before (queued in :attr:`inbound`) are handed over first, here: call it
        once the handler can take them (e.g. once the node's driver runs)."""
        self._handler = on_frame
        self._burst_end = on_burst_end
        queued = False
        while True:
            try:
                frame = self.inbound.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            queued = True
            self._handle(frame)
        if queued:
            self._on_burst_end()

    # -- the address book ---------------------------------------------------

    def set_peer(self, node_id: NodeId, endpoint: str, *, watch: bool = False) -> None:
        """Send to ``node_id`` at ``endpoint`` from now on (idempotent).

        ``watch`` adds a monitor to this peer's DEALER: its handshake outcomes are
        counted (``dealer.handshake_failed_*``, ``dealer.handshake_succeeded``) and
        reported to ``on_peer_event`` -- for seeds, where wrong keys show first."""
        peer = self._peers.get(node_id)
        if peer is not None and peer.endpoint == endpoint:
            return
        if peer is not None:
            peer.scope.cancel()
        dealer = self._make_dealer(endpoint)
        monitor = self._watch(node_id, dealer.sock) if watch else None
        peer = _Peer(endpoint=endpoint, zsock=dealer, monitor=monitor)
        self._peers[node_id] = peer
        if self._nursery is not None:
            self._nursery.start_soon(self._run_peer, peer)

    def forget_peer(self, node_id: NodeId) -> None:
        peer = self._peers.pop(node_id, None)
        if peer is not None:
            peer.scope.cancel()

    def peers(self) -> dict[NodeId, str]:
        return {n: p.endpoint for n, p in sorted(self._peers.items())}

    def _make_dealer(self, endpoint: str) -> ZSock:
        sock = self.net.socket(zmq.DEALER, server=False)
        for opt, value in ((zmq.IMMEDIATE, 1), (zmq.SNDHWM, self._sndhwm),
                           (zmq.RECONNECT_IVL, RECONNECT_IVL_MS),
                           (zmq.RECONNECT_IVL_MAX, RECONNECT_IVL_MAX_MS),
                           (zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS),
                           (zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)):
            sock.setsockopt(opt, value)
        try:
            sock.connect(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            raise ValueError(f"bad peer endpoint {endpoint!r}: {exc}") from None
        # (receives=False: the peer's ROUTER never sends back, and a direct send
        # then skips the EVENTS check for a message that cannot come)
        return ZSock(sock, name="dealer", counters=self.stats, out_capacity=self._peer_queue,
                     receives=False)

    def _watch(self, node_id: NodeId, sock: zmq.Socket[Any]) -> ZSock:
        def on_event(parts: Parts) -> None:
            name = _monitor_event_name(parts)
            if name is not None and name.startswith("handshake"):
                self.stats.inc(f"dealer.{name}")
                if self.on_peer_event is not None:
                    self.on_peer_event(node_id, name)

        monitor = sock.get_monitor_socket(sum(_MONITOR_EVENTS))
        return ZSock(monitor, name="dealer_monitor", on_recv=on_event, counters=Counters())

    async def _run_peer(self, peer: _Peer) -> None:
        with peer.scope:
            async with trio.open_nursery() as nursery:
                if peer.monitor is not None:
                    nursery.start_soon(peer.monitor.run)
                nursery.start_soon(peer.zsock.run)
        for zsock in (peer.zsock, peer.monitor):  # if cancelled before they ever ran
            if zsock is not None:
                zsock.sock.close(linger=0)

    # -- sending and receiving ---------------------------------------------

    def send(self, dst: NodeId, frame: bytes) -> bool:
        """Queue ``frame`` for ``dst``; False (counted) when it cannot be queued."""
        peer = self._peers.get(dst)
        if peer is None:
            self.stats.inc("dropped_unknown_peer")
            return False
        if len(frame) > self.max_frame_bytes:
            raise ValueError(f"frame of {len(frame)} bytes over the {self.max_frame_bytes}-byte limit")
        if not peer.zsock.send_nowait([frame]):
            self.stats.inc("dropped_queue_full")
            return False
        self.stats.inc("sent")
        return True

    def _on_frame(self, parts: Parts) -> None:
        if len(parts) != 2:
            self.stats.inc("dropped_malformed")
            return
        frame = parts[1]
        if len(frame) > self.max_frame_bytes:
            self.stats.inc("dropped_oversize")
            return
        if self._handler is not None:
            self.stats.inc("received")
            self._handle(frame)
            return
        try:
            self._in_send.send_nowait(frame)
        except trio.WouldBlock:
            self.stats.inc("dropped_inbound_full")
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.stats.inc("dropped_closed")
        else:
            self.stats.inc("received")

    def _handle(self, frame: bytes) -> None:
        assert self._handler is not None
        try:
            self._handler(frame)
        except Exception:  # a bug in the handler: never the socket's end
            self._handler_failed()

    def _on_burst_end(self) -> None:
        if self._burst_end is not None:
            try:
                self._burst_end()
            except Exception:
                self._handler_failed()

    def _handler_failed(self) -> None:
        self.stats.inc("handler_errors")
        log.exception("%s: a peer frame's handler failed", self.node_id)

    def decode(self, frame: bytes) -> Envelope | None:
        """Decode with ``codec``; a bad frame, or one not for us, is a counted drop."""
        if self.codec is None:
            raise RuntimeError("PeerTransport was built without a codec")
        try:
            env = self.codec.decode(frame)
        except DecodeError:
            self.stats.inc("decode_errors")
            return None
        if env.dst != self.node_id:
            self.stats.inc("dropped_misaddressed")
            return None
        return env

    def _on_monitor(self, parts: Parts) -> None:
        name = _monitor_event_name(parts)
        if name is not None:
            self.stats.inc(name)

    def counters(self) -> dict[str, int]:
        out = self.stats.snapshot()
        out.update(self.net.counters.snapshot())
        return out

    # -- lifetime -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the ROUTER, its monitor and every DEALER until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._monitor.run)
                await nursery.start(self._router.run)
                self._nursery = nursery
                for peer in list(self._peers.values()):
                    nursery.start_soon(self._run_peer, peer)
                task_status.started()
        finally:
            self._nursery = None
            self._in_send.close()
            for peer in self._peers.values():
                for zsock in (peer.zsock, peer.monitor):
                    if zsock is not None:
                        zsock.sock.close(linger=0)


@asynccontextmanager
async def open_peer_transport(
    net: Network, node_id: NodeId, **kwargs: Any
) -> AsyncIterator[PeerTransport]:
    """A running :class:`PeerTransport` for the duration of the block."""
    transport = PeerTransport(net, node_id, **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(transport.run)
        yield transport
        nursery.cancel_scope.cancel()


# ---------------------------------------------------------------------------
# Client ROUTER and event PUB
# ---------------------------------------------------------------------------


@attrs.frozen
class ClientMessage:
    """A client's multipart message, with the routing id to reply to."""

    routing_id: bytes
    parts: tuple[bytes, ...]


class ClientRouter:
    """The node's ROUTER for clients (SDK, CLI, HTTP bridge); CURVE server.

    Requests arrive on :attr:`inbound`, or, with ``on_request``, are handed to
    that callback straight from the socket's owner task (synchronously: it must
    not block; it saves the node a task switch per request, and ``batch`` bounds
    how many it handles before the loop gets a turn; ``on_burst_end``, if given,
    is called after each burst, and must not raise). :meth:`reply` answers one
    by routing id.
    With ``any_client_key`` any CURVE client that knows the cluster's public key
    may connect (the SDK's ephemeral keys; requests carry API keys); otherwise
    only the cluster key and keys registered with the ZAP handler.
    ``ROUTER_MANDATORY`` is set so a reply to a client that left is counted
    (``client.dropped_unroutable``) rather than silently lost.
    """

    def __init__(
        self,
        net: Network,
        *,
        bind: str = "tcp://127.0.0.1:*",
        inbound_capacity: int = DEFAULT_INBOUND_CAPACITY,
        out_capacity: int = DEFAULT_PEER_QUEUE * 4,
        hwm: int = DEFAULT_SNDHWM,
        max_msg_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        any_client_key: bool = False,
        on_request: Callable[[ClientMessage], None] | None = None,
        on_burst_end: Callable[[], None] | None = None,
        batch: int = DEFAULT_BATCH,
    ) -> None:
        self.stats = Counters()
        self._handler = on_request
        if any_client_key:
            net.open_domain(CLIENT_DOMAIN)
        sock = net.socket(zmq.ROUTER, server=True, domain=CLIENT_DOMAIN)
        for opt, value in ((zmq.ROUTER_MANDATORY, 1), (zmq.SNDHWM, hwm), (zmq.RCVHWM, hwm),
                           (zmq.MAXMSGSIZE, max_msg_bytes)):
            sock.setsockopt(opt, value)
        sock.bind(bind)
        self.endpoint = last_endpoint(sock)
        self._in_send, self.inbound = trio.open_memory_channel[ClientMessage](inbound_capacity)
        self._zsock = ZSock(sock, name="client", on_recv=self._on_request,
                            on_burst_end=on_burst_end, counters=self.stats,
                            out_capacity=out_capacity, batch=batch)

    def _on_request(self, parts: Parts) -> None:
        if len(parts) < 2:
            self.stats.inc("client.dropped_malformed")
            return
        if self._handler is not None:
            self._handler(ClientMessage(parts[0], tuple(parts[1:])))
            return
        try:
            self._in_send.send_nowait(ClientMessage(parts[0], tuple(parts[1:])))
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.stats.inc("client.dropped_inbound_full")

    def reply(self, routing_id: bytes, parts: list[bytes]) -> bool:
        return self._zsock.send_nowait([routing_id, *parts])

    def counters(self) -> dict[str, int]:
        return self.stats.snapshot()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await self._zsock.run(task_status=task_status)
        finally:
            self._in_send.close()


class EventPublisher:
    """The node's PUB socket for events (invocations, logs, membership); CURVE server.

    A PUB drops for a slow subscriber at its high-water mark; :meth:`publish`
    itself never blocks and counts what it could not queue.

    The socket is an XPUB (SUB clients see no difference) so that the node knows
    which topic prefixes someone subscribed to: :meth:`wants` lets a caller skip
    encoding an event nobody would receive (every invocation publishes two, and
    usually nobody listens). ``wants`` errs towards True: a subscription still
    queued in the socket (``EVENTS & POLLIN``) counts as "maybe", so an event is
    never skipped that a plain PUB would have delivered.
    """

    def __init__(self, net: Network, *, bind: str = "tcp://127.0.0.1:*",
                 hwm: int = DEFAULT_SNDHWM * 10, out_capacity: int = DEFAULT_PEER_QUEUE * 4,
                 any_client_key: bool = False):
        self.stats = Counters()
        if any_client_key:
            net.open_domain(EVENTS_DOMAIN)
        sock = net.socket(zmq.XPUB, server=True, domain=EVENTS_DOMAIN)
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.bind(bind)
        self.endpoint = last_endpoint(sock)
        self._sock = sock
        self._prefixes: set[bytes] = set()  # subscribed topic prefixes (XPUB dedups them)
        self._zsock = ZSock(sock, name="pub", counters=self.stats, out_capacity=out_capacity,
                            on_recv=self._on_subscription)

    def _on_subscription(self, parts: Parts) -> None:
        msg = parts[0] if len(parts) == 1 else b""
        if msg[:1] == b"\x01":
            self._prefixes.add(msg[1:])
        elif msg[:1] == b"\x00":
            self._prefixes.discard(msg[1:])

    def wants(self, topic: bytes) -> bool:
        """Whether a subscriber may want ``topic`` (False only when surely nobody does)."""
        if any(topic.startswith(prefix) for prefix in self._prefixes):
            return True
        if self._zsock.closed:
            return False
        return bool(int(self._sock.getsockopt(EVENTS)) & POLLIN)

    def publish(self, topic: bytes, payload: bytes) -> bool:
        return self._zsock.send_nowait([topic, payload])

    def counters(self) -> dict[str, int]:
        return self.stats.snapshot()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._zsock.run(task_status=task_status)
