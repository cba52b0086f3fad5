"""Several cores behind one transport: the demux routes by message package."""

from __future__ import annotations

import threading
from pathlib import Path

import trio

from gossip.messages import NodeMeta
from meshfaas.core.types import NodeId, Write
from meshfaas.runtime.clock import TrioClock
from meshfaas.runtime.demux import Demux
from meshfaas.runtime.driver import Driver
from meshfaas.runtime.messages import TransportProbe
from meshfaas.runtime.store import SqliteStore

from .helpers import wait_until
from .test_driver import CODEC, ME, PEER, FakeCore, GatedStore, Log, RecordingTransport


async def test_messages_reach_the_core_of_their_package() -> None:
    log = Log()
    runtime_core, other_core = FakeCore(log), FakeCore(log)
    demux = Demux(CODEC, ME, aliases=frozenset({"tcp://me:1"}))
    drivers = [Driver(core, node_id=ME, transport=RecordingTransport(log), codec=CODEC,
                      store=GatedStore(log), clock=TrioClock())
               for core in (runtime_core, other_core)]
    demux.route("meshfaas.runtime", drivers[0])
    demux.route("meshfaas", drivers[1])  # the longer prefix wins for runtime messages
    async with trio.open_nursery() as nursery:
        for driver in drivers:
            await nursery.start(driver.run)
        send, recv = trio.open_memory_channel[bytes](10)
        nursery.start_soon(demux.run, recv)
        for frame in (CODEC.encode(PEER, ME, TransportProbe(nonce=1)),
                      CODEC.encode(PEER, NodeId("tcp://me:1"), TransportProbe(nonce=2)),
                      CODEC.encode(PEER, ME, NodeMeta()),        # gossip: nobody routes it
                      CODEC.encode(PEER, NodeId("them"), TransportProbe(nonce=3)),
                      b"\xff"):
            send.send_nowait(frame)
        await wait_until(lambda: sum(demux.counters().values()) == 5, what="5 frames handled")
        nursery.cancel_scope.cancel()
    assert runtime_core.handled == [(PEER, TransportProbe(nonce=1)), (PEER, TransportProbe(nonce=2))]
    assert other_core.handled == []
    assert demux.counters() == {"decode_errors": 1, "delivered": 2, "dropped_misaddressed": 1,
                                "dropped_no_core": 1}


def test_store_syncs_from_several_threads_lose_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")

    def writer(table: str) -> None:
        for i in range(100):
            store.write([Write(table=table, key=i, value=i)])
            store.sync()

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("gossip", "paxos")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()
    loaded = SqliteStore(tmp_path / "db").load_checked()
    assert loaded.ok
    assert {t: len(rows) for t, rows in loaded.tables.items()} == {"gossip": 100, "paxos": 100}
