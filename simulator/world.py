"""The deterministic world: one event heap, per-node clocks, a faulty network, disks.

Theory of operation
-------------------
Everything that happens is an event on one heap ordered by
``(virtual time ns, sequence)``; the sequence number breaks ties in the order
events were scheduled, so a run is a pure function of its seed and inputs. The
world never reads a real clock and draws every random choice from generators
derived from the seed, so the same seed replays byte for byte in any process.

Each node is a sans-IO core (:class:`meshfaas.core.types.Core`) built by a
factory from a :class:`NodeBoot`. The world drives it exactly as the real
runtime does (the Ready contract): a batch's ``persist`` goes to the node's
:class:`SimDisk` as unsynced writes; after a virtual fsync (disks are FIFO, one
fsync at a time) the writes become durable, then ``send_after_persist`` leaves,
then ``on_persisted(seq)`` is called. ``send_now`` leaves at once.

Nodes keep their own clocks: a monotonic and a wall clock, each starting at a
large random offset, both drifting by a per-node rate in parts per million. A
core's deadline is in its own monotonic clock; the world converts it to
virtual time.

A crash discards the node's core, its unsynced writes and every pending event
addressed to that incarnation (timers, fsync completions, effect results); in
flight messages to it are dropped when they arrive while it is down. A restart
builds a new core from the synced disk image only.

The network delivers each message after the link's base latency plus an
exponential jitter; it may lose, duplicate or reorder (an extra random delay),
honours partitions (a set of blocked directed links, so asymmetric partitions
are one-sided blocks) and clogs (an extra delay on a link until a time). With a
codec configured every message is encoded on send and decoded on delivery, so
what crosses the simulated wire is exactly what would cross the real one.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

import attrs

from meshfaas.core.codec import Codec, DecodeError, to_cbor
from meshfaas.core.types import (
    NS_PER_MS,
    Core,
    Effect,
    EffectResult,
    NodeId,
    Notification,
    Now,
    Outbound,
    Ready,
    Write,
    apply_writes,
)

Observer = Callable[[NodeId, Notification, int], None]
EffectHandler = Callable[["World", NodeId, Effect], None]
Factory = Callable[["NodeBoot"], Core]

WALL_EPOCH_NS = 1_767_225_600 * 1_000_000_000  # 2026-01-01T00:00:00Z
_heappush = heapq.heappush


def derive_rng(seed: int, *parts: object) -> random.Random:
    """A generator derived from the seed and names; str seeds hash with SHA-512."""
    return random.Random(":".join([str(seed), *map(str, parts)]))


@attrs.frozen(kw_only=True)
class NodeBoot:
    """What a factory gets to build (or rebuild) a node's core."""

    node_id: NodeId
    disk: Mapping[str, Mapping[Hashable, Any]]
    rng: random.Random
    restarts: int
    now: Now
    lost_disk: bool = False


@attrs.define(kw_only=True)
class NetworkConfig:
    """Fault and latency settings; mutable so fault plans can change them mid-run."""

    base_latency_min_ns: int = 100_000
    base_latency_max_ns: int = 2 * NS_PER_MS
    jitter_mean_ns: int = 300_000
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    reorder_max_ns: int = 20 * NS_PER_MS
    fsync_min_ns: int = 200_000
    fsync_max_ns: int = NS_PER_MS
    max_drift_ppm: int = 100


class SimDisk:
    """A disk that forgets every write not yet synced when its node crashes."""

    def __init__(self, *, encode: bool) -> None:
        self._encode = encode
        self.durable: dict[str, dict[Hashable, Any]] = {}
        self.pending: list[Write] = []
        self.syncs = 0

    def write(self, writes: Iterable[Write]) -> None:
        if self._encode:
            writes = [attrs.evolve(w, value=None if w.value is None else to_cbor(w.value)) for w in writes]
        self.pending.extend(writes)

    def sync(self) -> None:
        apply_writes(self.durable, self.pending)
        self.pending = []
        self.syncs += 1

    def crash(self, *, lose_disk: bool) -> None:
        self.pending = []
        if lose_disk:
            self.durable = {}

    def image(self) -> dict[str, dict[Hashable, Any]]:
        """A copy of the synced state, decoded when the disk stores encoded values."""
        if not self._encode:
            return {t: dict(rows) for t, rows in self.durable.items()}
        from meshfaas.core.codec import from_cbor

        return {t: {k: from_cbor(v) for k, v in rows.items()} for t, rows in self.durable.items()}


class SimNode:
    """The world's view of one node: its core, disk, clock and liveness."""

    def __init__(self, node_id: NodeId, factory: Factory, disk: SimDisk, clock_rng: random.Random,
                 max_drift_ppm: int) -> None:
        self.node_id = node_id
        self.factory = factory
        self.disk = disk
        self.core: Core | None = None
        self.up = False
        self.epoch = 0
        self.restarts = 0
        self.mono_offset_ns = clock_rng.randrange(10**15, 10**18)
        self.wall_offset_ns = WALL_EPOCH_NS + clock_rng.randrange(-10**12, 10**12)
        self.drift_ppm = clock_rng.randint(-max_drift_ppm, max_drift_ppm)
        self.timer_at_ns: int | None = None
        self.disk_free_at_ns = 0
        self.stalled_until_ns = 0
        self.lost_disk = False

    def local_ns(self, t_ns: int) -> int:
        return t_ns + t_ns * self.drift_ppm // 1_000_000

    def now(self, t_ns: int) -> Now:
        elapsed = self.local_ns(t_ns)
        return Now(mono_ns=self.mono_offset_ns + elapsed, wall_ns=self.wall_offset_ns + elapsed)

    def virtual_time_of(self, mono_deadline_ns: int) -> int:
        """The earliest virtual time at which this node's monotonic clock reads the deadline."""
        elapsed = mono_deadline_ns - self.mono_offset_ns
        t = -(-elapsed * 1_000_000 // (1_000_000 + self.drift_ppm))
        while self.local_ns(t) < elapsed:
            t += 1
        return max(t, 0)


class World:
    """A deterministic world of sans-IO nodes. See the module docstring."""

    def __init__(self, seed: int, *, network: NetworkConfig | None = None,
                 codec: Codec | None = None, trace_messages: bool = True,
                 keep_trace: bool = False) -> None:
        self.seed = seed
        self.rng = derive_rng(seed, "world")
        self._net_rng = derive_rng(seed, "network")
        self.network = network or NetworkConfig()
        self.codec = codec
        self.time_ns = 0
        self.events = 0
        self.nodes: dict[NodeId, SimNode] = {}
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._hasher = hashlib.sha256()
        self._trace_messages = trace_messages
        self.trace_lines: list[str] | None = [] if keep_trace else None
        self._observers: list[Observer] = []
        self._taps: list[Callable[[NodeId, NodeId, Any, int], None]] = []
        self._effect_handler: EffectHandler | None = None
        self._link_base_ns: dict[tuple[NodeId, NodeId], int] = {}
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.clogs: dict[tuple[NodeId, NodeId], tuple[int, int]] = {}
        self.stats: dict[str, int] = {
            "sent": 0, "delivered": 0, "lost": 0, "blocked": 0, "duplicated": 0,
            "to_down_node": 0, "decode_errors": 0, "fsyncs": 0, "crashes": 0, "restarts": 0,
        }

    # ----------------------------------------------------------------- events

    def at(self, t_ns: int, fn: Callable[..., None], *args: Any) -> None:
        """Schedule ``fn(*args)`` at virtual time ``t_ns`` (never in the past)."""
        if t_ns < self.time_ns:
            t_ns = self.time_ns
        self._seq += 1
        _heappush(self._heap, (t_ns, self._seq, fn, args))

    def after(self, delay_ns: int, fn: Callable[..., None], *args: Any) -> None:
        """Schedule ``fn(*args)`` ``delay_ns`` from now (the hot path: kept inline)."""
        self._seq += 1
        _heappush(self._heap, (self.time_ns + max(delay_ns, 0), self._seq, fn, args))

    def run_until(self, t_ns: int) -> None:
        """Process every event due at or before ``t_ns``; time ends at ``t_ns``."""
        heap = self._heap
        pop = heapq.heappop
        events = 0
        try:
            while heap and heap[0][0] <= t_ns:
                t, _, fn, args = pop(heap)
                self.time_ns = t
                events += 1
                fn(*args)
        finally:
            self.events += events
        self.time_ns = max(self.time_ns, t_ns)

    def pending_events(self) -> int:
        return len(self._heap)

    # ------------------------------------------------------------------ trace

    def trace(self, kind: str, *fields: object) -> None:
        """Add one line to the run's trace; its SHA-256 names the run."""
        line = " ".join([str(self.time_ns), kind, *map(str, fields)])
        self._hasher.update(line.encode())
        self._hasher.update(b"\n")
        if self.trace_lines is not None:
            self.trace_lines.append(line)

    @property
    def trace_hash(self) -> str:
        return self._hasher.hexdigest()

    def _describe(self, msg: Any) -> str:
        if not self._trace_messages:
            return type(msg).__name__
        try:
            return to_cbor(msg).hex()
        except ValueError:
            return type(msg).__name__

    # ------------------------------------------------------------------ nodes

    def add_node(self, node_id: NodeId | str, factory: Factory, *, start: bool = True) -> None:
        node_id = NodeId(node_id)
        if node_id in self.nodes:
            raise ValueError(f"node {node_id} already exists")
        clock_rng = derive_rng(self.seed, "clock", node_id)
        disk = SimDisk(encode=self.codec is not None)
        self.nodes[node_id] = SimNode(node_id, factory, disk, clock_rng, self.network.max_drift_ppm)
        if start:
            self._boot(self.nodes[node_id])

    def node_ids(self) -> list[NodeId]:
        return sorted(self.nodes)

    def up_nodes(self) -> list[NodeId]:
        return [n for n in self.node_ids() if self.nodes[n].up]

    def is_up(self, node_id: NodeId) -> bool:
        return self.nodes[node_id].up

    def core(self, node_id: NodeId) -> Any:
        return self.nodes[node_id].core

    def now_of(self, node_id: NodeId) -> Now:
        return self.nodes[node_id].now(self.time_ns)

    def _boot(self, node: SimNode) -> None:
        boot = NodeBoot(
            node_id=node.node_id,
            disk=node.disk.image(),
            rng=derive_rng(self.seed, "node", node.node_id, node.restarts),
            restarts=node.restarts,
            now=node.now(self.time_ns),
            lost_disk=node.lost_disk,
        )
        node.core = node.factory(boot)
        node.up = True
        node.timer_at_ns = None
        self.trace("boot", node.node_id, node.restarts)
        self._drain(node)

    # ----------------------------------------------------------------- faults

    def crash(self, node_id: NodeId, *, lose_disk: bool = False) -> None:
        """Stop a node at once; unsynced writes are lost (and the disk too, if asked)."""
        node = self.nodes[node_id]
        if not node.up:
            return
        node.up = False
        node.core = None
        node.epoch += 1
        node.disk.crash(lose_disk=lose_disk)
        node.lost_disk = node.lost_disk or lose_disk
        node.disk_free_at_ns = self.time_ns
        node.stalled_until_ns = 0
        self.stats["crashes"] += 1
        self.trace("crash", node_id, int(lose_disk))

    def restart(self, node_id: NodeId) -> None:
        node = self.nodes[node_id]
        if node.up:
            return
        node.restarts += 1
        self.stats["restarts"] += 1
        self._boot(node)

    def partition(self, groups: Iterable[Iterable[NodeId]]) -> None:
        """Block every link between different groups, both ways."""
        groups = [sorted(g) for g in groups]
        for i, a_group in enumerate(groups):
            for j, b_group in enumerate(groups):
                if i != j:
                    self.blocked.update((a, b) for a in a_group for b in b_group)
        self.trace("partition", groups)

    def block(self, src: NodeId, dst: NodeId) -> None:
        """Block one direction only: an asymmetric partition."""
        self.blocked.add((src, dst))
        self.trace("block", src, dst)

    def clog(self, src: NodeId, dst: NodeId, until_ns: int, extra_delay_ns: int) -> None:
        self.clogs[(src, dst)] = (until_ns, extra_delay_ns)
        self.trace("clog", src, dst, until_ns, extra_delay_ns)

    def stall(self, node_id: NodeId, until_ns: int) -> None:
        """Make a node slow: its inputs wait until ``until_ns``."""
        node = self.nodes[node_id]
        node.stalled_until_ns = max(node.stalled_until_ns, until_ns)
        self.trace("stall", node_id, until_ns)

    def heal(self) -> None:
        self.blocked.clear()
        self.clogs.clear()
        self.trace("heal")

    # ---------------------------------------------------------------- network

    def _link_base(self, src: NodeId, dst: NodeId) -> int:
        base = self._link_base_ns.get((src, dst))
        if base is None:
            rng = derive_rng(self.seed, "link", src, dst)
            base = rng.randint(self.network.base_latency_min_ns, self.network.base_latency_max_ns)
            self._link_base_ns[(src, dst)] = base
        return base

    def _delay(self, src: NodeId, dst: NodeId) -> int:
        net, rng = self.network, self._net_rng
        delay = self._link_base(src, dst)
        if net.jitter_mean_ns:
            delay += int(rng.expovariate(1.0 / net.jitter_mean_ns))
        if net.reorder and rng.random() < net.reorder:
            delay += rng.randint(0, net.reorder_max_ns)
        clog = self.clogs.get((src, dst))
        if clog is not None and clog[0] > self.time_ns:
            delay += clog[1]
        return delay

    def tap(self, fn: Callable[[NodeId, NodeId, Any, int], None]) -> None:
        """Call ``fn(src, dst, msg, time_ns)`` for every message a node sends, before
        the network acts on it (checkers of "nothing leaves before it is durable")."""
        self._taps.append(fn)

    def send(self, src: NodeId, out: Outbound) -> None:
        """Put one message on the simulated wire."""
        dst, msg = out.dst, out.msg
        self.stats["sent"] += 1
        for fn in self._taps:
            fn(src, dst, msg, self.time_ns)
        payload: Any = msg
        if self.codec is not None:
            payload = self.codec.encode(src, dst, msg)
        if (src, dst) in self.blocked:
            self.stats["blocked"] += 1
            return
        rng = self._net_rng
        if self.network.loss and rng.random() < self.network.loss:
            self.stats["lost"] += 1
            return
        copies = 1
        if self.network.duplicate and rng.random() < self.network.duplicate:
            copies = 2
            self.stats["duplicated"] += 1
        for _ in range(copies):
            self.after(self._delay(src, dst), self._deliver, dst, src, payload)

    def _deliver(self, dst: NodeId, src: NodeId, payload: Any) -> None:
        node = self.nodes.get(dst)
        if node is None or not node.up:
            self.stats["to_down_node"] += 1
            return
        if node.stalled_until_ns > self.time_ns:
            self.at(node.stalled_until_ns, self._deliver, dst, src, payload)
            return
        msg = payload
        if self.codec is not None:
            try:
                msg = self.codec.decode(payload).msg
            except DecodeError:
                self.stats["decode_errors"] += 1
                return
        self.stats["delivered"] += 1
        if self._trace_messages:
            what = payload.hex() if self.codec is not None else self._describe(msg)
            self.trace("recv", src, dst, what)
        assert node.core is not None
        node.core.handle(src, msg, node.now(self.time_ns))
        self._drain(node)

    # ------------------------------------------------------- commands & effects

    def command(self, node_id: NodeId, cmd: Any, *, at_ns: int | None = None,
                reply: Callable[[Any], None] | None = None) -> None:
        """Deliver a local command to a node (dropped if it is down then)."""
        self.at(self.time_ns if at_ns is None else at_ns, self._command, node_id, cmd, reply)

    def _command(self, node_id: NodeId, cmd: Any, reply: Callable[[Any], None] | None) -> None:
        node = self.nodes[node_id]
        if not node.up:
            self.trace("command-to-down-node", node_id)
            return
        if node.stalled_until_ns > self.time_ns:
            self.at(node.stalled_until_ns, self._command, node_id, cmd, reply)
            return
        assert node.core is not None
        self.trace("command", node_id, self._describe(cmd))
        result = node.core.command(cmd, node.now(self.time_ns))
        self._drain(node)
        if reply is not None:
            reply(result)

    def observe(self, fn: Observer) -> None:
        """Call ``fn(node_id, notification, time_ns)`` for every notification."""
        self._observers.append(fn)

    def set_effect_handler(self, fn: EffectHandler) -> None:
        self._effect_handler = fn

    def complete_effect(self, node_id: NodeId, result: EffectResult, delay_ns: int = 0) -> None:
        """Return an effect's result to the node incarnation that asked for it."""
        node = self.nodes[node_id]
        self.after(delay_ns, self._effect_done, node_id, node.epoch, result)

    def _effect_done(self, node_id: NodeId, epoch: int, result: EffectResult) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return
        if node.stalled_until_ns > self.time_ns:  # a stalled node hears nothing until it wakes
            self.at(node.stalled_until_ns, self._effect_done, node_id, epoch, result)
            return
        assert node.core is not None
        node.core.on_result(result, node.now(self.time_ns))
        self._drain(node)

    # ---------------------------------------------------------- Ready contract

    def _drain(self, node: SimNode) -> None:
        """Carry out every Ready batch the core has, by the driver's contract."""
        core = node.core
        assert core is not None
        while node.up and (ready := core.take_ready()) is not None:
            self._carry_out(node, ready)
        if node.up:
            self._arm_timer(node)

    def _carry_out(self, node: SimNode, ready: Ready) -> None:
        if ready.persist:
            node.disk.write(ready.persist)
            start = max(self.time_ns, node.disk_free_at_ns)
            net = self.network
            done = start + self._net_rng.randint(net.fsync_min_ns, net.fsync_max_ns)
            node.disk_free_at_ns = done
            self.at(done, self._persisted, node.node_id, node.epoch, ready)
        for out in ready.send_now:
            self.send(node.node_id, out)
        for effect in ready.effects:
            self._dispatch_effect(node.node_id, effect)
        for note in ready.notifications:
            self._notify(node.node_id, note)
        if not ready.persist:
            for out in ready.send_after_persist:
                self.send(node.node_id, out)

    def _persisted(self, node_id: NodeId, epoch: int, ready: Ready) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return
        node.disk.sync()  # the disk finished even if the process is stalled
        if node.stalled_until_ns > self.time_ns:
            self.at(node.stalled_until_ns, self._after_sync, node_id, epoch, ready)
            return
        self._after_sync(node_id, epoch, ready)

    def _after_sync(self, node_id: NodeId, epoch: int, ready: Ready) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return
        self.stats["fsyncs"] += 1
        for out in ready.send_after_persist:
            self.send(node_id, out)
        assert node.core is not None
        node.core.on_persisted(ready.seq)
        self._drain(node)

    def _dispatch_effect(self, node_id: NodeId, effect: Effect) -> None:
        if self._effect_handler is None:
            result = EffectResult(effect_id=effect.effect_id, ok=False, error="no effect handler")
            self.complete_effect(node_id, result)
            return
        self._effect_handler(self, node_id, effect)

    def _notify(self, node_id: NodeId, note: Notification) -> None:
        for fn in self._observers:
            fn(node_id, note, self.time_ns)

    # ------------------------------------------------------------------ timers

    def _arm_timer(self, node: SimNode) -> None:
        assert node.core is not None
        deadline = node.core.next_deadline()
        if deadline is None:
            return
        t = max(node.virtual_time_of(deadline), self.time_ns)
        if node.timer_at_ns is not None and node.timer_at_ns <= t and node.timer_at_ns >= self.time_ns:
            return
        node.timer_at_ns = t
        self.at(t, self._tick, node.node_id, node.epoch, t)

    def _tick(self, node_id: NodeId, epoch: int, armed_at: int) -> None:
        node = self.nodes[node_id]
        if not node.up or node.epoch != epoch or node.timer_at_ns != armed_at:
            return
        node.timer_at_ns = None
        if node.stalled_until_ns > self.time_ns:
            node.timer_at_ns = node.stalled_until_ns
            self.at(node.stalled_until_ns, self._tick, node_id, epoch, node.stalled_until_ns)
            return
        assert node.core is not None
        node.core.tick(node.now(self.time_ns))
        self._drain(node)
