"""A small deterministic mesh of MeshNodes in a simulator World, for the core tests.

The result store's lookups are answered from the node's synced simulated disk
(``simulated_lookup``, as the mesh scenario does; ``lookups`` counts them).
The executor is the test's: every ``invoke`` effect is recorded in
``Mesh.runs``; in ``auto`` mode it completes after ``run_ms`` with a
succeeded record, otherwise it waits for :meth:`Mesh.finish`. Replies to
client calls are collected by ``conn``; :meth:`Mesh.wait_reply` runs virtual
time until the reply is there (or fails the test at its deadline).
"""

from __future__ import annotations

from typing import Any

import attrs

from meshfaas.core import auth, faas
from meshfaas.core import client_proto as proto
from meshfaas.core.codec import Codec
from meshfaas.core.node import ClientCall, InvokeTask, MeshConfig, MeshNode
from meshfaas.core.results import LOOKUP_KIND
from meshfaas.core.types import NS_PER_MS, NS_PER_S, Effect, EffectResult, NodeId
from simulator import NodeBoot, World
from simulator.scenarios.mesh import admin_key, simulated_lookup

STEP_NS = 10 * NS_PER_MS
CODE = faas.CodeRef(sha256="ab" * 32, size_bytes=1234)


@attrs.define
class RunRecord:
    """One ``invoke`` effect a node received."""

    node: NodeId
    epoch: int
    effect_id: int
    task: InvokeTask
    done: bool = False


class Mesh:
    def __init__(self, n: int = 3, *, seed: int = 1, capacity: int | dict[str, int] = 8,
                 auto: bool = True, run_ms: int = 5, cfg: dict[str, Any] | None = None) -> None:
        self.world = World(seed, codec=Codec("sim"))
        self.ids = [NodeId(f"n{i}") for i in range(1, n + 1)]
        self.put_key, self.token = admin_key(seed)
        self.capacity = capacity
        self.cfg = cfg or {}  # MeshConfig overrides for every node
        self.auto = auto
        self.run_ms = run_ms
        self.replies: dict[str, proto.ClientResponse] = {}
        self.runs: list[RunRecord] = []
        self.calls = 0
        self.lookups = 0
        for node_id in self.ids:
            self.world.add_node(node_id, self._build)
        self.world.observe(self._observe)
        self.world.set_effect_handler(self._effect)

    # ---------------------------------------------------------------- nodes

    def _build(self, boot: NodeBoot) -> MeshNode:
        cap = self.capacity if isinstance(self.capacity, int) else self.capacity[boot.node_id]
        cfg = MeshConfig(node_id=boot.node_id, voters=tuple(self.ids), capacity=cap,
                         bootstrap_key=self.put_key, **self.cfg)
        return MeshNode(cfg, boot.disk, boot.rng, boot.now,
                        seeds=[i for i in self.ids if i != boot.node_id], restarts=boot.restarts,
                        disk_lost=boot.lost_disk)

    def core(self, node: str) -> MeshNode:
        found = self.world.core(NodeId(node))
        assert found is not None, f"{node} is down"
        return found  # type: ignore[no-any-return]

    def leader(self) -> NodeId | None:
        for node in self.world.up_nodes():
            if self.core(node).paxos.leader_info().is_leader:
                return node
        return None

    # ---------------------------------------------------------------- time

    def run_for(self, seconds: float) -> None:
        self.world.run_until(self.world.time_ns + int(seconds * NS_PER_S))

    def wait_for(self, predicate: Any, *, within_s: float, what: str) -> None:
        deadline = self.world.time_ns + int(within_s * NS_PER_S)
        while not predicate():
            assert self.world.time_ns < deadline, f"not within {within_s} s: {what}"
            self.world.run_until(self.world.time_ns + STEP_NS)

    def start(self) -> None:
        """Wait until every node knows the bootstrap key (a leader exists and applied it)."""
        self.wait_for(lambda: all(self.core(n).sm.list_keys() for n in self.world.up_nodes()),
                      within_s=10, what="the bootstrap key on every node")

    # ------------------------------------------------------------- clients

    def call(self, node: str, body: Any, *, token: str | None = None) -> str:
        self.calls += 1
        conn = f"c{self.calls}"
        request = proto.ClientRequest(request_id=conn, api_key=token or self.token, body=body)
        self.world.command(NodeId(node), ClientCall(conn=conn, request=request))
        return conn

    def wait_reply(self, conn: str, *, within_s: float = 10) -> proto.ClientResponse:
        self.wait_for(lambda: conn in self.replies, within_s=within_s, what=f"a reply to {conn}")
        return self.replies[conn]

    def request(self, node: str, body: Any, *, token: str | None = None,
                within_s: float = 10) -> proto.ClientResponse:
        return self.wait_reply(self.call(node, body, token=token), within_s=within_s)

    def deploy(self, node: str = "n1", name: str = "hello", *, timeout_s: int = 3,
               code: faas.CodeRef = CODE) -> faas.Deployed:
        response = self.request(node, proto.Deploy(name=name, code=code, handler="app.handler",
                                                   timeout_s=timeout_s))
        assert response.ok, response.error
        assert isinstance(response.value, faas.Deployed)
        return response.value

    def make_key(self, role: auth.Role) -> str:
        response = self.request("n1", proto.CreateKey(name=f"{role}-key", role=role))
        assert response.ok, response.error
        assert isinstance(response.value, proto.KeyCreated)
        return response.value.api_key

    def _observe(self, node: NodeId, note: Any, time_ns: int) -> None:
        if note.kind == "client_reply":
            self.replies[note.data.conn] = note.data.response

    # ------------------------------------------------------------ executor

    def _effect(self, world: World, node: NodeId, effect: Effect) -> None:
        if effect.kind == "invoke":
            run = RunRecord(node=node, epoch=world.nodes[node].epoch,
                            effect_id=effect.effect_id, task=effect.args)
            self.runs.append(run)
            if self.auto:
                world.after(self.run_ms * NS_PER_MS, self._complete, run)
        elif effect.kind == "replicate_blob":
            world.complete_effect(node, EffectResult(effect_id=effect.effect_id, ok=True),
                                  NS_PER_MS)
        elif effect.kind == LOOKUP_KIND:
            self.lookups += 1
            world.complete_effect(node, simulated_lookup(world, node, effect), NS_PER_MS // 10)
        else:
            world.complete_effect(node, EffectResult(effect_id=effect.effect_id, ok=False,
                                                     error="not simulated"))

    def _complete(self, run: RunRecord) -> None:
        if run.done:
            return
        run.done = True
        node = self.world.nodes[run.node]
        if not node.up or node.epoch != run.epoch:
            return
        record = proto.InvocationRecord(
            invocation_id=run.task.invocation_id, function=run.task.function,
            status="succeeded", version=run.task.version, node=run.node,
            payload=b'{"ran_on":"' + run.node.encode() + b'"}')
        self.world.complete_effect(run.node, EffectResult(effect_id=run.effect_id, ok=True,
                                                          value=record))

    def finish_all(self) -> None:
        """Complete every held invocation now (nodes that died meanwhile hear nothing)."""
        for run in self.runs:
            self._complete(run)

    def runs_of(self, invocation_id: str) -> list[RunRecord]:
        return [r for r in self.runs if r.task.invocation_id == invocation_id]
