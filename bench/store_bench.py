"""The SQLite durable store: sync latency and group commit, vs a bare fsync, same run.

    .venv/bin/python bench/store_bench.py [--dir DIR] [--syncs 500]

For each batch size (records staged before one ``sync``): p50/p99 of ``sync()``
and records made durable per second. Records are Paxos-like: key ("log", slot),
value [ballot, 200-byte payload, chosen]. Reference: append 200 bytes to a plain
file and ``os.fsync`` it, on the same directory.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from meshfaas.core.types import Write
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


def store_syncs(root: Path, n: int, batch: int) -> tuple[list[float], float]:
    store = SqliteStore(root / f"store-{batch}.db")
    samples = []
    slot = 0
    t_start = time.perf_counter()
    for _ in range(n):
        writes = []
        for _ in range(batch):
            slot += 1
            writes.append(Write(table="log", key=("log", slot), value=[[3, "n1"], PAYLOAD, True]))
        store.write(writes)
        t0 = time.perf_counter_ns()
        store.sync()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    rate = n * batch / (time.perf_counter() - t_start)
    store.close()
    return samples, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--syncs", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        print(f"{'':34} {'p50 us':>8} {'p99 us':>8} {'records/s':>10}")
        plain = bare_fsync(root, args.syncs)
        print(f"{'bare write+fsync, 200 B':34} {statistics.median(plain):8.0f} "
              f"{percentile(plain, 0.99):8.0f} {len(plain) / (sum(plain) / 1e6):10,.0f}")
        for batch in (1, 10, 100, 1000):
            samples, rate = store_syncs(root, args.syncs if batch < 1000 else args.syncs // 5,
                                        batch)
            print(f"{f'SqliteStore.sync, {batch} records':34} {statistics.median(samples):8.0f} "
                  f"{percentile(samples, 0.99):8.0f} {rate:10,.0f}")


if __name__ == "__main__":
    main()
