"""One closed-loop load generator for every replicated-log benchmark target.

A *target* (etcd, a meshfaas mesh) is anything that hands out client
connections with ``async put(key, value)``; a put returns once the write is
committed (acknowledged by the system), and raises on failure. The generator
runs ``clients`` concurrent tasks in one trio loop, each with its own
connection, each issuing its next put as soon as the previous one returns
(closed loop, no think time). After a warm-up, it counts the puts that complete
inside the measurement window and their latencies (call to acknowledgement).

Besides throughput and latency it measures the CPU spent per committed put by
this process (the client side: encoding, HTTP or ZeroMQ, the trio loop) and,
when the target names its server processes, by those, so client overheads of
different targets can be compared in the same table.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio


class KvConnection(Protocol):
    """One client connection to the system under test."""

    async def put(self, key: bytes, value: bytes) -> None:
        """Write ``value`` under ``key``; return when committed, raise on failure."""
        ...

    async def aclose(self) -> None: ...


class KvTarget(Protocol):
    """A running system under test (already started)."""

    name: str

    async def connect(self, client_index: int) -> KvConnection:
        """A new connection for client ``client_index`` (targets may spread clients)."""
        ...

    def server_pids(self) -> Sequence[int]:
        """The server processes whose CPU time to account, or () if unknown."""
        ...


@attrs.frozen(kw_only=True)
class LoadResult:
    target: str
    clients: int
    window_s: float
    committed: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_us_per_put: float
    server_cpu_us_per_put: float | None
    loadavg_1m: float
    """The machine's 1-minute load average at the end of the window (others' work too)."""

    @property
    def puts_per_s(self) -> float:
        return self.committed / self.window_s if self.window_s > 0 else 0.0


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending sequence (``q`` in [0, 100])."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(min(rank, len(sorted_values))) - 1]


def proc_cpu_s(pids: Sequence[int]) -> float | None:
    """User+system CPU seconds of ``pids`` from /proc, or None if unreadable."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    return total / ticks


def _self_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@attrs.define
class _Window:
    """Shared by the client tasks: the measurement window and what fell in it."""

    start_ns: int
    end_ns: int
    latencies_ns: list[int] = attrs.Factory(list)
    errors: int = 0
    last_error: str = ""


async def _client_loop(conn: KvConnection, index: int, window: _Window, value: bytes) -> None:
    seq = 0
    while True:
        key = b"bench/%d/%d" % (index, seq % 1024)
        seq += 1
        start = time.perf_counter_ns()
        if start >= window.end_ns:
            return
        try:
            await conn.put(key, value)
        except Exception as exc:  # the target's failure is a counted result
            window.errors += 1
            window.last_error = f"{type(exc).__name__}: {exc}"
            await trio.sleep(0.01)  # back off a failing target, do not spin
            continue
        end = time.perf_counter_ns()
        if window.start_ns <= end <= window.end_ns:
            window.latencies_ns.append(end - start)


async def run_load(
    target: KvTarget,
    clients: int,
    *,
    warmup_s: float,
    measure_s: float,
    value_bytes: int = 64,
) -> LoadResult:
    """Drive ``target`` with ``clients`` closed-loop clients; see the module docstring."""
    conns = [await target.connect(i) for i in range(clients)]
    value = os.urandom(value_bytes)
    now = time.perf_counter_ns()
    window = _Window(
        start_ns=now + int(warmup_s * 1e9), end_ns=now + int((warmup_s + measure_s) * 1e9)
    )
    cpu = await _measure_cpu(target, window, conns, value)
    for conn in conns:
        await conn.aclose()
    lat_ms = sorted(ns / 1e6 for ns in window.latencies_ns)
    committed = len(lat_ms)
    return LoadResult(
        target=target.name,
        clients=clients,
        window_s=measure_s,
        committed=committed,
        errors=window.errors,
        p50_ms=percentile(lat_ms, 50),
        p99_ms=percentile(lat_ms, 99),
        max_ms=lat_ms[-1] if lat_ms else float("nan"),
        client_cpu_us_per_put=cpu[0] * 1e6 / committed if committed else float("nan"),
        server_cpu_us_per_put=(
            cpu[1] * 1e6 / committed if committed and cpu[1] is not None else None
        ),
        loadavg_1m=os.getloadavg()[0],
    )


async def _measure_cpu(
    target: KvTarget, window: _Window, conns: Sequence[KvConnection], value: bytes
) -> tuple[float, float | None]:
    """Run the clients; return (client, server) CPU seconds spent inside the window."""
    pids = target.server_pids()
    marks: dict[str, tuple[float, float | None]] = {}

    async def sample(name: str, at_ns: int) -> None:
        await trio.sleep(max(0.0, (at_ns - time.perf_counter_ns()) / 1e9))
        marks[name] = (_self_cpu_s(), proc_cpu_s(pids))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample, "start", window.start_ns)
        nursery.start_soon(sample, "end", window.end_ns)
        for i, conn in enumerate(conns):
            nursery.start_soon(_client_loop, conn, i, window, value)
    (c0, s0), (c1, s1) = marks["start"], marks["end"]
    server = s1 - s0 if s0 is not None and s1 is not None else None
    return c1 - c0, server
