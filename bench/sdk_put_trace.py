"""Where one client's put spends its time in the SDK, against a real 3-node mesh.

Usage::

    PYTHONPATH=<tree> .venv/bin/python bench/sdk_put_trace.py [--seconds 6]

Starts the mesh of bench/_meshfaas.py and runs one closed-loop client of
``update_config`` puts (bench/paxos_cpu.py --clients 1), with timestamps
(``perf_counter_ns``) taken by thin wrappers around the SDK's request encoding,
the socket send, the wait on the socket's FD and the reply's decoding. Prints the
median of each segment of a put, in microseconds, and the median put minus its
wait (the client's own time on the latency path, wrapper costs included). Run
it from two trees alternately to compare them: only the SDK's code differs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _meshfaas
import trio
import zmq

from meshfaas import client as sdk

STAMPS: dict[str, int] = {}
KEYS = ["put0", "req0", "req1", "send0", "send1", "wait0", "wait1", "dec0", "dec1", "put1"]


def _stamped(fn: Any, before: str, after: str) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        STAMPS[before] = time.perf_counter_ns()
        try:
            return fn(*args, **kwargs)
        finally:
            STAMPS[after] = time.perf_counter_ns()

    return wrapper


def instrument() -> None:
    sdk._Endpoints.request = _stamped(sdk._Endpoints.request, "req0", "req1")  # type: ignore[method-assign]
    sdk._decode_response = _stamped(sdk._decode_response, "dec0", "dec1")
    zmq.Socket.send = _stamped(zmq.Socket.send, "send0", "send1")  # type: ignore[method-assign]
    wait_readable = trio.lowlevel.wait_readable

    async def stamped_wait(fd: int) -> None:
        STAMPS["wait0"] = time.perf_counter_ns()
        try:
            await wait_readable(fd)
        finally:
            STAMPS["wait1"] = time.perf_counter_ns()

    sdk.trio.lowlevel.wait_readable = stamped_wait  # type: ignore[attr-defined]


async def load(target: _meshfaas.MeshTarget, seconds: float, rows: list[dict[str, int]]) -> None:
    conn = await target.connect(0)
    end = time.monotonic() + seconds
    i = 0
    while time.monotonic() < end:
        STAMPS.clear()
        STAMPS["put0"] = time.perf_counter_ns()
        await conn.put(b"k%d" % (i % 1024), b"v" * 64)
        STAMPS["put1"] = time.perf_counter_ns()
        if len(STAMPS) == len(KEYS):  # one wait, one frame read: the usual put
            rows.append(dict(STAMPS))
        i += 1
    await conn.aclose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=6.0)
    args = p.parse_args()
    instrument()
    rows: list[dict[str, int]] = []
    with _meshfaas.open_mesh() as target:
        trio.run(load, target, 2.0, [])
        trio.run(load, target, args.seconds, rows)
    if not rows:
        sys.exit("no put with exactly one wait")

    def median_us(a: str, b: str) -> float:
        return statistics.median(r[b] - r[a] for r in rows) / 1e3

    print(f"{len(rows)} puts, load average {os.getloadavg()[0]:.1f}, "
          f"put p50 {median_us('put0', 'put1'):.0f} us")
    for a, b in itertools.pairwise(KEYS):
        print(f"  {a} -> {b}: {median_us(a, b):7.1f} us")
    own = statistics.median((r["put1"] - r["put0"]) - (r["wait1"] - r["wait0"]) for r in rows)
    print(f"  put minus its wait: {own / 1e3:.1f} us")


if __name__ == "__main__":
    main()
