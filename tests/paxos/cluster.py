"""A fault-free simulated cluster of replicas for the Paxos tests (no test in here)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshfaas.core.codec import Codec
from meshfaas.core.types import NS_PER_MS, NodeId, Notification
from paxos.api import NOTE_APPLIED, NOTE_READ, NOTE_RESULT, LeaderQuery
from paxos.kv import KvStateMachine
from paxos.replica import PaxosConfig, Replica
from simulator.world import NodeBoot, World


class Cluster:
    """``n`` replicas in a simulated world (with the real codec), plus helpers."""

    def __init__(self, n: int = 3, *, seed: int = 1, voters: int | None = None,
                 **settings: Any) -> None:
        self.world = World(seed, codec=Codec("test"))
        self.ids = [NodeId(f"n{i}") for i in range(1, n + 1)]
        self.voters = tuple(self.ids[: voters or n])
        self.settings = settings
        self.notes: list[tuple[NodeId, Notification, int]] = []
        self.world.observe(lambda node, note, t: self.notes.append((node, note, t)))
        for node_id in self.ids:
            self.world.add_node(node_id, self.factory)

    def factory(self, boot: NodeBoot) -> Replica:
        config = PaxosConfig(node_id=boot.node_id, voters=self.voters, disk_lost=boot.lost_disk,
                             **self.settings)
        return Replica(config, KvStateMachine(), boot.rng, boot.disk, boot.now)

    def core(self, node_id: str) -> Replica:
        core = self.world.core(NodeId(node_id))
        assert isinstance(core, Replica)
        return core

    def run_ms(self, ms: int) -> None:
        self.world.run_until(self.world.time_ns + ms * NS_PER_MS)

    def wait_for(self, predicate: Callable[[], Any], *, within_ms: int = 5_000) -> Any:
        """Run the world until ``predicate()`` is truthy; fail after ``within_ms`` virtual ms."""
        deadline = self.world.time_ns + within_ms * NS_PER_MS
        while self.world.time_ns < deadline:
            value = predicate()
            if value:
                return value
            self.run_ms(5)
        raise AssertionError(f"condition not met within {within_ms} virtual ms")

    def leader(self) -> NodeId | None:
        leaders = [n for n in self.world.up_nodes()
                   if self.world.core(n).command(LeaderQuery(), self.world.now_of(n)).is_leader]
        return leaders[-1] if leaders else None

    def wait_leader(self) -> NodeId:
        return NodeId(self.wait_for(self.leader))

    def command(self, node_id: str, cmd: Any) -> None:
        self.world.command(NodeId(node_id), cmd)

    def result(self, client_id: str, seq: int, kind: str = NOTE_RESULT) -> Any:
        for _node, note, _t in self.notes:
            data = note.data
            if note.kind == kind and data.client_id == client_id:
                number = data.seq if kind == NOTE_RESULT else data.req_id
                if number == seq:
                    return data
        return None

    def wait_result(self, client_id: str, seq: int, kind: str = NOTE_RESULT) -> Any:
        return self.wait_for(lambda: self.result(client_id, seq, kind))

    def wait_read(self, client_id: str, req_id: int) -> Any:
        return self.wait_result(client_id, req_id, NOTE_READ)

    def applied(self, node_id: str) -> list[Any]:
        return [note.data for n, note, _t in self.notes if n == node_id and note.kind == NOTE_APPLIED]
