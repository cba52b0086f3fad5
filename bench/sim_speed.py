"""Simulator speed: events per second of the core loop, and of the shipped scenario.

    .venv/bin/python bench/sim_speed.py [--events 2000000] [--seeds 5]

The core-loop figure runs the bare event heap: 1,000 concurrent chains of
events, each event scheduling the next one a pseudo-random delay later, so the
heap stays 1,000 deep, as in a busy simulation. The scenario figure runs the
``broadcast`` scenario (5 nodes, every fault, every message through the
codec) and reports virtual seconds per wall second and events per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _machine import describe

from simulator import World, run_scenario


def core_loop(total_events: int, chains: int = 1_000) -> float:
    world = World(1)
    delays = [world.rng.randint(1_000, 1_000_000) for _ in range(4096)]
    count = [0]

    def step(i: int) -> None:
        count[0] += 1
        if count[0] < total_events:
            world.after(delays[(i + count[0]) & 4095], step, i)

    for i in range(chains):
        world.after(delays[i], step, i)
    start = time.perf_counter()
    world.run_until(10**18)
    elapsed = time.perf_counter() - start
    return world.events / elapsed


def scenario_speed(seeds: int) -> tuple[float, float]:
    vps, eps = [], []
    for seed in range(1, seeds + 1):
        start = time.perf_counter()
        result = run_scenario("broadcast", seed=seed)
        wall = time.perf_counter() - start
        vps.append(result.virtual_seconds / wall)
        eps.append(result.events / wall)
    return statistics.median(vps), statistics.median(eps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=2_000_000)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {describe()}")
    runs = [core_loop(args.events) for _ in range(3)]
    print(f"core loop: {statistics.median(runs):,.0f} events/s (median of 3 runs of {args.events:,})")
    vps, eps = scenario_speed(args.seeds)
    print(f"broadcast scenario: {vps:,.1f} virtual s per wall s, {eps:,.0f} events/s "
          f"(median of seeds 1..{args.seeds}, codec on)")


if __name__ == "__main__":
    main()
