"""The mesh node core: gossip, Paxos, the FaaS state machine and routing as one sans-IO core.

Theory of operation
-------------------
A :class:`MeshNode` is what one meshfaas node *is*, with every IO left to its
driver (the trio runtime, or the simulator). It composes two sub-cores:

* a :class:`gossip.Gossip` for membership, failure detection and node
  metadata (addresses, runtimes, capacity, load, warm sandboxes);
* a :class:`paxos.Replica` whose state machine is the
  :class:`~meshfaas.core.faas.FaasStateMachine`;

and adds what belongs to the product: client requests, routing, invocations,
asynchronous retries and the result store.

*Composition.* Peer messages are dispatched by wire tag range (100-199 gossip,
200-299 Paxos, 700-749 this module). Each sub-core's Ready batches are merged
into this core's one :class:`~meshfaas.core.types.Ready`: persisted tables are
prefixed (``g.`` and ``p.``), after-persist sends stay after-persist, and once
the merged batch is durable each sub-core hears ``on_persisted`` for the
batches that went into it. Sub-core notifications are consumed here (a dead
member becomes a Paxos suspicion, an applied entry answers a waiting client)
and the ones the outside cares about are passed on (members, Paxos' applied
entries and leader changes; not its chosen slots, one note per commit on every
node that nothing outside read).

*Clients.* The driver turns every decoded client request into a
:class:`ClientCall` command with an opaque ``conn`` it chose, and sends back
each ``client_reply`` notification (:class:`ClientReply`). Requests are
planned by :func:`meshfaas.core.faas_api.plan`: answered at once, proposed to
Paxos (the reply waits until the entry is applied here, hence durable on a
majority), invoked, or handed to the driver as a ``client_local`` effect
(blob uploads, recent logs). Proposals travel in *lanes*: Paxos sessions
``node/boot/lane``, each with at most one command in flight, retried with the
same sequence number until answered (the session table makes a retry apply
once). A follower that would answer NotFound or Unauthorized first syncs
with the leader (``_wait_if_stale``): what was created through another node
a moment ago may not be applied here yet.

*Invocations.* The entry node routes (:func:`meshfaas.core.router.pick`:
live peers with the runtime, warm preferred, itself against one random other
by load, forwarding only to escape a real imbalance) and
either runs the invocation itself (an ``invoke`` effect) or sends an
:class:`InvokeRequest`. The target refuses when it is full
(:class:`InvokeRefused`; the entry tries another peer, at most
``MAX_ROUTE_ATTEMPTS``) or runs it and answers :class:`InvokeDone`. The entry
resends an :class:`InvokeRequest` nobody confirmed (the target dedups by id);
the target confirms with :class:`InvokeAccepted` only a run that is still
going after ``invoke_confirm_delay_ns``, as a quick run's ``InvokeDone``
confirms it (one message less each way for most invocations). The entry
fails a pending invocation explicitly when its target is declared dead or
when its deadline (the function timeout plus a grace) passes.

*The restart fence.* The target's dedup memory dies with it, so a resend
must not reach a later life of the target that ran it: each request carries
the target's gossip incarnation as the entry knew it, and a life refuses one
stamped below the incarnation it started with (every earlier life's is below:
gossip starts above its durable ceiling) or above its current one. The entry
treats that refusal (``restarted``) like the target's death: outcome unknown,
not rerouted (:meth:`MeshNode._for_earlier_life`; a lost disk: ``_settle_fence``).

*Asynchronous invocations* are accepted through the log (the client's ack
means a majority has it). The Paxos leader runs them: it proposes
``StartAsyncAttempt`` (the log then says who runs attempt n, with a lease),
routes the attempt like a synchronous one, and proposes
``RecordAsyncAttempt`` with the outcome; a failed attempt is retried after
the state machine's backoff, and the third failure dead-letters it. A new
leader records an attempt as failed before retrying it when its lease
expired or when gossip holds the leader that dispatched it dead, so an
attempt is re-run only after a failure (or a presumed one).

*Results.* Every finished invocation's record (status, duration, billed
duration, memory, cold start, node, log tail, payload up to
``RESULT_PAYLOAD_MAX_BYTES``) is written to the result store (table
``m.results``) on the entry node and on the node that ran it, and kept for
``result_retention_ns``. Memory holds only the newest ``max_results`` (the
recent cache; nothing is loaded at start): an older record is read back from
the store through a ``result_lookup`` effect (:mod:`meshfaas.core.results`,
the port). A ``GetResult`` looks in the cache, then the store, then asks
every live peer (:class:`ResultQuery`, answered from the peer's cache or
store), then the replicated async record.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import attrs

from gossip import (
    AddSeeds,
    Gossip,
    GossipConfig,
    Leave,
    MemberEvent,
    MemberInfo,
    NodeMeta,
    UpdateMeta,
)
from meshfaas.core import client_proto as proto
from meshfaas.core import faas, faas_api
from meshfaas.core.codec import message, tag_of
from meshfaas.core.faas import CodeRef, FaasError, FaasStateMachine, FunctionConfig
from meshfaas.core.results import (
    LOOKUP_KIND,
    RESULTS_TABLE,
    ResultLookup,
    stored_result,
    valid_invocation_id,
)
from meshfaas.core.router import (
    MAX_ROUTE_ATTEMPTS,
    PeerView,
    RouteRequest,
    all_shares,
    has_room,
    pick,
    pick_random,
)
from meshfaas.core.types import (
    NS_PER_MS,
    NS_PER_S,
    Deadlines,
    Effect,
    EffectResult,
    NodeId,
    Now,
    Outbox,
    Ready,
)
from paxos import api as paxos_api
from paxos.replica import PaxosConfig, Replica

RESULT_PAYLOAD_MAX_BYTES = 256 * 1024
RESULT_LOOKUPS_MAX = 256  # result_lookup effects in flight; a peer's query beyond is dropped
REFUSED_FULL = "full"  # InvokeRefused reasons: no room (the entry may try another node),
REFUSED_RESTARTED = "restarted"  # or addressed to an earlier life of the target (unknown outcome)
GOSSIP_TAGS = range(100, 200)
PAXOS_TAGS = range(200, 300)
MESH_TAGS = range(700, 750)


# ---------------------------------------------------------------------------
# Configuration, local commands, effects and notifications
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class MeshConfig:
    """Static settings of one node. Durations in nanoseconds."""

    node_id: str
    voters: tuple[str, ...]
    capacity: int = 8
    runtimes: tuple[str, ...] = ("python3.11",)
    peer_addr: str = ""
    client_addr: str = ""
    http_addr: str = ""
    lanes: int = 32
    proposal_retry_ns: int = 500 * NS_PER_MS
    request_timeout_ns: int = 10 * NS_PER_S
    invoke_grace_ns: int = 2 * NS_PER_S
    result_retention_ns: int = 3600 * NS_PER_S
    max_results: int = 10_000  # records in the recent cache (memory); all are in the store
    meta_refresh_ns: int = 250 * NS_PER_MS
    async_scan_ns: int = 200 * NS_PER_MS
    async_lease_grace_ns: int = 5 * NS_PER_S
    async_retry_base_ns: int = 60 * NS_PER_S
    routing: str = "least-loaded"  # or "random": the baseline the benchmarks compare against
    invoke_accept_ns: int = 300 * NS_PER_MS  # resend an unconfirmed InvokeRequest after this
    invoke_sends_max: int = 7  # about 2 s, then give up on the target (Unavailable)
    # A runner confirms an InvokeRequest only if it is still running after this
    # long (well inside invoke_accept_ns): the InvokeDone of a quick run confirms it.
    invoke_confirm_delay_ns: int = 100 * NS_PER_MS
    # A request this node refused stays refused for this long (at most half the
    # async retry delay, so the next attempt of an async invocation, which has
    # the same id, is not refused for it): a late duplicate of it (resent, or
    # duplicated by the network) must not run after the entry routed it elsewhere.
    refusal_memory_ns: int = 10 * NS_PER_S
    # When every candidate is full (slots free up as runs end, and a refusal may
    # come from a stale view of a peer's load), look again after 5, 10, 20 and
    # 40 ms (jittered) before answering Throttled.
    route_wait_rounds: int = 4
    route_wait_base_ns: int = 5 * NS_PER_MS
    bootstrap_key: faas.PutApiKey | None = None
    gossip: GossipConfig = attrs.field(factory=GossipConfig)
    paxos_heartbeat_ns: int = 40 * NS_PER_MS
    paxos_election_ns: int = 400 * NS_PER_MS
    paxos_lease_ns: int = 300 * NS_PER_MS
    paxos_variant: str = ""
    # Which voters get a slot's Accept: "quorum" (a majority; the others get the
    # chosen slots pushed within notice_delay_ns) or "all" (paxos.PaxosConfig.accept_to).
    paxos_accept_to: str = "quorum"
    # How long a commit notice (and, with "quorum", the push of chosen slots to the
    # voter left out) waits for company: at 5 ms, with one client, about two commits
    # in five had the push and its fsync on the left-out voter inside them.
    paxos_notice_delay_ns: int = 20 * NS_PER_MS
    # A follower that would answer NotFound or Unauthorized first syncs with the
    # leader, waiting up to this long for its answer (see cmd_client_call).
    stale_wait_ns: int = 50 * NS_PER_MS
    # After a lost disk, refuse every InvokeRequest stamped with an incarnation this
    # long (gossip learns the earlier life's incarnations meanwhile; see MeshNode).
    lost_disk_fence_ns: int = 5 * NS_PER_S


@attrs.frozen(kw_only=True)
class ClientCall:
    """Command: a decoded client request; ``conn`` is the driver's handle for the reply."""

    conn: str
    request: proto.ClientRequest


@attrs.frozen(kw_only=True)
class JoinMesh:
    """Command: join through these seeds (node ids the transport can resolve)."""

    seeds: tuple[str, ...]


@attrs.frozen(kw_only=True)
class LeaveMesh:
    """Command: leave gracefully (gossip announces it)."""


@attrs.frozen(kw_only=True)
class SetWarm:
    """Command from the driver: the executor's warm sandboxes (``name:version`` keys)."""

    warm: tuple[str, ...]


@attrs.frozen(kw_only=True)
class ClientReply:
    """Notification ``client_reply``: send ``response`` back on ``conn``."""

    conn: str
    response: proto.ClientResponse


@attrs.frozen(kw_only=True)
class InvokeTask:
    """Effect ``invoke``: run one invocation here. The result value is an InvocationRecord."""

    invocation_id: str
    function: str
    version: str
    code: CodeRef
    config: FunctionConfig
    payload: bytes
    peers: tuple[str, ...]  # to fetch the code blob from, if it is not here (_blob_sources)


@attrs.frozen(kw_only=True)
class ReplicateBlob:
    """Effect ``replicate_blob``: store blob ``sha256`` on a majority, then answer ok."""

    sha256: str
    size: int
    peers: tuple[str, ...]
    majority: int


@attrs.frozen(kw_only=True)
class LocalCall:
    """Effect ``client_local``: a request only the driver can answer (blobs, logs).

    The result value is the :class:`~meshfaas.core.client_proto.ClientResponse`.
    """

    request_id: str
    body: Any


# ---------------------------------------------------------------------------
# Wire messages between nodes (tags 700-749)
# ---------------------------------------------------------------------------


@message(700)
@attrs.frozen(kw_only=True)
class InvokeRequest:
    invocation_id: str
    function: str
    version: str
    code: CodeRef
    config: FunctionConfig
    payload: bytes
    round: int = 0  # the entry's routing round: a node that refused an earlier one may run it
    # The target's gossip incarnation as the entry knew it when it built the request
    # (0: unknown, or run locally). A target whose current life started above it
    # refuses (RESTARTED): the request was addressed to an earlier life, which may have run it.
    incarnation: int = 0


@message(701)
@attrs.frozen(kw_only=True)
class InvokeRefused:
    invocation_id: str
    reason: str  # REFUSED_FULL or REFUSED_RESTARTED
    round: int = 0  # of the request refused (a copy of an older round's refusal is stale)


@message(702)
@attrs.frozen(kw_only=True)
class InvokeDone:
    invocation_id: str
    record: proto.InvocationRecord


@message(709)
@attrs.frozen(kw_only=True)
class InvokeAccepted:
    """The target has the invocation (running, or already done and answered)."""

    invocation_id: str


@message(703)
@attrs.frozen(kw_only=True)
class ResultQuery:
    query_id: int
    invocation_id: str


@message(704)
@attrs.frozen(kw_only=True)
class ResultAnswer:
    query_id: int
    record: proto.InvocationRecord | None


# ---------------------------------------------------------------------------
# Internal state records
# ---------------------------------------------------------------------------


@attrs.define
class _Lane:
    """A Paxos session: at most one proposal in flight."""

    client_id: str
    seq: int = 0
    busy: bool = False


@attrs.define
class _Waiting:
    """A proposal waiting for its result."""

    lane: int
    seq: int
    command: Any
    conn: str | None  # None: the node's own proposal (async scheduling, bootstrap)
    request_id: str
    new_key_token: str = ""
    give_up_ns: int = 0


@attrs.define
class _Routing:
    """An invocation this node routes: where it is, what it tried, who waits."""

    invocation_id: str
    function: str
    version: str
    code: CodeRef
    config: FunctionConfig
    payload: bytes
    conn: str | None  # a synchronous caller, or None for an async attempt
    request_id: str
    tried: set[str]
    target: str = ""
    async_attempt: int = 0
    rounds: int = 0  # times every candidate was full and the entry looked again
    sent_ns: int = 0  # when it was sent to ``target`` (monotonic)
    accepted: bool = False  # the target confirmed it has the request
    sends: int = 0  # InvokeRequests sent to the current target
    request: InvokeRequest | None = None


@attrs.define
class _Running:
    """An invocation running here, for ``entry``."""

    entry: str
    effect_id: int
    function: str = ""


def _timeout_record(route: _Routing, status: proto.InvocationStatus, message_text: str,
                    node: str) -> proto.InvocationRecord:
    return proto.InvocationRecord(
        invocation_id=route.invocation_id, function=route.function, status=status,
        version=route.version, node=node, error_type="Sandbox.Unavailable"
        if status == "failed" else "Sandbox.Timedout", error_message=message_text)


class MeshNode:
    """One meshfaas node, as a pure core. See the module docstring."""

    def __init__(self, config: MeshConfig, disk: Mapping[str, Mapping[Hashable, Any]],
                 rng: random.Random, now: Now, *, seeds: Iterable[str] = (),
                 restarts: int = 0, disk_lost: bool = False) -> None:
        self.cfg = config
        self.node_id = NodeId(config.node_id)
        self.rng = rng
        self.out = Outbox()
        self.deadlines = Deadlines()
        self.now = now
        self.counters: dict[str, int] = {}
        self.sm = FaasStateMachine()
        self.load = 0  # invocations running here
        self.warm: tuple[str, ...] = ()
        gossip_disk, paxos_disk, own_disk = _split_disk(disk)
        self.gossip = Gossip(config.gossip, self.node_id, gossip_disk, rng, now,
                             seeds=[NodeId(s) for s in seeds], meta=self._meta())
        self.paxos = Replica(self._paxos_config(disk_lost), self.sm, rng, paxos_disk, now)
        # The restart fence (see _for_earlier_life): every incarnation an earlier life
        # of this node announced is below the one gossip starts this life with (it
        # starts above its durable ceiling). After a lost disk gossip starts from 1
        # and learns the earlier life's incarnations only from its peers: every
        # stamped request is refused until ``lost_disk_fence_ns`` has passed, and the
        # fence is then a new incarnation above them (_settle_fence; its row ``fenced``
        # says so to the next boot, as a driver may report the lost disk again).
        self.fence_incarnation = self.gossip.incarnation
        self.fence_settled = not disk_lost or bool(own_disk.get("meta", {}).get("fenced"))
        if not self.fence_settled:
            self.deadlines.set(("fence",), now.mono_ns + config.lost_disk_fence_ns)
        boot = int(own_disk.get("meta", {}).get("boots", 0)) + 1
        self.out.persist("m.meta", "boots", boot)
        # The boot counter alone could repeat (a lost disk, or a crash before its write
        # is synced), and a reused session would answer a new command with an old result.
        incarnation = f"{boot}.{rng.getrandbits(64):016x}"
        self.lanes = [_Lane(client_id=f"{self.node_id}/{incarnation}/{i}")
                      for i in range(config.lanes)]
        self.waiting: dict[tuple[str, int], _Waiting] = {}
        self.queued: list[_Waiting] = []  # proposals waiting for a free lane
        self.routing: dict[str, _Routing] = {}
        self._views: dict[str, tuple[Any, str, PeerView]] = {}  # node -> (meta, state, view)
        self._own_runtimes = frozenset(config.runtimes)
        self.running: dict[str, _Running] = {}
        # invocation id -> (when we refused it, the routing round refused), oldest first
        self.refused: dict[str, tuple[int, int]] = {}
        self.effects: dict[int, tuple[str, Any]] = {}  # effect id -> (kind, context)
        self.next_effect = 0
        # The recent cache: the newest records, oldest first (insertion order), so
        # eviction and expiry touch only the records they remove. Nothing is loaded
        # at start: older records are read back from the store (``result_lookup``).
        self.results: dict[str, tuple[int, proto.InvocationRecord]] = {}
        self.lookups = 0  # result_lookup effects in flight
        # query id -> (conn, request id, invocation id, peers not answered yet)
        self.queries: dict[int, tuple[str, str, str, set[str]]] = {}
        self.next_query = 0
        self.stale_calls: dict[str, tuple[ClientCall, int]] = {}  # conn -> (call, sync token)
        self.async_running: set[str] = set()  # async request ids this leader dispatched
        # (request id, attempts, status) -> our monotonic ns when we first saw it so
        self.async_seen: dict[tuple[str, int, str], int] = {}
        self.sub_batches: dict[int, list[tuple[Any, int]]] = {}
        self.sub_pending: list[tuple[Any, int]] = []
        self.last_meta: NodeMeta = self._meta()
        self.peer_addrs: dict[str, str] = remembered_peers(disk)
        self.leaving = False  # LeaveMesh was asked: no more metadata updates
        self._reserved: dict[str, tuple[str, int]] = {}
        self._reserved_at = -1  # the applied index the reservation cache was built at
        self.deadlines.set(("meta",), now.mono_ns + config.meta_refresh_ns)
        self.deadlines.set(("async",), now.mono_ns + config.async_scan_ns)
        self.deadlines.set(("results",), now.mono_ns + NS_PER_S)
        self._pump()  # the sub-cores' start-up output (their first persists)

    def _paxos_config(self, disk_lost: bool) -> PaxosConfig:
        c = self.cfg
        return PaxosConfig(node_id=c.node_id, voters=tuple(sorted(c.voters)),
                           heartbeat_interval_ns=c.paxos_heartbeat_ns,
                           election_timeout_ns=c.paxos_election_ns, lease_ns=c.paxos_lease_ns,
                           disk_lost=disk_lost, variant=c.paxos_variant,
                           accept_to=c.paxos_accept_to,
                           notice_delay_ns=c.paxos_notice_delay_ns)

    def _meta(self) -> NodeMeta:
        c = self.cfg
        return NodeMeta(peer_addr=c.peer_addr, client_addr=c.client_addr, http_addr=c.http_addr,
                        runtimes=tuple(sorted(c.runtimes))[:8], capacity=c.capacity,
                        load=min(self.load, c.capacity * 4), warm=self.warm[:32],
                        role="voter" if c.node_id in c.voters else "worker")

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    # ------------------------------------------------------------ the contract

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        self.now = now
        tag = tag_of(type(msg))
        if tag in GOSSIP_TAGS:
            self.gossip.handle(src, msg, now)
        elif tag in PAXOS_TAGS:
            self.paxos.handle(src, msg, now)
        elif tag in MESH_TAGS:
            self._handle_mesh(src, msg)
        else:
            self._count("dropped_unknown")
        self._pump()

    def command(self, cmd: Any, now: Now) -> Any:
        self.now = now
        if isinstance(cmd, ClientCall):
            self.cmd_client_call(cmd)
        elif isinstance(cmd, JoinMesh):
            self.gossip.command(AddSeeds(seeds=tuple(NodeId(s) for s in cmd.seeds)), now)
        elif isinstance(cmd, LeaveMesh):
            if not self.leaving:
                self.leaving = True
                self.gossip.command(Leave(), now)
        elif isinstance(cmd, SetWarm):
            self.warm = tuple(sorted(cmd.warm))
        else:
            raise TypeError(f"MeshNode does not take {type(cmd).__name__}")
        self._pump()
        return None

    def tick(self, now: Now) -> None:
        self.now = now
        self.gossip.tick(now)
        self.paxos.tick(now)
        for key in self.deadlines.pop_due(now.mono_ns):
            self._on_deadline(key)
        self._pump()

    def next_deadline(self) -> int | None:
        # (once per driver pump: written out rather than a list and min())
        first = self.deadlines.next_deadline()
        for d in (self.gossip.next_deadline(), self.paxos.next_deadline()):
            if d is not None and (first is None or d < first):
                first = d
        return first

    def take_ready(self) -> Ready | None:
        # Every input (and the constructor) already merged the sub-cores' output.
        ready = self.out.take()
        if ready is not None and self.sub_pending:
            self.sub_batches[ready.seq] = self.sub_pending
            self.sub_pending = []
        return ready

    def on_persisted(self, seq: int) -> None:
        # A batch that wrote nothing of a sub-core's feeds none: every input
        # already pumped the sub-cores dry, so there is nothing to merge then.
        subs = self.sub_batches.pop(seq, None)
        if subs:
            for core, sub_seq in subs:
                core.on_persisted(sub_seq)
            self._pump()

    def on_result(self, result: EffectResult, now: Now) -> None:
        self.now = now
        kind, context = self.effects.pop(result.effect_id, ("", None))
        if kind == "invoke":
            self._on_invoke_result(context, result)
        elif kind == "replicate_blob":
            self._on_blob_replicated(context, result)
        elif kind == "client_local":
            self._on_local_result(context, result)
        elif kind == LOOKUP_KIND:
            self._on_lookup_result(context, result)
        self._pump()

    # ----------------------------------------------------- merging sub-cores

    def _pump(self) -> None:
        """Merge every ready sub-core batch into ours, reacting to its notifications.

        Another round runs only if a merge fed a sub-core (see ``_merge``): a
        core has nothing more to give until it gets an input, so a round whose
        batches all wait for their writes and notify nothing ends the pump."""
        gossip, paxos = self.gossip, self.paxos  # (every input pumps: written out)
        for _ in range(1_000):
            ready = gossip.take_ready()
            fed = ready is not None and self._merge("g.", gossip, ready)
            ready = paxos.take_ready()
            if ready is not None and self._merge("p.", paxos, ready):
                fed = True
            if not fed:
                return
        raise RuntimeError("sub-cores kept producing output: a feedback loop")

    def _merge(self, prefix: str, core: Any, ready: Ready) -> bool:
        """Take one sub-core batch into ours. True if that called into a sub-core:
        ``on_persisted`` for a batch with nothing to write, or a notification whose
        handling may have commanded gossip or Paxos (``_on_sub_note``)."""
        for w in ready.persist:
            self.out.persist(prefix + w.table, w.key, w.value)
        for o in ready.send_now:
            self.out.send(o.dst, o.msg)
        for o in ready.send_after_persist:
            self.out.send_after_persist(o.dst, o.msg)
        if ready.persist:
            self.sub_pending.append((core, ready.seq))
        else:
            core.on_persisted(ready.seq)
        fed = False
        for note in ready.notifications:
            if self._on_sub_note(note.kind, note.data):
                fed = True
        return fed or not ready.persist

    def _on_sub_note(self, kind: str, data: Any) -> bool:
        """React to a sub-core's note. True if that may have called into gossip or
        Paxos (the pump then asks them again); False only where it surely did not:
        a follower's applied entry, a leader change, a chosen slot. (Every commit
        brings a result, an applied and a chosen note: Paxos' kinds first.)"""
        if kind == paxos_api.NOTE_RESULT:
            return self._on_paxos_result(data)
        if kind == paxos_api.NOTE_APPLIED:
            self.out.notify(kind, data)
            return self._on_applied(data)
        if kind == paxos_api.NOTE_LEADER:
            self.out.notify(kind, data)
            return False
        if kind == paxos_api.NOTE_CHOSEN:
            return False  # nothing outside uses it (the applied note follows): not passed on
        if kind.startswith("member_") or kind == "meta_changed":
            self._on_member(kind, data)  # (it may suspect a node in Paxos)
            return True
        if kind == paxos_api.NOTE_SYNCED and self.stale_calls:
            self._recheck_stale()  # (planning a call again may propose)
            return True
        return False

    # ------------------------------------------------------------ membership

    def _on_member(self, kind: str, event: MemberEvent) -> None:
        self.out.notify("member", event)
        self._remember_peer(event)
        if kind in ("member_dead", "member_left"):
            self.paxos.command(paxos_api.Suspect(node_id=event.node_id), self.now)
            self._fail_routed_to(event.node_id, f"node {event.node_id} was declared {event.state}")
        elif kind in ("member_alive", "member_joined"):
            self.paxos.command(paxos_api.Suspect(node_id=event.node_id, alive=True), self.now)

    def _remember_peer(self, event: MemberEvent) -> None:
        """Keep every peer's last advertised endpoint on disk: a restarted node
        rejoins through them, even one started without ``--join`` (the first node
        of a mesh), which would otherwise wait for a peer's rare reconnection
        probe (every few push-pull rounds, minutes) before anyone heard of it."""
        addr = event.meta.peer_addr
        if event.node_id == self.node_id or not addr or event.state in ("dead", "left"):
            return
        if self.peer_addrs.get(event.node_id) != addr:
            self.peer_addrs[event.node_id] = addr
            self.out.persist("m.peers", event.node_id, addr)

    def peer_views(self) -> list[PeerView]:
        """The router's view: every member plus ourselves, from gossip metadata.

        A peer's load is its gossiped load plus what this node sent it recently
        (within four metadata refreshes: older sends are in the gossiped figure);
        ``running`` counts reserved functions (ours exactly, a peer's as sent by us).
        A peer's view is rebuilt only when its state or metadata changed.
        """
        reserved = self.reservations()
        sent: dict[str, int] = {}
        sent_fn: dict[tuple[str, str], int] = {}
        if self.routing:
            recent_ns = self.now.mono_ns - 4 * self.cfg.meta_refresh_ns
            for r in self.routing.values():
                if r.target and r.sent_ns >= recent_ns:  # older ones are in the gossiped load
                    sent[r.target] = sent.get(r.target, 0) + 1
                if r.target and r.function in reserved:  # gossip has no per-function counts
                    key = (r.target, r.function)
                    sent_fn[key] = sent_fn.get(key, 0) + 1
        mine: dict[str, int] = {}
        if reserved:
            for run in self.running.values():
                if run.function in reserved:
                    mine[run.function] = mine.get(run.function, 0) + 1
        views = [PeerView(node=self.node_id, state="alive", runtimes=self._own_runtimes,
                          capacity=self.cfg.capacity, load=self.load,
                          warm=frozenset(self.warm), running=mine)]
        for info in self.gossip.members():
            if info.node_id == self.node_id or info.state not in ("alive", "suspect"):
                continue
            view = self._peer_view(info)
            extra = sent.get(info.node_id, 0)
            running = ({fn: n for (node, fn), n in sent_fn.items() if node == info.node_id}
                       if sent_fn else None)
            if extra or running:
                view = attrs.evolve(view, load=view.load + extra, running=running or {})
            views.append(view)
        return views

    def _peer_view(self, info: MemberInfo) -> PeerView:
        """A member's view from its gossiped state and metadata, cached until they change."""
        cached = self._views.get(info.node_id)
        if cached is not None and cached[0] is info.meta and cached[1] == info.state:
            return cached[2]
        meta = info.meta
        view = PeerView(node=info.node_id, state="alive" if info.state == "alive" else "suspect",
                        runtimes=frozenset(meta.runtimes), capacity=meta.capacity,
                        load=meta.load, warm=frozenset(meta.warm))
        self._views[info.node_id] = (meta, info.state, view)
        return view

    def reservations(self) -> dict[str, tuple[str, int]]:
        """Functions with reserved concurrency: name -> (runtime, reserved), cached per apply."""
        index = self.paxos.chosen_upto
        if self._reserved_at != index:
            self._reserved = {f.name: (f.config.runtime, f.config.reserved_concurrency)
                              for f in self.sm.list_functions()
                              if f.config.reserved_concurrency is not None}
            self._reserved_at = index
        return self._reserved

    def _blob_sources(self) -> tuple[str, ...]:
        """The peers an invocation may fetch its code blob from: the live ones, or, when
        gossip holds none alive (just started, or it declared the others dead before
        they came up and has not heard them refute it yet), every peer known by
        gossip or from an earlier life: one of them has the blob (a deploy is chosen
        only once a majority stores it), and asking one that is down costs a timeout."""
        live = self.live_peers()
        if live:
            return tuple(live)
        known = {i.node_id for i in self.gossip.members() if i.state != "left"}
        return tuple(sorted((known | set(self.peer_addrs)) - {self.node_id}))

    def live_peers(self) -> list[str]:
        return sorted(i.node_id for i in self.gossip.members()
                      if i.node_id != self.node_id and i.state in ("alive", "suspect"))

    # --------------------------------------------------------------- clients

    def cmd_client_call(self, call: ClientCall, *, recheck: bool = False) -> None:
        body = call.request.body
        if isinstance(body, proto.GetResult):
            self._get_result(call, body.invocation_id)
            return
        plan = faas_api.plan(self.sm, call.request, node=self.node_id,
                             wall_ns=self.now.wall_ns, random_bytes=self.rng.randbytes)
        if isinstance(plan, faas_api.Reply):
            error = plan.response.error
            if error is not None and error.kind in ("NotFound", "Unauthorized") \
                    and not recheck and self._wait_if_stale(call):
                return
            if error is not None and error.kind == "Unauthorized" and not self.caught_up():
                # A key this replica does not know yet may be in entries it has not
                # applied: say "try elsewhere", not "unauthorized".
                self._reply(call.conn, proto.fail(call.request.request_id, "Unavailable",
                                                  f"{self.node_id} is catching up with the log",
                                                  retryable=True))
                return
            self._reply(call.conn, plan.response)
        elif isinstance(plan, faas_api.Propose):
            self._start_proposal(plan, call.conn)
        elif isinstance(plan, faas_api.Invoke):
            self._start_invoke(plan, call.conn)
        else:
            self._local(plan, call.conn)

    def _wait_if_stale(self, call: ClientCall) -> bool:
        """A follower learns of a commit from the next Accept, a commit notice or the
        chosen slots the leader pushes, up to ``notice_delay_ns`` after the leader
        acknowledged it (and with ``accept_to="quorum"`` it may not have had the
        slot's Accept at all): a function deployed (or a key created) a moment ago
        through another node may not be applied here yet. Rather than answer
        NotFound (or Unauthorized) then, sync with the leader (one round trip:
        its chosen prefix and the slots we miss) and plan the call again, or after
        ``stale_wait_ns`` without an answer. True if it waits."""
        token = self.paxos.sync_with_leader()
        if token is None:  # we lead, or know no leader: answer from what we have
            return False
        self.stale_calls[call.conn] = (call, token)
        self.deadlines.set(("stale", call.conn), self.now.mono_ns + self.cfg.stale_wait_ns)
        return True

    def _recheck_stale(self, conn: str | None = None) -> None:
        """Plan again the waiting calls whose sync is done (or ``conn``'s, timed out)."""
        due = sorted(c for c, (_call, token) in self.stale_calls.items()
                     if c == conn or self.paxos.synced(token))
        for c in due:
            call, _token = self.stale_calls.pop(c)
            self.deadlines.cancel(("stale", c))
            self.cmd_client_call(call, recheck=True)

    def caught_up(self) -> bool:
        """True when this replica has applied everything a leader told it is chosen."""
        info = self.paxos.leader_info()
        if info.is_leader:
            return True
        return info.leader_hint is not None and self.paxos.chosen_upto >= self.paxos.known_commit

    def _reply(self, conn: str | None, response: proto.ClientResponse) -> None:
        if conn is not None:
            self.out.notify("client_reply", ClientReply(conn=conn, response=response))

    def _fail(self, conn: str | None, request_id: str, kind: proto.ErrorKind, text: str) -> None:
        self._reply(conn, proto.fail(request_id, kind, text))

    def _local(self, plan: faas_api.Local, conn: str) -> None:
        body = plan.body
        if isinstance(body, proto.Ping):
            self._reply(conn, proto.ok(plan.request_id, proto.Pong(node=self.node_id)))
        elif isinstance(body, proto.Members):
            self._reply(conn, proto.ok(plan.request_id, self.member_infos()))
        elif isinstance(body, proto.Status):
            self._reply(conn, proto.ok(plan.request_id, self.status_info()))
        else:
            self._effect("client_local", LocalCall(request_id=plan.request_id, body=body),
                         (conn, plan.request_id))

    def _on_local_result(self, context: tuple[str, str], result: EffectResult) -> None:
        conn, request_id = context
        if result.ok and isinstance(result.value, proto.ClientResponse):
            self._reply(conn, attrs.evolve(result.value, request_id=request_id))
        else:
            self._fail(conn, request_id, "Internal", result.error or "local request failed")

    def member_infos(self) -> list[proto.MemberInfo]:
        rows = [proto.MemberInfo(node=self.node_id, state="alive",
                                 client_endpoint=self.cfg.client_addr,
                                 runtimes=tuple(self.cfg.runtimes), capacity=self.cfg.capacity,
                                 load=self.load, warm=len(self.warm))]
        for info in self.gossip.members():
            if info.node_id == self.node_id:
                continue
            state = info.state if info.state in ("alive", "suspect", "dead", "left") else "dead"
            rows.append(proto.MemberInfo(node=info.node_id, state=state,
                                         client_endpoint=info.meta.client_addr,
                                         runtimes=info.meta.runtimes,
                                         capacity=info.meta.capacity, load=info.meta.load,
                                         warm=len(info.meta.warm)))
        return sorted(rows, key=lambda r: r.node)

    def status_info(self) -> proto.StatusInfo:
        leader = self.paxos.leader_info()
        loads = {v.node: v.load for v in self.peer_views()}
        return proto.StatusInfo(node=self.node_id, leader=leader.leader_hint,
                                commit_index=max(self.paxos.known_commit, leader.applied_index),
                                applied_index=leader.applied_index,
                                functions=len(self.sm.list_functions()), load=loads)

    # ------------------------------------------------------------- proposals

    def _start_proposal(self, plan: faas_api.Propose, conn: str | None) -> None:
        cmd = plan.command
        if isinstance(cmd, faas.DeployFunction):
            self._replicate_then_propose(plan, conn, cmd.code)
            return
        self._propose(plan.command, conn, plan.request_id, plan.new_key_token)

    def _replicate_then_propose(self, plan: faas_api.Propose, conn: str | None,
                                code: CodeRef) -> None:
        peers = tuple(self.live_peers())
        majority = len(self.cfg.voters) // 2 + 1
        task = ReplicateBlob(sha256=code.sha256, size=code.size_bytes, peers=peers, majority=majority)
        self._effect("replicate_blob", task, (plan, conn))

    def _on_blob_replicated(self, context: tuple[faas_api.Propose, str | None],
                            result: EffectResult) -> None:
        plan, conn = context
        if not result.ok:
            self._fail(conn, plan.request_id, "Unavailable",
                       f"code could not be stored on a majority: {result.error}")
            return
        self._propose(plan.command, conn, plan.request_id, plan.new_key_token)

    def _propose(self, command: Any, conn: str | None, request_id: str,
                 new_key_token: str = "") -> None:
        waiting = _Waiting(lane=-1, seq=0, command=command, conn=conn, request_id=request_id,
                           new_key_token=new_key_token,
                           give_up_ns=self.now.mono_ns + self.cfg.request_timeout_ns)
        lane = next((i for i, ln in enumerate(self.lanes) if not ln.busy), None)
        if lane is None:
            if len(self.queued) >= 10 * len(self.lanes):
                self._fail(conn, request_id, "Throttled", "too many proposals in flight")
                return
            self.queued.append(waiting)
            return
        self._send_on_lane(lane, waiting)

    def _send_on_lane(self, lane_index: int, waiting: _Waiting) -> None:
        lane = self.lanes[lane_index]
        lane.busy = True
        lane.seq += 1
        waiting.lane, waiting.seq = lane_index, lane.seq
        self.waiting[(lane.client_id, lane.seq)] = waiting
        self._submit(waiting)

    def _submit(self, waiting: _Waiting) -> None:
        lane = self.lanes[waiting.lane]
        self.paxos.command(paxos_api.Propose(client_id=lane.client_id, seq=waiting.seq,
                                             payload=waiting.command), self.now)
        self.deadlines.set(("retry", lane.client_id, waiting.seq),
                           self.now.mono_ns + self.cfg.proposal_retry_ns)

    def _retry_proposal(self, client_id: str, seq: int) -> None:
        waiting = self.waiting.get((client_id, seq))
        if waiting is None:
            return
        if self.now.mono_ns >= waiting.give_up_ns:
            self._finish_lane(client_id, seq)
            if isinstance(waiting.command, (faas.StartAsyncAttempt, faas.RecordAsyncAttempt)):
                self.async_running.discard(waiting.command.request_id)  # the next scan retries
            self._fail(waiting.conn, waiting.request_id, "Unavailable",
                       "no Paxos majority answered in time; the change may still apply")
            return
        self._submit(waiting)

    def _on_paxos_result(self, result: paxos_api.CommandResult) -> bool:
        """A proposal's outcome. True if handling it may have called into a
        sub-core (a queued proposal took the freed lane, or an async attempt
        started: it may route or propose)."""
        waiting = self.waiting.get((result.client_id, result.seq))
        if waiting is None:
            return False
        if not result.ok:
            return False  # not-leader / no leader yet: the retry deadline resubmits
        proposed = self._finish_lane(result.client_id, result.seq)
        return self._on_proposal_done(waiting, result.value) or proposed

    def _finish_lane(self, client_id: str, seq: int) -> bool:
        """Free the proposal's lane; True if a queued proposal was sent on it."""
        waiting = self.waiting.pop((client_id, seq), None)
        self.deadlines.cancel(("retry", client_id, seq))
        if waiting is None:
            return False
        self.lanes[waiting.lane].busy = False
        if self.queued:
            self._send_on_lane(waiting.lane, self.queued.pop(0))
            return True
        return False

    def _on_proposal_done(self, waiting: _Waiting, value: Any) -> bool:
        """Answer the proposal's caller; True if an async attempt was started."""
        cmd = waiting.command
        started = isinstance(cmd, faas.StartAsyncAttempt)
        if started:
            self._on_attempt_started(cmd, value)
        elif isinstance(cmd, faas.RecordAsyncAttempt):
            self.async_running.discard(cmd.request_id)
        if waiting.conn is not None:
            self._reply(waiting.conn, faas_api.finish(waiting.request_id, value,
                                                      new_key_token=waiting.new_key_token))
        return started

    def _on_applied(self, applied: paxos_api.Applied) -> bool:
        """After the log moved: bootstrap the first key once, if we lead; plan again
        the calls that waited for a leader sync (``_wait_if_stale``) now done.
        True if either happened (each may propose)."""
        fed = self._maybe_bootstrap_key()
        if self.stale_calls:
            self._recheck_stale()
            fed = True
        return fed

    def _maybe_bootstrap_key(self) -> bool:
        """Propose the configured first key if we lead and none exists; True if proposed."""
        key = self.cfg.bootstrap_key
        if key is None or self.sm.keys or not self.paxos.leader_info().is_leader:
            return False
        if any(isinstance(w.command, faas.PutApiKey) for w in self.waiting.values()):
            return False
        self._propose(key, None, "bootstrap-key")
        return True

    # ----------------------------------------------------------- invocations

    def _start_invoke(self, plan: faas_api.Invoke, conn: str | None, attempt: int = 0) -> None:
        r = plan.resolved
        route = _Routing(invocation_id=plan.invocation_id, function=r.name, version=r.version,
                         code=r.code, config=r.config, payload=plan.payload, conn=conn,
                         request_id=plan.request_id, tried=set(), async_attempt=attempt)
        self.routing[route.invocation_id] = route
        self._route(route)

    def _route(self, route: _Routing) -> None:
        if len(route.tried) >= MAX_ROUTE_ATTEMPTS:
            if not self._wait_for_room(route):
                self._finish_route(route, None, "Throttled", "every peer tried was full")
            return
        request = RouteRequest(function=route.function,
                               warm_key=f"{route.function}:{route.version}",
                               runtime=route.config.runtime, exclude=frozenset(route.tried))
        views = self.peer_views()
        if self.cfg.routing == "random":
            decision = pick_random(views, request, self.rng)
        else:
            decision = pick(views, request, self.rng,
                            reservations=self.reservations(), local=self.node_id)
        if decision.node is None and decision.reason in ("throttled", "all_excluded"):
            if self._wait_for_room(route):
                return
            if decision.reason == "throttled":  # the views may be stale: ask a node anyway
                decision = pick_random(views, request, self.rng)  # (its admission decides)
        if decision.node is None:
            kind: proto.ErrorKind = "Throttled" if decision.reason == "throttled" else "Unavailable"
            text = {"no_runtime": f"no live node has runtime {route.config.runtime}",
                    "throttled": "every node is at capacity",
                    "all_excluded": "every node refused"}.get(decision.reason, decision.reason)
            self._finish_route(route, None, kind, text, retryable=not route.tried)
            return
        route.target = decision.node
        route.sent_ns = self.now.mono_ns
        route.tried.add(decision.node)
        deadline = self.now.mono_ns + route.config.timeout_s * NS_PER_S + self.cfg.invoke_grace_ns
        self.deadlines.set(("invoke", route.invocation_id), deadline)
        local = decision.node == self.node_id
        request_msg = InvokeRequest(invocation_id=route.invocation_id, function=route.function,
                                    version=route.version, code=route.code,
                                    config=route.config, payload=route.payload,
                                    round=route.rounds,
                                    incarnation=0 if local else self._incarnation_of(decision.node))
        if local:
            self._run_here(request_msg, self.node_id)
        else:  # (resends repeat this request, stamp included: never restamped)
            route.request, route.sends, route.accepted = request_msg, 0, False
            self._send_request(route)

    def _incarnation_of(self, node: str) -> int:
        """The incarnation gossip holds for ``node`` (0 if it is not a member we know)."""
        return self.gossip.incarnation_of(NodeId(node)) or 0

    def _wait_for_room(self, route: _Routing) -> bool:
        """Every candidate was full: unless the rounds are used up, try them all again
        after a short jittered backoff (a new round, which a node that refused an
        earlier one may run). True if a new round was scheduled."""
        if route.rounds >= self.cfg.route_wait_rounds:
            return False
        delay_ns = self.cfg.route_wait_base_ns << route.rounds
        route.rounds += 1
        route.tried, route.target = set(), ""
        self._count("route_waits")
        self.deadlines.set(("reroute", route.invocation_id),
                           self.now.mono_ns + delay_ns // 2 + self.rng.randrange(delay_ns))
        return True

    def _send_request(self, route: _Routing) -> None:
        """Send (again) to the target until it confirms; the target dedupes by id."""
        assert route.request is not None
        route.sends += 1
        self.out.send(NodeId(route.target), route.request)
        self.deadlines.set(("accept", route.invocation_id),
                           self.now.mono_ns + self.cfg.invoke_accept_ns)

    def _on_accept_deadline(self, invocation_id: str) -> None:
        route = self.routing.get(invocation_id)
        if route is None or route.accepted or route.request is None:
            return
        if route.sends < self.cfg.invoke_sends_max:
            self._count("invoke_resent")
            self._send_request(route)
            return
        text = f"node {route.target} did not confirm the invocation"
        if route.async_attempt:
            self._finish_route(route, _timeout_record(route, "failed", text, route.target),
                               None, text)
        else:
            self._finish_route(route, None, "Unavailable", text)

    def _on_accepted(self, src: str, msg: InvokeAccepted) -> None:
        route = self.routing.get(msg.invocation_id)
        if route is not None and route.target == src:
            route.accepted = True
            self.deadlines.cancel(("accept", msg.invocation_id))

    def _run_here(self, req: InvokeRequest, entry: str) -> None:
        if req.invocation_id in self.running:
            self._confirm(entry, req.invocation_id)  # a duplicate: the running one will answer
            return
        if self._refused_before(req.invocation_id, req.round):
            self._count("refused_again")
            self._deliver_refusal(entry, req.invocation_id, REFUSED_FULL, req.round)
            return
        done = self.results.get(req.invocation_id)
        if done is not None and done[1].status == "succeeded" and done[1].node == self.node_id:
            # A duplicate of a request that already succeeded here (the network
            # duplicated it, or a retry after a lost answer): answer, do not run again.
            self._count("duplicate_invoke_answered")
            answer = InvokeDone(invocation_id=req.invocation_id, record=done[1])
            if entry == self.node_id:
                self._on_done(answer)
            else:
                self.out.send(NodeId(entry), answer)
            return
        if self._for_earlier_life(req.incarnation):
            self._count("refused_restarted")
            self._deliver_refusal(entry, req.invocation_id, REFUSED_RESTARTED, req.round)
            return
        if not self._has_room(req.function):
            self._count("refused_full")
            if entry != self.node_id:  # (re-inserted: the oldest stays first)
                self.refused.pop(req.invocation_id, None)
                self.refused[req.invocation_id] = (self.now.mono_ns, req.round)
            self._deliver_refusal(entry, req.invocation_id, REFUSED_FULL, req.round)
            return
        self.load += 1
        task = InvokeTask(invocation_id=req.invocation_id, function=req.function,
                          version=req.version, code=req.code, config=req.config,
                          payload=req.payload, peers=self._blob_sources())
        effect_id = self._effect("invoke", task, req.invocation_id)
        self.running[req.invocation_id] = _Running(entry=entry, effect_id=effect_id,
                                                   function=req.function)
        if entry != self.node_id:
            self.deadlines.set(("confirm", req.invocation_id),
                               self.now.mono_ns + self.cfg.invoke_confirm_delay_ns)

    def _for_earlier_life(self, incarnation: int) -> bool:
        """Whether a request stamped with our ``incarnation`` (as its entry knew it) was
        addressed to an earlier life of this node, which may have run it and crashed
        before answering: this life does not remember it, and must not run it again.
        Below the fence it is an earlier life's; above our current incarnation too
        (a life's incarnation only grows: only an earlier life, after a lost disk,
        can have held it). 0 is no stamp (run locally, or unknown to the entry)."""
        if incarnation == 0:
            return False
        if not self.fence_settled:
            return True
        return incarnation < self.fence_incarnation or incarnation > self.gossip.incarnation

    def _refused_before(self, invocation_id: str, round_: int) -> bool:
        """Whether we refused this invocation's routing round ``round_`` (or a later
        one) lately: a late copy of a refused request must not run once the entry
        has moved on (forgetting, oldest first, what is older than
        ``refusal_memory_ns`` or beyond ``max_results`` entries)."""
        horizon = self.now.mono_ns - min(self.cfg.refusal_memory_ns,
                                         self.cfg.async_retry_base_ns // 2)
        while self.refused and (len(self.refused) > self.cfg.max_results
                                or next(iter(self.refused.values()))[0] < horizon):
            del self.refused[next(iter(self.refused))]
        refused = self.refused.get(invocation_id)
        return refused is not None and refused[1] >= round_

    def _confirm(self, entry: str, invocation_id: str) -> None:
        if entry != self.node_id:
            self.out.send(NodeId(entry), InvokeAccepted(invocation_id=invocation_id))

    def _has_room(self, function: str) -> bool:
        """Capacity, and reserved concurrency: our share for a reserved function,
        and for any other the capacity left after every reservation's share."""
        reservations = self.reservations()
        if not reservations:
            return self.load < self.cfg.capacity
        views = self.peer_views()
        return has_room(views[0], function, all_shares(views, reservations))

    def _deliver_refusal(self, entry: str, invocation_id: str, reason: str, round_: int) -> None:
        refusal = InvokeRefused(invocation_id=invocation_id, reason=reason, round=round_)
        if entry == self.node_id:
            self._on_refused(refusal)
        else:
            self.out.send(NodeId(entry), refusal)

    def _on_invoke_result(self, invocation_id: str, result: EffectResult) -> None:
        running = self.running.pop(invocation_id, None)
        self.load = max(0, self.load - 1)
        if running is None:
            return
        self.deadlines.cancel(("confirm", invocation_id))  # the InvokeDone confirms it
        record = result.value if result.ok and isinstance(result.value, proto.InvocationRecord) \
            else proto.InvocationRecord(invocation_id=invocation_id, function="", status="failed",
                                        node=self.node_id, error_type="Sandbox.Error",
                                        error_message=result.error or "the executor failed")
        if record.node != self.node_id:  # (the executor's record names us already)
            record = attrs.evolve(record, node=self.node_id)
        self._store_result(record)
        if running.entry == self.node_id:
            self._on_done(InvokeDone(invocation_id=invocation_id, record=record))
        else:
            self.out.send(NodeId(running.entry), InvokeDone(invocation_id=invocation_id,
                                                            record=_trim(record)))

    def _on_refused(self, msg: InvokeRefused) -> None:
        route = self.routing.get(msg.invocation_id)
        if route is None or msg.round != route.rounds:  # (a copy of an older round's)
            return
        if msg.reason == REFUSED_RESTARTED:  # not rerouted: a copy may have run there
            self._fail_unknown(route, f"node {route.target} restarted after the invocation was "
                                      "sent to it: it may or may not have run")
            return
        self.deadlines.cancel(("invoke", msg.invocation_id))
        self.deadlines.cancel(("accept", msg.invocation_id))
        route.target = ""
        self._route(route)

    def _on_done(self, msg: InvokeDone) -> None:
        route = self.routing.get(msg.invocation_id)
        if route is None:
            return
        stored = self.results.get(msg.invocation_id)
        if stored is None or stored[1] != _trim(msg.record):  # ran here: stored already
            self._store_result(msg.record)
        self._finish_route(route, msg.record, None, "")  # the caller's answer first,
        self.out.notify("invocation", msg.record)  # then the event

    def _finish_route(self, route: _Routing, record: proto.InvocationRecord | None,
                      kind: proto.ErrorKind | None, text: str, *, retryable: bool = False) -> None:
        """Answer the caller. ``retryable`` only when nothing ran anywhere."""
        self.routing.pop(route.invocation_id, None)
        self.deadlines.cancel(("invoke", route.invocation_id))
        self.deadlines.cancel(("accept", route.invocation_id))
        self.deadlines.cancel(("reroute", route.invocation_id))
        if route.async_attempt:
            self._record_async(route, record, text)
            return
        if record is None:
            assert kind is not None
            self._reply(route.conn, proto.fail(route.request_id, kind, text, retryable=retryable))
            return
        self._reply(route.conn, _invoke_response(route.request_id, record))

    def _fail_routed_to(self, node: str, text: str) -> None:
        for route in sorted(self.routing.values(), key=lambda r: r.invocation_id):
            if route.target == node:
                self._fail_unknown(route, text)

    def _fail_unknown(self, route: _Routing, text: str, *,
                      status: proto.InvocationStatus = "failed",
                      kind: proto.ErrorKind = "Unavailable") -> None:
        """The target is gone (declared dead, or restarted) or silent past the function
        timeout, and the outcome is unknown: a synchronous caller gets ``kind``, not
        retryable (it may have run); an async attempt is recorded with ``status``, and
        retried after the backoff."""
        record = _timeout_record(route, status, text, route.target)
        self._store_result(record)
        if route.async_attempt:
            self._finish_route(route, record, None, text)
        else:
            self._finish_route(route, None, kind, text)

    def _on_invoke_deadline(self, invocation_id: str) -> None:
        route = self.routing.get(invocation_id)
        if route is None:
            return
        self._fail_unknown(route, f"no answer from {route.target} within the function timeout",
                           status="timeout", kind="Timeout")

    # ------------------------------------------------------ mesh messages in

    def _handle_mesh(self, src: NodeId, msg: Any) -> None:
        if isinstance(msg, InvokeRequest):
            self._run_here(msg, src)
        elif isinstance(msg, InvokeAccepted):
            self._on_accepted(src, msg)
        elif isinstance(msg, InvokeRefused):
            if self._routed_to(msg.invocation_id, src):
                self._on_refused(msg)
        elif isinstance(msg, InvokeDone):
            if self._routed_to(msg.invocation_id, src):
                self._on_done(msg)
        elif isinstance(msg, ResultQuery):
            self._on_result_query(src, msg)
        elif isinstance(msg, ResultAnswer):
            self._on_result_answer(src, msg)

    def _routed_to(self, invocation_id: str, src: str) -> bool:
        route = self.routing.get(invocation_id)
        if route is None or route.target != src:
            self._count("dropped_stray_invoke_reply")
            return False
        return True

    # --------------------------------------------------------------- results

    def _store_result(self, record: proto.InvocationRecord) -> None:
        record = _trim(record)
        self.results.pop(record.invocation_id, None)  # a rewrite moves it to the young end
        self.results[record.invocation_id] = (self.now.wall_ns, record)
        self.out.persist(RESULTS_TABLE, record.invocation_id, (self.now.wall_ns, record))
        while len(self.results) > self.cfg.max_results:  # still in the store: read back there
            del self.results[next(iter(self.results))]

    def _expire_results(self) -> None:
        """Drop cached records older than the retention, from the old end (insertion
        order follows the wall clock except across a clock step, which delays at most
        the records behind a younger one until the next pass). The store expires its
        own rows; reads apply the retention either way (:meth:`_young`)."""
        horizon = self.now.wall_ns - self.cfg.result_retention_ns
        while self.results:
            key, (at, _) = next(iter(self.results.items()))
            if at >= horizon:
                return
            del self.results[key]

    def _young(self, stored_wall_ns: int) -> bool:
        return stored_wall_ns >= self.now.wall_ns - self.cfg.result_retention_ns

    def _cached_result(self, invocation_id: str) -> proto.InvocationRecord | None:
        found = self.results.get(invocation_id)
        return found[1] if found is not None and self._young(found[0]) else None

    def _get_result(self, call: ClientCall, invocation_id: str) -> None:
        rid = call.request.request_id
        if self.sm.authenticate(call.request.api_key) is None:
            self._fail(call.conn, rid, "Unauthorized", "unknown or revoked API key")
            return
        if not valid_invocation_id(invocation_id):
            self._count("result_id_malformed")
            self._fail(call.conn, rid, "NotFound", "no invocation has that id (malformed)")
            return
        found = self._cached_result(invocation_id)
        if found is not None:
            self._reply(call.conn, proto.ok(rid, self._with_async(found)))
        elif self.lookups < RESULT_LOOKUPS_MAX:
            self._look_up(invocation_id, ("client", call.conn, rid))
        else:  # our store is swamped: the peers (and the log) may still answer
            self._count("result_lookup_skipped")
            self._ask_peers(call.conn, rid, invocation_id)

    def _on_result_query(self, src: NodeId, msg: ResultQuery) -> None:
        """A peer asks for a record: from the cache, else from the store (whose
        answer comes back as an effect result), else None."""
        if not valid_invocation_id(msg.invocation_id):
            self._count("result_id_malformed")
            self.out.send(src, ResultAnswer(query_id=msg.query_id, record=None))
            return
        found = self._cached_result(msg.invocation_id)
        if found is not None:
            self.out.send(src, ResultAnswer(query_id=msg.query_id, record=found))
        elif self.lookups < RESULT_LOOKUPS_MAX:
            self._look_up(msg.invocation_id, ("peer", src, msg.query_id))
        else:  # dropped: the asker's deadline answers from the others
            self._count("result_query_dropped")

    def _look_up(self, invocation_id: str, waiter: tuple[str, str, Any]) -> None:
        self.lookups += 1
        self._effect(LOOKUP_KIND, ResultLookup(invocation_id=invocation_id),
                     (invocation_id, waiter))

    def _on_lookup_result(self, context: tuple[str, tuple[str, str, Any]],
                          result: EffectResult) -> None:
        invocation_id, (who, dst, ref) = context
        self.lookups = max(0, self.lookups - 1)
        if not result.ok:
            self._count("result_lookup_failed")  # the environment's failure: a miss
        found = stored_result(result.value) if result.ok else None
        record = (found[1] if found is not None and self._young(found[0])
                  and found[1].invocation_id == invocation_id else None)
        if who == "peer":
            self.out.send(NodeId(dst), ResultAnswer(query_id=int(ref), record=record))
        elif record is not None:
            self._reply(dst, proto.ok(str(ref), self._with_async(record)))
        else:
            self._ask_peers(dst, str(ref), invocation_id)

    def _ask_peers(self, conn: str, rid: str, invocation_id: str) -> None:
        peers = self.live_peers()
        if not peers:
            self._result_missing(conn, rid, invocation_id, self._async_record(invocation_id))
            return
        self.next_query += 1
        self.queries[self.next_query] = (conn, rid, invocation_id, set(peers))
        for peer in peers:
            self.out.send(NodeId(peer), ResultQuery(query_id=self.next_query,
                                                    invocation_id=invocation_id))
        self.deadlines.set(("query", self.next_query, invocation_id),
                           self.now.mono_ns + NS_PER_S)

    def _with_async(self, record: proto.InvocationRecord) -> proto.InvocationRecord:
        """An execution record, with the attempt count of its async record if any."""
        rec = self.sm.get_async(record.invocation_id)
        return record if rec is None else attrs.evolve(record, attempts=rec.attempts)

    def _async_record(self, invocation_id: str) -> proto.InvocationRecord | None:
        rec = self.sm.get_async(invocation_id)
        if rec is None:
            return None
        status: proto.InvocationStatus = rec.status if rec.status in (
            "pending", "running", "succeeded", "failed", "dead_letter") else "pending"
        return proto.InvocationRecord(invocation_id=rec.request_id, function=rec.function,
                                      status=status, node=rec.node, attempts=rec.attempts,
                                      error_type=rec.error_type, error_message=rec.error_message)

    def _on_result_answer(self, src: str, msg: ResultAnswer) -> None:
        query = self.queries.get(msg.query_id)
        if query is None:
            return
        conn, rid, invocation_id, asked = query
        asked.discard(src)
        if msg.record is not None:
            self._end_query(msg.query_id, invocation_id)
            self._reply(conn, proto.ok(rid, self._with_async(msg.record)))
        elif not asked:  # nobody has a record: the log may still know it (async)
            self._end_query(msg.query_id, invocation_id)
            self._result_missing(conn, rid, invocation_id, self._async_record(invocation_id))

    def _end_query(self, query_id: int, invocation_id: str) -> None:
        del self.queries[query_id]
        self.deadlines.cancel(("query", query_id, invocation_id))

    def _on_query_deadline(self, query_id: int, invocation_id: str) -> None:
        query = self.queries.pop(query_id, None)
        if query is not None:
            self._result_missing(query[0], query[1], invocation_id,
                                 self._async_record(invocation_id))

    def _result_missing(self, conn: str, rid: str, invocation_id: str,
                        record: proto.InvocationRecord | None) -> None:
        if record is not None:
            self._reply(conn, proto.ok(rid, record))
        else:
            self._fail(conn, rid, "NotFound", f"no invocation {invocation_id} is known")

    # ----------------------------------------------------------- async work

    def _scan_async(self) -> None:
        """As leader: start due attempts, and fail attempts whose lease expired.

        Wall clocks of different nodes may disagree (the simulator skews them by
        up to 1000 s), and the times in an :class:`~meshfaas.core.faas.AsyncRecord`
        were read on whichever leader proposed them. So this leader also times
        every open record on its own monotonic clock from when it first saw it in
        its current state: a running attempt expires only once its lease has
        passed here, and a pending retry is due by the wall rule or once its
        backoff has passed here.
        """
        if not self.paxos.leader_info().is_leader:
            self.async_running.clear()
            self.async_seen.clear()
            return
        wall = self.now.wall_ns
        open_records = self._open_async()
        gone = self._gone_members() if any(r.status == "running" for r in open_records) else set()
        for rec in open_records:
            if rec.status != "running" or rec.request_id in self.async_running:
                continue
            if self._async_held_ns(rec) >= self._lease_ns(rec.function):
                why = "the attempt's lease expired"
            elif rec.node in gone:
                why = f"{rec.node}, the node that dispatched the attempt, left the mesh"
            else:
                continue
            self.async_running.add(rec.request_id)
            self._propose(self._failed_attempt(rec.request_id, rec.attempts, "Sandbox.Lost", why),
                          None, "")
        started = 0
        for rec in open_records:
            if rec.status != "pending" or not self._async_due(rec, wall) or started >= 16:
                continue
            if rec.request_id in self.async_running or len(self.async_running) > 256:
                continue
            started += 1
            self.async_running.add(rec.request_id)
            self._propose(faas.StartAsyncAttempt(
                request_id=rec.request_id, attempt=rec.attempts + 1, node=self.node_id,
                wall_ns=wall, lease_until_wall_ns=wall + self._lease_ns(rec.function)), None, "")

    def _gone_members(self) -> set[str]:
        """Nodes gossip holds dead or left. An attempt such a node dispatched has no
        one left to record its outcome (its runner answers the dispatcher): it is
        failed at once rather than after its lease, which for a long timeout is
        many minutes. If the node was wrongly held dead, its late record of the
        attempt is refused by the state machine (that attempt is no longer running)."""
        return {i.node_id for i in self.gossip.members()
                if i.node_id != self.node_id and i.state in ("dead", "left")}

    def _open_async(self) -> list[faas.AsyncRecord]:
        """Pending and running records, oldest first; forget timings of the others."""
        records = sorted((r for r in self.sm.asyncs.values() if r.status in ("pending", "running")),
                         key=lambda r: (r.next_attempt_at_wall_ns, r.request_id))
        keys = {(r.request_id, r.attempts, r.status) for r in records}
        self.async_seen = {k: v for k, v in self.async_seen.items() if k in keys}
        return records

    def _async_held_ns(self, rec: faas.AsyncRecord) -> int:
        """How long this leader has seen ``rec`` in its current state (monotonic)."""
        key = (rec.request_id, rec.attempts, rec.status)
        return self.now.mono_ns - self.async_seen.setdefault(key, self.now.mono_ns)

    def _async_due(self, rec: faas.AsyncRecord, wall_ns: int) -> bool:
        held_ns = self._async_held_ns(rec)
        if rec.next_attempt_at_wall_ns <= wall_ns or rec.attempts == 0:
            return True
        return held_ns >= self._retry_delay_ns(rec.attempts)

    def _retry_delay_ns(self, failed_attempt: int) -> int:
        """Lambda's backoff: 1 minute after the first failure, 2 after the second."""
        return self.cfg.async_retry_base_ns << max(0, min(failed_attempt, 8) - 1)

    def _lease_ns(self, function: str) -> int:
        record = self.sm.get_function(function)
        timeout_s = record.config.timeout_s if record is not None else faas.TIMEOUT_S_MAX
        return timeout_s * NS_PER_S + self.cfg.async_lease_grace_ns

    def _failed_attempt(self, request_id: str, attempt: int, error_type: str,
                        text: str) -> faas.RecordAsyncAttempt:
        wall = self.now.wall_ns
        delay_ns = self._retry_delay_ns(attempt)
        return faas.RecordAsyncAttempt(request_id=request_id, attempt=attempt, ok=False,
                                       wall_ns=wall, node=self.node_id, error_type=error_type,
                                       error_message=text, retry_at_wall_ns=wall + delay_ns)

    def _on_attempt_started(self, cmd: faas.StartAsyncAttempt, value: Any) -> None:
        if isinstance(value, FaasError) or not isinstance(value, faas.AsyncRecord):
            self.async_running.discard(cmd.request_id)
            return
        resolved = self.sm.resolve(value.function, value.qualifier or None, 0)
        if isinstance(resolved, FaasError):
            self._propose(self._failed_attempt(cmd.request_id, cmd.attempt, "ResourceNotFound",
                                               resolved.message), None, "")
            return
        plan = faas_api.Invoke(request_id="", invocation_id=cmd.request_id, resolved=resolved,
                               payload=value.payload, caller_key_id="")
        self._start_invoke(plan, None, attempt=cmd.attempt)

    def _record_async(self, route: _Routing, record: proto.InvocationRecord | None,
                      text: str) -> None:
        if record is not None and record.status == "succeeded":
            cmd = faas.RecordAsyncAttempt(request_id=route.invocation_id,
                                          attempt=route.async_attempt, ok=True,
                                          wall_ns=self.now.wall_ns, node=record.node)
        else:
            error_type = record.error_type if record is not None else "Sandbox.Unavailable"
            message_text = record.error_message if record is not None else text
            cmd = self._failed_attempt(route.invocation_id, route.async_attempt, error_type,
                                       message_text)
        self._propose(cmd, None, "")

    # --------------------------------------------------------------- timers

    def _on_deadline(self, key: Hashable) -> None:
        assert isinstance(key, tuple)
        kind = key[0]
        if kind == "retry":
            self._retry_proposal(key[1], key[2])
        elif kind == "invoke":
            self._on_invoke_deadline(key[1])
        elif kind == "accept":
            self._on_accept_deadline(key[1])
        elif kind == "reroute":
            route = self.routing.get(key[1])
            if route is not None and not route.target:
                self._route(route)
        elif kind == "confirm":
            running = self.running.get(key[1])
            if running is not None:
                self._confirm(running.entry, key[1])
        elif kind == "query":
            self._on_query_deadline(key[1], key[2])
        elif kind == "fence":
            self._settle_fence()
        elif kind == "meta":
            self._refresh_meta()
            self.deadlines.set(key, self.now.mono_ns + self.cfg.meta_refresh_ns)
        elif kind == "stale":
            self._recheck_stale(key[1])
        elif kind == "async":
            self._scan_async()
            self._maybe_bootstrap_key()
            self.deadlines.set(key, self.now.mono_ns + self.cfg.async_scan_ns)
        elif kind == "results":
            self._expire_results()
            self.deadlines.set(key, self.now.mono_ns + 60 * NS_PER_S)

    def _settle_fence(self) -> None:
        """After a lost disk: gossip has had ``lost_disk_fence_ns`` to hear (and refute) the
        earlier life's incarnations, so a new one is above them all: announce it (even
        with unchanged metadata: that life may have held ours) and fence below it."""
        if self.leaving:  # gossip takes no more updates: keep refusing stamped requests
            return
        self.last_meta = self._meta()
        self.gossip.command(UpdateMeta(meta=self.last_meta), self.now)
        self.fence_incarnation, self.fence_settled = self.gossip.incarnation, True
        self.out.persist("m.meta", "fenced", True)

    def _refresh_meta(self) -> None:
        meta = self._meta()
        if meta != self.last_meta and not self.leaving:  # gossip refuses updates once left
            self.last_meta = meta
            self.gossip.command(UpdateMeta(meta=meta), self.now)

    # -------------------------------------------------------------- effects

    def _effect(self, kind: str, args: Any, context: Any) -> int:
        self.next_effect += 1
        self.effects[self.next_effect] = (kind, context)
        self.out.effect(Effect(effect_id=self.next_effect, kind=kind, args=args))
        return self.next_effect


def remembered_peers(disk: Mapping[str, Mapping[Hashable, Any]]) -> dict[str, str]:
    """The peer endpoints a node saw before it stopped: node id -> peer address."""
    return {str(node): str(addr) for node, addr in sorted(disk.get("m.peers", {}).items())
            if isinstance(addr, str)}


def _split_disk(disk: Mapping[str, Mapping[Hashable, Any]]) -> tuple[
        dict[str, Mapping[Hashable, Any]], dict[str, Mapping[Hashable, Any]],
        dict[str, Mapping[Hashable, Any]]]:
    gossip_disk: dict[str, Mapping[Hashable, Any]] = {}
    paxos_disk: dict[str, Mapping[Hashable, Any]] = {}
    own: dict[str, Mapping[Hashable, Any]] = {}
    for table, rows in disk.items():
        if table.startswith("g."):
            gossip_disk[table[2:]] = rows
        elif table.startswith("p."):
            paxos_disk[table[2:]] = rows
        elif table.startswith("m."):
            own[table[2:]] = rows
    return gossip_disk, paxos_disk, own


def _trim(record: proto.InvocationRecord) -> proto.InvocationRecord:
    """Bound what is stored and sent: the payload beyond the cap is dropped."""
    if record.payload is not None and len(record.payload) > RESULT_PAYLOAD_MAX_BYTES:
        return attrs.evolve(record, payload=None,
                            error_message=record.error_message or "result payload not kept")
    return record


def _invoke_response(request_id: str, record: proto.InvocationRecord) -> proto.ClientResponse:
    if record.status == "succeeded":
        return proto.ok(request_id, proto.InvokeResult(
            invocation_id=record.invocation_id, payload=record.payload or b"",
            executed_version=record.version, node=record.node, log_tail=record.log_tail))
    if record.status == "timeout":
        kind: proto.ErrorKind = "Timeout"
    elif record.error_type.startswith("Sandbox.Unavailable"):
        kind = "Unavailable"
    else:
        kind = "FunctionError"
    error = proto.ClientError(kind=kind, message=record.error_message or record.error_type,
                              error_type=record.error_type, error_message=record.error_message,
                              invocation_id=record.invocation_id)
    return proto.ClientResponse(request_id=request_id, ok=False, error=error)
