"""The node process: ``meshfaas node start``.

Theory of operation
-------------------
One trio nursery per node. At start the node

1. gets the cluster's CURVE keys (``keys.ensure_cluster_keys``): from its data
   directory, from ``--keys`` (copied in), or, only for the first node of a new
   cluster (no ``--join``), freshly created; ``--insecure`` turns CURVE off and warns;
2. opens its SQLite store (``DATA/node.db``) and refuses to start if a record is
   damaged (a clear message; the operator decides);
3. binds the peer ROUTER, the client ROUTER and the event PUB, and prints one JSON
   line with its endpoints on stdout;
4. runs the gossip core under the generic :class:`~meshfaas.runtime.driver.Driver`,
   and any other core added with :meth:`Node.add_core` (Paxos, the FaaS layer)
   under its own Driver; one :class:`~meshfaas.runtime.demux.Demux` reads the peer
   transport and hands each message to its core by package; all cores persist to
   the same store (its sync is safe to call from several drivers).

*Addresses.* Gossip speaks node ids; the transport's address book maps them to
peer endpoints. Each node advertises its peer endpoint in its gossip metadata
(``NodeMeta.peer_addr``), and a driver observer calls ``set_peer`` for every
member event before the sends of the same batch leave, so a reply to a node we
just heard of is routable. A seed given by address only (``--join tcp://...``)
is entered under the address itself as its id; the node accepts frames addressed
to its own peer endpoint as addressed to itself, so a seed answers a join
without knowing the joiner's name in advance.

*Clients.* The client ROUTER admits any CURVE client that knows the cluster's
public key (printed as ``public_key``; requests are authorized by API key at
the application layer); a client without CURVE cannot connect. Requests are one
frame, answered with one frame. The FaaS layer's protocol plugs in with
:meth:`Node.on_client_frame` (raw frames) or :meth:`Node.on_client_request`
(one handler per registered message type). Built in: :class:`NodeStatusRequest`
-> :class:`NodeStatus` (this node's membership view and transport counters).

*Events.* Membership notifications are published on the PUB socket under the
topic ``membership``, CBOR-encoded ``MemberEvent`` values.

*Stopping.* SIGTERM or SIGINT: the node leaves gracefully (gossip ``Leave``),
gives the announcement ``leave_grace_s`` to go out, then cancels the nursery;
sockets close, the store closes. A ``kill -9`` leaves the store as its last sync
left it; the restarted node rejoins with a higher incarnation.
"""

from __future__ import annotations

import json
import logging
import random
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import attrs
import click
import trio

from gossip import Gossip, GossipConfig, Leave, MemberEvent, NodeMeta
from meshfaas.core.codec import Codec, DecodeError, from_cbor, to_cbor
from meshfaas.core.types import NS_PER_MS, Core, NodeId, Notification
from meshfaas.runtime.clock import SystemClock
from meshfaas.runtime.demux import Demux
from meshfaas.runtime.driver import Driver, EffectHandler
from meshfaas.runtime.keys import KeyFileError, Security, ensure_cluster_keys
from meshfaas.runtime.messages import MemberRow, NodeStatus, NodeStatusRequest
from meshfaas.runtime.store import SqliteStore
from meshfaas.runtime.transport import (
    ClientMessage,
    ClientRouter,
    EventPublisher,
    Network,
    PeerTransport,
)

log = logging.getLogger("meshfaas.node")

ClientHandler = Callable[[Any], Awaitable[Any]]
FrameHandler = Callable[[bytes], Awaitable[bytes | None]]
MEMBERSHIP_TOPIC = b"membership"


class NodeStartError(Exception):
    """The node cannot start (keys, store, addresses): a message for the operator."""


@attrs.frozen(kw_only=True)
class NodeConfig:
    node_id: NodeId
    data_dir: Path
    peer_bind: str = "tcp://127.0.0.1:*"
    client_bind: str = "tcp://127.0.0.1:*"
    events_bind: str | None = None  # default: the client host, any port
    join: tuple[str, ...] = ()
    keys: Path | None = None
    insecure: bool = False
    gossip: GossipConfig = attrs.field(factory=GossipConfig)
    role: str = "worker"
    leave_grace_s: float = 0.5
    seed: int | None = None


def cluster_security(data_dir: Path, keys: Path | None, join: tuple[str, ...],
                     insecure: bool) -> Security:
    """CURVE with the cluster's keys (created only by the first node of a new cluster)."""
    if insecure:
        return Security.insecure()
    try:
        found = ensure_cluster_keys(data_dir, given=keys, create=not join)
    except KeyFileError as exc:
        raise NodeStartError(str(exc)) from None
    return Security.curve(found)


def load_security(config: NodeConfig) -> Security:
    return cluster_security(config.data_dir, config.keys, config.join, config.insecure)


def open_store(data_dir: Path) -> tuple[SqliteStore, dict[str, dict[Any, Any]]]:
    store = SqliteStore(data_dir / "node.db")
    loaded = store.load_checked()
    if not loaded.ok:
        store.close()
        damaged = ", ".join(f"{c.table}: {c.reason}" for c in loaded.corrupt[:5])
        raise NodeStartError(f"the store in {data_dir} is damaged ({loaded.error or damaged}); "
                             "move it away to rejoin as a fresh node")
    return store, loaded.tables


def _events_bind(config: NodeConfig) -> str:
    if config.events_bind:
        return config.events_bind
    host = config.client_bind.rsplit(":", 1)[0]
    return f"{host}:*"


class Node:
    """One meshfaas node: transport, store and the gossip core under one nursery."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self._nursery: trio.Nursery | None = None
        config.data_dir.mkdir(parents=True, exist_ok=True)
        security = load_security(config)
        self.cluster_id = security.keys.cluster_id if security.keys else "insecure"
        self.codec = Codec(self.cluster_id)
        self.store, disk = open_store(config.data_dir)
        self.net = Network(security)
        self.peer = PeerTransport(self.net, config.node_id, bind=config.peer_bind, codec=self.codec)
        self.public_key = security.keys.public_key.decode() if security.keys else ""
        self.clients = ClientRouter(self.net, bind=config.client_bind, any_client_key=True)
        self.events = EventPublisher(self.net, bind=_events_bind(config), any_client_key=True)
        self.clock = SystemClock()
        self.gossip = Gossip(
            config.gossip, config.node_id, disk, random.Random(config.seed), self.clock.now(),
            seeds=self._seed_ids(), meta=self._own_meta())
        self.demux = Demux(self.codec, config.node_id, aliases=frozenset({self.peer.endpoint}))
        self.drivers: dict[str, Driver] = {}
        self._tasks: list[Callable[[], Awaitable[None]]] = []
        self.driver = self.add_core("gossip", self.gossip)
        self.driver.observe(self._on_notification)
        self.peer.on_peer_event = self._on_peer_event
        self._warned: set[str] = set()
        self.disk = disk  # what the store held at start, for cores added later
        self._client_handlers: dict[type, ClientHandler] = {NodeStatusRequest: self._status}
        self._frame_handler: FrameHandler | None = None

    def _own_meta(self) -> NodeMeta:
        return NodeMeta(peer_addr=self.peer.endpoint, client_addr=self.clients.endpoint,
                        role="voter" if self.config.role == "voter" else "worker")

    def _seed_ids(self) -> tuple[NodeId, ...]:
        seeds = []
        for addr in self.config.join:
            if addr == self.peer.endpoint:
                continue
            self.peer.set_peer(NodeId(addr), addr, watch=True)
            seeds.append(NodeId(addr))
        return tuple(seeds)

    def add_core(self, package: str, core: Core,
                 handlers: dict[str, EffectHandler] | None = None) -> Driver:
        """Run ``core`` in this node (before :meth:`run`): its peer messages are those
        whose classes live in ``package``; it persists to the node's store."""
        if self._nursery is not None:
            raise RuntimeError("add cores before the node runs")
        driver = Driver(core, node_id=self.config.node_id, transport=self.peer,
                        codec=self.codec, store=self.store, clock=self.clock, handlers=handlers)
        self.demux.route(package, driver)
        self.drivers[package] = driver
        return driver

    def add_task(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run ``task`` in the node's nursery once the cores run (before :meth:`run`)."""
        self._tasks.append(task)

    def endpoints(self) -> dict[str, str]:
        return {"node": self.config.node_id, "cluster": self.cluster_id,
                "public_key": self.public_key, "peer": self.peer.endpoint,
                "client": self.clients.endpoint, "events": self.events.endpoint}

    def on_client_request(self, request_type: type, handler: ClientHandler) -> None:
        """Serve client requests of ``request_type`` (a registered message)."""
        self._client_handlers[request_type] = handler

    def on_client_frame(self, handler: FrameHandler) -> None:
        """Offer every one-frame client request to ``handler`` first (the client
        protocol of meshfaas.core.client_proto); it returns the reply frame, or None
        to let the built-in requests answer."""
        self._frame_handler = handler

    # -- membership ---------------------------------------------------------

    def _on_notification(self, note: Notification) -> None:
        event = note.data
        if not isinstance(event, MemberEvent) or event.node_id == self.config.node_id:
            return
        if event.meta.peer_addr:
            self.peer.set_peer(event.node_id, event.meta.peer_addr)
        log.info("%s: %s %s (incarnation %d)", self.config.node_id, note.kind,
                 event.node_id, event.incarnation)
        self.events.publish(MEMBERSHIP_TOPIC, to_cbor([note.kind, event.node_id,
                                                       event.incarnation, event.state]))

    def _on_peer_event(self, peer: NodeId, event: str) -> None:
        if event.startswith("handshake_failed") and peer not in self._warned:
            self._warned.add(peer)  # once per seed: reconnects retry every few seconds
            log.warning("%s: handshake with %s failed (%s): is it a node of this cluster, "
                        "with the same keys/cluster.json?", self.config.node_id, peer, event)

    # -- clients --------------------------------------------------------------

    async def _serve_clients(self) -> None:
        async for request in self.clients.inbound:
            assert self._nursery is not None
            self._nursery.start_soon(self._answer, request)

    async def _answer(self, request: ClientMessage) -> None:
        if len(request.parts) == 1 and self._frame_handler is not None:
            frame = await self._frame_handler(request.parts[0])
            if frame is not None:
                self.clients.reply(request.routing_id, [frame])
                return
        self.clients.reply(request.routing_id, [to_cbor(await self._builtin(request))])

    async def _builtin(self, request: ClientMessage) -> Any:
        try:
            if len(request.parts) != 1:
                raise DecodeError("a request is one frame")
            msg = from_cbor(request.parts[0])
            handler = self._client_handlers.get(type(msg))
            return (await handler(msg)) if handler is not None else {"error": "unknown request"}
        except DecodeError as exc:
            return {"error": f"bad request: {exc}"}
        except Exception as exc:  # a handler's bug must not take the node down
            log.exception("%s: client request failed", self.config.node_id)
            return {"error": f"internal error: {type(exc).__name__}"}

    async def _status(self, _request: NodeStatusRequest) -> NodeStatus:
        rows = tuple(MemberRow(node=m.node_id, state=m.state, incarnation=m.incarnation,
                               peer_addr=m.meta.peer_addr) for m in self.gossip.members())
        return NodeStatus(node=self.config.node_id, members=rows,
                          counters=tuple(sorted((self.peer.counters()
                                                 | self.demux.counters()).items())))

    # -- lifetime -------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.net.run)
                for part in (self.peer.run, self.clients.run, self.events.run):
                    await nursery.start(part)
                for driver in self.drivers.values():
                    await nursery.start(driver.run)
                nursery.start_soon(self.demux.run, self.peer.inbound)
                nursery.start_soon(self._serve_clients)
                for task in self._tasks:
                    nursery.start_soon(task)
                task_status.started()
        finally:
            self.store.close()
            self.net.close()

    async def stop(self) -> None:
        """Leave gracefully, then stop every task."""
        if self._nursery is None:
            return
        self.driver.command(Leave())
        await trio.sleep(self.config.leave_grace_s)  # let the leave announcement go out
        self._nursery.cancel_scope.cancel()


class Stoppable(Protocol):
    """A node process: run it in a nursery, ask its endpoints, stop it gracefully."""

    async def run(self, *, task_status: trio.TaskStatus[None] = ...) -> None: ...

    def endpoints(self) -> dict[str, Any]: ...

    async def stop(self) -> None: ...


async def serve_until_signalled(node: Stoppable, name: str) -> None:
    """Run ``node``, print its endpoints as one JSON line, stop it on SIGTERM/SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            print(json.dumps(node.endpoints()), flush=True)
            async for signum in signals:
                log.info("%s: %s, stopping", name, signal.Signals(signum).name)
                await node.stop()
                break
            nursery.cancel_scope.cancel()


async def run_until_signalled(config: NodeConfig) -> None:
    await serve_until_signalled(Node(config), config.node_id)


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


@click.group("node")
def node_cli() -> None:
    """Run a meshfaas node."""


F = TypeVar("F", bound=Callable[..., Any])

# The options every kind of node takes (this membership node and the FaaS node).
_COMMON_OPTIONS = (
    click.option("--id", "node_id", required=True, help="This node's name in the cluster."),
    click.option("--data-dir", required=True, type=click.Path(file_okay=False, path_type=Path)),
    click.option("--peer", default="tcp://127.0.0.1:*", show_default=True,
                 help="Endpoint to bind for peers."),
    click.option("--client", default="tcp://127.0.0.1:*", show_default=True,
                 help="Endpoint to bind for clients."),
    click.option("--events", default=None, help="Endpoint to bind the event PUB socket."),
    click.option("--join", default="", help="Comma-separated peer endpoints of existing nodes."),
    click.option("--keys", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                 help="The cluster's keys/cluster.json, copied into the data directory."),
    click.option("--insecure", is_flag=True,
                 help="No CURVE (anyone who can connect can join)."),
    click.option("--probe-interval-ms", type=int, default=1000, show_default=True),
    click.option("--probe-timeout-ms", type=int, default=200, show_default=True),
    click.option("--push-pull-interval-ms", type=click.IntRange(1, None), default=30_000,
                 show_default=True, help="Period of the full state exchange with one peer "
                 "(every fourth goes to a member held dead, so partitions heal)."),
    click.option("--seed", type=int, default=None, help="Seed of the node's random generator."),
)


def node_options(command: F) -> F:
    """Apply the options every node takes."""
    for option in reversed(_COMMON_OPTIONS):
        command = option(command)
    return command


def gossip_config(probe_interval_ms: int, probe_timeout_ms: int,
                  push_pull_interval_ms: int) -> GossipConfig:
    """The gossip tunables the node options set."""
    return GossipConfig(probe_interval_ns=probe_interval_ms * NS_PER_MS,
                        probe_timeout_ns=probe_timeout_ms * NS_PER_MS,
                        push_pull_interval_ns=push_pull_interval_ms * NS_PER_MS)


def join_list(join: str) -> tuple[str, ...]:
    return tuple(a.strip() for a in join.split(",") if a.strip())


@node_cli.command("start")
@node_options
@click.option("--role", type=click.Choice(["voter", "worker"]), default="worker")
def start(node_id: str, data_dir: Path, peer: str, client: str, events: str | None, join: str,
          keys: Path | None, insecure: bool, role: str, probe_interval_ms: int,
          probe_timeout_ms: int, push_pull_interval_ms: int, seed: int | None) -> None:
    """Start a node and run it until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(message)s")
    gossip = gossip_config(probe_interval_ms, probe_timeout_ms, push_pull_interval_ms)
    config = NodeConfig(node_id=NodeId(node_id), data_dir=data_dir, peer_bind=peer,
                        client_bind=client, events_bind=events,
                        join=join_list(join), keys=keys, insecure=insecure, gossip=gossip,
                        role=role, seed=seed)
    try:
        trio.run(run_until_signalled, config)
    except NodeStartError as exc:
        raise click.ClickException(str(exc)) from None


if __name__ == "__main__":  # python -m meshfaas.runtime.node start ... (the gossip-only node)
    node_cli()
