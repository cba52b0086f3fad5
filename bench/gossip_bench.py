"""Gossip benchmarks in the simulator: detection, scale, accuracy under loss, Lifeguard.

Each experiment runs registered scenarios (simulator/scenarios/gossip.py) on
several seeds and prints one JSON line per run plus a summary line per
experiment; the figures in docs/benchmarks.md come from these lines.

    .venv/bin/python bench/gossip_bench.py detect      # mean first detection (periods)
    .venv/bin/python bench/gossip_bench.py big         # N=1000: all know of a crash (s)
    .venv/bin/python bench/gossip_bench.py loss        # false deaths at 5% loss, node-hours
    .venv/bin/python bench/gossip_bench.py flat        # msgs/node/period, N=10..1000
    .venv/bin/python bench/gossip_bench.py slow        # Lifeguard vs plain SWIM, slow node
    .venv/bin/python bench/gossip_bench.py join        # mass-join dissemination rounds

``--jobs`` runs seeds in parallel processes; ``--quick`` shrinks every
experiment for a smoke run. Large runs skip the codec and message tracing (the
scenarios' ``auto`` setting above 100 nodes).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator import run_scenario
from simulator.scenarios.gossip import percentile

Job = tuple[str, int, int, float, dict[str, Any]]


FAST = {"codec": "false", "trace": "false"}  # long runs: skip encoding and message tracing


def run_one(job: Job) -> dict[str, Any]:
    name, seed, nodes, duration_s, params = job
    started = time.perf_counter()
    result = run_scenario(name, seed=seed, nodes=nodes, duration_s=duration_s, params=params)
    out = result.to_json_dict()
    out["wall_s"] = round(time.perf_counter() - started, 1)
    out["params"] = params
    return out


def run_all(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    if workers <= 1:
        for job in jobs:
            results.append(_emit(run_one(job)))
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for out in pool.map(run_one, jobs):
            results.append(_emit(out))
    return results


def _emit(out: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(out), flush=True)
    return out


def summary(name: str, **figures: Any) -> None:
    print(json.dumps({"summary": name, **figures}), flush=True)


# ---------------------------------------------------------------------------
# Experiments
# ---------------------------------------------------------------------------


def detect(args: argparse.Namespace) -> None:
    """Mean protocol periods from a crash to its first suspicion (target <= 1.7)."""
    seeds = range(1, 3 if args.quick else 9)
    crashes = 4 if args.quick else 25
    jobs: list[Job] = [("gossip-crash", s, 50, 10 + crashes * 15.0,
                        {"crashes": crashes, "gap_s": 15.0}) for s in seeds]
    rows = run_all(jobs, args.jobs)
    firsts = [x for r in rows for x in r["detect_first_periods_each"]]
    alls = [x for r in rows for x in r["detect_all_seconds_each"]]
    summary("detect_first_periods_mean", nodes=50, crashes=len(firsts),
            value=round(sum(firsts) / len(firsts), 3), detect_all_p99=percentile(alls, 0.99),
            false_dead=sum(r["false_dead"] for r in rows),
            violations=sum(len(r["violations"]) for r in rows))


def big(args: argparse.Namespace) -> None:
    """N=1000, 1 s period: seconds until every live node holds a crashed node dead."""
    nodes = 200 if args.quick else 1000
    crashes = 3 if args.quick else 12
    seeds = [1] if args.quick else list(range(1, 1 + args.seeds))
    jobs: list[Job] = [("gossip-crash", s, nodes, 60 + crashes * 20.0,
                        {"crashes": crashes, "gap_s": 20.0, "warmup_s": 60.0,
                         "restart": False, "detect_bound_s": 15.0, "max_mult": args.max_mult,
                         **FAST}) for s in seeds]
    rows = run_all(jobs, args.jobs)
    each = [x for r in rows for x in r["detect_all_seconds_each"]]
    firsts = [x for r in rows for x in r["detect_first_periods_each"]]
    summary("detect_all_seconds", nodes=nodes, runs=len(rows), crashes=len(each),
            missed=sum(r["detections_missed"] for r in rows),
            p50=percentile(each, 0.5), p99=percentile(each, 0.99), max=max(each, default=None),
            first_periods_mean=round(sum(firsts) / len(firsts), 3) if firsts else None,
            false_dead=sum(r["false_dead"] for r in rows))


def loss(args: argparse.Namespace) -> None:
    """False deaths at 5% loss, summed over >= 1,000 simulated node-hours."""
    nodes, hours = (20, 0.5) if args.quick else (50, 2.5)
    seeds = range(1, 3 if args.quick else 9)
    jobs: list[Job] = [("gossip-loss", s, nodes, hours * 3600,
                        {"loss": args.loss, "max_mult": args.max_mult, **FAST})
                       for s in seeds if args.first_seed <= s < args.first_seed + args.max_seeds]
    rows = run_all(jobs, args.jobs)
    summary("loss", loss=args.loss, node_hours=round(sum(r["node_hours"] for r in rows), 1),
            false_dead=sum(r["false_dead"] for r in rows),
            false_suspect=sum(r["false_suspect"] for r in rows),
            msgs_per_node_per_period=[r["msgs_per_node_per_period"] for r in rows])


def flat(args: argparse.Namespace) -> None:
    """Messages per node per protocol period from N=10 to N=1000 (no loss)."""
    sizes = [10, 100] if args.quick else [10, 100, 1000]
    jobs: list[Job] = [("gossip-loss", 1, n, 150.0,
                        {"loss": 0.0, "warmup_s": 90.0, "push_pull_s": 30.0, **FAST})
                       for n in sizes]
    rows = run_all(jobs, args.jobs)
    values = {r["nodes"]: r["msgs_per_node_per_period"] for r in rows}
    spread = (max(values.values()) - min(values.values())) / min(values.values())
    summary("msgs_per_node_per_period", by_nodes=values, spread=round(spread, 4))


def slow(args: argparse.Namespace) -> None:
    """One node stalls now and then: false deaths with Lifeguard and with plain SWIM."""
    seeds = range(1, 3 if args.quick else 11)
    duration = 300.0 if args.quick else 1800.0
    jobs: list[Job] = [("gossip-slow-node", s, 16, duration,
                        {"lifeguard": lg, "max_mult": args.max_mult, **FAST})
                       for s in seeds for lg in (True, False)]
    rows = run_all(jobs, args.jobs)
    on = [r for r in rows if r["lifeguard"]]
    off = [r for r in rows if not r["lifeguard"]]
    summary("slow_node", runs_each=len(on), sim_s_each=duration,
            false_dead_lifeguard=sum(r["false_dead"] for r in on),
            false_dead_swim=sum(r["false_dead"] for r in off),
            episodes_lifeguard=sum(r["false_dead_episodes"] for r in on),
            episodes_swim=sum(r["false_dead_episodes"] for r in off),
            false_suspect_lifeguard=sum(r["false_suspect"] for r in on),
            false_suspect_swim=sum(r["false_suspect"] for r in off))


def join(args: argparse.Namespace) -> None:
    """A few nodes, then all the others join at once: periods until all know all."""
    sizes = [50] if args.quick else [100, 500]
    jobs: list[Job] = [("gossip-join", 1, n, 180.0, {"initial": 4, **FAST}) for n in sizes]
    rows = run_all(jobs, args.jobs)
    summary("join", by_nodes={r["nodes"]: {k: r[k] for k in (
        "dissemination_rounds_p50", "dissemination_rounds_p999", "dissemination_rounds_max",
        "pairs_unknown")} for r in rows})


EXPERIMENTS: dict[str, Callable[[argparse.Namespace], None]] = {
    "detect": detect, "big": big, "loss": loss, "flat": flat, "slow": slow, "join": join,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all"])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--max-mult", type=float, default=4.0,
                        help="suspicion_max_timeout_mult (big, loss)")
    parser.add_argument("--max-seeds", type=int, default=8, help="loss: at most this many seeds")
    parser.add_argument("--first-seed", type=int, default=1, help="loss: the first seed")
    args = parser.parse_args()
    print(json.dumps({"machine": platform.platform(), "python": platform.python_version(),
                      "processor": platform.processor() or platform.machine()}), flush=True)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    for name in names:
        EXPERIMENTS[name](args)


if __name__ == "__main__":
    main()
