"""Mesh benchmarks: warm invocation latency, throughput, and routing under skew.

    .venv/bin/python bench/mesh_bench.py [--quick]

1. Latency: a bare pyzmq REQ/REP round trip (two threads, one process) as the
   reference; then a warm invocation of a trivial handler through the SDK on
   loopback, on a mesh of capacities 16, 16 and 0: through n1, which runs it
   itself, and through n3, a gateway that forwards every invocation once.
2. Throughput: several client processes, each with concurrent trio SDK
   clients, invoke the trivial handler on a 3-node mesh for a fixed time; then
   the same mesh driven by a lean generator (raw DEALER sockets, the same
   client protocol, every answer decoded and checked), because on one 2-core
   machine the load generator's own CPU is taken from the mesh.
3. Skew: one hot function that waits 20 ms per call (so node capacity, not
   the two shared cores, is the limit), nodes of unequal capacity (2, 4, 8),
   12 concurrent callers: p50/p99 latency with least-loaded routing against
   random routing, both measured in this run. (Until session 3 the hot function
   was the trivial one: then the CPU, shared by all three nodes, was the limit
   and the routing policy hardly mattered.)

Every mesh here runs real node processes with nsjail sandboxes.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "mesh"))

from _machine import describe

from meshfaas.core import client_proto as proto

ECHO = Path(__file__).resolve().parent / "handlers" / "echo"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def bare_zmq_roundtrip(n: int) -> list[float]:
    ctx = zmq.Context.instance()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        for _ in range(n):
            rep.send(rep.recv())

    t = threading.Thread(target=serve)
    t.start()
    req = ctx.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{port}")
    out = []
    for _ in range(n):
        start = time.perf_counter()
        req.send(b"x" * 64)
        req.recv()
        out.append((time.perf_counter() - start) * 1e6)
    t.join()
    req.close(0)
    rep.close(0)
    return out


def start_mesh(root: Path, **kwargs: Any) -> Any:
    from test_real_mesh import LocalMesh

    mesh = LocalMesh(root, 3)
    for key, value in kwargs.items():
        setattr(mesh.mesh, key, value)
    mesh.start()
    return mesh


def invoke_detail(client: Any, name: str, payload: bytes) -> proto.InvokeResult:
    result: proto.InvokeResult = client._run(client._simple(proto.Invoke(name=name, payload=payload)))
    return result


def latency(mesh: Any, n: int) -> dict[str, list[float]]:
    """Warm invocations, one at a time: through n1, which runs them itself (the
    router keeps an invocation on its entry node when that is not busier), and
    through n3, a gateway (capacity 0) that must forward every one once."""
    out: dict[str, list[float]] = {"local": [], "forwarded": []}
    with mesh.client("n1") as client:
        client.deploy("echo", str(ECHO), handler="app.handler")
    for entry in ("n1", "n3"):
        with mesh.client(entry) as client:
            for _ in range(100):
                invoke_detail(client, "echo", b"{}")
            for _ in range(n):
                start = time.perf_counter()
                result = invoke_detail(client, "echo", b"{}")
                us = (time.perf_counter() - start) * 1e6
                out["local" if result.node == entry else "forwarded"].append(us)
    return out


def _client_proc(endpoints: list[str], key: str, server_key: str, conc: int, seconds: float,
                 queue: Any, payload: Any = None) -> None:
    import trio

    from meshfaas.client import AsyncClient, MeshfaasError

    async def worker(i: int, counts: list[int], lats: list[float], deadline: float) -> None:
        eps = endpoints[i % len(endpoints):] + endpoints[: i % len(endpoints)]
        async with AsyncClient(eps, key, server_public_key=server_key) as c:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                try:
                    await c.invoke("echo", payload or {})
                except MeshfaasError:
                    counts[1] += 1
                    continue
                counts[0] += 1
                lats.append((time.perf_counter() - start) * 1e3)

    async def main() -> None:
        counts, lats = [0, 0], []
        deadline = time.monotonic() + seconds
        async with trio.open_nursery() as nursery:
            for i in range(conc):
                nursery.start_soon(worker, i, counts, lats, deadline)
        queue.put((counts[0], counts[1], lats))

    trio.run(main)


def _raw_proc(endpoints: list[str], key: str, server_key: str, window: int, seconds: float,
              queue: Any) -> None:
    """A lean load generator: one DEALER per node, ``window`` requests in flight on
    each, requests encoded by the client protocol and every answer decoded and
    checked, but no SDK (no failover, liveness watch or trio)."""
    ctx: zmq.Context[Any] = zmq.Context()
    public, secret = zmq.curve_keypair()
    socks = []
    for endpoint in endpoints:
        sock = ctx.socket(zmq.DEALER)
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            server_key.encode(), public, secret)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint)
        socks.append(sock)
    poller = zmq.Poller()
    for sock in socks:
        poller.register(sock, zmq.POLLIN)
    sent_at: dict[str, float] = {}
    counter = iter(range(1 << 62))
    prefix = os.urandom(4).hex()

    def send(sock: zmq.Socket[Any]) -> None:
        rid = f"{prefix}{next(counter)}"
        sock.send(proto.encode(proto.ClientRequest(
            request_id=rid, api_key=key, body=proto.Invoke(name="echo", payload=b"{}"))))
        sent_at[rid] = time.perf_counter()

    done, failed, lats = 0, 0, []
    for sock in socks:
        for _ in range(window):
            send(sock)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for sock, _ in poller.poll(1000):
            response = proto.decode_response(sock.recv())
            start = sent_at.pop(response.request_id, None)
            if response.ok and start is not None:
                done += 1
                lats.append((time.perf_counter() - start) * 1e3)
            else:
                failed += 1
            send(sock)
    queue.put((done, failed, lats))
    ctx.destroy(linger=0)


def raw_load(mesh: Any, procs: int, window: int, seconds: float) -> tuple[float, int, list[float]]:
    return _run_procs(mesh, _raw_proc, window, procs, seconds)


def load(mesh: Any, procs: int, conc: int, seconds: float,
         payload: Any = None) -> tuple[float, int, list[float]]:
    return _run_procs(mesh, _client_proc, conc, procs, seconds, (payload,))


def _run_procs(mesh: Any, target: Any, width: int, procs: int,
               seconds: float, extra: tuple[Any, ...] = ()) -> tuple[float, int, list[float]]:
    """Run ``procs`` load-generator processes for ``seconds``: rate, failures, latencies."""
    endpoints = mesh.mesh.endpoints()
    server_key = mesh.mesh.info["n1"]["public_key"]
    queue: Any = mp.Queue()
    workers = [mp.Process(target=target, args=(endpoints, mesh.api_key, server_key, width,
                                               seconds, queue, *extra)) for _ in range(procs)]
    return _collect(workers, queue, seconds)


def _collect(workers: list[Any], queue: Any, seconds: float) -> tuple[float, int, list[float]]:
    for w in workers:
        w.start()
    done, failed, lats = 0, 0, []
    for _ in workers:
        d, f, lat = queue.get(timeout=seconds + 120)
        done, failed = done + d, failed + f
        lats.extend(lat)
    for w in workers:
        w.join(30)
    return done / seconds, failed, lats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n = 300 if args.quick else 2000
    seconds = 5.0 if args.quick else 15.0
    print(f"machine: {describe()}")
    bare = bare_zmq_roundtrip(n)
    print(f"bare pyzmq REQ/REP round trip: p50 {pct(bare, 50):.0f} us, p99 {pct(bare, 99):.0f} us")
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp), capacities=(16, 16, 0))
        try:
            lat = latency(mesh, n)
        finally:
            mesh.stop()
    for kind, values in lat.items():
        if values:
            print(f"warm invoke via SDK, {kind}: p50 {pct(values, 50) / 1000:.2f} ms, "
                  f"p99 {pct(values, 99) / 1000:.2f} ms ({len(values)} calls)")
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp), capacities=(16, 16, 16))
        try:
            with mesh.client("n1") as client:
                client.deploy("echo", str(ECHO), handler="app.handler")
            rate, failed, _ = load(mesh, procs=2, conc=16, seconds=seconds)
            print(f"throughput, 3-node mesh (16 slots each), 2 client processes x 16 SDK "
                  f"clients: {rate:,.0f} invocations/s ({failed} failed)")
            rate, failed, lats = raw_load(mesh, procs=1, window=8, seconds=seconds)
            print(f"throughput, same mesh, 1 lean load-generator process (8 in flight per "
                  f"node): {rate:,.0f} invocations/s ({failed} failed), p50 "
                  f"{pct(lats, 50):.2f} ms, p99 {pct(lats, 99):.2f} ms")
        finally:
            mesh.stop()
    for routing in ("least-loaded", "random"):
        skew(routing, seconds)


SKEW_SLEEP_MS = 20


def skew(routing: str, seconds: float) -> None:
    """One hot function that spends ``SKEW_SLEEP_MS`` waiting (so a node's capacity,
    its concurrent slots, is what limits it, not the shared CPU), nodes of
    capacity 2, 4 and 8, and 12 callers: 86% of the slots. Routing that ignores
    load sends a third of the calls to the 2-slot node, which refuses what it
    cannot take, and the refused calls go round again."""
    with tempfile.TemporaryDirectory() as tmp:
        mesh = start_mesh(Path(tmp), capacities=(2, 4, 8),
                          extra_args=("--async-retry-delay", "1", "--routing", routing))
        try:
            with mesh.client() as c:
                c.deploy("echo", str(ECHO), handler="app.handler")
            rate, failed, lats = load(mesh, procs=1, conc=12, seconds=seconds,
                                      payload={"sleep_ms": SKEW_SLEEP_MS})
            print(f"skewed (capacities 2/4/8, 12 callers, one hot function waiting "
                  f"{SKEW_SLEEP_MS} ms), {routing}: p50 {pct(lats, 50):.2f} ms, p99 "
                  f"{pct(lats, 99):.2f} ms, {rate:,.0f}/s, {failed} failed/throttled")
        finally:
            mesh.stop()


if __name__ == "__main__":
    main()
