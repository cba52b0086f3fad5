"""``paxos``: a key-value workload on Multi-Paxos replicas, under every fault.

Theory of operation
-------------------
``nodes`` replicas (:class:`paxos.replica.Replica` over :class:`paxos.kv.KvStateMachine`)
run while ``clients`` closed-loop clients issue put / get / cas / append on a
few keys through any replica. A client has one operation in flight; it retries
the same ``(client, seq)`` at another replica (or the hinted leader) when
refused or after ``CLIENT_TIMEOUT_NS`` with no answer, so the session table
must apply it once. Some gets are linearizable reads (lease or read index)
instead of log entries. The fault plan loses, duplicates, delays and
reorders messages, partitions, clogs and stalls nodes, and crashes them
(restarts are from synced state only; at most one disk per run is lost, the
most the protocol's fault model allows with three replicas).

Checkers, one per property:

* ``one-value-per-slot``: no two replicas learn different values for a slot;
* ``one-proposal-per-ballot``: no ballot proposes two values for one slot
  (the invariant Paxos's proof rests on; a reused ballot breaks it first);
* ``applied-prefix``: every replica applies slots 1, 2, 3... in order (a
  snapshot install jumps forward) and the same commands at each index;
* ``no-duplicate-apply``: no ``(client, seq)`` is executed at two indices;
* ``no-acked-lost``: every acknowledged command is in the chosen log at the
  index it was acknowledged with;
* ``linearizable``: the clients' history passes the Wing-Gong/Porcupine
  checker of :mod:`simulator.linearizability`;
* liveness: once faults stop, a fresh command commits and every replica
  applies it within ``liveness_bound_s``.
"""

from __future__ import annotations

import random
from typing import Any

from meshfaas.core.types import NS_PER_MS, NodeId, Notification
from paxos.api import (
    NOTE_APPLIED,
    NOTE_CHOSEN,
    NOTE_LEADER,
    NOTE_PROPOSED,
    NOTE_READ,
    NOTE_RESULT,
    Applied,
    Chosen,
    CommandResult,
    Propose,
    Proposed,
    Read,
    ReadResult,
    Reconfigure,
)
from paxos.kv import KvStateMachine
from paxos.replica import NOTE_RESTORED, VARIANTS, PaxosConfig, Replica
from simulator.faults import ALL_KINDS, Fault, FaultKind, FaultPlan, random_plan
from simulator.linearizability import HistoryRecorder, check_linearizable
from simulator.scenario import Checker, Run, Scenario, register_scenario
from simulator.world import NetworkConfig, NodeBoot, World

CLIENT_TIMEOUT_NS = 250 * NS_PER_MS
RETRY_BACKOFF_NS = 20 * NS_PER_MS
KEYS = ("a", "b", "c")
PROBE_CLIENT = "probe"
RECONFIG_CLIENT = "reconf"
RECONFIG_GAP_NS = 250 * NS_PER_MS
LEASE_DRIFT_PPM = 200  # the world's clocks drift at most 100 ppm; leases assume twice that


# ---------------------------------------------------------------------------
# Checkers
# ---------------------------------------------------------------------------


class _Collecting(Checker):
    """A checker that reports what it found since the last poll."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check_during(self, world: World) -> list[str]:
        found, self.found = self.found, []
        return found


class OneValuePerSlot(_Collecting):
    name = "one-value-per-slot"

    def __init__(self) -> None:
        super().__init__()
        self.chosen: dict[int, Any] = {}

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind != NOTE_CHOSEN:
            return
        data: Chosen = note.data
        first = self.chosen.setdefault(data.index, data.value)
        if first != data.value:
            self.found.append(f"slot {data.index}: {node_id} learned {data.value!r}, "
                              f"another replica {first!r}")


class OneProposalPerBallot(_Collecting):
    """Paxos's own invariant: a ballot proposes at most one value per slot."""

    name = "one-proposal-per-ballot"

    def __init__(self) -> None:
        super().__init__()
        self.proposed: dict[tuple[int, tuple[int, str]], Any] = {}

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind != NOTE_PROPOSED:
            return
        data: Proposed = note.data
        first = self.proposed.setdefault((data.index, data.ballot), data.value)
        if first != data.value:
            self.found.append(f"ballot {data.ballot} proposed two values at slot {data.index}: "
                              f"{first!r} and {data.value!r}")


def _signature(applied: Applied) -> tuple[Any, ...]:
    return tuple((c.client_id, c.seq, c.fresh) for c in applied.commands)


class AppliedPrefix(_Collecting):
    name = "applied-prefix"

    def __init__(self) -> None:
        super().__init__()
        self.next_index: dict[NodeId, int] = {}
        self.applied_to: dict[NodeId, int] = {}
        self.by_index: dict[int, tuple[Any, ...]] = {}

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == NOTE_RESTORED:
            self.next_index[node_id] = int(note.data) + 1
            self.applied_to[node_id] = int(note.data)
        elif note.kind == NOTE_APPLIED:
            self._applied(node_id, note.data)

    def _applied(self, node_id: NodeId, data: Applied) -> None:
        expected = self.next_index.get(node_id, 1)
        if data.index != expected:
            self.found.append(f"{node_id} applied slot {data.index}, expected {expected}")
        self.next_index[node_id] = data.index + 1
        self.applied_to[node_id] = max(self.applied_to.get(node_id, 0), data.index)
        sig = self.by_index.setdefault(data.index, _signature(data))
        if sig != _signature(data):
            self.found.append(f"{node_id} applied {_signature(data)} at slot {data.index}, "
                              f"another replica {sig}")


class NoDuplicateApply(_Collecting):
    name = "no-duplicate-apply"

    def __init__(self) -> None:
        super().__init__()
        self.executed_at: dict[tuple[str, int], int] = {}
        self.duplicates = 0

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind != NOTE_APPLIED:
            return
        data: Applied = note.data
        for cmd in data.commands:
            if not cmd.fresh:
                continue
            key = (cmd.client_id, cmd.seq)
            first = self.executed_at.setdefault(key, data.index)
            if first != data.index:
                self.duplicates += 1
                self.found.append(f"{key} executed at slot {first} and again at {data.index} "
                                  f"({node_id})")


class NoAckedLost(Checker):
    name = "no-acked-lost"

    def __init__(self, chosen: OneValuePerSlot) -> None:
        self.chosen = chosen
        self.acked: dict[tuple[str, int], int] = {}

    def lost(self) -> list[str]:
        out = []
        for (client, seq), index in sorted(self.acked.items()):
            if index == 0:
                continue
            value = self.chosen.chosen.get(index)
            cmds = [] if value is None else [(c.client_id, c.seq) for c in value.cmds]
            if value is not None and (client, seq) not in cmds and value.reconfig_client is None:
                out.append(f"({client}, {seq}) acknowledged at slot {index}, which holds {cmds}")
        return out

    def check_final(self, world: World) -> list[str]:
        return self.lost()


class Linearizable(Checker):
    name = "linearizable"

    def __init__(self, recorder: HistoryRecorder) -> None:
        self.recorder = recorder
        self.verdict = "unchecked"

    def check_final(self, world: World) -> list[str]:
        result = check_linearizable(self.recorder.history())
        self.verdict = result.verdict
        return [] if result.ok else [result.explain()]


# ---------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------


class Client:
    """A closed-loop client: one operation at a time, retried until answered."""

    def __init__(self, scenario: PaxosScenario, client_id: str, rng: random.Random) -> None:
        self.sc = scenario
        self.client_id = client_id
        self.rng = rng
        self.seq = 0
        self.op: tuple[str, str, Any] | None = None  # (kind, key, input)
        self.handle = -1
        self.attempt = 0
        self.is_read = False
        self.target: NodeId | None = None

    def start_next(self, world: World) -> None:
        if world.time_ns >= self.sc.safety_end_ns and self.client_id != PROBE_CLIENT:
            return
        kind, key, value = self._pick_op()
        self.seq += 1
        self.op = (kind, key, value)
        self.is_read = kind == "get" and self.rng.random() < self.sc.read_share
        if kind != "reconfig":
            self.handle = self.sc.history.invoke(self.client_id, kind, key, value, world.time_ns)
        self.send(world, self._random_node())

    def _pick_op(self) -> tuple[str, str, Any]:
        if self.client_id == RECONFIG_CLIENT:
            ids = list(self.sc.node_ids)
            size = self.rng.choice((1, 2, 3, 3, 3, 4, 5))
            return "reconfig", "", tuple(sorted(self.rng.sample(ids, min(size, len(ids)))))
        if self.client_id == PROBE_CLIENT:
            return "put", "probe", f"probe.{self.seq + 1}"
        key = KEYS[self.rng.randrange(len(KEYS))]
        roll = self.rng.random()
        token = f"{self.client_id}.{self.seq + 1}"
        if roll < 0.3:
            return "put", key, token
        if roll < 0.6:
            return "get", key, None
        if roll < 0.8:
            expected = self.sc.last_seen.get(key)
            return "cas", key, (expected, token)
        return "append", key, token + ";"

    def _random_node(self) -> NodeId:
        ids = self.sc.node_ids
        return ids[self.rng.randrange(len(ids))]

    def send(self, world: World, node_id: NodeId) -> None:
        assert self.op is not None
        self.attempt += 1
        self.target = node_id
        kind, key, value = self.op
        if kind == "reconfig":
            cmd: Any = Reconfigure(client_id=self.client_id, seq=self.seq, voters=value)
        elif self.is_read:
            cmd = Read(client_id=self.client_id, req_id=self.seq, query=["get", key])
        else:
            payload: list[Any] = [kind, key]
            if kind == "cas":
                payload += [value[0], value[1]]
            elif kind != "get":
                payload.append(value)
            cmd = Propose(client_id=self.client_id, seq=self.seq, payload=payload)
        world.command(node_id, cmd)
        world.after(CLIENT_TIMEOUT_NS, self.on_timeout, world, self.seq, self.attempt)

    def on_timeout(self, world: World, seq: int, attempt: int) -> None:
        if self.op is not None and seq == self.seq and attempt == self.attempt:
            self.send(world, self._random_node())

    def on_answer(self, world: World, ok: bool, value: Any, hint: str | None) -> None:
        if self.op is None:
            return
        if not ok:
            target = NodeId(hint) if hint in self.sc.node_ids else self._random_node()
            self.attempt += 1  # the pending timeout of this attempt is void
            attempt = self.attempt
            world.after(RETRY_BACKOFF_NS, self._retry, world, self.seq, attempt, target)
            return
        kind, key, _ = self.op
        if kind == "reconfig":
            self.op = None
            world.after(RECONFIG_GAP_NS, self.start_next, world)
            return
        output = value
        if kind == "cas":
            output = bool(value)
        self.sc.history.complete(self.handle, output if kind in ("get", "cas") else None,
                                 world.time_ns)
        if kind == "get":
            self.sc.last_seen[key] = value
        self.op = None
        self.sc.completed += 1
        if self.client_id == PROBE_CLIENT:
            return
        world.after(self.rng.randrange(10, 60) * NS_PER_MS, self.start_next, world)

    def _retry(self, world: World, seq: int, attempt: int, target: NodeId) -> None:
        if self.op is not None and seq == self.seq and attempt == self.attempt:
            self.send(world, target)


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


@register_scenario
class PaxosScenario(Scenario):
    name = "paxos"
    description = ("A key-value workload on Multi-Paxos replicas under loss, duplication, "
                   "reordering, partitions, stalls, crashes and one lost disk; checks "
                   "consensus safety, exactly-once, linearizability and recovery.")
    default_nodes = 3
    default_duration_s = 2.0
    liveness_bound_s = 10.0
    check_interval_ms = 100
    params = {"clients": 3, "variant": "", "faults": True, "lose_disk": True,
              "read_share": 0.5, "snapshot_every": 24, "window": 8,
              "fault_gap_ms": 400, "fault_kinds": "all", "fsync_max_us": 1000,
              "election_ms": 200, "restart_max_ms": 1000, "reconfig": False,
              "leader_crash_gap_ms": 0, "accept_to": "all"}

    def network(self, run: Run) -> NetworkConfig:
        fsync_max_ns = int(run.params["fsync_max_us"]) * 1000
        return NetworkConfig(fsync_min_ns=min(200_000, fsync_max_ns), fsync_max_ns=fsync_max_ns)

    def setup(self, world: World, run: Run) -> None:
        variant = str(run.params["variant"])
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS[1:])}")
        self.world = world
        self.node_ids = run.node_ids()
        self.safety_end_ns = run.safety_end_ns
        self.read_share = float(run.params["read_share"])
        self.completed = 0
        self.last_seen: dict[str, Any] = {}
        self.leader_ballots: set[tuple[int, str]] = set()
        self.current_leader: NodeId | None = None
        self.reconfig = bool(run.params["reconfig"])
        initial = self.node_ids[:3] if self.reconfig else self.node_ids
        self.members: set[str] = set(initial)
        for node_id in self.node_ids:
            world.add_node(node_id, self._factory(run, variant, tuple(initial)))
        world.observe(self._observe)
        rng = random.Random(run.rng.random())
        self.clients = {f"c{i}": Client(self, f"c{i}", random.Random(rng.random()))
                        for i in range(1, int(run.params["clients"]) + 1)}
        self.probe = Client(self, PROBE_CLIENT, random.Random(rng.random()))
        for i, client in enumerate(self.clients.values()):
            world.at((50 + 7 * i) * NS_PER_MS, client.start_next, world)
        if self.reconfig:
            self.clients[RECONFIG_CLIENT] = Client(self, RECONFIG_CLIENT, random.Random(rng.random()))
            world.at(300 * NS_PER_MS, self.clients[RECONFIG_CLIENT].start_next, world)
        if run.params["faults"]:
            kinds = _kinds(str(run.params["fault_kinds"]))
            plan = run.plan or random_plan(run.rng, run.nodes, int(run.duration_s * 1000),
                                           kinds=kinds, mean_gap_ms=int(run.params["fault_gap_ms"]))
            if not run.params["lose_disk"] or run.nodes < 3:
                plan = _without_lost_disks(plan, keep=0)
            plan = _with_restarts(_without_lost_disks(plan, keep=1),
                                  int(run.params["restart_max_ms"]))
            plan.schedule(world, self.node_ids)
            self._schedule_leader_crashes(world, run)

    def _schedule_leader_crashes(self, world: World, run: Run) -> None:
        """A nemesis that crashes whoever leads (then restarts it): for hunting bugs."""
        gap_ms = int(run.params["leader_crash_gap_ms"])
        restart_max_ms = int(run.params["restart_max_ms"])
        rng = random.Random(run.rng.random())
        t_ms = 0.0
        while gap_ms > 0:
            t_ms += rng.expovariate(1.0 / gap_ms)
            if t_ms >= run.duration_s * 1000:
                break
            restart_ms = rng.randint(1, max(1, restart_max_ms))
            world.at(int(t_ms * NS_PER_MS), self._crash_leader, world, restart_ms)

    def _crash_leader(self, world: World, restart_ms: int) -> None:
        leader = self.current_leader
        if leader is not None and world.is_up(leader):
            world.crash(leader)
            world.after(restart_ms * NS_PER_MS, world.restart, leader)

    def _factory(self, run: Run, variant: str, voters: tuple[NodeId, ...]) -> Any:
        snapshot_every = int(run.params["snapshot_every"])
        window = int(run.params["window"])
        election_ns = int(run.params["election_ms"]) * NS_PER_MS
        accept_to = str(run.params["accept_to"])

        def build(boot: NodeBoot) -> Replica:
            config = PaxosConfig(node_id=boot.node_id, voters=voters, variant=variant,
                                 disk_lost=boot.lost_disk, snapshot_every=snapshot_every,
                                 log_keep=snapshot_every // 2, window=window,
                                 max_drift_ppm=LEASE_DRIFT_PPM,
                                 election_timeout_ns=election_ns, lease_ns=election_ns * 3 // 4,
                                 heartbeat_interval_ns=election_ns // 5,
                                 retry_ns=election_ns * 3 // 10, accept_to=accept_to)
            return Replica(config, KvStateMachine(), boot.rng, boot.disk, boot.now)

        return build

    def checkers(self) -> list[Checker]:
        self.history = HistoryRecorder()
        self.one_value = OneValuePerSlot()
        self.one_proposal = OneProposalPerBallot()
        self.prefix = AppliedPrefix()
        self.dupes = NoDuplicateApply()
        self.acked = NoAckedLost(self.one_value)
        self.linear = Linearizable(self.history)
        return [self.one_value, self.one_proposal, self.prefix, self.dupes, self.acked, self.linear]

    def _observe(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == NOTE_RESULT:
            res: CommandResult = note.data
            client = self._client(res.client_id)
            if client is not None and client.op is not None and res.seq == client.seq:
                if res.ok:
                    self.acked.acked[(res.client_id, res.seq)] = res.index
                client.on_answer(self.world, res.ok, res.value, res.leader_hint)
        elif note.kind == NOTE_READ:
            read: ReadResult = note.data
            client = self._client(read.client_id)
            if client is not None and client.op is not None and read.req_id == client.seq:
                client.on_answer(self.world, read.ok, read.value, read.leader_hint)
        elif note.kind == NOTE_APPLIED and note.data.voters is not None:
            self.members.update(note.data.voters)
        elif note.kind == NOTE_LEADER and note.data[0] == node_id:
            self.leader_ballots.add((int(note.data[1][0]), str(note.data[1][1])))
            self.current_leader = node_id

    def _client(self, client_id: str) -> Client | None:
        if client_id == PROBE_CLIENT:
            return self.probe
        return self.clients.get(client_id)

    def start_liveness(self, world: World, run: Run) -> None:
        super().start_liveness(world, run)
        self.probe_index = 0
        self.probe.start_next(world)

    def converged(self, world: World) -> bool:
        if self.probe.op is not None or self.probe.seq == 0:
            return False
        index = self.acked.acked.get((PROBE_CLIENT, self.probe.seq), 0)
        applied = self.prefix.applied_to
        return all(applied.get(n, 0) >= index for n in world.up_nodes() if n in self.members)

    def figures(self, world: World) -> dict[str, Any]:
        return {
            "committed": len(self.acked.acked),
            "acked_lost": len(self.acked.lost()),
            "duplicate_applies": self.dupes.duplicates,
            "linearizable": self.linear.verdict == "linearizable",
            "linearizability_verdict": self.linear.verdict,
            "leader_changes": len(self.leader_ballots),
            "slots_chosen": len(self.one_value.chosen),
            "operations_completed": self.completed,
            "messages_sent": world.stats["sent"],
            "crashes": world.stats["crashes"],
        }


def _kinds(spec: str) -> tuple[FaultKind, ...]:
    if spec == "all":
        return ALL_KINDS
    kinds = tuple(k for k in ALL_KINDS if k in spec.split(","))
    unknown = sorted(set(spec.split(",")) - set(kinds))
    if unknown:
        raise ValueError(f"unknown fault kinds {unknown}; known: {', '.join(ALL_KINDS)}")
    return kinds


def _without_lost_disks(plan: FaultPlan, *, keep: int) -> FaultPlan:
    """Keep the first ``keep`` disk-losing crashes of ``plan`` (each of one node only);
    the rest become plain crashes."""
    faults: list[Fault] = []
    kept = 0
    for fault in plan.faults:
        if fault.kind == "crash_lose_disk":
            if kept < keep:
                faults.append(Fault(at_ms=fault.at_ms, kind="crash_lose_disk",
                                    nodes=fault.nodes[:1], amount=fault.amount))
                fault = Fault(at_ms=fault.at_ms, kind="crash", nodes=fault.nodes[1:],
                              amount=fault.amount)
            else:
                fault = Fault(at_ms=fault.at_ms, kind="crash", nodes=fault.nodes,
                              amount=fault.amount)
            kept += 1
        if fault.nodes or fault.kind != "crash":
            faults.append(fault)
    return FaultPlan(tuple(faults))


def _with_restarts(plan: FaultPlan, restart_max_ms: int) -> FaultPlan:
    """Every crash is followed by a restart of the same nodes, at most ``restart_max_ms`` later."""
    faults = list(plan.faults)
    for fault in plan.faults:
        if fault.kind in ("crash", "crash_lose_disk") and fault.nodes:
            delay_ms = 1 + fault.amount * restart_max_ms // 2_000
            faults.append(Fault(at_ms=fault.at_ms + delay_ms, kind="restart",
                                nodes=fault.nodes, amount=0))
    return FaultPlan(tuple(sorted(faults, key=lambda f: f.at_ms)))
