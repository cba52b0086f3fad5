"""SWIM membership with Lifeguard, as a pure sans-IO core.

Theory of operation
-------------------
Each node keeps a view of every member it has heard of: a state (alive,
suspect, dead, left), the member's incarnation number and its metadata.

*Failure detection.* Once per protocol period the node probes one member,
taken from a shuffled round-robin order (reshuffled after each pass; a new
member is swapped in at a random place). It sends ``Ping``; with no ``Ack``
within the probe timeout it asks ``indirect_checks`` other members to probe
the target for it (``PingReq``). A helper that gets no ack in time answers
``Nack``. With no ack by the end of the period (or as soon as every helper has
answered nack) the target becomes *suspect*. A suspicion turns into *dead*
when its timer expires; the timer starts at its maximum and shrinks with each
independent confirmation (another accuser) down to its minimum (Lifeguard).

*Incarnations.* Only a node itself raises its incarnation: to refute a
suspicion or death about it, to publish new metadata, or when it restarts (the
incarnation ceiling is persisted; a restart starts above it). Precedence, for
updates about the same node: ``alive(i)`` beats ``alive/suspect(j)`` only if
``i > j`` and beats ``dead/left(j)`` only if ``i > j``; ``suspect(i)`` beats
``alive(j)`` if ``i >= j`` (a tie goes to the suspicion) and ``suspect(j)`` if
``i > j``; ``dead/left(i)`` beats ``alive/suspect(j)`` if ``i >= j``.

*Dissemination.* Every accepted change is queued once per subject node and
piggybacked on the next outgoing probe messages, least-sent first, each at
most ``retransmit_mult * ceil(log10(n + 1))`` times. Push-pull full-state
exchanges run on join (until a seed answers) and periodically; every
``reconnect_every``-th one goes to a member held dead, so partitions heal.

*Lifeguard.* A local health score rises when a probe fails without the
expected nacks or when the node has to refute, and falls with each successful
probe; probe interval and timeout are stretched by ``score + 1``. A ping to a
suspected member carries the suspicion (the buddy rule) so it can refute at
once. With ``lifeguard=False`` the core is plain SWIM: no health score, a
fixed suspicion timeout (the minimum), no buddy rule.

*Durability.* The only durable record is the incarnation ceiling
(``gossip/incarnation``): incarnations are reserved in blocks, and an update
announcing an incarnation above the durable ceiling waits for the fsync.

Inputs follow the core contract (``handle``, ``command``, ``tick``); outputs
leave through ``take_ready``. A peer's bad message is dropped and counted in
``counters``; a caller's misuse raises.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Iterable, Mapping
from typing import Any, Literal, NamedTuple

import attrs

from gossip import _maths
from gossip._collections import BroadcastQueue, IdSet
from gossip.messages import (
    MAX_CO_ACCUSERS,
    MAX_INCARNATION,
    MAX_MEMBERS_PER_SYNC,
    MAX_UPDATES_PER_MESSAGE,
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    NodeMeta,
    Ping,
    PingReq,
    PushPullReply,
    PushPullRequest,
    StateName,
    Suspect,
    Update,
)
from gossip.messages import (
    Gossip as GossipMsg,
)
from meshfaas.core.types import (
    NS_PER_MS,
    NS_PER_S,
    Deadlines,
    EffectResult,
    NodeId,
    Now,
    Outbox,
    Ready,
)

ALIVE: StateName = "alive"
SUSPECT: StateName = "suspect"
DEAD: StateName = "dead"
LEFT: StateName = "left"
LIVE_STATES = (ALIVE, SUSPECT)

TABLE = "gossip"
INCARNATION_KEY = "incarnation"

NotificationKind = Literal[
    "member_joined", "member_suspect", "member_dead", "member_alive", "member_left",
    "meta_changed",
]


# ---------------------------------------------------------------------------
# Configuration, commands, what the core reports
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class GossipConfig:
    """Tunables. Durations in nanoseconds; multipliers as in memberlist."""

    probe_interval_ns: int = NS_PER_S
    probe_timeout_ns: int = 200 * NS_PER_MS
    nack_ratio: float = 0.8  # a helper nacks after this fraction of its probe timeout
    indirect_checks: int = 3
    suspicion_mult: float = 1.0
    suspicion_max_timeout_mult: float = 4.0
    suspicion_confirmations: int = 3
    retransmit_mult: int = 4
    awareness_max_mult: int = 8
    push_pull_interval_ns: int = 30 * NS_PER_S
    reconnect_every: int = 4
    join_retry_ns: int = NS_PER_S
    max_piggyback: int = 8
    max_broadcasts: int = 4096
    max_relays: int = 256
    incarnation_block: int = 1024
    lifeguard: bool = True

    def __attrs_post_init__(self) -> None:
        positive = ("probe_interval_ns", "probe_timeout_ns", "push_pull_interval_ns",
                    "join_retry_ns", "max_piggyback", "max_broadcasts", "max_relays",
                    "incarnation_block", "retransmit_mult", "awareness_max_mult",
                    "reconnect_every")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"GossipConfig.{name} must be > 0")
        if self.probe_timeout_ns >= self.probe_interval_ns:
            raise ValueError("probe_timeout_ns must be shorter than probe_interval_ns")
        if not 0 < self.nack_ratio < 1 or self.indirect_checks < 0:
            raise ValueError("nack_ratio must be in (0, 1) and indirect_checks >= 0")


@attrs.frozen(kw_only=True)
class UpdateMeta:
    """Command: publish new local metadata (returns the new incarnation)."""

    meta: NodeMeta


@attrs.frozen(kw_only=True)
class AddSeeds:
    """Command: join through these node ids (or transport-resolved seed names)."""

    seeds: tuple[NodeId, ...]


@attrs.frozen(kw_only=True)
class Leave:
    """Command: leave the cluster gracefully (stop probing, announce ``left``)."""


@attrs.frozen(kw_only=True)
class MemberEvent:
    """The payload of every membership notification."""

    node_id: NodeId
    incarnation: int
    state: StateName
    meta: NodeMeta


class MemberInfo(NamedTuple):
    """One row of :meth:`Gossip.members`."""

    node_id: NodeId
    state: StateName
    incarnation: int
    meta: NodeMeta


class Member:
    """Our view of one other node."""

    __slots__ = ("incarnation", "meta", "node_id", "state", "state_change_ns")

    def __init__(self, node_id: NodeId, incarnation: int, meta: NodeMeta, now_ns: int) -> None:
        self.node_id = node_id
        self.state: StateName = ALIVE
        self.incarnation = incarnation
        self.meta = meta
        self.state_change_ns = now_ns


class Suspicion:
    """A running suspicion timer: who confirmed it and its bounds (ns)."""

    __slots__ = ("accusers", "incarnation", "k", "max_ns", "min_ns", "start_ns")

    def __init__(self, accuser: NodeId, incarnation: int, k: int, min_ns: int, max_ns: int,
                 start_ns: int) -> None:
        self.accusers: dict[NodeId, None] = {accuser: None}  # in the order they came
        self.incarnation = incarnation
        self.k = k
        self.min_ns = min_ns
        self.max_ns = max_ns
        self.start_ns = start_ns

    @property
    def confirmations(self) -> int:
        return len(self.accusers) - 1

    def confirm(self, accuser: NodeId) -> bool:
        """Count a new independent accuser; False if a duplicate or already at k."""
        if self.confirmations >= self.k or accuser in self.accusers:
            return False
        self.accusers[accuser] = None
        return True

    def deadline_ns(self) -> int:
        return self.start_ns + _maths.suspicion_timeout_ns(
            self.confirmations, self.k, self.min_ns, self.max_ns)


class Probe:
    """The probe of the current protocol period."""

    __slots__ = ("acked", "concluded", "helpers", "nacked", "seq", "target")

    def __init__(self, seq: int, target: NodeId) -> None:
        self.seq = seq
        self.target = target
        self.acked = False
        self.concluded = False
        self.helpers: tuple[NodeId, ...] = ()
        self.nacked: set[NodeId] = set()


class Relay:
    """A ping we send for another node's ``PingReq``."""

    __slots__ = ("requester", "requester_seq", "target")

    def __init__(self, requester: NodeId, requester_seq: int, target: NodeId) -> None:
        self.requester = requester
        self.requester_seq = requester_seq
        self.target = target


# ---------------------------------------------------------------------------
# The core
# ---------------------------------------------------------------------------


class Gossip:
    """SWIM + Lifeguard membership for one node. See the module docstring."""

    def __init__(
        self,
        config: GossipConfig,
        node_id: NodeId,
        disk: Mapping[str, Mapping[Hashable, Any]],
        rng: random.Random,
        now: Now,
        *,
        seeds: Iterable[NodeId] = (),
        meta: NodeMeta | None = None,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty string")
        self.config = config
        self.node_id = node_id
        self._rng = rng
        self._meta = meta if meta is not None else NodeMeta()
        self._check_meta(self._meta)
        self._outbox = Outbox()
        self._deadlines = Deadlines()
        self.counters: dict[str, int] = {}
        # membership view
        self._members: dict[NodeId, Member] = {}
        self._live = IdSet()  # alive or suspect, never us
        self._dead = IdSet()  # dead (not left), candidates for reconnection
        self._probe_order: list[NodeId] = []
        self._probe_index = 0
        self._suspicions: dict[NodeId, Suspicion] = {}
        self._queue = BroadcastQueue(config.max_broadcasts)
        # probing
        self._seq = 0
        self._probe: Probe | None = None
        self._relays: dict[int, Relay] = {}
        self._awareness = 0
        self._push_pulls = 0
        self._view_version = 0  # bumped on every change a push-pull would carry
        self._state_changes = 0  # bumped on every member state change
        self._members_cache: tuple[tuple[int, int, bool, int, NodeMeta], list[MemberInfo]] | None = None
        self._snapshot_cache: tuple[int, tuple[MemberState, ...]] | None = None
        self._sync_backoff_ns = config.push_pull_interval_ns  # shorter just after a join
        # joining and leaving
        self._seeds: list[NodeId] = [s for s in seeds if s != node_id]
        self._joined = False
        self._leaving = False
        # incarnation and its durable ceiling
        self._durable_ceiling = self._read_ceiling(disk)
        self._incarnation = self._durable_ceiling + 1
        self._sealed: list[tuple[int, int]] = []  # (ready seq, ceiling) awaiting fsync
        self._unsealed_ceiling: int | None = None
        self._urgent_self = False  # is our pending self-announcement a refutation?
        self._reserve(self._incarnation)
        self._last_now_ns = now.mono_ns  # the latest monotonic reading seen
        self._deadlines.set(("join",), now.mono_ns)
        self._deadlines.set(("probe",), now.mono_ns + self._rng.randrange(config.probe_interval_ns))
        self._deadlines.set(("push_pull",), now.mono_ns + config.push_pull_interval_ns)

    # ------------------------------------------------------------ the contract

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        """A message from a peer. Anything malformed is dropped and counted."""
        self._last_now_ns = now.mono_ns
        handler = _HANDLERS.get(type(msg))
        if handler is None or not _is_id(src):
            self._count("drop_malformed")
            return
        self._count("recv_" + type(msg).__name__)
        handler(self, src, msg, now)

    def command(self, cmd: Any, now: Now) -> Any:
        """A local command: :class:`UpdateMeta`, :class:`AddSeeds` or :class:`Leave`."""
        self._last_now_ns = now.mono_ns
        if isinstance(cmd, UpdateMeta):
            return self.update_meta(cmd.meta, now)
        if isinstance(cmd, AddSeeds):
            return self.add_seeds(cmd.seeds, now)
        if isinstance(cmd, Leave):
            return self.leave(now)
        raise TypeError(f"unknown gossip command {type(cmd).__qualname__}")

    def tick(self, now: Now) -> None:
        self._last_now_ns = now.mono_ns
        for key in self._deadlines.pop_due(now.mono_ns):
            assert isinstance(key, tuple)
            _TIMERS[key[0]](self, key, now)

    def next_deadline(self) -> int | None:
        return self._deadlines.next_deadline()

    def take_ready(self) -> Ready | None:
        ready = self._outbox.take()
        if ready is not None and ready.persist and self._unsealed_ceiling is not None:
            self._sealed.append((ready.seq, self._unsealed_ceiling))
            self._unsealed_ceiling = None
        return ready

    def on_persisted(self, seq: int) -> None:
        durable = self._durable_ceiling
        while self._sealed and self._sealed[0][0] <= seq:
            durable = max(durable, self._sealed.pop(0)[1])
        if durable == self._durable_ceiling:
            return
        self._durable_ceiling = durable
        if self._incarnation <= durable and not self._leaving:
            self._queue.enqueue(self.node_id, self._self_alive(), urgent=self._urgent_self)
            if not self._joined and ("join",) in self._deadlines:
                self._deadlines.set(("join",), self._last_now_ns)  # join at once

    def on_result(self, result: EffectResult, now: Now) -> None:
        raise ValueError(f"gossip asks for no effects, got a result for {result.effect_id}")

    # ----------------------------------------------------------------- queries

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def meta(self) -> NodeMeta:
        return self._meta

    @property
    def awareness(self) -> int:
        return self._awareness

    def members(self) -> list[MemberInfo]:
        """Every node we know, ourselves included, sorted by id.

        Rebuilt only when something it shows may have changed (the routers of
        the mesh node ask several times per invocation)."""
        key = (self._view_version, self._state_changes, self._leaving, self._incarnation,
               self._meta)
        if self._members_cache is None or self._members_cache[0] != key:
            own_state: StateName = LEFT if self._leaving else ALIVE
            rows = [MemberInfo(self.node_id, own_state, self._incarnation, self._meta)]
            rows += [MemberInfo(m.node_id, m.state, m.incarnation, m.meta)
                     for m in self._members.values()]
            self._members_cache = (key, sorted(rows, key=lambda r: r.node_id))
        return list(self._members_cache[1])

    def state_of(self, node_id: NodeId) -> StateName | None:
        if node_id == self.node_id:
            return LEFT if self._leaving else ALIVE
        member = self._members.get(node_id)
        return None if member is None else member.state

    def incarnation_of(self, node_id: NodeId) -> int | None:
        """The incarnation we hold for ``node_id`` (None: not a member we know)."""
        if node_id == self.node_id:
            return self._incarnation
        member = self._members.get(node_id)
        return None if member is None else member.incarnation

    def live_count(self) -> int:
        """Members alive or suspect in our view, ourselves included."""
        return len(self._live) + 1

    # ---------------------------------------------------------------- commands

    def update_meta(self, meta: NodeMeta, now: Now) -> int:
        self._check_meta(meta)
        if self._leaving:
            raise RuntimeError("cannot update metadata after leaving")
        self._meta = meta
        self._bump_incarnation(self._incarnation + 1, urgent=False)
        return self._incarnation

    def add_seeds(self, seeds: Iterable[NodeId], now: Now) -> None:
        for seed in seeds:
            if not _is_id(seed):
                raise ValueError(f"bad seed {seed!r}")
            if seed != self.node_id and seed not in self._seeds:
                self._seeds.append(seed)
        self._joined = False
        self._deadlines.set(("join",), now.mono_ns)

    def leave(self, now: Now) -> None:
        if self._leaving:
            return
        self._leaving = True
        self._view_version += 1
        for key in (("probe",), ("probe_timeout",), ("push_pull",), ("join",)):
            self._deadlines.cancel(key)
        self._probe = None
        left = Dead(node=self.node_id, incarnation=self._incarnation, accuser=self.node_id)
        self._queue.enqueue(self.node_id, left, urgent=True)
        targets = self._live.sample(self._rng, max(3, self.config.indirect_checks), _any)
        for target in targets:
            self._outbox.send(target, GossipMsg(updates=(left,)))

    # ------------------------------------------------------------ incarnation

    @staticmethod
    def _read_ceiling(disk: Mapping[str, Mapping[Hashable, Any]]) -> int:
        value = disk.get(TABLE, {}).get(INCARNATION_KEY)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_INCARNATION:
            return value
        return 0

    def _reserve(self, incarnation: int) -> None:
        """Make sure ``incarnation`` is under a ceiling on its way to disk."""
        ceiling = max(self._durable_ceiling, self._unsealed_ceiling or 0,
                      max((c for _, c in self._sealed), default=0))
        if incarnation <= ceiling:
            return
        new_ceiling = min(incarnation + self.config.incarnation_block, MAX_INCARNATION)
        self._outbox.persist(TABLE, INCARNATION_KEY, new_ceiling)
        self._unsealed_ceiling = new_ceiling

    def _bump_incarnation(self, incarnation: int, *, urgent: bool) -> None:
        self._incarnation = min(incarnation, MAX_INCARNATION)
        self._view_version += 1
        self._reserve(self._incarnation)
        self._urgent_self = urgent
        if self._incarnation <= self._durable_ceiling:
            self._queue.enqueue(self.node_id, self._self_alive(), urgent=urgent)

    def _self_alive(self) -> Alive:
        return Alive(node=self.node_id, incarnation=self._incarnation, meta=self._meta)

    def _self_durable(self) -> bool:
        return self._incarnation <= self._durable_ceiling

    def _refute(self, their_incarnation: int) -> None:
        self._count("refutes")
        if self.config.lifeguard:
            self._adjust_awareness(+1)
        self._bump_incarnation(max(self._incarnation, their_incarnation) + 1, urgent=True)

    # ---------------------------------------------------------------- probing

    def _on_probe_timer(self, key: tuple[Any, ...], now: Now) -> None:
        self._conclude_probe(now)
        interval = self._scaled(self.config.probe_interval_ns)
        self._deadlines.set(("probe",), now.mono_ns + interval)
        target = self._next_probe_target()
        if target is None:
            self._probe = None
            return
        self._seq += 1
        self._probe = Probe(self._seq, target.node_id)
        buddy = target if target.state == SUSPECT and self.config.lifeguard else None
        ping = Ping(seq=self._seq, target=target.node_id, updates=self._piggyback(buddy))
        self._outbox.send(target.node_id, ping)
        self._count("probes")
        timeout = self._scaled(self.config.probe_timeout_ns)
        self._deadlines.set(("probe_timeout",), now.mono_ns + timeout)

    def _next_probe_target(self) -> Member | None:
        for _ in range(2 * len(self._probe_order) + 2):
            if self._probe_index >= len(self._probe_order):
                self._reshuffle()
                if not self._probe_order:
                    return None
            node = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node)
            if member is not None and member.state in LIVE_STATES:
                return member
        return None

    def _reshuffle(self) -> None:
        self._probe_order = sorted(self._live)
        self._rng.shuffle(self._probe_order)
        self._probe_index = 0

    def _insert_probe_order(self, node: NodeId) -> None:
        order = self._probe_order
        order.append(node)
        j = self._rng.randrange(len(order))
        order[j], order[-1] = order[-1], order[j]

    def _on_probe_timeout(self, key: tuple[Any, ...], now: Now) -> None:
        probe = self._probe
        if probe is None or probe.acked or probe.concluded:
            return
        target = probe.target
        helpers = self._live.sample(
            self._rng, self.config.indirect_checks,
            lambda n: n != target and self._members[n].state == ALIVE)
        probe.helpers = tuple(helpers)
        for helper in helpers:
            req = PingReq(seq=probe.seq, target=target, updates=self._piggyback(None))
            self._outbox.send(helper, req)
            self._count("ping_reqs")

    def _conclude_probe(self, now: Now) -> None:
        probe = self._probe
        if probe is None or probe.concluded:
            return
        probe.concluded = True
        self._deadlines.cancel(("probe_timeout",))
        if probe.acked:
            return
        expected = len(probe.helpers)
        missed = expected - len(probe.nacked) if expected else 1
        if self.config.lifeguard:
            self._adjust_awareness(missed)
        self._count("probe_failures")
        member = self._members.get(probe.target)
        if member is not None and member.state in LIVE_STATES:
            accusation = Suspect(node=member.node_id, incarnation=member.incarnation,
                                 accuser=self.node_id)
            fresh = member.state == ALIVE
            self._apply_suspect(accusation, now)
            if fresh:  # tell the suspect at once: if it is alive, it refutes now
                self._outbox.send(member.node_id, GossipMsg(updates=(accusation,)))

    def _scaled(self, duration_ns: int) -> int:
        if not self.config.lifeguard:
            return duration_ns
        return _maths.awareness_scale_ns(duration_ns, self._awareness)

    def _adjust_awareness(self, delta: int) -> None:
        self._awareness = _maths.awareness_apply(
            self._awareness, delta, self.config.awareness_max_mult)

    # ------------------------------------------------------- probe messages

    def handle_ping(self, src: NodeId, msg: Ping, now: Now) -> None:
        if not self._check_seq(msg.seq):
            return
        self._apply_updates(src, msg.updates, now)
        if msg.target != self.node_id:
            self._count("drop_misdirected_ping")
            return
        self._outbox.send(src, Ack(seq=msg.seq, updates=self._piggyback(self._members.get(src))))

    def handle_ack(self, src: NodeId, msg: Ack, now: Now) -> None:
        if not self._check_seq(msg.seq):
            return
        self._apply_updates(src, msg.updates, now)
        probe = self._probe
        if probe is not None and probe.seq == msg.seq:
            self._ack_probe(probe, src)
            return
        relay = self._relays.pop(msg.seq, None)
        if relay is not None and relay.target == src:
            self._deadlines.cancel(("relay", msg.seq))
            self._outbox.send(relay.requester,
                              Ack(seq=relay.requester_seq, updates=self._piggyback(None)))
            return
        if relay is not None:
            self._relays[msg.seq] = relay
        self._count("ack_unexpected")

    def _ack_probe(self, probe: Probe, src: NodeId) -> None:
        if src != probe.target and src not in probe.helpers:
            self._count("drop_ack_from_stranger")
            return
        if probe.acked or probe.concluded:
            return
        probe.acked = True
        if self.config.lifeguard:
            self._adjust_awareness(-1)

    def handle_pingreq(self, src: NodeId, msg: PingReq, now: Now) -> None:
        if not self._check_seq(msg.seq):
            return
        self._apply_updates(src, msg.updates, now)
        if msg.target in (self.node_id, src) or not _is_id(msg.target):
            self._count("drop_bad_pingreq")
            return
        if len(self._relays) >= self.config.max_relays:
            self._count("drop_relay_full")
            return
        self._seq += 1
        self._relays[self._seq] = Relay(src, msg.seq, msg.target)
        self._outbox.send(msg.target, Ping(seq=self._seq, target=msg.target,
                                           updates=self._piggyback(None)))
        nack_after = int(self._scaled(self.config.probe_timeout_ns) * self.config.nack_ratio)
        self._deadlines.set(("relay", self._seq), now.mono_ns + nack_after)

    def _on_relay_timer(self, key: tuple[Any, ...], now: Now) -> None:
        relay = self._relays.pop(key[1], None)
        if relay is not None:
            self._outbox.send(relay.requester,
                              Nack(seq=relay.requester_seq, updates=self._piggyback(None)))

    def handle_nack(self, src: NodeId, msg: Nack, now: Now) -> None:
        if not self._check_seq(msg.seq):
            return
        self._apply_updates(src, msg.updates, now)
        probe = self._probe
        if probe is None or probe.seq != msg.seq or src not in probe.helpers:
            self._count("nack_unexpected")
            return
        probe.nacked.add(src)
        if not probe.acked and len(probe.nacked) == len(probe.helpers):
            self._conclude_probe(now)  # every helper failed too: suspect now

    def handle_gossip(self, src: NodeId, msg: GossipMsg, now: Now) -> None:
        self._apply_updates(src, msg.updates, now)

    # ------------------------------------------------------------- push-pull

    def handle_pushpullrequest(self, src: NodeId, msg: PushPullRequest, now: Now) -> None:
        if self._merge(src, msg.members, now) is None:
            return
        self._outbox.send(src, PushPullReply(members=self._snapshot()))

    def handle_pushpullreply(self, src: NodeId, msg: PushPullReply, now: Now) -> None:
        differed = self._merge(src, msg.members, now)
        if differed is None:
            return
        if self._joined and differed == 0:
            self._sync_backoff_ns = self.config.push_pull_interval_ns  # caught up
        if not self._joined:
            self._joined = True
            self._deadlines.cancel(("join",))
            # Catch up with members that joined at the same time: sync again
            # after 1, 2, 4, ... periods until the regular interval is reached.
            self._sync_backoff_ns = self.config.probe_interval_ns
            jitter = self._rng.randrange(self._sync_backoff_ns)
            self._deadlines.set(("push_pull",), now.mono_ns + self._sync_backoff_ns + jitter)

    def _snapshot(self) -> tuple[MemberState, ...]:
        version = self._view_version * 2 + self._self_durable()
        if self._snapshot_cache is not None and self._snapshot_cache[0] == version:
            return self._snapshot_cache[1]
        rows = [MemberState(node=m.node_id, state=m.state, incarnation=m.incarnation, meta=m.meta)
                for m in self._members.values()]
        if self._self_durable():
            own: StateName = LEFT if self._leaving else ALIVE
            rows.append(MemberState(node=self.node_id, state=own,
                                    incarnation=self._incarnation, meta=self._meta))
        self._snapshot_cache = (version, tuple(rows))
        return self._snapshot_cache[1]

    def _merge(self, src: NodeId, rows: Any, now: Now) -> int | None:
        """Merge a peer's full view; the number of rows that differed, or None if refused."""
        if type(rows) is not tuple or len(rows) > MAX_MEMBERS_PER_SYNC:
            self._count("drop_oversized_sync")
            return None
        differed = 0
        members = self._members
        for row in rows:
            if type(row) is not MemberState:
                self._count("drop_malformed_update")
                continue
            member = members.get(row.node)
            if (member is not None and member.state == row.state
                    and member.incarnation == row.incarnation):
                continue  # the common case: we agree
            if row.node != self.node_id or row.incarnation != self._incarnation:
                differed += 1
            self._merge_row(src, row, now)
        return differed

    def _merge_row(self, src: NodeId, row: MemberState, now: Now) -> None:
        if row.state == ALIVE:
            self._apply_update(src, Alive(node=row.node, incarnation=row.incarnation,
                                          meta=row.meta), now)
        elif row.state == LEFT:
            self._apply_update(src, Dead(node=row.node, incarnation=row.incarnation,
                                         accuser=row.node), now)
        elif row.state == DEAD:
            # Another view's death becomes a suspicion here: the node may refute.
            # A view is not an independent accusation, so it never confirms one.
            member = self._members.get(row.node)
            if member is not None and member.state == SUSPECT:
                return
            self._apply_update(src, Suspect(node=row.node, incarnation=row.incarnation,
                                            accuser=src), now)
        elif row.state == SUSPECT:
            # A suspicion in another view resolves there (refuted or dead, and
            # then gossiped); copying it would only revive stale ones.
            if row.node == self.node_id:
                self._apply_update(src, Suspect(node=row.node, incarnation=row.incarnation,
                                                accuser=src), now)
        else:
            self._count("drop_malformed_update")

    def _on_push_pull_timer(self, key: tuple[Any, ...], now: Now) -> None:
        self._push_pulls += 1
        interval = _maths.push_pull_interval_ns(self.config.push_pull_interval_ns,
                                                self.live_count())
        if self._sync_backoff_ns < interval:
            self._sync_backoff_ns *= 2
            interval = min(interval, self._sync_backoff_ns)
        self._deadlines.set(("push_pull",), now.mono_ns + interval)
        target = self._push_pull_target()
        if target is not None and self._self_durable():
            self._outbox.send(target, PushPullRequest(join=False, members=self._snapshot()))
            self._count("push_pulls")

    def _push_pull_target(self) -> NodeId | None:
        reconnect = self._push_pulls % self.config.reconnect_every == 0
        if (reconnect or not self._live) and self._dead:
            return self._dead.choice(self._rng)
        if self._live:
            return self._live.choice(self._rng)
        return self._rng.choice(self._seeds) if self._seeds else None

    def _on_join_timer(self, key: tuple[Any, ...], now: Now) -> None:
        if self._joined or not self._seeds or self._leaving:
            return
        self._deadlines.set(("join",), now.mono_ns + self.config.join_retry_ns)
        if not self._self_durable():
            return
        request = PushPullRequest(join=True, members=self._snapshot())
        for seed in self._seeds:
            self._outbox.send(seed, request)
        self._count("join_attempts")

    # ------------------------------------------------------------- updates

    def _apply_updates(self, src: NodeId, updates: Any, now: Now) -> None:
        if type(updates) is not tuple:
            self._count("drop_malformed_update")
            return
        if len(updates) > MAX_UPDATES_PER_MESSAGE:
            self._count("drop_excess_updates")
            updates = updates[:MAX_UPDATES_PER_MESSAGE]
        for update in updates:
            self._apply_update(src, update, now)

    def _apply_update(self, src: NodeId, update: Any, now: Now) -> None:
        kind = type(update)
        if kind not in (Alive, Suspect, Dead) or not _valid_update(update):
            self._count("drop_malformed_update")
            return
        if kind is Alive:
            self._apply_alive(update, now)
        elif update.node == self.node_id:
            self._accused(src, update)
        elif kind is Suspect:
            self._apply_suspect(update, now)
        else:
            self._apply_dead(update, now)

    def _apply_alive(self, msg: Alive, now: Now) -> None:
        if msg.node == self.node_id:
            self._alive_about_us(msg)
            return
        member = self._members.get(msg.node)
        if member is None:
            self._add_member(msg, now)
            return
        if msg.incarnation <= member.incarnation:
            return
        old_state, old_meta = member.state, member.meta
        member.incarnation, member.meta = msg.incarnation, msg.meta
        self._view_version += 1
        self._set_state(member, ALIVE, now)
        self._queue.enqueue(msg.node, msg, urgent=old_state != ALIVE)
        if old_state in (DEAD, LEFT):
            self._notify("member_joined", member)
        elif old_state == SUSPECT:
            self._notify("member_alive", member)
        if old_meta != msg.meta and old_state in LIVE_STATES:
            self._notify("meta_changed", member)

    def _alive_about_us(self, msg: Alive) -> None:
        if msg.incarnation < self._incarnation:
            return
        if msg.incarnation == self._incarnation and msg.meta == self._meta:
            return
        # Only we raise our own incarnation: this one is forged or from a past life.
        self._count("drop_forged_alive")
        if not self._leaving:
            self._refute(msg.incarnation)

    def _add_member(self, msg: Alive, now: Now) -> None:
        member = Member(msg.node, msg.incarnation, msg.meta, now.mono_ns)
        self._members[msg.node] = member
        self._view_version += 1
        self._live.add(msg.node)
        self._insert_probe_order(msg.node)
        self._queue.enqueue(msg.node, msg)
        self._notify("member_joined", member)

    def _accused(self, src: NodeId, msg: Suspect | Dead) -> None:
        """A suspicion or death about us: refute it, or correct a stale sender."""
        if self._leaving:
            return
        if msg.incarnation >= self._incarnation:
            self._refute(msg.incarnation)
        elif self._self_durable() and src != self.node_id:
            # We refuted already, but this sender missed it: tell it directly,
            # or it may still declare us dead when its timer runs out.
            self._count("stale_accusations")
            self._outbox.send(src, GossipMsg(updates=(self._self_alive(),)))

    def _apply_suspect(self, msg: Suspect, now: Now) -> None:
        if msg.node == self.node_id:
            self._accused(msg.accuser, msg)
            return
        member = self._members.get(msg.node)
        if member is None or msg.incarnation < member.incarnation or member.state in (DEAD, LEFT):
            return
        if member.state == SUSPECT and msg.incarnation == member.incarnation:
            if self._confirm_all(member, (msg.accuser, *msg.others), now):
                self._queue.enqueue(msg.node, self._suspicion_update(member), urgent=True)
            return
        member.incarnation = msg.incarnation
        self._view_version += 1
        self._set_state(member, SUSPECT, now)
        self._start_suspicion(member, msg.accuser, now)
        self._confirm_all(member, msg.others, now)
        self._queue.enqueue(msg.node, self._suspicion_update(member), urgent=True)
        self._notify("member_suspect", member)

    def _start_suspicion(self, member: Member, accuser: NodeId, now: Now) -> None:
        cfg = self.config
        n = self.live_count()
        min_ns = _maths.suspicion_min_ns(cfg.suspicion_mult, n, cfg.probe_interval_ns)
        if cfg.lifeguard:
            k = _maths.confirmations_wanted(cfg.suspicion_confirmations, n)
            max_ns = _maths.suspicion_max_ns(cfg.suspicion_max_timeout_mult, min_ns)
        else:
            k, max_ns = 0, min_ns
        suspicion = Suspicion(accuser, member.incarnation, k, min_ns, max_ns, now.mono_ns)
        self._suspicions[member.node_id] = suspicion
        self._deadlines.set(("suspect", member.node_id), suspicion.deadline_ns())

    def _confirm_all(self, member: Member, accusers: Iterable[NodeId], now: Now) -> bool:
        """Count independent accusers; True if any was new (then re-gossip)."""
        suspicion = self._suspicions.get(member.node_id)
        if suspicion is None:
            return False
        new = [a for a in accusers if a != member.node_id and suspicion.confirm(a)]
        if not new:
            return False
        self._counters_add("confirmations", len(new))
        self._deadlines.set(("suspect", member.node_id), max(now.mono_ns, suspicion.deadline_ns()))
        return True

    def _suspicion_update(self, member: Member) -> Suspect:
        """The suspicion as we gossip it: every accuser we know of, in order."""
        suspicion = self._suspicions[member.node_id]
        first, *others = suspicion.accusers
        return Suspect(node=member.node_id, incarnation=member.incarnation, accuser=first,
                       others=tuple(others[:MAX_CO_ACCUSERS]))

    def _on_suspect_timer(self, key: tuple[Any, ...], now: Now) -> None:
        member = self._members.get(key[1])
        suspicion = self._suspicions.pop(key[1], None)
        if member is None or suspicion is None or member.state != SUSPECT:
            return
        if member.incarnation != suspicion.incarnation:
            return
        self._count("declared_dead")
        self._apply_dead(Dead(node=member.node_id, incarnation=member.incarnation,
                              accuser=self.node_id), now)

    def _apply_dead(self, msg: Dead, now: Now) -> None:
        if msg.node == self.node_id:
            self._accused(msg.accuser, msg)
            return
        member = self._members.get(msg.node)
        if member is None or msg.incarnation < member.incarnation or member.state in (DEAD, LEFT):
            return
        member.incarnation = msg.incarnation
        self._view_version += 1
        left = msg.accuser == msg.node
        self._set_state(member, LEFT if left else DEAD, now)
        self._queue.enqueue(msg.node, msg, urgent=True)
        self._notify("member_left" if left else "member_dead", member)

    def _set_state(self, member: Member, state: StateName, now: Now) -> None:
        if member.state == state:
            return
        member.state = state
        self._state_changes += 1
        member.state_change_ns = now.mono_ns
        if state != SUSPECT:
            self._suspicions.pop(member.node_id, None)
            self._deadlines.cancel(("suspect", member.node_id))
        if state in LIVE_STATES:
            if member.node_id not in self._live:
                self._live.add(member.node_id)
                self._insert_probe_order(member.node_id)
            self._dead.discard(member.node_id)
        else:
            self._live.discard(member.node_id)
            if state == DEAD:
                self._dead.add(member.node_id)
            else:
                self._dead.discard(member.node_id)

    # ---------------------------------------------------------------- output

    def _piggyback(self, them: Member | None) -> tuple[Update, ...]:
        """Updates for one outgoing message; ``them`` is its receiver if we know it.

        A receiver we hold suspect or dead is told so first (the buddy rule), so
        it can refute at once.
        """
        updates: list[Update] = []
        if them is not None and them.state != ALIVE and self._buddy_rule(them):
            updates.append(self._accusation(them))
        limit = _maths.retransmit_limit(self.config.retransmit_mult, self.live_count())
        updates += self._queue.take(self.config.max_piggyback - len(updates), limit)
        return tuple(updates)

    def _buddy_rule(self, them: Member) -> bool:
        return self.config.lifeguard or them.state in (DEAD, LEFT)

    def _accusation(self, them: Member) -> Update:
        if them.state == SUSPECT:
            return Suspect(node=them.node_id, incarnation=them.incarnation, accuser=self.node_id)
        accuser = them.node_id if them.state == LEFT else self.node_id
        return Dead(node=them.node_id, incarnation=them.incarnation, accuser=accuser)

    def _notify(self, kind: NotificationKind, member: Member) -> None:
        self._outbox.notify(kind, MemberEvent(node_id=member.node_id,
                                              incarnation=member.incarnation,
                                              state=member.state, meta=member.meta))

    # ------------------------------------------------------------- checking

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _counters_add(self, name: str, amount: int) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def _check_seq(self, seq: Any) -> bool:
        if type(seq) is int and 0 <= seq <= MAX_INCARNATION:
            return True
        self._count("drop_malformed")
        return False

    @staticmethod
    def _check_meta(meta: Any) -> None:
        if type(meta) is not NodeMeta:
            raise TypeError(f"meta must be a NodeMeta, got {type(meta).__qualname__}")


def _is_id(value: Any) -> bool:
    return type(value) is str and 0 < len(value) <= 256


def _any(_node: NodeId) -> bool:
    return True


def _valid_update(update: Any) -> bool:
    inc = update.incarnation
    if not (_is_id(update.node) and type(inc) is int and 0 <= inc < MAX_INCARNATION):
        return False
    if type(update) is Alive:
        return type(update.meta) is NodeMeta
    if type(update) is Suspect:
        others = update.others
        if type(others) is not tuple or len(others) > MAX_CO_ACCUSERS:
            return False
        if not all(_is_id(a) for a in others):
            return False
    return _is_id(update.accuser)


_HANDLERS: dict[type, Any] = {
    Ping: Gossip.handle_ping,
    Ack: Gossip.handle_ack,
    PingReq: Gossip.handle_pingreq,
    Nack: Gossip.handle_nack,
    GossipMsg: Gossip.handle_gossip,
    PushPullRequest: Gossip.handle_pushpullrequest,
    PushPullReply: Gossip.handle_pushpullreply,
}

_TIMERS: dict[str, Any] = {
    "probe": Gossip._on_probe_timer,
    "probe_timeout": Gossip._on_probe_timeout,
    "relay": Gossip._on_relay_timer,
    "suspect": Gossip._on_suspect_timer,
    "push_pull": Gossip._on_push_pull_timer,
    "join": Gossip._on_join_timer,
}
