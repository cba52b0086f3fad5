"""Where a meshfaas commit's CPU goes: per node and per thread, per committed put.

Usage::

    .venv/bin/python bench/paxos_cpu.py --clients 1 --seconds 8
    .venv/bin/python bench/paxos_cpu.py --clients 256 --seconds 6

Starts the 3-node mesh of bench/_meshfaas.py, drives ``--clients`` closed-loop
clients (``update_config`` puts, spread round-robin over the nodes as in
bench/paxos_bench.py) for a 2 s warm-up and then ``--seconds``, and prints:
puts/s, p50 and p90 latency, Paxos slots used (from the status ``commit_index``)
and commands per slot, then for each node process the CPU time of each of its
threads (``/proc/PID/task/*/stat``) per committed put in microseconds: the
trio loop's thread (``python``), libzmq's I/O thread, and the worker threads
that run the store's fsyncs. With ``--idle S`` it first prints each node's CPU
per second over S idle seconds. To compare two trees, run it with
``PYTHONPATH=<tree>`` from each, alternately.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _meshfaas  # bench/ is on sys.path when this script runs
import trio

ThreadTimes = dict[int, dict[tuple[str, str], float]]


def thread_cpu_s(pid: int) -> dict[tuple[str, str], float]:
    """(thread id, name) -> user+system CPU seconds of every thread of ``pid``."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        out[(tid, name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def snapshot(pids: list[int]) -> ThreadTimes:
    return {pid: thread_cpu_s(pid) for pid in pids}


def print_per(before: ThreadTimes, after: ThreadTimes, divisor: float, names: list[str]) -> None:
    for pid, name in zip(after, names, strict=True):
        rows = []
        for key, cpu_s in after[pid].items():
            used = cpu_s - before[pid].get(key, 0.0)
            if used > 0:
                rows.append(f"{key[1]} {used * 1e6 / divisor:.0f}")
        print(f"  {name} (pid {pid}): " + ", ".join(sorted(rows, key=lambda r: r.split()[0])))


async def one_client(target: _meshfaas.MeshTarget, index: int, end: float,
                     latencies: list[float]) -> None:
    conn = await target.connect(index)
    i = 0
    while time.monotonic() < end:
        start = time.perf_counter()
        await conn.put(b"k%d" % (i % 1024), b"v" * 64)
        latencies.append(time.perf_counter() - start)
        i += 1
    await conn.aclose()


async def load(target: _meshfaas.MeshTarget, clients: int, seconds: float) -> list[float]:
    latencies: list[float] = []
    end = time.monotonic() + seconds
    async with trio.open_nursery() as nursery:
        for i in range(clients):
            nursery.start_soon(one_client, target, i, end, latencies)
    return sorted(latencies)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--idle", type=float, default=0.0, help="idle seconds measured first")
    args = p.parse_args()
    with _meshfaas.open_mesh() as target:
        pids = list(target.server_pids())
        names = list(target._mesh.mesh.ids)
        trio.run(load, target, args.clients, 2.0)
        if args.idle:
            before = snapshot(pids)
            time.sleep(args.idle)
            print("idle, CPU us per second:")
            print_per(before, snapshot(pids), args.idle, names)
        with target._mesh.client() as client:
            first_slot = client.status().commit_index
            before = snapshot(pids)
            lat = trio.run(load, target, args.clients, args.seconds)
            after = snapshot(pids)
            slots = client.status().commit_index - first_slot
            leader = client.status().leader
        n = len(lat)
        print(f"clients {args.clients}: {n / args.seconds:.0f} puts/s, p50 {lat[n // 2] * 1e3:.2f} ms,"
              f" p90 {lat[int(n * 0.9)] * 1e3:.2f} ms, {slots} slots, {n / max(slots, 1):.1f}"
              f" commands/slot, leader {leader}, load {os.getloadavg()[0]:.1f}")
        print("CPU us per put:")
        print_per(before, after, n, names)


if __name__ == "__main__":
    sys.exit(main())
