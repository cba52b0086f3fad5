"""The driver's contract, written once: persist and fsync, then send the
after-persist messages, then ``on_persisted(seq)``. Run under trio's MockClock."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from meshfaas.core.codec import Codec
from meshfaas.core.types import (
    NS_PER_S,
    Deadlines,
    Effect,
    EffectResult,
    NodeId,
    Now,
    Outbox,
    Ready,
    Write,
)
from meshfaas.runtime.clock import TrioClock
from meshfaas.runtime.driver import Driver
from meshfaas.runtime.messages import TransportProbe

from .helpers import wait_until

ME, PEER = NodeId("me"), NodeId("peer")
CODEC = Codec("test")


class Log:
    """One ordered record of everything the core, store and transport saw."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._lock = threading.Lock()  # the store appends from a worker thread

    def add(self, *event: Any) -> None:
        with self._lock:
            self.events.append(event)

    def index(self, *event: Any) -> int:
        return self.events.index(event)


class FakeCore:
    """A core whose commands say exactly what its next batch holds."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.outbox = Outbox()
        self.deadlines = Deadlines()
        self.ticks: list[int] = []
        self.results: list[EffectResult] = []
        self.handled: list[tuple[NodeId, Any]] = []

    def command(self, cmd: Any, now: Now) -> Any:
        kind, n = cmd
        if kind == "batch":  # persist n, send n after persisting, send 1000+n now
            self.outbox.persist("t", n, n)
            self.outbox.send_after_persist(PEER, TransportProbe(nonce=n))
            self.outbox.send(PEER, TransportProbe(nonce=1000 + n))
        elif kind == "send_only":
            self.outbox.send(PEER, TransportProbe(nonce=n))
        elif kind == "deadline":
            self.deadlines.set("t", now.mono_ns + n)
        elif kind == "effect":
            self.outbox.effect(Effect(effect_id=n[1], kind=n[0], args=n[1]))
        elif kind == "notify":
            self.outbox.notify(n, data=1)
        return ("ok", n)

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        self.handled.append((src, msg))

    def tick(self, now: Now) -> None:
        self.ticks.extend(now.mono_ns for _ in self.deadlines.pop_due(now.mono_ns))

    def next_deadline(self) -> int | None:
        return self.deadlines.next_deadline()

    def take_ready(self) -> Ready | None:
        return self.outbox.take()

    def on_persisted(self, seq: int) -> None:
        self.log.add("on_persisted", seq)

    def on_result(self, result: EffectResult, now: Now) -> None:
        self.results.append(result)


class GatedStore:
    """A store whose sync blocks (in its worker thread) until the test opens the gate."""

    def __init__(self, log: Log) -> None:
        self.log = log
        self.gate = threading.Event()
        self.staged: list[Write] = []
        self.syncing = threading.Event()
        self.syncs: list[tuple[int, ...]] = []

    def write(self, writes: Sequence[Write]) -> None:
        self.staged.extend(writes)

    def sync(self) -> None:
        keys = tuple(w.key for w in self.staged)
        self.staged = []
        self.syncing.set()
        self.gate.wait(timeout=10)
        self.syncing.clear()
        self.syncs.append(keys)
        self.log.add("synced", keys)

    def load(self) -> dict[str, dict[Any, Any]]:
        return {}


class RecordingTransport:
    def __init__(self, log: Log) -> None:
        self.log = log

    def send(self, dst: NodeId, frame: bytes) -> bool:
        self.log.add("send", CODEC.decode(frame).msg.nonce)
        return True


@asynccontextmanager
async def running(**handlers: Any) -> AsyncIterator[tuple[Driver, FakeCore, GatedStore, Log]]:
    log = Log()
    core, store = FakeCore(log), GatedStore(log)
    # The gate blocks the sync until the test opens it: in a worker thread, so
    # the loop (and the test) keep running meanwhile.
    driver = Driver(core, node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=store, clock=TrioClock(), handlers=handlers, sync_in_loop=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        try:
            yield driver, core, store, log
        finally:
            store.gate.set()
            nursery.cancel_scope.cancel()


# The two persist tests run on trio's real clock: the store syncs in a worker
# thread, and an autojumping MockClock would jump past any deadline while the
# thread works. Everything timed runs under MockClock below.


async def test_after_persist_sends_wait_for_the_sync() -> None:
    async with running() as (driver, _core, store, log):
        driver.command(("batch", 1))
        await wait_until(store.syncing.is_set, what="the first sync to start")
        assert ("send", 1001) in log.events  # send_now left at once
        driver.command(("batch", 2))           # these arrive while sync 1 runs ...
        driver.command(("send_only", 50))      # (nothing to persist, but ordered behind)
        driver.command(("batch", 3))
        assert sorted(log.events) == [("send", 50), ("send", 1001), ("send", 1002), ("send", 1003)]
        store.gate.set()
        await wait_until(lambda: ("on_persisted", 4) in log.events, what="batch 4 acked")
    assert store.syncs == [(1,), (2, 3)]  # ... and go in the next sync together
    for seq, nonce in ((1, 1), (2, 2), (4, 3)):
        synced = next(i for i, e in enumerate(log.events) if e[0] == "synced" and nonce in e[1])
        assert synced < log.index("send", nonce) < log.index("on_persisted", seq)
    acks = [e[1] for e in log.events if e[0] == "on_persisted"]
    assert acks == [1, 2, 3, 4]
    assert log.index("send", 50) < log.index("synced", (1,))


async def test_batch_without_writes_is_acked_at_once() -> None:
    async with running() as (driver, _core, store, log):
        assert driver.command(("send_only", 5)) == ("ok", 5)
        assert log.events == [("send", 5), ("on_persisted", 1)]
        assert store.syncs == []


async def test_ticks_fire_at_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as (driver, core, _store, _log):
        start = driver.clock.now().mono_ns
        driver.command(("deadline", 5 * NS_PER_S))
        driver.command(("deadline", 2 * NS_PER_S))  # moved earlier: the ticker must notice
        await wait_until(lambda: bool(core.ticks), timeout_s=60)
        assert core.ticks[0] - start == 2 * NS_PER_S
        assert trio.current_time() * NS_PER_S - start == pytest.approx(2 * NS_PER_S, abs=10**7)
        assert driver.counters()["ticks"] == 1


async def test_effects_come_back_through_on_result(autojump_clock: trio.testing.MockClock) -> None:
    async def double(effect: Effect) -> EffectResult:
        await trio.sleep(1)
        return EffectResult(effect_id=effect.effect_id, ok=True, value=effect.args * 2)

    async def broken(effect: Effect) -> EffectResult:
        raise OSError("disk on fire")

    async with running(double=double, broken=broken) as (driver, core, _store, _log):
        driver.command(("effect", ("double", 21)))
        driver.command(("effect", ("broken", 2)))
        driver.command(("effect", ("unknown", 3)))
        await wait_until(lambda: len(core.results) == 3, timeout_s=60)
    by_id = {r.effect_id: r for r in core.results}
    assert by_id[21] == EffectResult(effect_id=21, ok=True, value=42)
    assert not by_id[2].ok and "disk on fire" in by_id[2].error
    assert not by_id[3].ok and "no handler" in by_id[3].error


async def test_notifications_reach_subscribers_and_full_ones_drop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (driver, _core, _store, _log):
        everything = driver.subscribe(capacity=1)
        only_dead = driver.subscribe(frozenset({"dead"}))
        driver.command(("notify", "alive"))
        driver.command(("notify", "dead"))
        assert (await everything.receive()).kind == "alive"
        assert (await only_dead.receive()).kind == "dead"
        assert driver.counters()["notifications_dropped"] == 1


async def test_frames_decode_into_the_core_and_bad_ones_are_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (driver, core, _store, _log):
        driver.deliver_frame(CODEC.encode(PEER, ME, TransportProbe(nonce=9)))
        driver.deliver_frame(b"\x00garbage")
        driver.deliver_frame(CODEC.encode(PEER, NodeId("other"), TransportProbe(nonce=9)))
        assert core.handled == [(PEER, TransportProbe(nonce=9))]
        counts = driver.counters()
        assert counts["decode_errors"] == 1 and counts["dropped_misaddressed"] == 1


async def test_inputs_before_run_are_the_callers_error() -> None:
    log = Log()
    driver = Driver(FakeCore(log), node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=GatedStore(log), clock=TrioClock())
    with pytest.raises(RuntimeError, match="not running"):
        driver.command(("send_only", 1))


async def test_observers_see_notifications_before_the_batch_is_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as (driver, core, _store, log):
        driver.observe(lambda note: log.add("observed", note.kind))
        core.outbox.notify("member_joined")
        core.outbox.send(PEER, TransportProbe(nonce=1))
        driver.command(("send_only", 2))
        assert log.events[:3] == [("observed", "member_joined"), ("send", 1), ("send", 2)]
        # An observer may issue a command: its batch follows the current one.
        driver.observe(lambda note: note.kind == "ping" and driver.command(("send_only", 9)))
        driver.command(("notify", "ping"))
        assert log.events[-3:] == [("on_persisted", 2), ("send", 9), ("on_persisted", 3)]


async def test_frames_to_an_alias_are_ours(autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    core = FakeCore(log)
    driver = Driver(core, node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=GatedStore(log), clock=TrioClock(),
                    aliases=frozenset({"tcp://127.0.0.1:7000"}))
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.deliver_frame(CODEC.encode(PEER, NodeId("tcp://127.0.0.1:7000"),
                                          TransportProbe(nonce=1)))
        driver.deliver_frame(CODEC.encode(PEER, NodeId("tcp://127.0.0.1:7001"),
                                          TransportProbe(nonce=2)))
        nursery.cancel_scope.cancel()
    assert core.handled == [(PEER, TransportProbe(nonce=1))]
    assert driver.counters()["dropped_misaddressed"] == 1
