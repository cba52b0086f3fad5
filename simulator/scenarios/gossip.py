"""Gossip scenarios: SWIM + Lifeguard membership under crashes, loss, slowness, joins.

Theory of operation
-------------------
Every scenario builds N :class:`gossip.Gossip` cores that join through the
first node, and a :class:`MembershipLog` that watches every membership
notification. The log knows the truth (which nodes are up, and the incarnation
each one currently runs), so it can tell a real detection from a false one:

* a *false suspicion* / *false death* is a ``member_suspect`` /
  ``member_dead`` notification about a node that is up and still at the
  incarnation the notification names (an accusation of a previous life of a
  restarted node is not false);
* a crash is *detected first* at the earliest suspicion of the crashed node,
  and *detected by all* once every node that stayed up holds it dead.

Scenarios (figures in the sim JSON):

``gossip-crash``
    ``crashes`` nodes crash one after another (each restarts later).
    detect_first_periods_mean, detect_all_seconds_p99, false_dead.
``gossip-loss``
    ``loss`` = 0.05 or 0.15 message loss, nobody crashes. false_suspect,
    false_dead, msgs_per_node_per_period.
``gossip-slow-node``
    one node stalls its processing now and then; ``lifeguard`` = true|false.
    false_dead.
``gossip-join``
    a few nodes start, then all the others join at once.
    dissemination_rounds_p999 (protocol periods until each node knows each).

Checkers: accuracy (no false death while loss is at most 5% and nothing
stalls or partitions), completeness (a node down for ``detect_bound_s`` is
held dead by every node that was up all along) and, as the liveness
condition, convergence (every up node holds exactly the up nodes live).
Parameters ``codec`` (encode every message) and ``trace`` (hash every message
into the trace) default to on for small runs and off for large ones.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

from gossip import Gossip, GossipConfig, MemberEvent, NodeMeta
from meshfaas.core.codec import Codec
from meshfaas.core.types import NS_PER_MS, NS_PER_S, NodeId, Notification
from simulator.faults import FaultKind, random_plan
from simulator.scenario import Checker, Run, Scenario, register_scenario
from simulator.world import NetworkConfig, NodeBoot, World

LIVE = ("alive", "suspect")
BIG_RUN_NODES = 100


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by the nearest-rank method; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------------------
# What happened, against the truth
# ---------------------------------------------------------------------------


class MembershipLog(Checker):
    """Records membership notifications and judges them against the truth."""

    name: ClassVar[str] = "gossip-accuracy"

    def __init__(self) -> None:
        self.world: World | None = None
        self.strict = False  # false deaths are violations (a quiet network only)
        self.false_suspect = 0
        self.false_dead = 0
        self.false_dead_nodes: set[tuple[NodeId, int]] = set()
        self.first_suspect_ns: dict[tuple[NodeId, int], int] = {}
        self.dead_at_ns: dict[tuple[NodeId, int], dict[NodeId, int]] = {}
        self.known_at_ns: dict[tuple[NodeId, NodeId], int] = {}
        self._violations: list[str] = []

    def incarnation_of(self, node: NodeId) -> int | None:
        world = self.world
        if world is None or not world.is_up(node):
            return None
        core = world.core(node)
        return core.incarnation if isinstance(core, Gossip) else None

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        event = note.data
        if not isinstance(event, MemberEvent):
            return
        subject, inc = event.node_id, event.incarnation
        if note.kind == "member_joined":
            self.known_at_ns.setdefault((node_id, subject), time_ns)
        elif note.kind == "member_suspect":
            self.first_suspect_ns.setdefault((subject, inc), time_ns)
            if self.incarnation_of(subject) == inc:
                self.false_suspect += 1
        elif note.kind == "member_dead":
            self.dead_at_ns.setdefault((subject, inc), {}).setdefault(node_id, time_ns)
            if self.world is not None:
                self.world.trace("gossip-dead", node_id, subject, inc)
            if self.incarnation_of(subject) == inc:
                self._false_death(node_id, subject, inc, time_ns)

    def _false_death(self, observer: NodeId, subject: NodeId, inc: int, time_ns: int) -> None:
        self.false_dead += 1
        self.false_dead_nodes.add((subject, inc))
        if self.strict:
            self._violations.append(
                f"{observer} declared {subject} dead at incarnation {inc}, "
                f"but it is up at {time_ns / NS_PER_S:.3f}s")

    def check_during(self, world: World) -> list[str]:
        out, self._violations = self._violations, []
        return out


class Completeness(Checker):
    """A node down for ``bound_ns`` is held dead by every node up all along."""

    name: ClassVar[str] = "gossip-completeness"

    def __init__(self) -> None:
        self.bound_ns: int | None = None  # None: not checked
        self.down_since: dict[NodeId, tuple[int, int]] = {}  # node -> (time, its incarnation)
        self.up_since: dict[NodeId, int] = {}
        self.checked: set[tuple[NodeId, int]] = set()
        self.last_inc: dict[NodeId, int] = {}

    def check_during(self, world: World) -> list[str]:
        now = world.time_ns
        self._observe(world, now)
        out: list[str] = []
        if self.bound_ns is None:
            return out
        for node, (since, _inc) in sorted(self.down_since.items()):
            if now - since < self.bound_ns or (node, since) in self.checked:
                continue
            self.checked.add((node, since))
            for obs in world.up_nodes():
                if self.up_since.get(obs, now) > since:
                    continue
                state = world.core(obs).state_of(node)
                if state in LIVE:
                    out.append(f"{obs} still holds {node} {state} "
                               f"{(now - since) / NS_PER_S:.1f}s after it went down")
        return out

    def _observe(self, world: World, now: int) -> None:
        for node in world.node_ids():
            if world.is_up(node):
                self.down_since.pop(node, None)
                self.up_since.setdefault(node, now)
                self.last_inc[node] = world.core(node).incarnation
            elif node not in self.down_since:
                self.up_since.pop(node, None)
                self.down_since[node] = (now, self.last_inc.get(node, 0))


# ---------------------------------------------------------------------------
# The common base
# ---------------------------------------------------------------------------


class GossipScenario(Scenario):
    """N gossip nodes joining through the first; subclasses add their workload."""

    default_nodes: ClassVar[int] = 16
    default_duration_s: ClassVar[float] = 60.0
    liveness_bound_s: ClassVar[float] = 90.0
    check_interval_ms: ClassVar[int] = 250
    common_params: ClassVar[dict[str, Any]] = {
        "codec": "auto", "trace": "auto", "lifeguard": True, "period_ms": 1000,
        "push_pull_s": 10.0, "loss": 0.0, "faults": "none", "warmup_s": 10.0,
        "max_mult": 4.0,
    }
    strict_accuracy: ClassVar[bool] = True

    def __init__(self) -> None:
        self.log = MembershipLog()
        self.completeness = Completeness()
        self.run: Run | None = None
        self.sent_at_warm = 0
        self.warm_ns = 0

    # ----------------------------------------------------------- building

    def config(self, run: Run) -> GossipConfig:
        period_ns = int(run.params["period_ms"]) * NS_PER_MS
        return GossipConfig(probe_interval_ns=period_ns, probe_timeout_ns=period_ns // 5,
                            push_pull_interval_ns=int(float(run.params["push_pull_s"]) * NS_PER_S),
                            suspicion_max_timeout_mult=float(run.params["max_mult"]),
                            lifeguard=bool(run.params["lifeguard"]))

    def network(self, run: Run) -> NetworkConfig:
        return NetworkConfig(loss=float(run.params["loss"]))

    def make_world(self, run: Run) -> World:
        big = run.nodes > BIG_RUN_NODES
        codec = _flag(run.params["codec"], not big)
        trace = _flag(run.params["trace"], not big)
        return World(run.seed, network=self.network(run),
                     codec=Codec("sim") if codec else None, trace_messages=trace)

    def setup(self, world: World, run: Run) -> None:
        self.run = run
        strict = self.strict_accuracy and float(run.params["loss"]) <= 0.05
        faults = run.plan is not None or run.params["faults"] != "none"
        self.log.world, self.log.strict = world, strict and _quiet(run)
        self.configure_checkers(run, faults)
        ids = run.node_ids()
        for node in self.initial_nodes(run):
            world.add_node(node, self.factory(run, ids[0]))
        self.warm_ns = int(float(run.params["warmup_s"]) * NS_PER_S)
        world.at(self.warm_ns, self._mark_warm, world)
        if faults:
            self.schedule_faults(world, run)
        self.workload(world, run)

    def configure_checkers(self, run: Run, faults: bool) -> None:
        return None

    def initial_nodes(self, run: Run) -> list[NodeId]:
        return run.node_ids()

    def factory(self, run: Run, seed: NodeId) -> Any:
        config = self.config(run)

        def build(boot: NodeBoot) -> Gossip:
            meta = NodeMeta(peer_addr=f"sim://{boot.node_id}", runtimes=("python3.11",),
                            capacity=8)
            return Gossip(config, boot.node_id, boot.disk, boot.rng, boot.now,
                          seeds=[seed], meta=meta)

        return build

    def schedule_faults(self, world: World, run: Run) -> None:
        kinds: tuple[FaultKind, ...] = ("crash", "restart", "partition", "isolate", "heal",
                                        "loss", "clog", "stall")
        duration_ms = int(run.duration_s * 1000)
        plan = run.plan or random_plan(run.rng, run.nodes, duration_ms - self.warm_ns // NS_PER_MS,
                                       kinds=kinds, mean_gap_ms=3000, max_rate_permille=150)
        for fault in plan.faults:
            world.at(self.warm_ns + fault.at_ms * NS_PER_MS, _apply, world, fault, run.node_ids())

    def workload(self, world: World, run: Run) -> None:
        return None

    def _mark_warm(self, world: World) -> None:
        self.sent_at_warm = world.stats["sent"]

    def checkers(self) -> list[Checker]:
        return [self.log, self.completeness]

    # ----------------------------------------------------------- judging

    def converged(self, world: World) -> bool:
        up = world.up_nodes()
        down = [n for n in world.node_ids() if n not in set(up)]
        for node in up:
            core = world.core(node)
            if core.live_count() != len(up):
                return False
            if any(core.state_of(d) in LIVE for d in down):
                return False
        return True

    def period_s(self) -> float:
        assert self.run is not None
        return int(self.run.params["period_ms"]) / 1000

    def msgs_per_node_per_period(self, world: World, until_ns: int) -> float | None:
        assert self.run is not None
        periods = (until_ns - self.warm_ns) / NS_PER_S / self.period_s()
        if periods <= 0:
            return None
        return (world.stats["sent"] - self.sent_at_warm) / self.run.nodes / periods

    def base_figures(self, world: World) -> dict[str, Any]:
        assert self.log is not None and self.run is not None
        node_hours = self.run.nodes * self.run.duration_s / 3600
        return {
            "false_suspect": self.log.false_suspect,
            "false_dead": self.log.false_dead,
            "false_dead_episodes": len(self.log.false_dead_nodes),
            "node_hours": round(node_hours, 3),
            "lifeguard": bool(self.run.params["lifeguard"]),
        }

    def figures(self, world: World) -> dict[str, Any]:
        return self.base_figures(world)


QUIET_KINDS = ("crash", "restart")  # a lost disk restarts at a reused incarnation
QUIET_MAX_LOSS_PERMILLE = 50


def _quiet(run: Run) -> bool:
    """True when only crashes, restarts and at most 5% loss happen: accuracy must hold."""
    if run.plan is None:
        return bool(run.params["faults"] == "none")
    return all(f.kind in QUIET_KINDS or (f.kind == "loss" and f.amount <= QUIET_MAX_LOSS_PERMILLE)
               for f in run.plan.faults)


def _flag(value: Any, auto: bool) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).lower()
    return auto if text == "auto" else text in ("1", "true", "yes", "on")


def _apply(world: World, fault: Any, node_ids: list[NodeId]) -> None:
    from simulator.faults import apply_fault

    apply_fault(world, fault, node_ids, keep_up=max(2, len(node_ids) // 2 + 1))


# ---------------------------------------------------------------------------
# The scenarios
# ---------------------------------------------------------------------------


@register_scenario
class GossipCrash(GossipScenario):
    name: ClassVar[str] = "gossip-crash"
    description: ClassVar[str] = "nodes crash one after another; how fast does everyone know?"
    default_duration_s: ClassVar[float] = 60.0
    params: ClassVar[dict[str, Any]] = {
        **GossipScenario.common_params, "crashes": 3, "gap_s": 15.0, "detect_bound_s": 12.0,
        "restart": True,
    }

    def __init__(self) -> None:
        super().__init__()
        # (node, its incarnation, crash time, the other nodes up then)
        self.crashes: list[tuple[NodeId, int, int, tuple[NodeId, ...]]] = []

    def workload(self, world: World, run: Run) -> None:
        gap_ns = int(float(run.params["gap_s"]) * NS_PER_S)
        ids = run.node_ids()
        victims = run.rng.sample(ids[1:], min(int(run.params["crashes"]), len(ids) - 2))
        for i, victim in enumerate(victims):
            at = self.warm_ns + i * gap_ns + run.rng.randrange(NS_PER_S)
            world.at(at, self._crash, world, victim)
            if run.params["restart"]:
                world.at(at + gap_ns * 9 // 10, world.restart, victim)

    def _crash(self, world: World, victim: NodeId) -> None:
        if not world.is_up(victim):
            return
        witnesses = tuple(n for n in world.up_nodes() if n != victim)
        self.crashes.append((victim, world.core(victim).incarnation, world.time_ns, witnesses))
        world.crash(victim)

    def configure_checkers(self, run: Run, faults: bool) -> None:
        if not _quiet(run):
            return  # partitions, clogs, stalls and heavy loss make completeness unprovable
        self.completeness.bound_ns = int(float(run.params["detect_bound_s"]) * NS_PER_S)

    def figures(self, world: World) -> dict[str, Any]:
        assert self.log is not None
        first, all_s, missed = [], [], 0
        for victim, inc, t, witnesses in self.crashes:
            suspect = self.log.first_suspect_ns.get((victim, inc))
            if suspect is not None:
                first.append((suspect - t) / NS_PER_S / self.period_s())
            done = self._all_dead_ns(victim, inc, t, witnesses)
            if done is None:
                missed += 1
            else:
                all_s.append((done - t) / NS_PER_S)
        out = self.base_figures(world)
        out.update({
            "crashes": len(self.crashes), "detections_missed": missed,
            "detect_first_periods_mean": _round(sum(first) / len(first)) if first else None,
            "detect_all_seconds_p50": _round(percentile(all_s, 0.5)),
            "detect_all_seconds_p99": _round(percentile(all_s, 0.99)),
            "detect_all_seconds_max": _round(max(all_s)) if all_s else None,
            "detect_all_seconds_each": [_round(x) for x in all_s],
            "detect_first_periods_each": [_round(x) for x in first],
            "msgs_per_node_per_period": _round(self.msgs_per_node_per_period(world, world.time_ns)),
        })
        return out

    def _all_dead_ns(self, victim: NodeId, inc: int, t: int,
                     witnesses: tuple[NodeId, ...]) -> int | None:
        """When the last witness (up at the crash, and not crashed itself
        before declaring) declared the victim dead; None if one never did."""
        seen = self.log.dead_at_ns.get((victim, inc), {})
        later = {v: ct for v, _, ct, _ in self.crashes if ct > t}
        times = [seen.get(o) for o in witnesses if o not in later or o in seen]
        if any(x is None for x in times):
            return None
        return max((x for x in times if x is not None), default=None)


@register_scenario
class GossipLoss(GossipScenario):
    name: ClassVar[str] = "gossip-loss"
    description: ClassVar[str] = "message loss, nobody crashes: false suspicions and deaths"
    default_duration_s: ClassVar[float] = 120.0
    params: ClassVar[dict[str, Any]] = {**GossipScenario.common_params, "loss": 0.05}

    def network(self, run: Run) -> NetworkConfig:
        return NetworkConfig(loss=0.0)  # the loss starts after the warm-up

    def workload(self, world: World, run: Run) -> None:
        world.at(self.warm_ns, _set_loss, world, float(run.params["loss"]))

    def figures(self, world: World) -> dict[str, Any]:
        out = self.base_figures(world)
        assert self.run is not None
        out["loss"] = float(self.run.params["loss"])
        out["msgs_per_node_per_period"] = _round(
            self.msgs_per_node_per_period(world, self.run.safety_end_ns), 4)
        return out


def _set_loss(world: World, loss: float) -> None:
    world.network.loss = loss
    world.trace("net", "loss", loss)


@register_scenario
class GossipSlowNode(GossipScenario):
    name: ClassVar[str] = "gossip-slow-node"
    description: ClassVar[str] = "one node stalls its processing now and then; Lifeguard on/off"
    default_duration_s: ClassVar[float] = 300.0
    strict_accuracy: ClassVar[bool] = False
    params: ClassVar[dict[str, Any]] = {
        **GossipScenario.common_params, "stall_min_ms": 500, "stall_max_ms": 3000,
        "gap_min_ms": 2000, "gap_max_ms": 10000,
    }

    def workload(self, world: World, run: Run) -> None:
        slow = run.node_ids()[1]
        rng = random.Random(f"{run.seed}:slow")
        t = self.warm_ns
        while t < run.safety_end_ns:
            t += rng.randint(int(run.params["gap_min_ms"]), int(run.params["gap_max_ms"])) * NS_PER_MS
            stall = rng.randint(int(run.params["stall_min_ms"]), int(run.params["stall_max_ms"]))
            world.at(t, _stall, world, slow, stall * NS_PER_MS)
            t += stall * NS_PER_MS

    def figures(self, world: World) -> dict[str, Any]:
        out = self.base_figures(world)
        assert self.run is not None
        out["slow_node"] = self.run.node_ids()[1]
        return out


def _stall(world: World, node: NodeId, duration_ns: int) -> None:
    if world.is_up(node):
        world.stall(node, world.time_ns + duration_ns)


@register_scenario
class GossipJoin(GossipScenario):
    name: ClassVar[str] = "gossip-join"
    description: ClassVar[str] = "a few nodes start, then all the others join at once"
    default_duration_s: ClassVar[float] = 90.0
    params: ClassVar[dict[str, Any]] = {**GossipScenario.common_params, "initial": 4}

    def initial_nodes(self, run: Run) -> list[NodeId]:
        return run.node_ids()[: max(1, int(run.params["initial"]))]

    def workload(self, world: World, run: Run) -> None:
        ids = run.node_ids()
        build = self.factory(run, ids[0])
        for node in ids[len(self.initial_nodes(run)):]:
            world.at(self.warm_ns, world.add_node, node, build)

    def figures(self, world: World) -> dict[str, Any]:
        assert self.log is not None and self.run is not None
        ids = self.run.node_ids()
        joiners = set(ids[len(self.initial_nodes(self.run)):])
        rounds: list[float] = []
        unknown = 0
        for obs in ids:
            for subject in ids:
                if obs == subject or (obs not in joiners and subject not in joiners):
                    continue
                at = self.log.known_at_ns.get((obs, subject))
                if at is None:
                    unknown += 1
                    continue
                rounds.append(max(0, at - self.warm_ns) / NS_PER_S / self.period_s())
        out = self.base_figures(world)
        out.update({
            "joiners": len(joiners), "pairs_unknown": unknown,
            "dissemination_rounds_p50": _round(percentile(rounds, 0.5)),
            "dissemination_rounds_p999": _round(percentile(rounds, 0.999)),
            "dissemination_rounds_max": _round(max(rounds)) if rounds else None,
        })
        return out
