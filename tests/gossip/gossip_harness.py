"""A tiny deterministic network for wiring gossip cores back to back.

Every message goes through the real codec (encode, then decode) and is
delivered at the next step; time moves only when ``run`` advances it. Faults:
``crash``/``restart`` (rebuild from the synced disk image), ``block`` one
direction, ``isolate``. It exists so the core can be tested without the full
simulator; the simulator-based tests live in test_sim.py.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Hashable, Iterable
from typing import Any

from gossip import Gossip, GossipConfig, MemberEvent, NodeMeta
from meshfaas.core.codec import Codec
from meshfaas.core.types import NS_PER_MS, NodeId, Now, apply_writes

START_NS = 10**15


class Net:
    def __init__(self, ids: Iterable[str], config: GossipConfig | None = None, *, seed: int = 1,
                 seeds: Iterable[str] | None = None) -> None:
        self.ids = [NodeId(i) for i in ids]
        self.config = config or GossipConfig()
        self.seed = seed
        self.seeds = [NodeId(s) for s in (seeds if seeds is not None else self.ids[:1])]
        self.t_ns = START_NS
        self.codec = Codec("test-cluster")
        self.disks: dict[NodeId, dict[str, dict[Hashable, Any]]] = {i: {} for i in self.ids}
        self.cores: dict[NodeId, Gossip] = {}
        self.restarts: dict[NodeId, int] = {i: 0 for i in self.ids}
        self.blocked: set[tuple[NodeId, NodeId]] = set()
        self.notes: list[tuple[int, NodeId, str, MemberEvent]] = []
        self.sent = 0
        self._queue: deque[tuple[NodeId, NodeId, bytes]] = deque()
        for i in self.ids:
            self.start(i)

    def now(self) -> Now:
        return Now(mono_ns=self.t_ns, wall_ns=self.t_ns)

    def start(self, node: NodeId, meta: NodeMeta | None = None) -> Gossip:
        rng = random.Random(f"{self.seed}:{node}:{self.restarts[node]}")
        core = Gossip(self.config, node, self.disks[node], rng, self.now(), seeds=self.seeds,
                      meta=meta or NodeMeta(peer_addr=f"tcp://{node}:7000"))
        self.cores[node] = core
        self.drain(node)
        return core

    def crash(self, node: NodeId) -> None:
        self.cores.pop(node, None)

    def restart(self, node: NodeId) -> Gossip:
        self.restarts[node] += 1
        return self.start(node)

    def isolate(self, node: NodeId) -> None:
        for other in self.ids:
            if other != node:
                self.blocked |= {(node, other), (other, node)}

    def drain(self, node: NodeId) -> None:
        core = self.cores[node]
        while (ready := core.take_ready()) is not None:
            apply_writes(self.disks[node], ready.persist)  # an instant, reliable fsync
            for out in (*ready.send_now, *ready.send_after_persist):
                self.sent += 1
                self._queue.append((node, out.dst, self.codec.encode(node, out.dst, out.msg)))
            for note in ready.notifications:
                self.notes.append((self.t_ns, node, note.kind, note.data))
            core.on_persisted(ready.seq)

    def deliver(self) -> None:
        while self._queue:
            src, dst, frame = self._queue.popleft()
            if dst not in self.cores or (src, dst) in self.blocked:
                continue
            msg = self.codec.decode(frame).msg
            self.cores[dst].handle(src, msg, self.now())
            self.drain(dst)

    def run(self, duration_ns: int, step_ns: int = 5 * NS_PER_MS) -> None:
        end = self.t_ns + duration_ns
        while self.t_ns < end:
            self.t_ns += step_ns
            for node in sorted(self.cores):
                deadline = self.cores[node].next_deadline()
                if deadline is not None and deadline <= self.t_ns:
                    self.cores[node].tick(self.now())
                    self.drain(node)
            self.deliver()

    def state(self, observer: str, subject: str) -> str | None:
        return self.cores[NodeId(observer)].state_of(NodeId(subject))

    def kinds_about(self, subject: str) -> list[tuple[NodeId, str]]:
        return [(obs, kind) for _, obs, kind, ev in self.notes if ev.node_id == subject]
