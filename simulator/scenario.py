"""Scenarios: a workload, its faults, the properties that must hold, and figures.

Theory of operation
-------------------
:func:`run_scenario` runs one scenario on one seed in two phases, after
TigerBeetle's VOPR:

1. **Safety**: the scenario's workload and fault plan run for the requested
   duration. Checkers watch every notification and are polled periodically;
   a safety property must hold at every moment, faults or not.
2. **Liveness**: faults stop (partitions and clogs heal, loss, duplication and
   reordering go to zero, crashed nodes restart). The scenario's ``converged``
   predicate must then hold within ``liveness_bound_s`` of virtual time.

Each checker holds one property and returns violations as strings. The run's
result carries the trace hash (the SHA-256 of every trace line), the figures
and, on failure, the exact command that replays it.
"""

from __future__ import annotations

import random
import shlex
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import attrs

from meshfaas.core.codec import Codec
from meshfaas.core.types import NS_PER_MS, NS_PER_S, NodeId, Notification
from simulator.faults import FaultPlan
from simulator.world import NetworkConfig, World, derive_rng


class Checker:
    """One property. Override what you need; each check returns violation strings."""

    name: ClassVar[str] = "checker"

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        return None

    def check_during(self, world: World) -> list[str]:
        return []

    def check_final(self, world: World) -> list[str]:
        return []


@attrs.define(kw_only=True)
class Run:
    """What a scenario's ``setup`` gets: the run's parameters and its plan."""

    seed: int
    nodes: int
    duration_s: float
    params: dict[str, Any]
    plan: FaultPlan | None
    rng: random.Random

    @property
    def safety_end_ns(self) -> int:
        return int(self.duration_s * NS_PER_S)

    def node_ids(self) -> list[NodeId]:
        width = len(str(self.nodes))
        return [NodeId(f"n{i:0{width}d}") for i in range(1, self.nodes + 1)]


class Scenario:
    """Base class of a registered scenario."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    default_nodes: ClassVar[int] = 3
    default_duration_s: ClassVar[float] = 10.0
    liveness_bound_s: ClassVar[float] = 30.0
    check_interval_ms: ClassVar[int] = 100
    params: ClassVar[dict[str, Any]] = {}
    codec_cluster: ClassVar[str | None] = "sim"

    def network(self, run: Run) -> NetworkConfig:
        return NetworkConfig()

    def make_world(self, run: Run) -> World:
        codec = Codec(self.codec_cluster) if self.codec_cluster else None
        return World(run.seed, network=self.network(run), codec=codec)

    def setup(self, world: World, run: Run) -> None:
        raise NotImplementedError

    def checkers(self) -> list[Checker]:
        return []

    def start_liveness(self, world: World, run: Run) -> None:
        """Stop every fault: heal, quiet the network, restart crashed nodes."""
        world.heal()
        world.network.loss = world.network.duplicate = world.network.reorder = 0.0
        for node_id in world.node_ids():
            world.restart(node_id)

    def converged(self, world: World) -> bool:
        return True

    def figures(self, world: World) -> dict[str, Any]:
        return {}


_SCENARIOS: dict[str, type[Scenario]] = {}


def register_scenario(cls: type[Scenario]) -> type[Scenario]:
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no name")
    if cls.name in _SCENARIOS and _SCENARIOS[cls.name] is not cls:
        raise ValueError(f"scenario {cls.name!r} registered twice")
    _SCENARIOS[cls.name] = cls
    return cls


def scenarios() -> dict[str, type[Scenario]]:
    import simulator.scenarios  # noqa: F401  (registers the shipped scenarios)

    return dict(sorted(_SCENARIOS.items()))


def get_scenario(name: str) -> type[Scenario]:
    found = scenarios().get(name)
    if found is None:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(scenarios())}")
    return found


@attrs.frozen(kw_only=True)
class RunResult:
    scenario: str
    seed: int
    nodes: int
    duration_s: float
    virtual_seconds: float
    events: int
    trace_hash: str
    violations: tuple[str, ...]
    figures: Mapping[str, Any]
    replay: str

    def to_json_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scenario": self.scenario, "seed": self.seed, "nodes": self.nodes,
            "virtual_seconds": self.virtual_seconds, "events": self.events,
            "trace_hash": self.trace_hash, "violations": list(self.violations),
        }
        out.update(self.figures)
        out["replay"] = self.replay
        return out


def coerce_params(defaults: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``given`` (strings from the CLI, or typed values) into ``defaults``."""
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(defaults))}")
    out = dict(defaults)
    for key, value in given.items():
        out[key] = _coerce(defaults[key], value, key)
    return out


def _coerce(default: Any, value: Any, key: str) -> Any:
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        lowered = value.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"parameter {key}: expected true or false, got {value!r}")
    try:
        return type(default)(value) if default is not None else value
    except ValueError:
        raise ValueError(f"parameter {key}: expected {type(default).__name__}, got {value!r}") from None


def replay_command(name: str, seed: int, nodes: int, duration_s: float,
                   params: Mapping[str, Any], plan: FaultPlan | None) -> str:
    parts = ["meshfaas", "sim", "--scenario", name, "--seed", str(seed), "--nodes", str(nodes),
             "--duration", f"{duration_s:g}"]
    for key in sorted(params):
        value = params[key]
        text = str(value).lower() if isinstance(value, bool) else str(value)
        parts += ["-p", f"{key}={text}"]
    if plan is not None:
        parts += ["--plan", plan.to_json()]
    return shlex.join(parts)


def run_scenario(name: str, *, seed: int, nodes: int | None = None,
                 duration_s: float | None = None, params: Mapping[str, Any] | None = None,
                 plan: FaultPlan | None = None,
                 on_world: Callable[[World], None] | None = None) -> RunResult:
    """Run one scenario on one seed: the safety phase, then the liveness phase."""
    scenario = get_scenario(name)()
    given = dict(params or {})
    merged = coerce_params(scenario.params, given)
    run = Run(seed=seed, nodes=nodes or scenario.default_nodes,
              duration_s=scenario.default_duration_s if duration_s is None else duration_s,
              params=merged, plan=plan, rng=derive_rng(seed, "scenario", name))
    world = scenario.make_world(run)
    checkers = scenario.checkers()
    violations: list[str] = []
    _wire_checkers(world, checkers, violations, scenario.check_interval_ms)
    scenario.setup(world, run)
    if on_world is not None:
        on_world(world)
    world.run_until(run.safety_end_ns)
    scenario.start_liveness(world, run)
    _run_liveness(world, scenario, run, violations)
    for checker in checkers:
        violations.extend(f"{checker.name}: {v}" for v in checker.check_final(world))
    world.trace("end", len(violations))
    shown = {k: given[k] for k in given}
    return RunResult(
        scenario=name, seed=seed, nodes=run.nodes, duration_s=run.duration_s,
        virtual_seconds=round(world.time_ns / NS_PER_S, 6), events=world.events,
        trace_hash=world.trace_hash, violations=tuple(_dedupe(violations)),
        figures=scenario.figures(world),
        replay=replay_command(name, seed, run.nodes, run.duration_s, shown, plan),
    )


def _wire_checkers(world: World, checkers: list[Checker], violations: list[str],
                   interval_ms: int) -> None:
    for checker in checkers:
        world.observe(checker.on_notification)

    def poll() -> None:
        for checker in checkers:
            violations.extend(
                f"{checker.name} at {world.time_ns / NS_PER_S:.3f}s: {v}"
                for v in checker.check_during(world)
            )
        world.after(interval_ms * NS_PER_MS, poll)

    if checkers:
        world.after(interval_ms * NS_PER_MS, poll)


def _run_liveness(world: World, scenario: Scenario, run: Run, violations: list[str]) -> None:
    deadline = world.time_ns + int(scenario.liveness_bound_s * NS_PER_S)
    step = scenario.check_interval_ms * NS_PER_MS
    while not scenario.converged(world):
        if world.time_ns >= deadline:
            violations.append(
                f"liveness: not converged {scenario.liveness_bound_s:g}s after faults stopped"
            )
            return
        world.run_until(min(world.time_ns + step, deadline))


MAX_VIOLATIONS_SHOWN = 50


def _dedupe(items: list[str]) -> list[str]:
    """Distinct violations in order, at most ``MAX_VIOLATIONS_SHOWN`` and a count of the rest."""
    seen: set[str] = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    if len(out) > MAX_VIOLATIONS_SHOWN:
        extra = len(out) - MAX_VIOLATIONS_SHOWN
        out = [*out[:MAX_VIOLATIONS_SHOWN], f"... and {extra} more violation(s)"]
    return out
