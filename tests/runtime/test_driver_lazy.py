"""The driver's lazy tables: answered invocation results may wait to share a sync,
but never delay an urgent (Paxos, gossip, after-persist) batch, and are synced at stop.
Where each sync runs: one with after-persist sends on the loop's thread, any other in a worker."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from meshfaas.core.types import Now, Write
from meshfaas.runtime.clock import TrioClock
from meshfaas.runtime.driver import Driver

from .helpers import wait_until
from .test_driver import CODEC, ME, FakeCore, GatedStore, Log, RecordingTransport


class LazyCore(FakeCore):
    def command(self, cmd: Any, now: Now) -> Any:
        kind, n = cmd
        if kind == "lazy":  # a result record: a lazy table, nothing sent after it
            self.outbox.persist("r", n, n)
            return ("ok", n)
        if kind == "write_only":  # another table, nothing sent after it
            self.outbox.persist("t", n, n)
            return ("ok", n)
        return super().command(cmd, now)


@asynccontextmanager
async def lazy_driver(delay_s: float) -> AsyncIterator[tuple[Driver, GatedStore, Log, trio.Nursery]]:
    log = Log()
    store = GatedStore(log)
    store.gate.set()
    driver = Driver(LazyCore(log), node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=store, clock=TrioClock(), lazy_tables=frozenset({"r"}),
                    lazy_delay_s=delay_s)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        yield driver, store, log, nursery
        nursery.cancel_scope.cancel()


async def test_lazy_writes_share_one_sync_after_the_delay() -> None:
    async with lazy_driver(0.5) as (driver, store, log, _):
        driver.command(("lazy", 1))
        driver.command(("lazy", 2))
        assert store.syncs == []  # waiting for company
        # the sync returns in a worker thread; the acks follow on the loop
        await wait_until(lambda: any(e[0] == "on_persisted" for e in log.events),
                         what="the delayed sync and its acknowledgements")
        assert store.syncs == [(1, 2)]
        assert [e for e in log.events if e[0] == "on_persisted"] == [
            ("on_persisted", 1), ("on_persisted", 2)]


async def test_an_urgent_batch_ends_the_wait_at_once() -> None:
    async with lazy_driver(60.0) as (driver, store, log, _):
        driver.command(("lazy", 1))
        driver.command(("batch", 3))  # writes table "t" and sends after persisting
        await wait_until(lambda: ("send", 3) in log.events, timeout_s=5,
                         what="the urgent batch's after-persist send")
        assert store.syncs == [(1, 3)]


async def test_pending_lazy_writes_are_synced_when_the_driver_stops() -> None:
    async with lazy_driver(60.0) as (driver, store, _log, nursery):
        driver.command(("lazy", 5))
        assert store.syncs == []
        nursery.cancel_scope.cancel()
    assert store.syncs == [(5,)]


class ThreadRecordingStore(GatedStore):
    """Records the thread each sync ran on."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.gate.set()
        self.threads: list[int] = []

    def sync(self) -> None:
        self.threads.append(threading.get_ident())
        super().sync()


@asynccontextmanager
async def recording_driver(sync_in_loop: bool) -> AsyncIterator[tuple[Driver, ThreadRecordingStore, Log]]:
    log = Log()
    store = ThreadRecordingStore(log)
    driver = Driver(LazyCore(log), node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=store, clock=TrioClock(), lazy_tables=frozenset({"r"}),
                    lazy_delay_s=0.001, sync_in_loop=sync_in_loop)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        yield driver, store, log
        nursery.cancel_scope.cancel()


async def test_a_sync_with_sends_behind_it_runs_on_the_loop_any_other_in_a_worker() -> None:
    loop_thread = threading.get_ident()
    async with recording_driver(sync_in_loop=True) as (driver, store, log):
        driver.command(("batch", 1))  # an after-persist send waits on this sync
        await wait_until(lambda: ("send", 1) in log.events, what="the after-persist send")
        assert log.index("synced", (1,)) < log.index("send", 1) < log.index("on_persisted", 1)
        driver.command(("write_only", 2))  # urgent, but nothing sent after it
        await wait_until(lambda: len(store.syncs) == 2, what="the write-only sync")
        driver.command(("lazy", 3))
        await wait_until(lambda: len(store.syncs) == 3, what="the lazy sync")
    assert store.syncs == [(1,), (2,), (3,)]
    assert store.threads[0] == loop_thread
    assert store.threads[1] != loop_thread
    assert store.threads[2] != loop_thread


async def test_without_sync_in_loop_every_sync_runs_in_a_worker() -> None:
    loop_thread = threading.get_ident()
    async with recording_driver(sync_in_loop=False) as (driver, store, log):
        driver.command(("batch", 1))
        await wait_until(lambda: ("send", 1) in log.events, what="the urgent after-persist send")
    assert store.syncs == [(1,)]
    assert store.threads[0] != loop_thread


class SplittingStore(GatedStore):
    """Like SplitStore: rows of table "r" go elsewhere (their own writer), so a batch
    of only those leaves nothing for this store's sync (``has_staged`` says so)."""

    def __init__(self, log: Log) -> None:
        super().__init__(log)
        self.gate.set()
        self.elsewhere: list[Write] = []

    def write(self, writes: Sequence[Write]) -> None:
        self.elsewhere.extend(w for w in writes if w.table == "r")
        super().write([w for w in writes if w.table != "r"])

    def has_staged(self) -> bool:
        return bool(self.staged)


async def test_a_batch_with_nothing_staged_for_the_sync_is_finished_without_one() -> None:
    log = Log()
    store = SplittingStore(log)
    driver = Driver(LazyCore(log), node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=store, clock=TrioClock(), lazy_tables=frozenset({"r"}),
                    lazy_delay_s=0.001)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        driver.command(("lazy", 1))  # only rows that go elsewhere: no sync
        await wait_until(lambda: ("on_persisted", 1) in log.events, what="the lazy batch done")
        assert store.syncs == [] and [w.key for w in store.elsewhere] == [1]
        driver.command(("write_only", 2))  # a row of its own: synced
        await wait_until(lambda: ("on_persisted", 2) in log.events, what="the other batch")
        assert store.syncs == [(2,)]
        nursery.cancel_scope.cancel()
