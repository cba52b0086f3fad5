"""Committed writes per second and latency: meshfaas's Paxos log beside etcd 3.4.

Usage::

    .venv/bin/pip install -e '.[bench]'      # grpcio, h11, httpx: the etcd clients
    .venv/bin/python bench/paxos_bench.py                      # etcd, then meshfaas
    .venv/bin/python bench/paxos_bench.py --target etcd --clients 1,16,256 --seconds 10

Each target is started fresh (three members on loopback, fsync on, temporary
data directories), driven by the same closed-loop load generator
(``bench/_loadgen.py``) at each client count, and stopped and cleaned up on
exit, Ctrl-C or SIGTERM included. etcd is installed from Debian's etcd-server
and etcd-client packages when missing (apt-get, as root). The meshfaas target
is a hook (``bench/_meshfaas.py``) until the node process exists; it prints
why it is unavailable rather than any figure.

Clients are spread round-robin over the three members starting at the leader
(``--first leader``, the default, for both targets): a lone client then
measures a commit at the leader, as etcd's own benchmark does with its
"leader" rows; ``--first n1`` starts at the first member started, where a lone
client's writes are forwarded to the leader whenever another member won the
first election (two hops more).

Reported per run: committed puts/s in the window, p50/p99/max latency (call to
acknowledgement), errors, CPU microseconds per committed put spent by the load
generator (client) and by the target's processes (server), and the machine's
1-minute load average (other work on a shared machine shows up there).
``--check-perf`` also runs ``etcdctl check perf`` (etcd's Go client) against the
same cluster, as a reference free of Python client overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import _meshfaas  # bench/ is on sys.path when this script runs
import attrs
import trio
from _loadgen import KvTarget, LoadResult, proc_cpu_s, run_load

try:
    import _etcd
except ImportError as exc:  # the bench extra is not installed
    sys.exit(f"{exc}: run .venv/bin/pip install -e '.[bench]' first")

ETCD_CLIENTS = {
    "grpc": "grpcio, KV.Put over etcd's native gRPC, one channel per client",
    "h11": "h11 over HTTP/1.1 keep-alive to the v3 JSON gateway (POST /v3/kv/put)",
    "httpx": "httpx over HTTP/1.1 keep-alive to the v3 JSON gateway (POST /v3/kv/put)",
}


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, kernel and Python of this machine."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    model = re.search(r"^Model name:\s*(.+)$", lscpu, re.M)
    mem_kib = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M)
    return {
        "cpu": model.group(1).strip() if model else platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(mem_kib.group(1)) / 2**20, 1) if mem_kib else None,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def print_table(results: list[LoadResult]) -> None:
    print(
        f"{'target':<9} {'clients':>7} {'puts/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>6} {'client us/put':>13} {'server us/put':>13} {'load':>5}"
    )
    for r in results:
        server = f"{r.server_cpu_us_per_put:.0f}" if r.server_cpu_us_per_put is not None else "-"
        print(
            f"{r.target:<9} {r.clients:>7} {r.puts_per_s:>9.0f} {r.p50_ms:>8.2f} "
            f"{r.p99_ms:>8.2f} {r.max_ms:>8.1f} {r.errors:>6} "
            f"{r.client_cpu_us_per_put:>13.0f} {server:>13} {r.loadavg_1m:>5.1f}"
        )


async def drive(
    target: KvTarget, clients: list[int], warmup_s: float, measure_s: float
) -> list[LoadResult]:
    results = []
    for n in clients:
        result = await run_load(target, n, warmup_s=warmup_s, measure_s=measure_s)
        print_table([result])
        results.append(result)
    return results


def bench_etcd(args: argparse.Namespace, report: dict[str, Any]) -> list[LoadResult]:
    binary = _etcd.ensure_installed()
    report["etcd_version"] = _etcd.etcd_version(binary)
    print(f"etcd: {report['etcd_version']} ({binary}), 3 members on loopback")
    print(f"client: {ETCD_CLIENTS[args.etcd_client]}")
    report["etcd_client"] = ETCD_CLIENTS[args.etcd_client]
    with _etcd.EtcdCluster(binary, client=args.etcd_client) as cluster:
        if args.first == "leader":
            cluster.place_from_leader()
        print(f"etcd: client 0 talks to member m{cluster.first}"
              f"{' (the leader)' if args.first == 'leader' else ''}")
        results = trio.run(drive, cluster, args.clients, args.warmup, args.seconds)
        if args.check_perf:
            report["etcdctl_check_perf"] = run_check_perf(binary, cluster)
    return results


def run_check_perf(binary: str, cluster: _etcd.EtcdCluster) -> dict[str, Any]:
    """``etcdctl check perf --load=l`` on the cluster, with server and client CPU per write."""
    print("etcdctl check perf --load=l (etcd's own Go gRPC client, 60 s):")
    server0, child0 = proc_cpu_s(cluster.server_pids()), _children_cpu_s()
    out = _etcd.check_perf(str(Path(binary).parent), cluster.client_urls)
    server1, child1 = proc_cpu_s(cluster.server_pids()), _children_cpu_s()
    print(out)
    rate = re.search(r"(\d+) writes/s", out)
    result: dict[str, Any] = {"output": out, "loadavg_1m": os.getloadavg()[0]}
    if rate and server0 is not None and server1 is not None:
        writes = int(rate.group(1)) * 60  # check perf runs for 60 s
        result["writes_per_s"] = int(rate.group(1))
        result["server_cpu_us_per_write"] = (server1 - server0) * 1e6 / writes
        result["client_cpu_us_per_write"] = (child1 - child0) * 1e6 / writes
        print(
            f"  about {result['server_cpu_us_per_write']:.0f} us server CPU and "
            f"{result['client_cpu_us_per_write']:.0f} us etcdctl CPU per write; "
            f"load {result['loadavg_1m']:.1f}"
        )
    return result


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def bench_meshfaas(args: argparse.Namespace, report: dict[str, Any]) -> list[LoadResult]:
    reason = _meshfaas.unavailable_reason()
    if reason is not None:
        print(f"meshfaas target is not available yet: {reason}")
        report["meshfaas_unavailable"] = reason
        return []
    with _meshfaas.open_mesh() as mesh:
        if args.first == "leader":
            mesh.place_from_leader()
        report["meshfaas_leader"] = leader = mesh.leader()
        print(f"meshfaas: the Paxos leader is {leader}; client 0 talks to "
              f"{mesh._mesh.mesh.ids[mesh.first]}")
        results: list[LoadResult] = trio.run(drive, mesh, args.clients, args.warmup, args.seconds)
        return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("etcd", "meshfaas", "both"), default="both")
    p.add_argument(
        "--clients",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 16, 256],
        help="comma-separated client counts (default 1,16,256)",
    )
    p.add_argument("--first", choices=("leader", "n1"), default="leader",
                   help="client i talks to the i-th node after the leader (default), or "
                        "after the first node started (then a lone client's writes may be "
                        "forwarded by a follower)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window")
    p.add_argument(
        "--etcd-client",
        choices=sorted(ETCD_CLIENTS),
        default="grpc",
        help="how the load generator talks to etcd (default grpc: etcd's native protocol)",
    )
    p.add_argument("--check-perf", action="store_true", help="also run etcdctl check perf")
    p.add_argument("--json", type=Path, help="write the report here")
    return p.parse_args(argv)


def _term_as_interrupt(signum: int, frame: object) -> None:
    """SIGTERM cleans up exactly like Ctrl-C (re-sent as SIGINT, which trio handles safely)."""
    signal.raise_signal(signal.SIGINT)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _term_as_interrupt)
    report: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"json": None}}
    print("machine:", json.dumps(report["machine"]))
    results: list[LoadResult] = []
    interrupted = False
    try:
        if args.target in ("etcd", "both"):
            results += bench_etcd(args, report)
        if args.target in ("meshfaas", "both"):
            results += bench_meshfaas(args, report)
    except* KeyboardInterrupt:  # trio may wrap it in an exception group
        interrupted = True
    if interrupted:
        print("interrupted: the target's processes were stopped and its files removed")
        return 130
    print()
    print_table(results)
    report["results"] = [attrs.asdict(r) | {"puts_per_s": r.puts_per_s} for r in results]
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if results or args.target != "meshfaas" else 2


if __name__ == "__main__":
    sys.exit(main())
