"""The FaaS node process: :class:`~meshfaas.core.node.MeshNode` on trio, ZeroMQ, SQLite and nsjail.

Theory of operation
-------------------
One trio nursery per node holds: the CURVE network and its ZAP handler, the
peer transport, the client ROUTER, the event PUB, the generic
:class:`~meshfaas.runtime.driver.Driver` running the MeshNode core, the
sandbox :class:`~sandbox.executor.Executor`, and the tasks below. The core
decides; this module only carries out its effects:

* ``invoke`` -- make sure the function's code is here (fetch its blob from a
  peer if not, unpack it once into ``DATA/code/<sha256>``), run it in a
  sandbox, and answer an InvocationRecord. The log tail is published on the
  event PUB (topic ``log\\0<function>``) and kept for ``RecentLogs``;
* ``replicate_blob`` -- offer a code blob to every live peer; each pulls it in
  chunks (:class:`BlobFetch` / :class:`BlobChunk`), checks its SHA-256, stores
  it and answers :class:`BlobStored`; the effect succeeds once a majority
  (counting this node) holds it;
* ``client_local`` -- blob uploads (``UploadChunk``, ``HasBlob``) and recent logs;
* ``result_lookup`` -- a record the core no longer holds in memory, read from
  the node's result store (``DATA/results.db``, :mod:`meshfaas.runtime.results`:
  its own SQLite file, connection and writer thread; the driver's store is a
  :class:`~meshfaas.runtime.results.SplitStore` that sends it the ``m.results``
  writes).

Peer frames are read here first: blob-service messages (tags 705-709) are
served by :class:`BlobService`, everything else goes to the driver, which
decodes nothing twice. Client frames (the client protocol) become
``ClientCall`` commands; ``client_reply`` notifications are routed back by the
``conn`` handle this module chose.

Stopping (SIGTERM or SIGINT): the node stops taking client requests, waits up
to ``drain_s`` for invocations it is running to finish, leaves the gossip
group, and closes. Every change acknowledged to a client is already durable on a
majority (Paxos). An invocation's reply does not wait for its result record: the
record is committed to the result store of the entry node and of the node that
ran it within about ``RESULT_SYNC_DELAY_S`` plus the store's batch delay, at
``synchronous=NORMAL`` (why that loses nothing acknowledged:
:mod:`meshfaas.runtime.results`), and whatever is still pending is committed
when the node stops.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import sys
import tempfile
import zipfile
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio
import zmq

from gossip import GossipConfig, MemberEvent
from meshfaas.core import client_proto as proto
from meshfaas.core import faas
from meshfaas.core.codec import DecodeError, EncodeError, from_cbor, message, to_cbor
from meshfaas.core.faas_package import PackageError, check_entry_name, normalize_zip
from meshfaas.core.node import (
    ClientCall,
    ClientReply,
    InvokeTask,
    JoinMesh,
    LeaveMesh,
    LocalCall,
    MeshConfig,
    MeshNode,
    ReplicateBlob,
    SetWarm,
    remembered_peers,
)
from meshfaas.core.results import LOOKUP_KIND, ResultLookup
from meshfaas.core.types import Effect, EffectResult, NodeId, Notification
from meshfaas.runtime.clock import SystemClock
from meshfaas.runtime.driver import Driver
from meshfaas.runtime.journal import JournaledStore
from meshfaas.runtime.messages import MemberRow, NodeStatus, NodeStatusRequest
from meshfaas.runtime.node import (
    NodeStartError,
    cluster_security,
    gossip_config,
    join_list,
    node_options,
    serve_until_signalled,
)
from meshfaas.runtime.results import ResultStore, SplitStore, move_legacy_results
from meshfaas.runtime.store import BlobStore, set_aside
from meshfaas.runtime.transport import (
    ClientMessage,
    ClientRouter,
    EventPublisher,
    Network,
    PeerTransport,
)
from paxos import api as paxos_api
from sandbox.executor import Executor, ExecutorConfig, FunctionSpec, InvocationResult

log = logging.getLogger("meshfaas.mesh")

BLOB_CHUNK_BYTES = 1024 * 1024
BLOB_REQUEST_TIMEOUT_S = 3.0
BLOB_REPLICATE_TIMEOUT_S = 60.0
CODE_FETCH_PATIENCE_S = 5.0  # how long an invocation keeps looking for its code's blob
CODE_FETCH_RETRY_S = 0.2
RECENT_LOGS_PER_FUNCTION = 200
CLIENT_BATCH = 64  # client requests handled per turn of the socket owner
WARM_REFRESH_S = 0.5
# Invocation results (already answered) wait up to this long to share one sync
# (Driver lazy tables; docs/performance.md).
RESULT_SYNC_DELAY_S = 0.01


# ---------------------------------------------------------------------------
# Blob service messages (tags 705-709)
# ---------------------------------------------------------------------------


@message(705)
@attrs.frozen(kw_only=True)
class BlobOffer:
    """``sha256`` (``size`` bytes) is stored at the sender: pull it if you lack it."""

    xfer_id: int
    sha256: str
    size: int


@message(706)
@attrs.frozen(kw_only=True)
class BlobStored:
    """The answer to an offer: the blob is (or could not be) stored here."""

    xfer_id: int
    sha256: str
    ok: bool
    error: str = ""


@message(707)
@attrs.frozen(kw_only=True)
class BlobFetch:
    req_id: int
    sha256: str
    offset: int
    length: int


@message(708)
@attrs.frozen(kw_only=True)
class BlobChunk:
    req_id: int
    sha256: str
    offset: int
    total: int
    data: bytes
    found: bool = True


BLOB_MESSAGES = (BlobOffer, BlobStored, BlobFetch, BlobChunk)


async def fetch_with_patience(fetch: Callable[[list[str]], Awaitable[tuple[bool, str]]],
                              first: Sequence[str], reachable: Callable[[], Sequence[str]],
                              patience_s: float = CODE_FETCH_PATIENCE_S,
                              retry_s: float = CODE_FETCH_RETRY_S) -> tuple[bool, str]:
    """Fetch a blob from the peers ``first`` (the core's sources), and, while that
    fails, again every ``retry_s`` from those and every peer ``reachable()`` names
    then, for up to ``patience_s``; (ok, error) of the last try. A node just
    started may run an invocation before its gossip has heard any peer (Paxos
    reached it first): the core then names no source, and the peers it can reach
    appear a moment later. Seen as "no peer of 0 had blob" in a real-mesh test."""
    deadline = trio.current_time() + patience_s
    peers = list(first)
    while True:
        ok, error = await fetch(peers)
        if ok or trio.current_time() + retry_s > deadline:
            return ok, error
        await trio.sleep(retry_s)
        peers = sorted(set(first) | set(reachable()))


class BlobService:
    """Moves content-addressed blobs between nodes, pulling in chunks."""

    def __init__(self, node_id: NodeId, blobs: BlobStore, send: Any) -> None:
        self.node_id = node_id
        self.blobs = blobs
        self._send = send  # send(dst, msg) -> bool
        self._next = 0
        self._waiting: dict[int, tuple[trio.Event, list[Any]]] = {}
        self._pulling: dict[str, trio.Event] = {}
        self._nursery: trio.Nursery | None = None

    def _new_id(self) -> int:
        self._next += 1
        return self._next

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def handle(self, src: NodeId, msg: Any) -> None:
        if isinstance(msg, BlobFetch):
            self._serve_fetch(src, msg)
        elif isinstance(msg, BlobOffer):
            if self._nursery is not None:
                self._nursery.start_soon(self._take_offer, src, msg)
        elif isinstance(msg, (BlobChunk, BlobStored)):
            waiting = self._waiting.get(msg.req_id if isinstance(msg, BlobChunk) else msg.xfer_id)
            if waiting is not None:
                waiting[1].append((src, msg))
                waiting[0].set()

    def _serve_fetch(self, src: NodeId, msg: BlobFetch) -> None:
        path = self.blobs.path(msg.sha256) if _is_sha(msg.sha256) else None
        if path is None or not path.exists():
            self._send(src, BlobChunk(req_id=msg.req_id, sha256=msg.sha256, offset=msg.offset,
                                      total=0, data=b"", found=False))
            return
        length = max(0, min(msg.length, BLOB_CHUNK_BYTES))
        with path.open("rb") as f:
            f.seek(msg.offset)
            data = f.read(length)
        self._send(src, BlobChunk(req_id=msg.req_id, sha256=msg.sha256, offset=msg.offset,
                                  total=path.stat().st_size, data=data))

    async def _take_offer(self, src: NodeId, offer: BlobOffer) -> None:
        ok, error = True, ""
        if not self.blobs.has(offer.sha256):
            ok, error = await self.fetch(offer.sha256, offer.size, [src])
        self._send(src, BlobStored(xfer_id=offer.xfer_id, sha256=offer.sha256, ok=ok, error=error))

    async def _request(self, dst: NodeId, msg: BlobFetch) -> BlobChunk | None:
        event, box = trio.Event(), list[Any]()
        self._waiting[msg.req_id] = (event, box)
        try:
            if not self._send(dst, msg):
                return None
            with trio.move_on_after(BLOB_REQUEST_TIMEOUT_S):
                await event.wait()
            return box[0][1] if box else None
        finally:
            self._waiting.pop(msg.req_id, None)

    async def fetch(self, sha256: str, size: int, peers: list[str]) -> tuple[bool, str]:
        """Pull ``sha256`` from the first peer that has it; (ok, error)."""
        if not _is_sha(sha256):
            return False, "not a sha256"
        if self.blobs.has(sha256):
            return True, ""
        pulling = self._pulling.get(sha256)
        if pulling is not None:  # someone else is pulling it: wait for them
            await pulling.wait()
            return (True, "") if self.blobs.has(sha256) else (False, "a concurrent pull failed")
        done = self._pulling[sha256] = trio.Event()
        try:
            for peer in peers:
                data = await self._pull_from(NodeId(peer), sha256, size)
                if data is not None and hashlib.sha256(data).hexdigest() == sha256:
                    await trio.to_thread.run_sync(self.blobs.put, data)
                    return True, ""
            return False, f"no peer of {len(peers)} had blob {sha256[:12]}"
        finally:
            done.set()
            self._pulling.pop(sha256, None)

    async def _pull_from(self, peer: NodeId, sha256: str, size: int) -> bytes | None:
        parts: list[bytes] = []
        offset = 0
        while True:
            chunk = await self._request(peer, BlobFetch(req_id=self._new_id(), sha256=sha256,
                                                        offset=offset, length=BLOB_CHUNK_BYTES))
            if chunk is None or not chunk.found or chunk.offset != offset:
                return None
            parts.append(chunk.data)
            offset += len(chunk.data)
            if offset >= chunk.total or not chunk.data:
                return b"".join(parts) if offset == chunk.total == size else None

    async def replicate(self, task: ReplicateBlob) -> EffectResult:
        """Offer the blob to every peer; succeed once a majority (with us) stores it."""
        if not self.blobs.has(task.sha256):
            return EffectResult(effect_id=0, ok=False, error="the blob was never uploaded here")
        stored, need = 1, task.majority
        if stored >= need:
            return EffectResult(effect_id=0, ok=True)
        xfer = self._new_id()
        event, box = trio.Event(), list[Any]()
        self._waiting[xfer] = (event, box)
        try:
            for peer in task.peers:
                self._send(NodeId(peer), BlobOffer(xfer_id=xfer, sha256=task.sha256, size=task.size))
            seen: set[str] = set()
            with trio.move_on_after(BLOB_REPLICATE_TIMEOUT_S):
                while stored < need:
                    await event.wait()
                    event = trio.Event()
                    self._waiting[xfer] = (event, box)
                    for src, answer in box:
                        if answer.ok and src not in seen:
                            seen.add(src)
                            stored += 1
                    box.clear()
        finally:
            self._waiting.pop(xfer, None)
        if stored >= need:
            return EffectResult(effect_id=0, ok=True)
        return EffectResult(effect_id=0, ok=False,
                            error=f"stored on {stored} of the {need} nodes a majority needs")


def _is_sha(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


# ---------------------------------------------------------------------------
# The node
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MeshProcessConfig:
    node_id: str
    data_dir: Path
    voters: tuple[str, ...]
    peer_bind: str = "tcp://127.0.0.1:*"
    client_bind: str = "tcp://127.0.0.1:*"
    events_bind: str | None = None
    join: tuple[str, ...] = ()
    keys: Path | None = None
    insecure: bool = False
    capacity: int = 8
    sandbox_backend: str = "nsjail"
    bootstrap_key: Path | None = None
    gossip: GossipConfig = attrs.field(factory=GossipConfig)
    drain_s: float = 10.0
    async_retry_base_s: float = 60.0
    routing: str = "least-loaded"
    uid_base: int = 200_000
    disk_lost: bool = False
    result_retention_s: float = 3600.0
    result_max_mb: int = 4096
    seed: int | None = None


def _open_store(data_dir: Path) -> tuple[JournaledStore, dict[str, dict[Any, Any]], bool]:
    """The node's store and its records; True when a damaged store was set aside.

    A damaged store (a record failing its checksum, an unreadable file) is moved
    to ``node.db.damaged-<time>`` and the node starts empty *as a replica that
    lost its disk*: it does not vote in Paxos until it has caught up, so it never
    acts on promises it no longer remembers.
    """
    path = data_dir / "node.db"
    store = JournaledStore(path)
    loaded = store.load_checked()
    if loaded.ok:
        return store, loaded.tables, False
    store.close()
    damaged = ", ".join(f"{c.table}: {c.reason}" for c in loaded.corrupt[:5])
    stamp = set_aside(path)
    log.error("the store in %s is damaged (%s); set aside as node.db.damaged-%s. This node "
              "rejoins as a replica that lost its disk: it votes again once caught up.",
              data_dir, loaded.error or damaged, stamp)
    store = JournaledStore(path)
    return store, store.load_checked().tables, True


def read_bootstrap_key(path: Path | None) -> faas.PutApiKey | None:
    """The first admin key's public half, written by ``meshfaas up`` (no secret in it)."""
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
        return faas.PutApiKey(key_id=raw["key_id"], name=raw.get("name", "admin"), role="admin",
                              salt=bytes.fromhex(raw["salt"]),
                              secret_hash=bytes.fromhex(raw["secret_hash"]), wall_ns=0)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise NodeStartError(f"cannot read the bootstrap key {path}: {exc}") from None


class MeshProcess:
    """One meshfaas node process. See the module docstring."""

    def __init__(self, config: MeshProcessConfig) -> None:
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        security = cluster_security(config.data_dir, config.keys, config.join, config.insecure)
        self.cluster_id = security.keys.cluster_id if security.keys else "insecure"
        self.public_key = security.keys.public_key.decode() if security.keys else ""
        from meshfaas.core.codec import Codec

        self.codec = Codec(self.cluster_id)
        self.store, disk, damaged = _open_store(config.data_dir)
        self.disk_lost = damaged or config.disk_lost
        self.blobs = BlobStore(config.data_dir / "blobs")
        self.code_root = config.data_dir / "code"
        self.net = Network(security)
        self.node_id = NodeId(config.node_id)
        try:
            self._bind(config)
        except zmq.ZMQError as exc:
            self.store.close()
            self.net.close()
            raise NodeStartError(f"cannot bind the node's sockets: {exc}") from None
        self.results = ResultStore(config.data_dir / "results.db",
                                   retention_s=config.result_retention_s,
                                   max_bytes=config.result_max_mb * 2**20)
        move_legacy_results(self.store, disk, self.results)
        self.executor = Executor(ExecutorConfig(
            data_dir=str(config.data_dir), backend=config.sandbox_backend,  # type: ignore[arg-type]
            # a gateway (capacity 0) never runs anything: the core refuses first
            max_sandboxes=max(config.capacity * 2, 8), max_per_function=max(config.capacity, 1),
            uid_base=config.uid_base))
        self.clock = SystemClock()
        self.seeds = self._seed_ids(disk)
        mesh_config = MeshConfig(
            node_id=config.node_id, voters=tuple(config.voters), capacity=config.capacity,
            runtimes=tuple(self.executor.runtimes()), peer_addr=self.peer.endpoint,
            client_addr=self.clients.endpoint, bootstrap_key=read_bootstrap_key(config.bootstrap_key),
            gossip=config.gossip, async_retry_base_ns=int(config.async_retry_base_s * 1e9),
            routing=config.routing,
            result_retention_ns=int(config.result_retention_s * 1e9))
        rng = random.Random(config.seed if config.seed is not None else os.urandom(16))
        self.core = MeshNode(mesh_config, disk, rng, self.clock.now(), seeds=self.seeds,
                             disk_lost=self.disk_lost)
        self.driver = Driver(self.core, node_id=self.node_id, transport=self.peer,
                             codec=self.codec, store=SplitStore(self.store, self.results),
                             clock=self.clock,
                             aliases=frozenset({self.peer.endpoint}),
                             lazy_tables=frozenset({"m.results"}),
                             lazy_delay_s=RESULT_SYNC_DELAY_S, all_syncs_in_loop=True)
        self.blob_service = BlobService(self.node_id, self.blobs, self._send_peer)
        self._peer_addresses = {self.node_id, self.peer.endpoint}  # a seed: its endpoint
        self.driver.observe(self._on_notification)
        self.driver.register_effect("invoke", self._effect_invoke, start=self._begin_invoke)
        self.driver.register_effect("replicate_blob", self._effect_replicate)
        self.driver.register_effect("client_local", self._effect_local)
        self.driver.register_effect(LOOKUP_KIND, self._effect_result_lookup)
        self._code_dirs: dict[str, Path] = {}  # sha256 -> unpacked code, once per process
        # conn -> (routing id, request id) of each client request not answered yet
        self._conns: dict[str, tuple[bytes, str]] = {}
        self._in_hand: set[tuple[bytes, str]] = set()  # the same keys, for the watch pings
        self._next_conn = 0
        self._recent: dict[str, deque[proto.LogEvent]] = {}
        self._uploads: dict[str, tuple[int, Any]] = {}
        self._accepting = True
        self._nursery: trio.Nursery | None = None
        self._member_states: dict[str, str] = {}  # for the log: state changes only
        # invocation id -> (spec, start wall time) of a run _begin_invoke started
        self._begun: dict[str, tuple[FunctionSpec, int]] = {}

    def _bind(self, config: MeshProcessConfig) -> None:
        self.peer = PeerTransport(self.net, self.node_id, bind=config.peer_bind, codec=self.codec)
        # Requests are handled inline, by the socket's owner (a task switch less
        # per request), 64 at most before the loop's other work gets a turn.
        self.clients = ClientRouter(self.net, bind=config.client_bind, any_client_key=True,
                                    on_request=self._on_client, on_burst_end=self._end_burst,
                                    batch=CLIENT_BATCH)
        host = config.client_bind.rsplit(":", 1)[0]
        self.events = EventPublisher(self.net, bind=config.events_bind or f"{host}:*",
                                     any_client_key=True)

    def _seed_ids(self, disk: Mapping[str, Mapping[Any, Any]]) -> list[str]:
        """Join through ``--join`` and through every peer this node knew before it
        stopped (so a restarted node rejoins on its own, ``--join`` or not)."""
        seeds = []
        for addr in self.config.join:
            if addr != self.peer.endpoint:
                self.peer.set_peer(NodeId(addr), addr)
                seeds.append(addr)
        for node, addr in remembered_peers(disk).items():
            if node != self.node_id and addr != self.peer.endpoint:
                self.peer.set_peer(NodeId(node), addr)
                seeds.append(node)
        return seeds

    def endpoints(self) -> dict[str, Any]:
        return {"node": self.config.node_id, "cluster": self.cluster_id,
                "public_key": self.public_key, "peer": self.peer.endpoint,
                "client": self.clients.endpoint, "events": self.events.endpoint,
                "runtimes": self.executor.runtimes()}

    # -- peers ------------------------------------------------------------------

    def _send_peer(self, dst: NodeId, msg: Any) -> bool:
        try:
            frame = self.codec.encode(self.node_id, dst, msg)
        except EncodeError:
            log.exception("cannot encode %s", type(msg).__name__)
            return False
        return self.peer.send(dst, frame)

    def _on_peer_frame(self, frame: bytes) -> None:
        """One peer frame, from the ROUTER's owner task (PeerTransport.handle_inline);
        the burst's persisting waits for the driver's flush at the burst's end."""
        try:
            env = self.codec.decode(frame)
        except DecodeError:
            self.peer.stats.inc("decode_errors")
            return
        if env.dst not in self._peer_addresses:
            self.peer.stats.inc("dropped_misaddressed")
            return
        if isinstance(env.msg, BLOB_MESSAGES):
            self.blob_service.handle(NodeId(env.src), env.msg)
        else:
            self.driver.hold()
            self.driver.deliver(NodeId(env.src), env.msg)

    def _end_burst(self) -> None:
        """A burst of client requests ended: the driver persists what they left."""
        try:
            self.driver.flush()
        except Exception:  # a bug; the client socket must keep running
            log.exception("%s: the driver's flush failed", self.node_id)

    def _on_notification(self, note: Notification) -> None:
        if note.kind == "member" and isinstance(note.data, MemberEvent):
            event = note.data
            if event.node_id != self.node_id and event.meta.peer_addr:
                self.peer.set_peer(event.node_id, event.meta.peer_addr)
            if self._member_states.get(event.node_id) != event.state:  # not metadata news
                self._member_states[event.node_id] = event.state
                log.info("%s: member %s is %s (incarnation %d)", self.node_id, event.node_id,
                         event.state, event.incarnation)
        elif note.kind == "client_reply" and isinstance(note.data, ClientReply):
            self._send_reply(note.data)
        elif note.kind == "invocation" and isinstance(note.data, proto.InvocationRecord):
            self._publish_invocation(note.data)
        elif note.kind == paxos_api.NOTE_APPLIED and isinstance(note.data, paxos_api.Applied):
            self._prepare_deployed(note.data)
        elif note.kind == paxos_api.NOTE_LEADER:
            leader, ballot = note.data
            log.info("%s: the Paxos leader is %s (ballot %s)", self.node_id, leader, ballot)

    def _prepare_deployed(self, applied: paxos_api.Applied) -> None:
        """On a deploy, have spare jails of the function's shape ready, so even its
        first cold start here skips the jail and interpreter start."""
        for command in applied.commands:
            deployed = command.result
            if not isinstance(deployed, faas.Deployed):
                continue
            fn = deployed.function
            if (fn.config.runtime not in self.executor.runtimes() or fn.config.requirements
                    or self.config.capacity == 0):
                continue
            spec = FunctionSpec(name=fn.name, handler=fn.config.handler,
                                code_dir=str(self.code_root / fn.code.sha256),
                                runtime=fn.config.runtime, memory_mb=fn.config.memory_mb,
                                timeout_ms=fn.config.timeout_s * 1000, env=fn.config.env)
            try:
                self.executor.prepare(spec)
            except Exception:  # a spare is an optimisation: never let it stop the node
                log.exception("could not prepare spare jails for %s", fn.name)

    # -- clients ----------------------------------------------------------------

    def _on_client(self, request: ClientMessage) -> None:
        if len(request.parts) != 1:
            return
        try:
            decoded = proto.decode_request(request.parts[0])
        except DecodeError as exc:
            if self._operator_request(request):
                return
            self.clients.reply(request.routing_id, [proto.encode(proto.fail(
                "", "BadRequest", f"malformed request: {exc}"))])
            return
        if not self._accepting:
            self.clients.reply(request.routing_id, [proto.encode(proto.fail(
                decoded.request_id, "Unavailable", "the node is shutting down",
                retryable=True))])
            return
        body = decoded.body
        if type(body) is proto.Ping and body.awaiting:
            self._answer_watch(request.routing_id, decoded.request_id, body.awaiting)
            return
        self._next_conn += 1
        conn = str(self._next_conn)
        key = (request.routing_id, decoded.request_id)
        self._conns[conn] = key
        self._in_hand.add(key)
        try:
            self.driver.hold()
            self.driver.command(ClientCall(conn=conn, request=decoded))
        except Exception:  # a bug, not the client's fault: answer and keep serving
            log.exception("request %s (%s) failed inside the node", decoded.request_id,
                          type(decoded.body).__name__)
            if self._conns.pop(conn, None) is not None:
                self._in_hand.discard(key)
                self.clients.reply(request.routing_id, [proto.encode(proto.fail(
                    decoded.request_id, "Internal", "the node failed to handle the request"))])

    def _operator_request(self, request: ClientMessage) -> bool:
        """The membership probe operators and tests use (needs the cluster's keys)."""
        try:
            msg = from_cbor(request.parts[0])
        except DecodeError:
            return False
        if not isinstance(msg, NodeStatusRequest):
            return False
        rows = tuple(MemberRow(node=m.node_id, state=m.state, incarnation=m.incarnation,
                               peer_addr=m.meta.peer_addr) for m in self.core.gossip.members())
        counters = {**self.peer.counters(),
                    **{f"core.{k}": v for k, v in self.core.counters.items()}}
        status = NodeStatus(node=self.node_id, members=rows,
                            counters=tuple(sorted(counters.items())))
        self.clients.reply(request.routing_id, [to_cbor(status)])
        return True

    def _answer_watch(self, routing_id: bytes, ping_id: str, awaiting: str) -> None:
        """A caller's liveness ping: say whether its awaited request, sent on this
        same connection, is in hand here. It is not when this process started
        after the request was sent (the connection reconnected to a restarted
        node), and the caller fails at once rather than at its timeout."""
        pong = proto.Pong(node=self.node_id, awaiting=awaiting,
                          known=(routing_id, awaiting) in self._in_hand)
        self.clients.reply(routing_id, [proto.encode(proto.ok(ping_id, pong))])

    def _send_reply(self, reply: ClientReply) -> None:
        key = self._conns.pop(reply.conn, None)
        if key is None:
            return
        self._in_hand.discard(key)
        routing_id = key[0]
        try:
            frame = proto.encode(reply.response)
        except EncodeError as exc:
            frame = proto.encode(proto.fail(reply.response.request_id, "Internal",
                                            f"the answer could not be encoded: {exc}"))
        self.clients.reply(routing_id, [frame])

    # -- events -----------------------------------------------------------------

    def _publish_invocation(self, record: proto.InvocationRecord) -> None:
        """Keep the log tail for RecentLogs; publish both events, encoding each only
        if someone subscribed to its topic (usually nobody; see docs/performance.md)."""
        if record.function:
            event = proto.LogEvent(function=record.function, invocation_id=record.invocation_id,
                                   node=record.node, wall_ns=self.clock.now().wall_ns,
                                   text=record.log_tail)
            recent = self._recent.setdefault(record.function,
                                             deque(maxlen=RECENT_LOGS_PER_FUNCTION))
            recent.append(event)
            topic = proto.log_topic(record.function)
            if self.events.wants(topic):
                self.events.publish(topic, proto.encode(event))
        topic = proto.INVOCATION_TOPIC_PREFIX + record.function.encode()
        if self.events.wants(topic):
            self.events.publish(topic, proto.encode(attrs.evolve(record, payload=None)))

    # -- effects ------------------------------------------------------------------

    def _begin_invoke(self, effect: Effect) -> None:
        """The invoke effect's start hook: when a warm sandbox of the function is
        idle, it gets the request at once, before this task yields; the effect's
        own task then only collects the answer (one scheduling round sooner)."""
        task: InvokeTask = effect.args
        code_dir = self._code_dirs.get(task.code.sha256)
        if code_dir is None or task.config.requirements:
            return
        spec = _spec(task, code_dir, None)
        try:
            if self.executor.begin(spec, task.version, task.payload, task.invocation_id):
                self._begun[task.invocation_id] = (spec, self.clock.now().wall_ns)
        except Exception:  # an optimisation only: the effect's task runs it anyway
            log.exception("could not start invocation %s early", task.invocation_id)

    async def _effect_invoke(self, effect: Effect) -> EffectResult:
        task: InvokeTask = effect.args
        begun = self._begun.pop(task.invocation_id, None)
        if begun is not None:
            spec, started = begun
            result = await self.executor.invoke(spec, task.version, task.payload,
                                                task.invocation_id)
            return EffectResult(effect_id=effect.effect_id, ok=True,
                                value=_record(task, result, self.node_id, started))
        code_dir = self._code_dirs.get(task.code.sha256)
        if code_dir is None:  # the first run of this code here: fetch and unpack it once
            ok, error = await fetch_with_patience(
                lambda peers: self.blob_service.fetch(task.code.sha256, task.code.size_bytes,
                                                      peers),
                task.peers, lambda: [p for p in self.peer.peers() if p != self.node_id])
            if not ok:
                return _failed(effect, task, "Sandbox.CodeUnavailable", error)
            try:
                code_dir = await trio.to_thread.run_sync(self._unpacked, task.code.sha256)
            except (PackageError, OSError) as exc:
                return _failed(effect, task, "Sandbox.BadCode", str(exc))
            self._code_dirs[task.code.sha256] = code_dir
        layer = None
        if task.config.requirements:
            try:
                layer = await self.executor.ensure_layer(task.config.requirements,
                                                         task.config.runtime)
            except Exception as exc:  # a failed pip install is the deploy's error, shown as is
                return _failed(effect, task, "Runtime.DependencyError", str(exc))
        spec = _spec(task, code_dir, layer)
        started = self.clock.now().wall_ns
        result = await self.executor.invoke(spec, task.version, task.payload, task.invocation_id)
        return EffectResult(effect_id=effect.effect_id, ok=True,
                            value=_record(task, result, self.node_id, started))

    def _unpacked(self, sha256: str) -> Path:
        """The code blob unpacked (once) into DATA/code/<sha256>, world-readable."""
        target = self.code_root / sha256
        if target.exists():
            return target
        data = self.blobs.get(sha256)
        if data is None:
            raise OSError(f"blob {sha256} vanished")
        package = normalize_zip(data)  # refuses names that would land outside the folder
        self.code_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.code_root, prefix=".unpack-"))
        with zipfile.ZipFile(io.BytesIO(package.zip_bytes)) as archive:
            for info in archive.infolist():
                if info.is_dir() or check_entry_name(info.filename) is not None:
                    continue
                path = staging / info.filename
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(archive.read(info))
                path.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
        for folder in [staging, *[p for p in staging.rglob("*") if p.is_dir()]]:
            folder.chmod(0o755)
        try:
            staging.rename(target)
        except OSError:  # a concurrent unpack won
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
        return target

    async def _effect_replicate(self, effect: Effect) -> EffectResult:
        result = await self.blob_service.replicate(effect.args)
        return attrs.evolve(result, effect_id=effect.effect_id)

    async def _effect_local(self, effect: Effect) -> EffectResult:
        call: LocalCall = effect.args
        response = await self._local(call)
        return EffectResult(effect_id=effect.effect_id, ok=True, value=response)

    async def _effect_result_lookup(self, effect: Effect) -> EffectResult:
        lookup: ResultLookup = effect.args
        found = await trio.to_thread.run_sync(self.results.get, lookup.invocation_id)
        return EffectResult(effect_id=effect.effect_id, ok=True, value=found)

    async def _local(self, call: LocalCall) -> proto.ClientResponse:
        body, rid = call.body, call.request_id
        if isinstance(body, proto.HasBlob):
            return proto.ok(rid, self.blobs.has(body.sha256) if _is_sha(body.sha256) else False)
        if isinstance(body, proto.UploadChunk):
            return await self._upload(rid, body)
        if isinstance(body, proto.RecentLogs):
            recent = list(self._recent.get(body.name, ()))[-max(1, min(body.limit, 1000)):]
            return proto.ok(rid, recent)
        return proto.fail(rid, "BadRequest", f"unsupported request {type(body).__name__}")

    async def _upload(self, rid: str, chunk: proto.UploadChunk) -> proto.ClientResponse:
        if not _is_sha(chunk.sha256):
            return proto.fail(rid, "BadRequest", "sha256 must be 64 lowercase hex digits")
        if chunk.total_bytes > faas.CODE_MAX_BYTES or chunk.total_bytes < 0:
            return proto.fail(rid, "BadRequest", f"code over {faas.CODE_MAX_BYTES} bytes")
        if self.blobs.has(chunk.sha256):
            return proto.ok(rid, proto.BlobProgress(received_bytes=chunk.total_bytes, complete=True))
        received, buf = self._uploads.get(chunk.sha256, (0, bytearray()))
        if chunk.offset == 0:
            received, buf = 0, bytearray()
        if chunk.offset != received:
            return proto.fail(rid, "BadRequest", f"expected offset {received}, got {chunk.offset}")
        buf.extend(chunk.data)
        received += len(chunk.data)
        if received > chunk.total_bytes:
            self._uploads.pop(chunk.sha256, None)
            return proto.fail(rid, "BadRequest", "more data than total_bytes")
        if received < chunk.total_bytes:
            self._uploads[chunk.sha256] = (received, buf)
            return proto.ok(rid, proto.BlobProgress(received_bytes=received, complete=False))
        self._uploads.pop(chunk.sha256, None)
        data = bytes(buf)
        if hashlib.sha256(data).hexdigest() != chunk.sha256:
            return proto.fail(rid, "BadRequest", "the uploaded bytes do not match their sha256")
        try:
            normalize_zip(data)
        except PackageError as exc:
            return proto.fail(rid, "BadRequest", f"refused code package: {exc}")
        await trio.to_thread.run_sync(self.blobs.put, data)
        return proto.ok(rid, proto.BlobProgress(received_bytes=received, complete=True))

    # -- lifetime -----------------------------------------------------------------

    async def _refresh_warm(self) -> None:
        last: tuple[str, ...] = ()
        while True:
            warm = tuple(sorted(f"{name}" for name in self.executor.warm_functions()))
            if warm != last:
                last = warm
                self.driver.command(SetWarm(warm=warm))
            await trio.sleep(WARM_REFRESH_S)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.net.run)
                for part in (self.peer.run, self.events.run, self.blob_service.run,
                             self.executor.run, self.driver.run,
                             self.clients.run):  # last: it hands requests to the driver
                    await nursery.start(part)
                # From now on peer frames are handled by the ROUTER's owner task as
                # they arrive (those queued while the driver started first), each
                # burst ending with the driver's flush (docs/performance.md, session 4).
                self.peer.handle_inline(self._on_peer_frame, self.driver.flush)
                nursery.start_soon(self._refresh_warm)
                if self.seeds:
                    self.driver.command(JoinMesh(seeds=tuple(self.seeds)))
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await self.executor.aclose()
            self.store.close()
            self.results.close()  # commits what the driver flushed to it on the way out
            self.net.close()

    async def stop(self) -> None:
        """Stop taking requests, let running invocations finish, leave, close."""
        if self._nursery is None:
            return
        self._accepting = False
        with trio.move_on_after(self.config.drain_s):
            while self.core.running or self.core.routing:
                await trio.sleep(0.05)
        self.driver.command(LeaveMesh())
        await trio.sleep(0.3)  # let the leave announcement and last replies go out
        self._nursery.cancel_scope.cancel()


def _spec(task: InvokeTask, code_dir: Path, layer: str | None) -> FunctionSpec:
    return FunctionSpec(name=task.function, handler=task.config.handler, code_dir=str(code_dir),
                        runtime=task.config.runtime, memory_mb=task.config.memory_mb,
                        timeout_ms=task.config.timeout_s * 1000, env=task.config.env,
                        layer=layer)


def _failed(effect: Effect, task: InvokeTask, error_type: str, text: str) -> EffectResult:
    record = proto.InvocationRecord(invocation_id=task.invocation_id, function=task.function,
                                    status="failed", version=task.version, error_type=error_type,
                                    error_message=text[:4096], memory_mb=task.config.memory_mb)
    return EffectResult(effect_id=effect.effect_id, ok=True, value=record)


_STATUS: dict[str, proto.InvocationStatus] = {"ok": "succeeded", "timeout": "timeout"}


def _record(task: InvokeTask, result: InvocationResult, node: str,
            started_wall_ns: int) -> proto.InvocationRecord:
    status = _STATUS.get(result.status, "failed")
    error = result.error or {}
    return proto.InvocationRecord(
        invocation_id=task.invocation_id, function=task.function, status=status,
        version=task.version, node=node, start_wall_ns=started_wall_ns,
        duration_ns=int(result.duration_ms * 1_000_000), billed_duration_ms=result.billed_ms,
        memory_mb=result.memory_size_mb, max_memory_used_mb=result.max_memory_mb,
        cold_start=result.cold_start, log_tail=result.log_tail[-proto.LOG_TAIL_MAX_BYTES:],
        payload=result.result if status == "succeeded" else None,
        error_type=str(error.get("errorType", "")),
        error_message=str(error.get("errorMessage", ""))[:4096])


# ---------------------------------------------------------------------------
# CLI: meshfaas node start
# ---------------------------------------------------------------------------


@click.group("node")
def node_cli() -> None:
    """Run a meshfaas node."""


@node_cli.command("start")
@node_options
@click.option("--voters", default="", help="Comma-separated ids of the Paxos voters "
              "(default: this node alone).")
@click.option("--capacity", type=click.IntRange(0, 1024), default=8, show_default=True,
              help="Invocations this node runs at once (0: a gateway that only routes).")
@click.option("--sandbox", "sandbox_backend", type=click.Choice(["nsjail", "unsafe"]),
              default="nsjail", show_default=True,
              help="'unsafe' runs user code without isolation: only where nsjail cannot run.")
@click.option("--bootstrap-key", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="The first admin key's public half (written by `meshfaas up`).")
@click.option("--async-retry-delay", "async_retry_s", type=click.FloatRange(0.1, 3600), default=60.0,
              show_default=True, help="Seconds before retrying a failed async invocation "
              "(doubled for the second retry), as Lambda does.")
@click.option("--routing", type=click.Choice(["least-loaded", "random"]), default="least-loaded",
              show_default=True, help="How invocations pick a node ('random' is a baseline).")
@click.option("--uid-base", type=click.IntRange(100_000, 2**31 - 100_000), default=200_000,
              show_default=True, help="First host uid of this node's sandboxes (give each node "
              "on one host its own range).")
@click.option("--result-retention", "result_retention_s", type=click.FloatRange(1, 30 * 86400),
              default=3600.0, show_default=True,
              help="Seconds an invocation's record and result stay readable by request id.")
@click.option("--result-max-mb", "result_max_mb", type=click.IntRange(16, 2**22), default=4096,
              show_default=True, help="Bound on the result store's size (DATA/results.db): "
              "past it the oldest records are deleted before their retention, with a warning.")
@click.option("--disk-lost", is_flag=True, help="This node's data was lost (a new disk): rejoin "
              "without voting in Paxos until caught up.")
def start(node_id: str, data_dir: Path, peer: str, client: str, events: str | None, join: str,
          voters: str, keys: Path | None, insecure: bool, capacity: int, sandbox_backend: str,
          bootstrap_key: Path | None, async_retry_s: float, routing: str, uid_base: int,
          result_retention_s: float, result_max_mb: int, disk_lost: bool,
          probe_interval_ms: int,
          probe_timeout_ms: int, push_pull_interval_ms: int, seed: int | None) -> None:
    """Start a node and run it until SIGTERM or SIGINT."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    gossip = gossip_config(probe_interval_ms, probe_timeout_ms, push_pull_interval_ms)
    voter_ids = tuple(v.strip() for v in voters.split(",") if v.strip()) or (node_id,)
    config = MeshProcessConfig(
        node_id=node_id, data_dir=data_dir, voters=voter_ids, peer_bind=peer, client_bind=client,
        events_bind=events, join=join_list(join),
        keys=keys, insecure=insecure, capacity=capacity, sandbox_backend=sandbox_backend,
        bootstrap_key=bootstrap_key, gossip=gossip, async_retry_base_s=async_retry_s,
        routing=routing, uid_base=uid_base, disk_lost=disk_lost,
        result_retention_s=result_retention_s, result_max_mb=result_max_mb, seed=seed)
    try:
        trio.run(serve_until_signalled, MeshProcess(config), node_id)
    except NodeStartError as exc:
        raise click.ClickException(str(exc)) from None

