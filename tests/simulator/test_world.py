"""The world itself: clocks, the Ready contract, the disk model, partitions."""

from __future__ import annotations

from typing import Any

import attrs

from meshfaas.core.codec import Codec, message
from meshfaas.core.types import NS_PER_MS, Deadlines, EffectResult, NodeId, Now, Outbox, Ready
from simulator.world import NetworkConfig, NodeBoot, World


@message(10)
@attrs.frozen(kw_only=True)
class Ping:
    n: int


class Recorder:
    """A tiny core that logs what it sees and does what its commands say."""

    def __init__(self, boot: NodeBoot, log: list[tuple[Any, ...]]) -> None:
        self.boot = boot
        self.id = boot.node_id
        self.log = log
        self.out = Outbox()
        self.deadlines = Deadlines()

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        self.log.append(("recv", self.id, src, msg.n))

    def command(self, cmd: Any, now: Now) -> Any:
        kind, arg = cmd
        if kind == "persist-then-send":
            self.out.persist("t", arg, arg)
            self.out.send_after_persist(NodeId("b"), Ping(n=arg))
        elif kind == "send":
            self.out.send(NodeId("b"), Ping(n=arg))
        elif kind == "timer":
            self.deadlines.set("t", now.mono_ns + arg)
        return kind

    def tick(self, now: Now) -> None:
        for key in self.deadlines.pop_due(now.mono_ns):
            self.log.append(("tick", self.id, key, now.mono_ns))

    def next_deadline(self) -> int | None:
        return self.deadlines.next_deadline()

    def take_ready(self) -> Ready | None:
        return self.out.take()

    def on_persisted(self, seq: int) -> None:
        self.log.append(("persisted", self.id, seq))

    def on_result(self, result: EffectResult, now: Now) -> None:
        return None


def _world(seed=1, **net):
    log: list[tuple[Any, ...]] = []
    world = World(seed, network=NetworkConfig(**net), codec=Codec("t"), keep_trace=True)
    for n in ("a", "b"):
        world.add_node(n, lambda boot, log=log: Recorder(boot, log))
    return world, log


def test_after_persist_send_leaves_only_after_the_fsync_and_before_on_persisted():
    world, log = _world(fsync_min_ns=5 * NS_PER_MS, fsync_max_ns=5 * NS_PER_MS)
    world.command(NodeId("a"), ("persist-then-send", 1))
    world.run_until(4 * NS_PER_MS)
    assert log == []
    assert world.nodes[NodeId("a")].disk.durable == {}
    world.run_until(100 * NS_PER_MS)
    assert ("persisted", "a", 1) in log and ("recv", "b", "a", 1) in log
    assert 1 in world.nodes[NodeId("a")].disk.durable["t"]


def test_a_crash_loses_unsynced_writes_and_their_sends():
    world, log = _world(fsync_min_ns=5 * NS_PER_MS, fsync_max_ns=5 * NS_PER_MS)
    world.command(NodeId("a"), ("persist-then-send", 1))
    world.run_until(NS_PER_MS)
    world.crash(NodeId("a"))
    world.run_until(100 * NS_PER_MS)
    assert log == []
    world.restart(NodeId("a"))
    assert world.core(NodeId("a")).boot.disk == {}
    assert world.core(NodeId("a")).boot.restarts == 1


def test_a_restart_sees_synced_writes_only():
    world, _ = _world(fsync_min_ns=NS_PER_MS, fsync_max_ns=NS_PER_MS)
    world.command(NodeId("a"), ("persist-then-send", 7))
    world.run_until(50 * NS_PER_MS)
    world.crash(NodeId("a"))
    world.restart(NodeId("a"))
    assert world.core(NodeId("a")).boot.disk == {"t": {7: 7}}


def test_lose_disk_forgets_everything():
    world, _ = _world(fsync_min_ns=NS_PER_MS, fsync_max_ns=NS_PER_MS)
    world.command(NodeId("a"), ("persist-then-send", 7))
    world.run_until(50 * NS_PER_MS)
    world.crash(NodeId("a"), lose_disk=True)
    world.restart(NodeId("a"))
    assert world.core(NodeId("a")).boot.disk == {}
    assert world.core(NodeId("a")).boot.lost_disk


def test_clocks_start_far_apart_and_timers_fire_on_the_nodes_own_clock():
    world, log = _world(seed=3, max_drift_ppm=500)
    a, b = NodeId("a"), NodeId("b")
    assert world.now_of(a).mono_ns != world.now_of(b).mono_ns
    assert world.now_of(a).mono_ns > 10**15
    world.command(a, ("timer", 1_000 * NS_PER_MS))
    world.run_until(10_000 * NS_PER_MS)
    ticks = [e for e in log if e[0] == "tick"]
    assert len(ticks) == 1
    fired_at = ticks[0][3]
    target = world.core(a).boot.now.mono_ns + 1_000 * NS_PER_MS
    assert 0 <= fired_at - target < 1_000  # fired on time, within a microsecond of local time


def test_partition_and_asymmetric_block():
    world, log = _world()
    a, b = NodeId("a"), NodeId("b")
    world.partition([[a], [b]])
    world.command(a, ("send", 1))
    world.run_until(100 * NS_PER_MS)
    assert log == []
    world.heal()
    world.block(b, a)  # one way only: a -> b still works
    world.command(a, ("send", 2))
    world.run_until(200 * NS_PER_MS)
    assert log == [("recv", "b", "a", 2)]


def test_total_loss_drops_everything_and_counts_it():
    world, log = _world(loss=1.0)
    for i in range(10):
        world.command(NodeId("a"), ("send", i))
    world.run_until(100 * NS_PER_MS)
    assert log == [] and world.stats["lost"] == 10


def test_duplication_delivers_twice():
    world, log = _world(duplicate=1.0)
    world.command(NodeId("a"), ("send", 1))
    world.run_until(100 * NS_PER_MS)
    assert log.count(("recv", "b", "a", 1)) == 2


def test_stall_delays_inputs_until_it_ends():
    world, log = _world()
    world.stall(NodeId("b"), 500 * NS_PER_MS)
    world.command(NodeId("a"), ("send", 1))
    world.run_until(499 * NS_PER_MS)
    assert log == []
    world.run_until(501 * NS_PER_MS)
    assert log == [("recv", "b", "a", 1)]


def test_same_seed_same_trace_different_seed_different_trace():
    def run(seed):
        world, _ = _world(seed=seed, jitter_mean_ns=NS_PER_MS, reorder=0.3)
        for i in range(20):
            world.command(NodeId("a"), ("send", i), at_ns=i * NS_PER_MS)
        world.run_until(NS_PER_MS * 1000)
        return world.trace_hash, world.trace_lines

    assert run(5) == run(5)
    assert run(5)[0] != run(6)[0]
