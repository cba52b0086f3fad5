"""``mesh``: the whole node core (gossip, Paxos, FaaS state machine, router) under every fault.

Theory of operation
-------------------
Every node is a :class:`~meshfaas.core.node.MeshNode` (all of them Paxos
voters) with a *simulated executor*: the scenario's effect handler. An
``invoke`` effect completes after a random duration drawn from the world's
generator; it fails sometimes (a handler error record) and sometimes runs into
the function's timeout. Its result goes back through ``world.complete_effect``
to the incarnation that asked, so a node that crashed in between never hears
it. A ``replicate_blob`` effect succeeds after a short delay when a majority
of the nodes is up, and fails otherwise. A ``result_lookup`` effect (a record
that left the node's recent cache) is answered from the node's synced
simulated disk, so a crash forgets what the result store had not synced.

A workload of clients sends :class:`~meshfaas.core.node.ClientCall` commands
to random nodes: deploys (new functions and code updates of existing ones),
synchronous and asynchronous invocations. Clients behave like the SDK: on an
``Unavailable`` or ``Timeout`` answer, or no answer at all within
``CLIENT_TIMEOUT_NS`` (the node died), they retry on another node, at most
``CLIENT_ATTEMPTS`` times; an async invocation is resent with the same
idempotency key, so the retry cannot create a second invocation.

The fault plan (:func:`simulator.faults.random_plan`) crashes and restarts
nodes, partitions, blocks and clogs links, stalls nodes, and loses, duplicates
and reorders messages. Every crash is followed by a restart within
``restart_max_ms``. Paxos tolerates at most one lost disk per run, so the
first disk-losing crash of a plan is kept and later ones become plain crashes
(``-p lose_disk=false`` turns them all into plain crashes). A node that lost
its disk also lost its result store; no property here depends on it.

Checkers, one per property:

* ``no-acked-deploy-lost``: every deploy acknowledged to a client is, after
  convergence, in every node's function table at that revision or later
  (and with the acknowledged code if still at that revision);
* ``tables-converge``: every node ends with the same ``list_functions()``;
* ``no-acked-async-lost``: every ``AsyncAccepted`` id ends ``succeeded`` or
  ``dead_letter`` in every node's replicated state (``succeeded`` only if an
  execution of it did succeed);
* ``no-duplicate-completion``: an async invocation executes successfully at
  most once per attempt the log started (a second success needs a failed or
  lost attempt between);
* ``no-route-to-dead``: no node sends an :class:`InvokeRequest` to a node it
  has held dead (its own ``member`` notifications) for longer than
  ``DEAD_ROUTE_BOUND_NS``.

The liveness phase waits for all of that plus every client to be done. Async
retries back off 60 s and then 120 s (Lambda's schedule), so its bound is
several virtual minutes (``-p liveness_s=...`` changes it; ``-p
retry_base_ms=...`` shortens the backoff, which the CI seed sweep does to fit
more seeds in its budget).

The ``variant`` parameter builds deliberately broken nodes, by subclassing
:class:`MeshNode` here, for the tests that prove the checkers bite:
``ack-async-early`` answers ``AsyncAccepted`` before the accept is chosen, and
``route-to-dead`` lets the router pick members gossip declared dead, and
``hedge-async`` also sends every async attempt to a second peer, and
``no-restart-fence`` runs a request addressed to an earlier life of the node
(a resend to a node that ran it, crashed and restarted unnoticed).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import attrs

from meshfaas.core import auth, faas, faas_api
from meshfaas.core import client_proto as proto
from meshfaas.core.node import ClientCall, InvokeRequest, InvokeTask, MeshConfig, MeshNode
from meshfaas.core.results import LOOKUP_KIND, RESULTS_TABLE, lookup_in_rows
from meshfaas.core.router import PeerView
from meshfaas.core.types import (
    NS_PER_MS,
    NS_PER_S,
    Effect,
    EffectResult,
    NodeId,
    Notification,
    Ready,
)
from paxos import api as paxos_api
from simulator.faults import ALL_KINDS, Fault, FaultKind, FaultPlan, random_plan
from simulator.scenario import Checker, Run, Scenario, register_scenario
from simulator.world import NodeBoot, World

CLIENT_TIMEOUT_NS = 12 * NS_PER_S
CLIENT_ATTEMPTS = 4
CLIENT_BACKOFF_NS = 50 * NS_PER_MS
DEAD_ROUTE_BOUND_NS = 2 * NS_PER_S
WORKLOAD_START_NS = 2 * NS_PER_S
FUNCTIONS = ("alpha", "beta", "gamma", "delta")
RETRYABLE = ("Unavailable", "Timeout")
VARIANTS = ("correct", "ack-async-early", "route-to-dead", "hedge-async", "no-restart-fence")


def admin_key(seed: int) -> tuple[faas.PutApiKey, str]:
    """The bootstrap admin key of a run: the command every node is given, and its token."""
    key = auth.make_api_key(random.Random(f"mesh-key:{seed}").randbytes(auth.random_bytes_needed()))
    put = faas.PutApiKey(key_id=key.key_id, name="admin", role="admin", salt=key.salt,
                         secret_hash=key.secret_hash, wall_ns=0)
    return put, key.token


def simulated_lookup(world: World, node_id: NodeId, effect: Effect) -> EffectResult:
    """The result store's port in memory: the node's synced disk image of ``m.results``."""
    rows = world.nodes[node_id].disk.durable.get(RESULTS_TABLE, {})
    return EffectResult(effect_id=effect.effect_id, ok=True,
                        value=lookup_in_rows(rows, effect.args))


# ---------------------------------------------------------------------------
# The node as the scenario runs it: a MeshNode that reports its sends
# ---------------------------------------------------------------------------


class SimMeshNode(MeshNode):
    """A :class:`MeshNode` that tells the scenario about every InvokeRequest it sends."""

    on_send: Callable[[NodeId, NodeId, Any], None] | None = None

    def take_ready(self) -> Ready | None:
        ready = super().take_ready()
        if ready is not None and self.on_send is not None:
            for out in (*ready.send_now, *ready.send_after_persist):
                if isinstance(out.msg, InvokeRequest):
                    self.on_send(self.node_id, out.dst, out.msg)
        return ready


class AckAsyncEarlyNode(SimMeshNode):
    """Broken: acknowledges an async invocation before its accept is chosen."""

    def _start_proposal(self, plan: faas_api.Propose, conn: str | None) -> None:
        cmd = plan.command
        if isinstance(cmd, faas.AcceptAsyncInvocation) and conn is not None:
            self._reply(conn, proto.ok(plan.request_id,
                                       proto.AsyncAccepted(invocation_id=cmd.request_id)))
            self._propose(cmd, None, plan.request_id)
            return
        super()._start_proposal(plan, conn)


class RouteToDeadNode(SimMeshNode):
    """Broken: the router also sees members gossip declared dead, as if alive."""

    def peer_views(self) -> list[PeerView]:
        views = super().peer_views()
        seen = {v.node for v in views}
        for info in self.gossip.members():
            if info.node_id not in seen and info.state == "dead":
                views.append(PeerView(node=info.node_id, state="alive",
                                      runtimes=frozenset(self.cfg.runtimes),
                                      capacity=self.cfg.capacity, load=0, warm=frozenset()))
        return views


class HedgeAsyncNode(SimMeshNode):
    """Broken: hedges every async attempt by also sending it to a second peer."""

    def _route(self, route: Any) -> None:
        super()._route(route)
        if not route.async_attempt or not route.target:
            return
        others = [p for p in self.live_peers() if p != route.target]
        if others:
            self.out.send(NodeId(others[0]), InvokeRequest(
                invocation_id=route.invocation_id, function=route.function,
                version=route.version, code=route.code, config=route.config,
                payload=route.payload))


class NoRestartFenceNode(SimMeshNode):
    """Broken: runs a request addressed to an earlier life of this node (which may have
    run it before crashing) instead of refusing it as ``restarted``."""

    def _run_here(self, req: InvokeRequest, entry: str) -> None:
        super()._run_here(attrs.evolve(req, incarnation=0), entry)


_NODE_CLASSES: dict[str, type[SimMeshNode]] = {
    "correct": SimMeshNode, "ack-async-early": AckAsyncEarlyNode,
    "route-to-dead": RouteToDeadNode, "hedge-async": HedgeAsyncNode,
    "no-restart-fence": NoRestartFenceNode,
}


# ---------------------------------------------------------------------------
# What the scenario observed (shared by the checkers)
# ---------------------------------------------------------------------------


@attrs.define
class Ledger:
    """Everything the clients and the simulated executor saw."""

    acked_deploys: list[tuple[str, int, str, str]] = attrs.field(factory=list)  # name, rev, sha, req
    bad_acks: list[str] = attrs.field(factory=list)  # ok answers that do not match their request
    async_accepted: dict[str, str] = attrs.field(factory=dict)  # invocation id -> request
    executions_ok: dict[str, int] = attrs.field(factory=dict)  # invocation id -> successes
    sync_ok: int = 0
    sync_failed: int = 0
    requests_failed: int = 0
    outstanding: int = 0
    errors: dict[str, int] = attrs.field(factory=dict)  # error kind -> answers
    deploys_sent: int = 0
    # observer -> member -> virtual time the observer declared it dead
    dead_since: dict[NodeId, dict[NodeId, int]] = attrs.field(factory=dict)
    routed_to_dead: list[str] = attrs.field(factory=list)
    routed_to_dead_count: int = 0
    leaderships: set[tuple[str, tuple[Any, ...]]] = attrs.field(factory=set)


# ---------------------------------------------------------------------------
# Checkers
# ---------------------------------------------------------------------------


def _function_table(world: World, node: NodeId) -> list[faas.FunctionRecord] | None:
    core = world.core(node)
    return None if core is None else core.sm.list_functions()


class NoAckedDeployLost(Checker):
    name = "no-acked-deploy-lost"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def lost(self, world: World) -> list[str]:
        found = []
        for node in world.up_nodes():
            sm = world.core(node).sm
            for name, revision, sha, request in self.ledger.acked_deploys:
                record = sm.get_function(name)
                if record is None or record.revision < revision or (
                        record.revision == revision and record.code.sha256 != sha):
                    have = "nothing" if record is None else f"revision {record.revision}"
                    found.append(f"{node} lost deploy {request} of {name} (acked revision "
                                 f"{revision}, has {have})")
        return found

    def check_during(self, world: World) -> list[str]:
        found, self.ledger.bad_acks = self.ledger.bad_acks, []
        return found

    def check_final(self, world: World) -> list[str]:
        return self.lost(world)


class TablesConverge(Checker):
    name = "tables-converge"

    def differing(self, world: World) -> list[str]:
        nodes = world.node_ids()
        tables = {n: _function_table(world, n) for n in nodes}
        first = tables[nodes[0]]
        return [f"{n}'s function table differs from {nodes[0]}'s"
                for n in nodes[1:] if tables[n] != first or tables[n] is None]

    def check_final(self, world: World) -> list[str]:
        return self.differing(world)


class NoAckedAsyncLost(Checker):
    name = "no-acked-async-lost"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def unfinished(self, world: World) -> list[str]:
        found = []
        for node in world.node_ids():
            core = world.core(node)
            if core is None:
                found.append(f"{node} is down")
                continue
            for invocation_id in sorted(self.ledger.async_accepted):
                record = core.sm.get_async(invocation_id)
                if record is None:
                    found.append(f"{node} has no record of accepted async {invocation_id}")
                elif record.status not in ("succeeded", "dead_letter"):
                    found.append(f"{node}: accepted async {invocation_id} is {record.status} "
                                 f"after {record.attempts} attempt(s)")
                elif record.status == "succeeded" and \
                        not self.ledger.executions_ok.get(invocation_id):
                    found.append(f"{node}: async {invocation_id} is succeeded, but no "
                                 f"execution of it succeeded")
        return found

    def check_final(self, world: World) -> list[str]:
        return self.unfinished(world)


class NoDuplicateCompletion(Checker):
    """A second successful execution of an async invocation needs a failed attempt between."""

    name = "no-duplicate-completion"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def duplicates(self, world: World) -> list[tuple[str, int, int]]:
        found = []
        for invocation_id in sorted(self.ledger.executions_ok):
            successes = self.ledger.executions_ok[invocation_id]
            attempts = _attempts_started(world, invocation_id)
            if attempts is not None and successes > max(attempts, 1):
                found.append((invocation_id, successes, attempts))
        return found

    def check_final(self, world: World) -> list[str]:
        return [f"async {i} executed successfully {s} times in {a} attempt(s)"
                for i, s, a in self.duplicates(world)]


def _attempts_started(world: World, invocation_id: str) -> int | None:
    """The most attempts any node's replicated state records (None: not an async id)."""
    counts = [core.sm.get_async(invocation_id) for n in world.up_nodes()
              if (core := world.core(n)) is not None]
    known = [r.attempts for r in counts if r is not None]
    return max(known) if known else None


class NoRouteToDead(Checker):
    name = "no-route-to-dead"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def check_during(self, world: World) -> list[str]:
        found, self.ledger.routed_to_dead = self.ledger.routed_to_dead, []
        return found


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


@attrs.define
class _Op:
    """One client operation and its retries."""

    op_id: int
    body: Any
    tried: list[NodeId] = attrs.field(factory=list)
    attempt: int = 0
    done: bool = False


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


@register_scenario
class MeshScenario(Scenario):
    name = "mesh"
    description = ("MeshNode (gossip, Paxos, FaaS state machine, router) with a simulated "
                   "executor: deploys and sync/async invocations under every fault.")
    default_nodes = 3
    default_duration_s = 10.0
    liveness_bound_s = 420.0
    check_interval_ms = 200
    params = {"rate": 8.0, "deploy_share": 0.25, "async_share": 0.4, "fail_rate": 0.08,
              "timeout_rate": 0.02, "capacity": 4, "variant": "correct", "faults": True,
              "lose_disk": True, "liveness_s": 420.0, "retry_base_ms": 60_000,
              "restart_max_ms": 3_000, "fault_kinds": "all"}

    # -------------------------------------------------------------- set-up

    def checkers(self) -> list[Checker]:
        self.ledger = Ledger()
        self.deploy_check = NoAckedDeployLost(self.ledger)
        self.tables_check = TablesConverge()
        self.async_check = NoAckedAsyncLost(self.ledger)
        self.dup_check = NoDuplicateCompletion(self.ledger)
        return [self.deploy_check, self.tables_check, self.async_check, self.dup_check,
                NoRouteToDead(self.ledger)]

    def setup(self, world: World, run: Run) -> None:
        variant = str(run.params["variant"])
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
        self.world, self.run = world, run
        self.liveness_bound_s = float(run.params["liveness_s"])  # type: ignore[misc]  # per run
        self.node_ids = run.node_ids()
        self.put_key, self.token = admin_key(run.seed)
        self.node_class = _NODE_CLASSES[variant]
        self.rng = random.Random(run.rng.random())
        self.ops: dict[int, _Op] = {}
        self.deployed: dict[str, int] = {}  # function -> deploys sent
        for node_id in self.node_ids:
            world.add_node(node_id, self._build)
        world.observe(self._observe)
        world.set_effect_handler(self._effect)
        self._schedule_workload(run)
        if run.params["faults"]:
            kinds = _fault_kinds(str(run.params["fault_kinds"]), bool(run.params["lose_disk"]))
            plan = run.plan or random_plan(run.rng, run.nodes, int(run.duration_s * 1000),
                                           kinds=kinds)
            plan = _keep_lost_disks(plan, keep=1 if run.params["lose_disk"] else 0)
            plan = _with_restarts(plan, int(run.params["restart_max_ms"]))
            plan.schedule(world, self.node_ids)

    def _build(self, boot: NodeBoot) -> MeshNode:
        capacity = int(self.run.params["capacity"])
        cfg = MeshConfig(node_id=boot.node_id, voters=tuple(self.node_ids), capacity=capacity,
                         bootstrap_key=self.put_key,
                         async_retry_base_ns=int(self.run.params["retry_base_ms"]) * NS_PER_MS)
        node = self.node_class(cfg, boot.disk, boot.rng, boot.now,
                               seeds=[n for n in self.node_ids if n != boot.node_id],
                               restarts=boot.restarts, disk_lost=boot.lost_disk)
        node.on_send = self._on_invoke_sent
        self.ledger.dead_since[boot.node_id] = {}  # a new incarnation knows nobody dead yet
        return node

    # ------------------------------------------------------------ observing

    def _observe(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == "client_reply":
            self._on_reply(node_id, note.data.conn, note.data.response)
        elif note.kind == "member":
            dead = self.ledger.dead_since.setdefault(node_id, {})
            if note.data.state in ("dead", "left"):
                dead.setdefault(note.data.node_id, time_ns)
            else:
                dead.pop(note.data.node_id, None)
        elif note.kind == paxos_api.NOTE_LEADER and note.data[0] == node_id:
            self.ledger.leaderships.add((node_id, tuple(note.data[1])))

    def _on_invoke_sent(self, src: NodeId, dst: NodeId, msg: InvokeRequest) -> None:
        since = self.ledger.dead_since.get(src, {}).get(dst)
        held_ns = self.world.time_ns - since if since is not None else 0
        if since is not None and held_ns > DEAD_ROUTE_BOUND_NS:
            self.ledger.routed_to_dead_count += 1
            self.ledger.routed_to_dead.append(
                f"{src} sent invocation {msg.invocation_id} to {dst}, which it has held dead "
                f"for {held_ns / NS_PER_S:.3f}s")

    # ----------------------------------------------------- simulated executor

    def _effect(self, world: World, node_id: NodeId, effect: Effect) -> None:
        if effect.kind == "invoke":
            self._execute(world, node_id, effect)
        elif effect.kind == "replicate_blob":
            majority = len(self.node_ids) // 2 + 1
            ok = len(world.up_nodes()) >= majority
            delay_ns = world.rng.randint(2, 30) * NS_PER_MS
            world.complete_effect(node_id, EffectResult(
                effect_id=effect.effect_id, ok=ok, error="" if ok else "no majority up"), delay_ns)
        elif effect.kind == LOOKUP_KIND:
            world.complete_effect(node_id, simulated_lookup(world, node_id, effect),
                                  world.rng.randint(50, 500) * 1_000)
        else:
            world.complete_effect(node_id, EffectResult(
                effect_id=effect.effect_id, ok=False, error=f"no {effect.kind} in the simulator"))

    def _execute(self, world: World, node_id: NodeId, effect: Effect) -> None:
        task: InvokeTask = effect.args
        rng, params = world.rng, self.run.params
        draw = rng.random()
        status: proto.InvocationStatus
        if draw < float(params["timeout_rate"]):
            status, duration_ns = "timeout", task.config.timeout_s * NS_PER_S
        elif draw < float(params["timeout_rate"]) + float(params["fail_rate"]):
            status, duration_ns = "failed", rng.randint(1, 50) * NS_PER_MS
        else:
            status, duration_ns = "succeeded", rng.randint(1, 80) * NS_PER_MS
        record = proto.InvocationRecord(
            invocation_id=task.invocation_id, function=task.function, status=status,
            version=task.version, node=node_id, duration_ns=duration_ns,
            payload=b'{"ok":true}' if status == "succeeded" else None,
            error_type="" if status == "succeeded" else
            ("Sandbox.Timedout" if status == "timeout" else "Handled"),
            error_message="" if status == "succeeded" else "the handler raised")
        epoch = world.nodes[node_id].epoch
        world.after(duration_ns, self._executed, node_id, epoch, effect.effect_id, record)

    def _executed(self, node_id: NodeId, epoch: int, effect_id: int,
                  record: proto.InvocationRecord) -> None:
        node = self.world.nodes[node_id]
        if not node.up or node.epoch != epoch:
            return  # the node died while running it: nobody hears of this execution
        if record.status == "succeeded":
            counts = self.ledger.executions_ok
            counts[record.invocation_id] = counts.get(record.invocation_id, 0) + 1
        self.world.complete_effect(node_id, EffectResult(effect_id=effect_id, ok=True,
                                                         value=record))

    # --------------------------------------------------------------- workload

    def _schedule_workload(self, run: Run) -> None:
        rate = float(run.params["rate"])
        t_ns = WORKLOAD_START_NS
        while rate > 0:
            t_ns += int(self.rng.expovariate(rate) * NS_PER_S)
            if t_ns >= run.safety_end_ns:
                break
            self.world.at(t_ns, self._new_op)

    def _new_op(self) -> None:
        rng, params = self.rng, self.run.params
        known = sorted(self.deployed)
        if not known or rng.random() < float(params["deploy_share"]):
            body: Any = self._deploy_body(rng)
            self.ledger.deploys_sent += 1
            self.deployed[body.name] = self.deployed.get(body.name, 0) + 1
        else:
            name = known[rng.randrange(len(known))]
            if rng.random() < float(params["async_share"]):
                body = proto.Invoke(name=name, payload=b"{}", invocation_type="Event",
                                    idempotency_key=f"idem-{len(self.ops) + 1}")
            else:
                body = proto.Invoke(name=name, payload=b"{}")
        op = _Op(op_id=len(self.ops) + 1, body=body)
        self.ops[op.op_id] = op
        self.ledger.outstanding += 1
        self._send(op)

    def _deploy_body(self, rng: random.Random) -> proto.Deploy:
        name = FUNCTIONS[rng.randrange(len(FUNCTIONS))]
        code = faas.CodeRef(sha256=rng.randbytes(32).hex(), size_bytes=rng.randint(100, 10_000))
        return proto.Deploy(name=name, code=code, handler="app.handler",
                            timeout_s=rng.randint(1, 3))

    def _send(self, op: _Op) -> None:
        candidates = [n for n in self.node_ids if n not in op.tried] or list(self.node_ids)
        node = candidates[self.rng.randrange(len(candidates))]
        op.tried.append(node)
        op.attempt += 1
        conn = f"op{op.op_id}.{op.attempt}"
        request = proto.ClientRequest(request_id=conn, api_key=self.token, body=op.body)
        self.world.command(node, ClientCall(conn=conn, request=request))
        self.world.after(CLIENT_TIMEOUT_NS, self._on_timeout, op.op_id, op.attempt)

    def _on_timeout(self, op_id: int, attempt: int) -> None:
        op = self.ops[op_id]
        if not op.done and op.attempt == attempt:
            self._retry_or_give_up(op)

    def _retry_or_give_up(self, op: _Op) -> None:
        if op.attempt >= CLIENT_ATTEMPTS:
            self._finish(op, ok=False)
            return
        self.world.after(CLIENT_BACKOFF_NS, self._send, op)

    def _finish(self, op: _Op, *, ok: bool) -> None:
        op.done = True
        self.ledger.outstanding -= 1
        if isinstance(op.body, proto.Invoke) and op.body.invocation_type == "RequestResponse":
            if ok:
                self.ledger.sync_ok += 1
            else:
                self.ledger.sync_failed += 1
        elif not ok:
            self.ledger.requests_failed += 1

    def _on_reply(self, node_id: NodeId, conn: str, response: proto.ClientResponse) -> None:
        op_text, attempt_text = conn[2:].split(".")
        op = self.ops[int(op_text)]
        self._record_ack(op, response)
        if response.error is not None:
            kind = response.error.kind
            self.ledger.errors[kind] = self.ledger.errors.get(kind, 0) + 1
        if op.done or op.attempt != int(attempt_text):
            return
        if response.ok:
            self._finish(op, ok=True)
        elif response.error is not None and response.error.kind in RETRYABLE:
            self._retry_or_give_up(op)
        else:
            self._finish(op, ok=False)

    def _record_ack(self, op: _Op, response: proto.ClientResponse) -> None:
        """Every ok answer is an acknowledgement, even one the client stopped waiting for."""
        if not response.ok:
            return
        value = response.value
        if isinstance(op.body, proto.Deploy) and (
                not isinstance(value, faas.Deployed) or value.function.name != op.body.name
                or value.function.code != op.body.code):
            self.ledger.bad_acks.append(f"deploy {response.request_id} of {op.body.name} "
                                        f"acknowledged with {value!r}")
        elif isinstance(value, faas.Deployed):
            fn = value.function
            self.ledger.acked_deploys.append(
                (fn.name, fn.revision, fn.code.sha256, response.request_id))
        elif isinstance(value, proto.AsyncAccepted):
            self.ledger.async_accepted.setdefault(value.invocation_id, response.request_id)

    # --------------------------------------------------------------- liveness

    def converged(self, world: World) -> bool:
        return (self.ledger.outstanding == 0 and not self.tables_check.differing(world)
                and not self.async_check.unfinished(world))

    def figures(self, world: World) -> dict[str, Any]:
        ledger = self.ledger
        statuses = [_final_status(world, i) for i in sorted(ledger.async_accepted)]
        return {
            "deploys_sent": ledger.deploys_sent,
            "deploys_acked": len(ledger.acked_deploys),
            "deploys_lost": len(self.deploy_check.lost(world)),
            "invocations": {"sync_ok": ledger.sync_ok, "sync_failed": ledger.sync_failed},
            "requests_failed": ledger.requests_failed,
            "errors": dict(sorted(ledger.errors.items())),
            "async_accepted": len(ledger.async_accepted),
            "async_succeeded": statuses.count("succeeded"),
            "async_dead_letter": statuses.count("dead_letter"),
            "async_lost": len(statuses) - statuses.count("succeeded")
            - statuses.count("dead_letter"),
            "duplicate_completions": len(self.dup_check.duplicates(world)),
            "routed_to_dead": ledger.routed_to_dead_count,
            "leader_changes": len(ledger.leaderships),
            "crashes": world.stats["crashes"], "messages_sent": world.stats["sent"],
        }


def _final_status(world: World, invocation_id: str) -> str:
    for node in world.up_nodes():
        record = world.core(node).sm.get_async(invocation_id)
        if record is not None:
            return str(record.status)
    return "missing"


def _fault_kinds(spec: str, lose_disk: bool) -> list[FaultKind]:
    """``all``, or a comma-separated list of fault kinds."""
    wanted = list(ALL_KINDS) if spec == "all" else [k.strip() for k in spec.split(",") if k.strip()]
    unknown = sorted(set(wanted) - set(ALL_KINDS))
    if unknown:
        raise ValueError(f"unknown fault kind(s) {', '.join(unknown)}")
    return [k for k in ALL_KINDS if k in wanted and (k != "crash_lose_disk" or lose_disk)]


def _with_restarts(plan: FaultPlan, restart_max_ms: int) -> FaultPlan:
    """Follow every crash by a restart of the same nodes, at most ``restart_max_ms`` later."""
    faults = list(plan.faults)
    for fault in plan.faults:
        if fault.kind in ("crash", "crash_lose_disk") and fault.nodes:
            delay_ms = 1 + fault.amount * restart_max_ms // 2_000
            faults.append(Fault(at_ms=fault.at_ms + delay_ms, kind="restart", nodes=fault.nodes))
    return FaultPlan(tuple(sorted(faults, key=lambda f: f.at_ms)))


def _keep_lost_disks(plan: FaultPlan, *, keep: int) -> FaultPlan:
    """Keep the first ``keep`` disk-losing crashes (of one node each); the rest become plain."""
    faults: list[Fault] = []
    kept = 0
    for fault in plan.faults:
        if fault.kind == "crash_lose_disk":
            if kept < keep:
                kept += 1
                faults.append(attrs.evolve(fault, nodes=fault.nodes[:1]))
                fault = attrs.evolve(fault, kind="crash", nodes=fault.nodes[1:])
            else:
                fault = attrs.evolve(fault, kind="crash")
        faults.append(fault)
    return FaultPlan(tuple(faults))
