"""The commit path of three mesh nodes in one process: work per put, without the noise.

Usage::

    PYTHONPATH=. .venv/bin/python bench/commit_inproc.py --puts 300
    # instructions per put, independent of other load on the machine (valgrind):
    PYTHONPATH=. valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/commit_inproc.py --puts 20
    # ... and again with --puts 120: (Ir(120) - Ir(20)) / 100 is the cost of one put

Three ``MeshNode`` cores, each with its real :class:`~meshfaas.runtime.driver.Driver`,
codec and :class:`~meshfaas.runtime.journal.JournaledStore` (the node's store, fsync on, in a temporary
directory), run in one trio process on a virtual clock (``MockClock``, jumping only
when every task waits). Frames between nodes go through memory: each node's inbox
is handled by one task a burst at a time, as the node's peer ROUTER owner does
(``hold`` before each frame, ``flush`` at the burst's end), and client calls enter
the leader as ``ClientCall`` commands in a burst of their own. One client then
does ``--puts`` sequential ``update_config`` puts (the load of bench/paxos_cpu.py)
and the script prints the process's CPU per put.

Not measured: ZeroMQ (sockets, libzmq's I/O threads, the socket owners), the
client SDK, and the timers (on the frozen clock no heartbeat or notice timer fires
during the puts). What is measured is deterministic for a given tree: run under
callgrind, the instruction count per put does not depend on what else the
machine runs, so two trees can be compared on a busy machine (docs/performance.md,
fifth pass).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import trio
import trio.testing

from meshfaas.core import client_proto as proto
from meshfaas.core import faas
from meshfaas.core.codec import Codec
from meshfaas.core.node import ClientCall, ClientReply, MeshConfig, MeshNode
from meshfaas.core.types import Effect, EffectResult, NodeId, Notification
from meshfaas.runtime.clock import TrioClock
from meshfaas.runtime.driver import Driver
from meshfaas.runtime.journal import JournaledStore
from simulator.scenarios.mesh import admin_key

IDS = [NodeId("n1"), NodeId("n2"), NodeId("n3")]
CODE = faas.CodeRef(sha256="ab" * 32, size_bytes=1234)


class MemoryNet:
    """Frames to each node's inbox; one task per node handles its inbox in bursts."""

    def __init__(self) -> None:
        self.inbox: dict[NodeId, deque[bytes]] = {n: deque() for n in IDS}
        self.ready: dict[NodeId, trio.Event] = {n: trio.Event() for n in IDS}

    def port(self, node: NodeId) -> Any:
        net = self

        class Port:
            def send(self, dst: NodeId, frame: bytes) -> bool:
                if dst not in net.inbox:
                    return False
                net.inbox[dst].append(frame)
                net.ready[dst].set()
                return True

        return Port()

    async def serve(self, node: NodeId, driver: Driver) -> None:
        inbox = self.inbox[node]
        while True:
            await self.ready[node].wait()
            self.ready[node] = trio.Event()
            while inbox:
                driver.hold()
                driver.deliver_frame(inbox.popleft())
            driver.flush()


class Node:
    def __init__(self, node_id: NodeId, net: MemoryNet, data: Path, key: faas.PutApiKey,
                 seed: int) -> None:
        self.clock = TrioClock(wall_start_ns=1_700_000_000 * 10**9)
        config = MeshConfig(node_id=node_id, voters=tuple(IDS), capacity=0,
                            bootstrap_key=key)
        self.core = MeshNode(config, {}, random.Random(seed), self.clock.now(),
                             seeds=[i for i in IDS if i != node_id])
        self.store = JournaledStore(data / f"{node_id}.db")
        self.store.load_checked()  # (opens its journal, as the node's start does)
        self.driver = Driver(self.core, node_id=node_id, transport=net.port(node_id),
                             codec=Codec("inproc"), store=self.store, clock=self.clock,
                             all_syncs_in_loop=True)
        self.replies: dict[str, proto.ClientResponse] = {}
        self.replied = trio.Event()
        self.driver.observe(self._on_note)
        for kind in ("invoke", "replicate_blob", "client_local", "result_lookup"):
            self.driver.register_effect(kind, self._effect)

    async def _effect(self, effect: Effect) -> EffectResult:
        return EffectResult(effect_id=effect.effect_id, ok=True)

    def _on_note(self, note: Notification) -> None:
        if note.kind == "client_reply" and isinstance(note.data, ClientReply):
            self.replies[note.data.conn] = note.data.response
            self.replied.set()

    async def call(self, conn: str, token: str, body: Any) -> proto.ClientResponse:
        request = proto.ClientRequest(request_id=conn, api_key=token, body=body)
        self.driver.hold()
        self.driver.command(ClientCall(conn=conn, request=request))
        self.driver.flush()
        while conn not in self.replies:
            await self.replied.wait()
            self.replied = trio.Event()
        return self.replies.pop(conn)


async def leader_of(nodes: dict[NodeId, Node]) -> Node:
    while True:
        for node in nodes.values():
            if node.core.paxos.leader_info().is_leader:
                return node
        await trio.sleep(0.05)


async def run(puts: int, data: Path) -> tuple[int, float]:
    key, token = admin_key(1)
    net = MemoryNet()
    nodes = {n: Node(n, net, data, key, seed=i) for i, n in enumerate(IDS)}
    async with trio.open_nursery() as nursery:
        for n, node in nodes.items():
            await nursery.start(node.driver.run)
            nursery.start_soon(net.serve, n, node.driver)
        leader = await leader_of(nodes)
        for attempt in range(100):  # until the bootstrap key is applied
            reply = await leader.call(f"d{attempt}", token, proto.Deploy(
                name="kv", code=CODE, handler="app.handler"))
            if reply.ok:
                break
            await trio.sleep(0.1)
        else:
            raise SystemExit(f"cannot deploy: {reply.error}")
        cpu0 = time.thread_time()
        for i in range(puts):
            reply = await leader.call(f"p{i}", token, proto.UpdateConfig(
                name="kv", patch=faas.ConfigPatch(description=f"k{i % 1024}=" + "76" * 64)))
            assert reply.ok, reply.error
        cpu = time.thread_time() - cpu0
        nursery.cancel_scope.cancel()
    for node in nodes.values():
        node.store.close()
    return puts, cpu


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--puts", type=int, default=300)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="meshfaas-inproc-") as tmp:
        clock = trio.testing.MockClock(autojump_threshold=0)
        puts, cpu = trio.run(run, args.puts, Path(tmp), clock=clock)
    print(f"{puts} puts, {cpu * 1e6 / puts:.0f} us of CPU per put (three nodes, one thread)")


if __name__ == "__main__":
    sys.exit(main())
