"""Bursts of inputs (Driver.hold / Driver.flush) and the ticker's moving deadline.

A burst's batches wait for ``flush``: with sends waiting behind their sync, flush
writes and syncs them on the loop's thread before it returns (one sync for the
whole burst), then sends and acks in order; otherwise it wakes the persister. A
sync that fails in flush stops ``Driver.run`` and no after-persist send leaves.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from meshfaas.core.types import NS_PER_S
from meshfaas.runtime.clock import TrioClock
from meshfaas.runtime.driver import Driver
from meshfaas.runtime.store import StoreError

from .helpers import wait_until
from .test_driver import CODEC, ME, GatedStore, Log, RecordingTransport
from .test_driver_lazy import LazyCore, ThreadRecordingStore


@asynccontextmanager
async def burst_driver(
    store: GatedStore, log: Log, **kwargs: Any
) -> AsyncIterator[tuple[Driver, LazyCore]]:
    core = LazyCore(log)
    driver = Driver(core, node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                    store=store, clock=TrioClock(), **kwargs)
    async with trio.open_nursery() as nursery:
        await nursery.start(driver.run)
        yield driver, core
        nursery.cancel_scope.cancel()


async def test_a_burst_with_sends_behind_its_sync_is_synced_once_inside_flush() -> None:
    log = Log()
    store = ThreadRecordingStore(log)
    async with burst_driver(store, log) as (driver, _core):
        driver.hold()
        for n in (1, 2, 3):
            driver.command(("batch", n))
        await trio.testing.wait_all_tasks_blocked()  # the persister is not woken
        assert store.syncs == [] and ("send", 1) not in log.events
        driver.flush()
        # all done before flush returned, on this thread, one sync for the burst
        assert store.syncs == [(1, 2, 3)]
        assert store.threads == [threading.get_ident()]
        assert driver.counters()["syncs_in_flush"] == 1
        acks = [e[1] for e in log.events if e[0] == "on_persisted"]
        assert acks == [1, 2, 3]
        for n in (1, 2, 3):
            assert log.index("synced", (1, 2, 3)) < log.index("send", n) < log.index("on_persisted", n)


async def test_a_burst_without_sends_behind_its_sync_goes_to_the_persister_at_flush() -> None:
    log = Log()
    store = ThreadRecordingStore(log)
    async with burst_driver(store, log) as (driver, _core):
        driver.hold()
        driver.command(("write_only", 1))
        driver.command(("write_only", 2))
        await trio.testing.wait_all_tasks_blocked()
        assert store.syncs == []  # held until the flush
        driver.flush()
        assert store.syncs == []  # not here: in a worker thread
        await wait_until(lambda: ("on_persisted", 2) in log.events, what="the burst synced")
    assert store.syncs == [(1, 2)]
    assert store.threads[0] != threading.get_ident()


async def test_all_syncs_in_loop_syncs_any_burst_inside_flush() -> None:
    log = Log()
    store = ThreadRecordingStore(log)
    async with burst_driver(store, log, all_syncs_in_loop=True) as (driver, _core):
        driver.hold()
        driver.command(("write_only", 1))
        driver.flush()
        assert store.syncs == [(1,)] and ("on_persisted", 1) in log.events
        driver.command(("write_only", 2))  # outside a burst: the persister, on the loop
        await wait_until(lambda: ("on_persisted", 2) in log.events, what="the second sync")
    assert store.threads == [threading.get_ident()] * 2


async def test_a_burst_of_lazy_writes_still_waits_for_company() -> None:
    log = Log()
    store = ThreadRecordingStore(log)
    async with burst_driver(store, log, all_syncs_in_loop=True, lazy_tables=frozenset({"r"}),
                            lazy_delay_s=0.2) as (driver, _core):
        driver.hold()
        driver.command(("lazy", 1))
        driver.flush()
        assert store.syncs == []  # not in the flush: the persister waits for company
        driver.hold()
        driver.command(("write_only", 2))  # urgent: both now, in this flush
        driver.flush()
        assert store.syncs == [(1, 2)]


async def test_a_burst_behind_a_running_worker_sync_waits_for_it() -> None:
    log = Log()
    store = GatedStore(log)  # the first sync blocks in its worker until the gate opens
    async with burst_driver(store, log) as (driver, _core):
        driver.command(("write_only", 1))
        await wait_until(store.syncing.is_set, what="the worker's sync to start")
        driver.hold()
        driver.command(("batch", 2))
        driver.flush()  # must not sync batch 2 before batch 1 is durable
        assert store.syncs == [] and ("send", 2) not in log.events
        store.gate.set()
        await wait_until(lambda: ("on_persisted", 2) in log.events, what="both synced")
    assert store.syncs == [(1,), (2,)]
    assert log.index("on_persisted", 1) < log.index("send", 2)


def leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in leaves(inner)]
    return [exc]


class FailingStore(GatedStore):
    def sync(self) -> None:
        raise StoreError("the disk refused")


async def test_a_failed_sync_in_flush_stops_the_driver_and_sends_nothing_after_it() -> None:
    log = Log()
    failed = []
    try:
        async with burst_driver(FailingStore(log), log) as (driver, _core):
            driver.hold()
            driver.command(("batch", 1))
            driver.flush()  # never raises: run() does
            driver.flush()
            await trio.sleep_forever()
    except* StoreError as group:
        failed.extend(leaves(group))
    assert [str(e) for e in failed] == ["the disk refused"]
    assert ("send", 1001) in log.events  # sent at once, before any persisting
    assert ("send", 1) not in log.events
    assert ("on_persisted", 1) not in log.events


async def test_a_deadline_moved_later_fires_at_its_new_time_only(
        autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    store = GatedStore(log)
    async with burst_driver(store, log) as (driver, core):
        start = driver.clock.now().mono_ns
        driver.command(("deadline", 2 * NS_PER_S))
        driver.command(("deadline", 7 * NS_PER_S))  # moved later: same timer
        await wait_until(lambda: bool(core.ticks), timeout_s=60)
        assert core.ticks == [start + 7 * NS_PER_S]
        assert trio.current_time() * NS_PER_S - start == pytest.approx(7 * NS_PER_S, abs=10**7)
        core.deadlines.cancel("t")
        again = driver.clock.now().mono_ns
        driver.command(("deadline", 3 * NS_PER_S))
        driver.command(("deadline", 1 * NS_PER_S))  # and earlier again
        await wait_until(lambda: len(core.ticks) == 2, timeout_s=60)
        assert core.ticks[1] == again + 1 * NS_PER_S
        assert driver.counters()["ticks"] == 2


async def test_a_deadline_set_inside_a_burst_is_timed_by_its_flush(
        autojump_clock: trio.testing.MockClock) -> None:
    log = Log()
    store = GatedStore(log)
    async with burst_driver(store, log) as (driver, core):
        start = driver.clock.now().mono_ns
        driver.hold()
        driver.command(("deadline", 5 * NS_PER_S))
        driver.command(("deadline", 2 * NS_PER_S))  # moved earlier, still in the burst
        driver.flush()  # nothing to persist: the flush still moves the ticker's deadline
        await wait_until(lambda: bool(core.ticks), timeout_s=60)
        assert core.ticks == [start + 2 * NS_PER_S]
        assert trio.current_time() * NS_PER_S - start == pytest.approx(2 * NS_PER_S, abs=10**7)
