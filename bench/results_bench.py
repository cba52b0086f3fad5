"""Result store benchmarks: invocation throughput and node memory, and start-up time.

    .venv/bin/python bench/results_bench.py throughput [--window 15] [--total 100000]
    .venv/bin/python bench/results_bench.py start [--rows 2000000]
    .venv/bin/python bench/results_bench.py load-all [--rows 100000]

``throughput``: a 3-node mesh (real node processes, nsjail, 16 slots each)
driven by the lean load generator of bench/mesh_bench.py (1 process, 8
requests in flight per node) in windows of ``--window`` seconds until
``--total`` invocations are done; prints each window's rate, then every
node's resident memory (VmRSS) and the size of its data directory. It runs
whatever meshfaas PYTHONPATH names, so the same script A/B-tests two trees
(interleave the runs: the machine is shared).

``start``: a 1-node mesh is started, stopped, given ``--rows`` records in its
results.db, and started again; prints both start times (process start to its
endpoints line) and the time of one ``result()`` of the oldest record.

``load-all``: what loading every record at start costs (the design before
results.db: node.db's ``m.results`` loaded whole by ``SqliteStore.load_checked``),
per row, measured on ``--rows`` records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mesh"))

from _machine import describe
from mesh_bench import ECHO, pct, raw_load, start_mesh

from meshfaas.core import client_proto as proto


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def dir_mib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*.db*") if p.is_file()) / 2**20


def load_avg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def throughput(window_s: float, total: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp), capacities=(16, 16, 16))
        try:
            with mesh.client("n1") as client:
                client.deploy("echo", str(ECHO), handler="app.handler")
            done, rates = 0, []
            while done < total:
                rate, failed, lats = raw_load(mesh, procs=1, window=8, seconds=window_s)
                done += int(rate * window_s)
                rates.append(rate)
                print(f"  window {len(rates)}: {rate:,.0f} invocations/s ({failed} failed), "
                      f"p50 {pct(lats, 50):.2f} ms, p99 {pct(lats, 99):.2f} ms, {done:,} done, "
                      f"load {load_avg()}", flush=True)
            steady = rates[1:] or rates
            print(f"throughput: first window {rates[0]:,.0f}/s, later windows mean "
                  f"{sum(steady) / len(steady):,.0f}/s ({done:,} invocations)")
            for node in mesh.mesh.ids:
                pid = mesh.mesh.procs[node].pid
                print(f"  {node}: VmRSS {rss_mib(pid):.0f} MiB, store files "
                      f"{dir_mib(Path(tmp) / node):.1f} MiB")
        finally:
            mesh.stop()


def _timed_start(mesh: Any) -> float:
    started = time.perf_counter()
    mesh.mesh.start_node(0)
    return time.perf_counter() - started


def _fill(db: Path, rows: int) -> None:
    from meshfaas.runtime.results import ResultStore

    store = ResultStore(db, retention_s=3600.0, max_bytes=2**40, batch_delay_s=0.0)
    now = time.time_ns()
    chunk = 20_000
    for first in range(0, rows, chunk):
        store.put_many((f"n1~bench{i:08d}", (now - (rows - i) * 1000, proto.InvocationRecord(
            invocation_id=f"n1~bench{i:08d}", function="echo", status="succeeded", node="n1",
            duration_ns=1_200_000, billed_duration_ms=2, memory_mb=128, max_memory_used_mb=30,
            log_tail="START RequestId: x\nEND RequestId: x\n", payload=b"{}")))
            for i in range(first, min(rows, first + chunk)))
        store.flush(600)
    store.close()


def start(rows: int) -> None:
    from test_real_mesh import LocalMesh, wait_for

    with tempfile.TemporaryDirectory() as tmp:
        mesh = LocalMesh(Path(tmp), 1)
        try:
            mesh.start()
            mesh.stop()
            empty_s = _timed_start(mesh)
            mesh.stop()
            filled = time.perf_counter()
            _fill(Path(tmp) / "n1" / "results.db", rows)
            print(f"filled results.db with {rows:,} records in {time.perf_counter() - filled:.1f} s "
                  f"({dir_mib(Path(tmp) / 'n1'):.0f} MiB of store files)")
            full_s = _timed_start(mesh)
            with mesh.client("n1") as client:
                wait_for(lambda: client.list_functions() is not None, 60, "n1 to serve")
                read = time.perf_counter()
                found = client.result("n1~bench00000000")
                read_ms = (time.perf_counter() - read) * 1000
            assert found.invocation_id == "n1~bench00000000"
            print(f"node start (process start to endpoints line): {empty_s:.2f} s with an empty "
                  f"results.db, {full_s:.2f} s with {rows:,} records; reading the oldest record "
                  f"after the restart: {read_ms:.1f} ms; VmRSS "
                  f"{rss_mib(mesh.mesh.procs['n1'].pid):.0f} MiB")
        finally:
            mesh.stop()


def load_all(rows: int) -> None:
    from meshfaas.core.types import Write
    from meshfaas.runtime.store import SqliteStore

    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "node.db")
        now = time.time_ns()
        for first in range(0, rows, 20_000):
            store.write([Write(table="m.results", key=f"n1~{i:08d}", value=(now, proto.InvocationRecord(
                invocation_id=f"n1~{i:08d}", function="echo", status="succeeded", node="n1",
                payload=b"{}", log_tail="START\nEND\n"))) for i in range(first, min(rows, first + 20_000))])
            store.sync()
        started = time.perf_counter()
        loaded = store.load_checked()
        took = time.perf_counter() - started
        count = len(loaded.tables.get("m.results", {}))
        print(f"SqliteStore.load_checked of {count:,} result rows: {took:.2f} s, "
              f"{took / count * 1e6:.1f} us per row (7.2 M rows: ~{took / count * 7.2e6:.0f} s)")
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--window", type=float, default=15.0)
    t.add_argument("--total", type=int, default=100_000)
    s = sub.add_parser("start")
    s.add_argument("--rows", type=int, default=2_000_000)
    la = sub.add_parser("load-all")
    la.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    print(f"machine: {describe()}; load {load_avg()}", flush=True)
    if args.what == "throughput":
        throughput(args.window, args.total)
    elif args.what == "start":
        start(args.rows)
    else:
        load_all(args.rows)


if __name__ == "__main__":
    main()
