"""Least-loaded (power of two choices) against random routing, under skewed load.

A model, not the real mesh: a discrete-event simulation drives the real
``meshfaas.core.router.pick`` / ``pick_random`` with stale load information.

* Nodes of unequal capacity (concurrent slots); a request that finds every
  slot of its node busy waits in that node's FIFO queue.
* One hot function takes ``--hot`` of the traffic, the rest is spread over 20
  others. A function is warm on a node for ``--keepalive`` seconds after it ran
  there; otherwise the run pays ``--cold-ms`` extra.
* Requests enter through 3 entry nodes in turn. Each entry routes on the last
  gossip snapshot of every node's load (refreshed every ``--gossip-ms``) plus
  the requests it has itself sent since, as the node does.
* Service times are exponential; arrivals are Poisson at ``--util`` of the
  total capacity. Both strategies see the same arrival sequence.

Usage: .venv/bin/python bench/router_skew.py [--requests 100000] [--seed 1]
"""

from __future__ import annotations

import argparse
import heapq
import random
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

from meshfaas.core.router import PeerView, RouteDecision, RouteRequest, pick, pick_random

PY = "python3.11"
CAPACITIES = {"n1": 2, "n2": 2, "n3": 4, "n4": 4, "n5": 8, "n6": 16}
QUEUE_FACTOR = 8  # the router's capacity: slots times this (a node queues up to it)


class Node:
    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self.busy = 0
        self.queue: deque[tuple[float, str]] = deque()
        self.last_run: dict[str, float] = {}

    @property
    def load(self) -> int:
        return self.busy + len(self.queue)

    def warm(self, now: float, keepalive: float) -> frozenset[str]:
        return frozenset(f for f, t in self.last_run.items() if now - t <= keepalive)


def workload(args: argparse.Namespace) -> list[tuple[float, str]]:
    rng = random.Random(args.seed)
    total_slots = sum(CAPACITIES.values())
    rate = args.util * total_slots / (args.service_ms / 1000)
    t, out = 0.0, []
    for _ in range(args.requests):
        t += rng.expovariate(rate)
        hot = rng.random() < args.hot
        out.append((t, "hot" if hot else f"f{rng.randrange(20)}"))
    return out


def simulate(args: argparse.Namespace, strategy: Callable[..., RouteDecision]) -> list[float]:
    rng = random.Random(args.seed + 1)
    service = random.Random(args.seed + 2)
    nodes = {n: Node(n, s) for n, s in CAPACITIES.items()}
    entries = [{n: 0 for n in nodes} for _ in range(3)]  # own sends since the snapshot
    snapshot = {n: 0 for n in nodes}
    next_gossip = 0.0
    events: list[tuple[float, int, str, Any]] = []
    seq = 0
    latencies: list[float] = []

    def start(node: Node, now: float, arrived: float, fn: str) -> None:
        nonlocal seq
        node.busy += 1
        cold = fn not in node.warm(now, args.keepalive)
        node.last_run[fn] = now
        took = service.expovariate(1000 / args.service_ms) + (args.cold_ms / 1000 if cold else 0)
        seq += 1
        heapq.heappush(events, (now + took, seq, "done", (node.name, arrived)))

    for i, (arrived, fn) in enumerate(workload(args)):
        while events and events[0][0] <= arrived:
            now, _, _, (name, t0) = heapq.heappop(events)
            node = nodes[name]
            node.busy -= 1
            latencies.append(now - t0)
            if node.queue:
                q_arrived, q_fn = node.queue.popleft()
                start(node, now, q_arrived, q_fn)
        if arrived >= next_gossip:
            snapshot = {n: nodes[n].load for n in nodes}
            for own in entries:
                own.update({n: 0 for n in nodes})
            next_gossip = arrived + args.gossip_ms / 1000
        own = entries[i % 3]
        peers = [PeerView(node=n, state="alive", runtimes=frozenset({PY}),
                          capacity=nodes[n].slots * QUEUE_FACTOR, load=snapshot[n] + own[n],
                          warm=nodes[n].warm(arrived, args.keepalive)) for n in sorted(nodes)]
        decision = strategy(peers, RouteRequest(function=fn, warm_key=fn, runtime=PY), rng)
        target = decision.node or rng.choice(sorted(nodes))  # all "full": pick any, it queues
        own[target] += 1
        node = nodes[target]
        if node.busy < node.slots:
            start(node, arrived, arrived, fn)
        else:
            node.queue.append((arrived, fn))
    while events:  # drain: every request's latency counts, including those still queued
        now, _, _, (name, t0) = heapq.heappop(events)
        node = nodes[name]
        node.busy -= 1
        latencies.append(now - t0)
        if node.queue:
            q_arrived, q_fn = node.queue.popleft()
            start(node, now, q_arrived, q_fn)
    return latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(x * 1000 for x in latencies)
    return (f"p50 {statistics.median(ms):8.1f} ms   p99 {ms[int(len(ms) * 0.99) - 1]:8.1f} ms   "
            f"max {ms[-1]:8.1f} ms   n={len(ms)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--util", type=float, default=0.7)
    parser.add_argument("--hot", type=float, default=0.8)
    parser.add_argument("--service-ms", type=float, default=10.0)
    parser.add_argument("--cold-ms", type=float, default=150.0)
    parser.add_argument("--keepalive", type=float, default=10.0)
    parser.add_argument("--gossip-ms", type=float, default=200.0)
    args = parser.parse_args()
    print(f"# model: capacities {CAPACITIES}, util {args.util}, hot share {args.hot}, "
          f"service {args.service_ms} ms, cold +{args.cold_ms} ms, gossip {args.gossip_ms} ms, "
          f"seed {args.seed}")
    print(f"two choices (router.pick)  {summary(simulate(args, pick))}")
    print(f"random (router.pick_random) {summary(simulate(args, pick_random))}")


if __name__ == "__main__":
    main()
