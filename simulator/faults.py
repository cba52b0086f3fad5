"""Fault plans: what goes wrong, and when, during a run's safety phase.

A :class:`FaultPlan` is a plain, JSON-serialisable list of :class:`Fault`
values ordered by time. Scenarios get one from :func:`random_plan` (seeded) or
from the Hypothesis strategy in :mod:`simulator.strategies`, which shrinks a
failing plan to a small one. A plan serialises to JSON so that the replay
command of a failure can carry it (``meshfaas sim ... --plan '<json>'``).

Every fault is applied through the :class:`~simulator.world.World` API, and a
fault that makes no sense at its moment (restarting a node that is up,
crashing one that is down) is a no-op rather than an error, so any plan is
valid for any run: that is what lets Hypothesis shrink freely.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Literal

import attrs

from meshfaas.core.types import NS_PER_MS, NodeId
from simulator.world import World

FaultKind = Literal[
    "crash", "crash_lose_disk", "restart", "partition", "isolate", "block",
    "heal", "clog", "stall", "loss", "duplicate", "reorder",
]
ALL_KINDS: tuple[FaultKind, ...] = (
    "crash", "crash_lose_disk", "restart", "partition", "isolate", "block",
    "heal", "clog", "stall", "loss", "duplicate", "reorder",
)
NETWORK_KINDS: tuple[FaultKind, ...] = (
    "partition", "isolate", "block", "heal", "clog", "loss", "duplicate", "reorder",
)


@attrs.frozen(kw_only=True)
class Fault:
    """One fault. ``nodes`` are indices into the run's sorted node list (mod its size).

    ``amount`` means: for partition, the size of the first group; for clog and
    stall, the duration in ms; for loss, duplicate and reorder, the probability
    in parts per thousand.
    """

    at_ms: int
    kind: FaultKind
    nodes: tuple[int, ...] = ()
    amount: int = 0


@attrs.frozen
class FaultPlan:
    faults: tuple[Fault, ...] = ()

    def to_json(self) -> str:
        return json.dumps([[f.at_ms, f.kind, list(f.nodes), f.amount] for f in self.faults],
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FaultPlan:
        rows = json.loads(text)
        faults = [Fault(at_ms=int(r[0]), kind=r[1], nodes=tuple(int(n) for n in r[2]),
                        amount=int(r[3])) for r in rows]
        for f in faults:
            if f.kind not in ALL_KINDS:
                raise ValueError(f"unknown fault kind {f.kind!r}")
        return cls(tuple(sorted(faults, key=lambda f: f.at_ms)))

    def schedule(self, world: World, node_ids: Sequence[NodeId], *, keep_up: int = 0) -> None:
        """Schedule every fault on ``world``; ``keep_up`` nodes are never crashed."""
        for fault in self.faults:
            world.at(fault.at_ms * NS_PER_MS, apply_fault, world, fault, list(node_ids), keep_up)


def _pick(node_ids: Sequence[NodeId], indices: tuple[int, ...]) -> list[NodeId]:
    picked: list[NodeId] = []
    for i in indices:
        n = node_ids[i % len(node_ids)]
        if n not in picked:
            picked.append(n)
    return picked


def apply_fault(world: World, fault: Fault, node_ids: list[NodeId], keep_up: int) -> None:
    """Apply one fault now. Faults that do not apply at this moment do nothing."""
    picked = _pick(node_ids, fault.nodes) if fault.nodes else []
    kind = fault.kind
    if kind in ("crash", "crash_lose_disk"):
        for n in picked:
            if world.is_up(n) and len(world.up_nodes()) > keep_up:
                world.crash(n, lose_disk=kind == "crash_lose_disk")
    elif kind == "restart":
        for n in picked:
            world.restart(n)
    elif kind in ("partition", "isolate"):
        _partition(world, node_ids, picked, fault)
    elif kind == "block" and len(picked) >= 2:
        world.block(picked[0], picked[1])
    elif kind == "heal":
        world.heal()
    elif kind == "clog" and len(picked) >= 2:
        world.clog(picked[0], picked[1], world.time_ns + fault.amount * NS_PER_MS,
                   extra_delay_ns=max(1, fault.amount // 4) * NS_PER_MS)
    elif kind == "stall" and picked:
        world.stall(picked[0], world.time_ns + fault.amount * NS_PER_MS)
    elif kind in ("loss", "duplicate", "reorder"):
        setattr(world.network, kind, min(fault.amount, 1000) / 1000)
        world.trace("net", kind, fault.amount)


def _partition(world: World, node_ids: list[NodeId], picked: list[NodeId], fault: Fault) -> None:
    if fault.kind == "isolate":
        group = picked[:1]
    else:
        size = max(1, min(fault.amount, len(node_ids) - 1))
        group = (picked + [n for n in node_ids if n not in picked])[:size]
    rest = [n for n in node_ids if n not in group]
    if group and rest:
        world.partition([group, rest])


def random_plan(rng: random.Random, n_nodes: int, duration_ms: int, *,
                kinds: Sequence[FaultKind] = ALL_KINDS, mean_gap_ms: int = 400,
                max_rate_permille: int = 200) -> FaultPlan:
    """A seeded plan: roughly one fault every ``mean_gap_ms`` until ``duration_ms``."""
    faults: list[Fault] = []
    t = 0
    while True:
        t += 1 + int(rng.expovariate(1.0 / mean_gap_ms))
        if t >= duration_ms or not kinds:
            break
        kind = kinds[rng.randrange(len(kinds))]
        nodes = tuple(rng.randrange(n_nodes) for _ in range(2))
        if kind in ("loss", "duplicate", "reorder"):
            amount = rng.randint(0, max_rate_permille)
        elif kind == "partition":
            amount = rng.randint(1, max(1, n_nodes - 1))
        else:
            amount = rng.randint(10, 2_000)
        faults.append(Fault(at_ms=t, kind=kind, nodes=nodes, amount=amount))
    return FaultPlan(tuple(faults))
