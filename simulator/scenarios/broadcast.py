"""``broadcast``: reliable broadcast with acknowledgements, under every fault.

Theory of operation
-------------------
A node accepts a broadcast from its client once the message is on its own disk
(the ``accepted`` notification is the client's acknowledgement), delivers it
locally, and sends it to every peer until each has acknowledged it, resending
every ``RETRANSMIT_NS``. A receiver delivers a message once: it persists the
message id, and only after that write is durable does it deliver (the
``delivered`` notification) and acknowledge (an after-persist send). A
restarted origin resends every message in its durable ``sent`` table, so an
accepted broadcast survives the crash of any node.

Properties (one checker each): no node delivers a message twice; no node
delivers a message nobody broadcast; and after the faults stop, every
accepted broadcast is delivered at every node (agreement, checked as the
liveness condition and finally).

The ``variant`` parameter builds deliberately broken protocols for the tests
that prove the checkers bite: ``ack-before-persist`` acknowledges before the
write is durable (a crash then loses a message the origin thinks is safe), and
``no-dedupe`` delivers every copy it receives.
"""

from __future__ import annotations

import random
from typing import Any, Literal

import attrs

from meshfaas.core.codec import message
from meshfaas.core.types import (
    NS_PER_MS,
    Deadlines,
    EffectResult,
    NodeId,
    Notification,
    Now,
    Outbox,
    Ready,
)
from simulator.faults import ALL_KINDS, random_plan
from simulator.scenario import Checker, Run, Scenario, register_scenario
from simulator.world import NetworkConfig, NodeBoot, World

RETRANSMIT_NS = 50 * NS_PER_MS
Variant = Literal["correct", "ack-before-persist", "no-dedupe"]


@message(900)
@attrs.frozen(kw_only=True)
class Data:
    msg_id: str
    payload: bytes


@message(901)
@attrs.frozen(kw_only=True)
class Ack:
    msg_id: str


@message(902)
@attrs.frozen(kw_only=True)
class Broadcast:
    msg_id: str
    payload: bytes


class BroadcastNode:
    """One node of the broadcast protocol (a sans-IO core)."""

    def __init__(self, boot: NodeBoot, peers: list[NodeId], variant: Variant = "correct") -> None:
        self.node_id = boot.node_id
        self.peers = [p for p in peers if p != boot.node_id]
        self.variant = variant
        self.out = Outbox()
        self.deadlines = Deadlines()
        # msg_id -> payload for messages we originated (durable table "sent")
        self.sent: dict[str, bytes] = {str(k): v for k, v in boot.disk.get("sent", {}).items()}
        # msg_ids delivered here and synced (durable table "delivered")
        self.delivered: set[str] = {str(k) for k in boot.disk.get("delivered", {})}
        # msg_ids whose "delivered" write is not synced yet
        # msg_id -> peers that have not acknowledged yet
        self.waiting: dict[str, set[NodeId]] = {}
        # batch seq -> (notes to emit once persisted)
        self.on_disk: dict[int, list[Notification]] = {}
        self.pending: list[Notification] = []
        self.pending_ids: set[str] = set()  # delivered, but not yet on disk
        for msg_id in sorted(self.sent):
            self._start_sending(msg_id, boot.now)

    # -- inputs -------------------------------------------------------------

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        if isinstance(msg, Data):
            self.handle_data(src, msg)
        elif isinstance(msg, Ack):
            self.handle_ack(src, msg)

    def command(self, cmd: Any, now: Now) -> None:
        if not isinstance(cmd, Broadcast):
            raise TypeError(f"unknown command {type(cmd).__name__}")
        if cmd.msg_id in self.sent:
            return
        self.sent[cmd.msg_id] = cmd.payload
        self.out.persist("sent", cmd.msg_id, cmd.payload)
        self.out.persist("delivered", cmd.msg_id, 1)
        self.pending.append(Notification(kind="accepted", data=cmd.msg_id))
        self.pending.append(Notification(kind="delivered", data=cmd.msg_id))
        self._start_sending(cmd.msg_id, now)

    def tick(self, now: Now) -> None:
        for key in self.deadlines.pop_due(now.mono_ns):
            msg_id = str(key)
            if self.waiting.get(msg_id):
                self._send_data(msg_id)
                self.deadlines.set(msg_id, now.mono_ns + RETRANSMIT_NS)

    def next_deadline(self) -> int | None:
        return self.deadlines.next_deadline()

    def take_ready(self) -> Ready | None:
        ready = self.out.take()
        if ready is not None and self.pending:
            if ready.persist:
                self.on_disk[ready.seq] = self.pending
            else:
                for note in self.pending:
                    self.out.notify(note.kind, note.data)
            self.pending = []
        return ready

    def on_persisted(self, seq: int) -> None:
        for note in self.on_disk.pop(seq, []):
            if note.kind == "delivered":
                self.delivered.add(str(note.data))
                self.pending_ids.discard(str(note.data))
            self.out.notify(note.kind, note.data)

    def on_result(self, result: EffectResult, now: Now) -> None:
        return None

    # -- protocol -------------------------------------------------------------

    def _start_sending(self, msg_id: str, now: Now) -> None:
        self.waiting[msg_id] = set(self.peers)
        self._send_data(msg_id)
        self.deadlines.set(msg_id, now.mono_ns + RETRANSMIT_NS)

    def _send_data(self, msg_id: str) -> None:
        payload = self.sent[msg_id]
        for peer in sorted(self.waiting.get(msg_id, ())):
            self.out.send_after_persist(peer, Data(msg_id=msg_id, payload=payload))

    def handle_data(self, src: NodeId, msg: Data) -> None:
        if self.variant == "no-dedupe":
            self.out.persist("delivered", msg.msg_id, 1)
            self.pending.append(Notification(kind="delivered", data=msg.msg_id))
            self.out.send_after_persist(src, Ack(msg_id=msg.msg_id))
            return
        if msg.msg_id in self.delivered:  # durable here: safe to acknowledge again
            self.out.send(src, Ack(msg_id=msg.msg_id))
            return
        if msg.msg_id in self.pending_ids:  # its write is not synced yet: the ack follows it
            return
        self.pending_ids.add(msg.msg_id)
        self.out.persist("delivered", msg.msg_id, 1)
        self.pending.append(Notification(kind="delivered", data=msg.msg_id))
        if self.variant == "ack-before-persist":
            self.out.send(src, Ack(msg_id=msg.msg_id))
        else:
            self.out.send_after_persist(src, Ack(msg_id=msg.msg_id))

    def handle_ack(self, src: NodeId, msg: Ack) -> None:
        waiting = self.waiting.get(msg.msg_id)
        if waiting is None or src not in waiting:
            return
        waiting.discard(src)
        if not waiting:
            del self.waiting[msg.msg_id]
            self.deadlines.cancel(msg.msg_id)
            self.out.notify("complete", msg.msg_id)


# ---------------------------------------------------------------------------
# Checkers
# ---------------------------------------------------------------------------


class NoDuplicateDelivery(Checker):
    name = "no-duplicate-delivery"

    def __init__(self) -> None:
        self.seen: set[tuple[NodeId, str]] = set()
        self.found: list[str] = []

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind != "delivered":
            return
        key = (node_id, str(note.data))
        if key in self.seen:
            self.found.append(f"{node_id} delivered {note.data} twice")
        self.seen.add(key)

    def check_during(self, world: World) -> list[str]:
        found, self.found = self.found, []
        return found


class NoCreation(Checker):
    name = "no-creation"

    def __init__(self, accepted: set[str], issued: set[str]) -> None:
        self.issued = issued
        self.found: list[str] = []

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == "delivered" and note.data not in self.issued:
            self.found.append(f"{node_id} delivered {note.data}, which nobody broadcast")

    def check_during(self, world: World) -> list[str]:
        found, self.found = self.found, []
        return found


class AckImpliesDurable(Checker):
    """A node acknowledges a message only once its delivery record is on disk."""

    name = "ack-implies-durable"

    def __init__(self) -> None:
        self.found: list[str] = []
        self.world: World | None = None

    def attach(self, world: World) -> None:
        """Watch every message ``world`` sends (called by the scenario's setup)."""
        self.world = world
        world.tap(self._on_send)

    def _on_send(self, src: NodeId, dst: NodeId, msg: Any, time_ns: int) -> None:
        if isinstance(msg, Ack) and self.world is not None:
            durable = self.world.nodes[src].disk.durable.get("delivered", {})
            if msg.msg_id not in durable:
                self.found.append(f"{src} acknowledged {msg.msg_id} before it was on its disk")

    def check_during(self, world: World) -> list[str]:
        found, self.found = self.found, []
        return found


class Agreement(Checker):
    """After the faults stop, every accepted broadcast is delivered everywhere.

    Delivery is judged on each node's *disk*: an fsync makes every earlier
    write durable, so a node can crash after its delivery record is synced but
    before it announced the delivery; after the restart it rightly counts the
    message as delivered. What must never happen is a node that acknowledged a
    message without it being on its disk.
    """

    name = "agreement"

    def __init__(self, accepted: set[str]) -> None:
        self.accepted = accepted

    def missing(self, world: World) -> list[str]:
        out = []
        for node_id in world.node_ids():
            on_disk = {str(k) for k in world.nodes[node_id].disk.durable.get("delivered", {})}
            lacking = sorted(self.accepted - on_disk)
            if lacking:
                out.append(f"{node_id} never delivered {len(lacking)} accepted message(s), "
                           f"e.g. {lacking[0]}")
        return out

    def check_final(self, world: World) -> list[str]:
        return self.missing(world)


@register_scenario
class BroadcastScenario(Scenario):
    name = "broadcast"
    description = ("Reliable broadcast with acknowledgements under loss, duplication, reordering, "
                   "partitions, clogging, stalls and crashes that lose unsynced writes.")
    default_nodes = 5
    default_duration_s = 10.0
    liveness_bound_s = 5.0
    params = {"rate": 20.0, "variant": "correct", "faults": True}

    def network(self, run: Run) -> NetworkConfig:
        # A slow disk (fsync 0.5 to 5 ms) widens the window between a write and
        # its sync, where a crash exposes a protocol that acts before persisting.
        return NetworkConfig(fsync_min_ns=NS_PER_MS // 2, fsync_max_ns=5 * NS_PER_MS)

    def setup(self, world: World, run: Run) -> None:
        variant = run.params["variant"]
        if variant not in ("correct", "ack-before-persist", "no-dedupe"):
            raise ValueError(f"unknown variant {variant!r}")
        self.world = world
        self.ack_checker.attach(world)
        self.node_ids = run.node_ids()
        for node_id in self.node_ids:
            world.add_node(node_id, self._factory(variant))
        world.observe(self._observe)
        self._schedule_workload(world, run)
        if run.params["faults"]:
            # The protocol keeps its state on one disk, so losing a disk is out of
            # its fault model; every other fault is in.
            kinds = [k for k in ALL_KINDS if k != "crash_lose_disk"]
            plan = run.plan or random_plan(run.rng, run.nodes, int(run.duration_s * 1000), kinds=kinds)
            plan.schedule(world, self.node_ids)

    def _factory(self, variant: Variant) -> Any:
        peers = list(self.node_ids)
        return lambda boot: BroadcastNode(boot, peers, variant)

    def _schedule_workload(self, world: World, run: Run) -> None:
        rng = random.Random(run.rng.random())
        rate = float(run.params["rate"])
        t_ns, count = 0, 0
        while rate > 0:
            t_ns += int(rng.expovariate(rate) * 1e9)
            if t_ns >= run.safety_end_ns:
                break
            count += 1
            origin = self.node_ids[rng.randrange(len(self.node_ids))]
            msg_id = f"{origin}-{count}"
            self.issued.add(msg_id)
            world.command(origin, Broadcast(msg_id=msg_id, payload=rng.randbytes(8)), at_ns=t_ns)

    def checkers(self) -> list[Checker]:
        self.accepted: set[str] = set()
        self.issued: set[str] = set()
        self.completed: set[str] = set()
        self.deliveries = 0
        self.agreement = Agreement(self.accepted)
        self.ack_checker = AckImpliesDurable()
        return [NoDuplicateDelivery(), NoCreation(self.accepted, self.issued),
                self.ack_checker, self.agreement]

    def _observe(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == "accepted":
            self.accepted.add(str(note.data))
        elif note.kind == "complete":
            self.completed.add(str(note.data))
        elif note.kind == "delivered":
            self.deliveries += 1

    def converged(self, world: World) -> bool:
        return not self.agreement.missing(world)

    def figures(self, world: World) -> dict[str, Any]:
        return {
            "broadcasts": len(self.issued), "accepted": len(self.accepted),
            "completed": len(self.completed), "deliveries": self.deliveries,
            "messages_sent": world.stats["sent"], "messages_lost": world.stats["lost"],
            "crashes": world.stats["crashes"],
        }
