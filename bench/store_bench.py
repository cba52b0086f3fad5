"""The durable stores: sync latency, CPU and group commit, vs a bare fsync, same run.

    .venv/bin/python bench/store_bench.py [--dir DIR] [--syncs 500] [--gap-ms 1]

For each batch size (records staged before one ``sync``), the SQLite store
(:class:`SqliteStore`) and the journaled one the node uses
(:class:`JournaledStore`), sync by sync in turn: p50/p99 of ``sync()``, CPU per
sync (this thread's, so the kernel's work for the fsync counts) and records made
durable per second. Records are Paxos-like: key ("log", slot), value [ballot,
200-byte payload, chosen]. ``--gap-ms`` pauses between syncs, as a node's syncs
come between messages (a disk and CPU that idle between syncs are slower than
back to back). Reference: append 200 bytes to a plain file and ``os.fsync`` it,
on the same directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from meshfaas.core.types import Write
from meshfaas.runtime.journal import JournaledStore
from meshfaas.runtime.store import SqliteStore

PAYLOAD = b"p" * 200


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_fsync(root: Path, n: int) -> list[float]:
    samples = []
    fd = os.open(root / "plain.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            t0 = time.perf_counter_ns()
            os.write(fd, PAYLOAD)
            os.fsync(fd)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        os.close(fd)
    return samples


class Run:
    """One store's samples: sync latency (us) and CPU per sync (us)."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.samples: list[float] = []
        self.cpu_us = 0.0
        self.records = 0
        self.busy_s = 0.0

    def sync_batch(self, writes: list[Write]) -> None:
        self.store.write(writes)
        c0, t0 = time.thread_time(), time.perf_counter_ns()
        self.store.sync()
        took = time.perf_counter_ns() - t0
        self.cpu_us += (time.thread_time() - c0) * 1e6
        self.samples.append(took / 1000)
        self.busy_s += took / 1e9
        self.records += len(writes)


def store_syncs(root: Path, n: int, batch: int, gap_s: float) -> list[tuple[str, Run]]:
    sqlite_store = SqliteStore(root / f"sqlite-{batch}.db")
    journaled = JournaledStore(root / f"journaled-{batch}.db")
    journaled.load_checked()
    runs = [("SqliteStore", Run(sqlite_store)), ("JournaledStore", Run(journaled))]
    slot = 0
    for _ in range(n):
        writes = []
        for _ in range(batch):
            slot += 1
            writes.append(Write(table="log", key=("log", slot), value=[[3, "n1"], PAYLOAD, True]))
        for _name, run in runs:
            run.sync_batch(writes)
            time.sleep(gap_s)
    for _name, run in runs:
        run.store.close()
    return runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--syncs", type=int, default=500)
    parser.add_argument("--gap-ms", type=float, default=1.0, help="pause between syncs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"{'':34} {'p50 us':>8} {'p99 us':>8} {'CPU us':>8} {'records/s':>10}")
        plain = bare_fsync(root, args.syncs)
        print(f"{'bare write+fsync, 200 B':34} {statistics.median(plain):8.0f} "
              f"{percentile(plain, 0.99):8.0f} {'':>8} {len(plain) / (sum(plain) / 1e6):10,.0f}")
        for batch in (1, 10, 100, 1000):
            n = args.syncs if batch < 1000 else args.syncs // 5
            for name, run in store_syncs(root, n, batch, args.gap_ms / 1000):
                print(f"{f'{name}.sync, {batch} records':34} {statistics.median(run.samples):8.0f} "
                      f"{percentile(run.samples, 0.99):8.0f} {run.cpu_us / n:8.0f} "
                      f"{run.records / run.busy_s:10,.0f}")


if __name__ == "__main__":
    main()
