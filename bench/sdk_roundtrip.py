"""The SDK's own cost per request: latency and client CPU, against a bare pyzmq round trip.

A child process runs a pyzmq ROUTER on 127.0.0.1 that answers every
client-protocol request with a canned response (``Pong``, or an
``InvokeResult`` echoing the payload). This process measures, one mode after
the other:

* ``bare``: a pyzmq DEALER sending a pre-encoded request frame and waiting for the reply;
* ``Client.ping()`` / ``Client.invoke()``: the same round trip through the SDK
  (request encoding, request id check, failover and liveness logic, decoding);
* ``AsyncClient.ping()`` / ``AsyncClient.invoke()`` under trio, one caller;
* ``AsyncClient.invoke() xC``: C concurrent ``AsyncClient`` s in one trio loop
  (the shape of bench/mesh_bench.py's load generators);
* ``put`` / ``aput``: ``update_config`` (the put of bench/paxos_bench.py), answered
  with a ``FunctionRecord`` like a real node's.

``--delay-ms D`` makes the server wait D ms before each answer (a commit takes
about 2 ms), so the client waits on its socket and runs the reply's code after
an idle gap, as it does against a real mesh.

For each: p50 and p99 latency, calls per second, and this process's CPU time
per call (``time.process_time``: every thread, so libzmq's I/O thread counts;
in brackets the calling thread's alone, ``time.thread_time``, steadier between runs;
the server is another process and does not).

Usage: .venv/bin/python bench/sdk_roundtrip.py [--n 5000] [--curve] [--concurrency 16]
       [--modes bare,ping,invoke,aping,ainvoke,aconc,put,aput] [--delay-ms 2]
Compare two trees by running this script with PYTHONPATH pointing at each.

``--data-dir DIR`` measures against a real mesh instead of the canned server:
one started by ``meshfaas up --data-dir DIR`` (its credentials.json), invoking
``--function`` (deploy bench/handlers/echo first). The modes are then
``ping,invoke,aping,ainvoke,aconc``; the CPU figure is still this process's
only, so clients of two trees can be compared against the same mesh.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe

from meshfaas import client as sdk
from meshfaas.core import client_proto as proto
from meshfaas.core.faas import CodeRef, FunctionConfig, FunctionRecord

PAYLOAD = {"name": "bench"}


def _record(description: str) -> FunctionRecord:
    """What a node answers an ``update_config`` of bench/_meshfaas.py's function."""
    return FunctionRecord(
        name="kv", config=FunctionConfig(handler="app.handler", description=description),
        code=CodeRef(sha256="5e" * 32, size_bytes=1187), revision=1234,
        created_wall_ns=1_764_000_000_000_000_000, modified_wall_ns=1_764_000_100_000_000_000,
        last_version=0)


def _answer(body: Any) -> Any:
    if isinstance(body, proto.Invoke):
        return proto.InvokeResult(invocation_id="n1~x", payload=body.payload,
                                  executed_version="$LATEST", node="n1")
    if isinstance(body, proto.UpdateConfig):
        return _record(body.patch.description or "")
    return proto.Pong(node="n1")


def serve(endpoint_queue: Any, curve: tuple[bytes, bytes] | None, delay_s: float) -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey = curve
        sock.curve_server = True
    sock.bind("tcp://127.0.0.1:*")
    endpoint_queue.put(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        ident, frame = sock.recv_multipart()
        request = proto.decode_request(frame)
        if delay_s:
            time.sleep(delay_s)
        reply = proto.ok(request.request_id, _answer(request.body))
        sock.send_multipart([ident, proto.encode(reply)])


class Sample:
    """Latencies of one mode, and the CPU and wall time the whole mode took."""

    def __init__(self, latencies_s: list[float], cpu_s: float, wall_s: float,
                 thread_s: float = 0.0) -> None:
        self.latencies_s, self.cpu_s, self.wall_s = latencies_s, cpu_s, wall_s
        self.thread_s = thread_s

    def line(self, name: str) -> str:
        us = sorted(s * 1e6 for s in self.latencies_s)
        n = len(us)
        p99 = us[max(0, int(n * 0.99) - 1)]
        return (f"{name:32s} p50 {statistics.median(us):7.1f} us  p99 {p99:8.1f} us  "
                f"{n / self.wall_s:8.0f} calls/s  CPU {self.cpu_s / n * 1e6:6.1f} us/call "
                f"({self.thread_s / n * 1e6:.1f})")


def timed(fn: Callable[[], Any], n: int) -> Sample:
    for _ in range(min(200, n)):
        fn()
    out = []
    cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return Sample(out, time.process_time() - cpu0, time.perf_counter() - wall0,
                  time.thread_time() - thread0)


def bare(ctx: zmq.Context[Any], endpoint: str, n: int, curve: tuple[bytes, bytes] | None) -> Sample:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_serverkey = curve[0]
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(endpoint)
    frame = proto.encode(proto.ClientRequest(request_id="r", api_key="k", body=proto.Ping()))

    def once() -> None:
        sock.send(frame)
        sock.recv()

    try:
        return timed(once, n)
    finally:
        sock.close()


class Target:
    """Where the clients go: the canned server, or a real mesh's credentials."""

    def __init__(self, endpoint: str = "", server_key: bytes | None = None,
                 data_dir: str = "", function: str = "f") -> None:
        self.endpoint, self.server_key, self.data_dir = endpoint, server_key, data_dir
        self.function = function

    def sync_client(self, ctx: zmq.Context[Any]) -> sdk.Client:
        if self.data_dir:
            return sdk.Client.from_credentials(self.data_dir, context=ctx)
        return sdk.Client(self.endpoint, api_key="k", server_public_key=self.server_key,
                          context=ctx)

    def async_client(self, i: int = 0) -> sdk.AsyncClient:
        if self.data_dir:
            creds = sdk.load_credentials(self.data_dir)
            eps = list(creds.endpoints)
            eps = eps[i % len(eps):] + eps[: i % len(eps)]  # spread clients over the nodes
            return sdk.AsyncClient(eps, creds.api_key, server_public_key=creds.server_public_key,
                                   client_public_key=creds.client_public_key,
                                   client_secret_key=creds.client_secret_key)
        return sdk.AsyncClient(self.endpoint, api_key="k", server_public_key=self.server_key)


PUT_DESCRIPTION = (b"k1=" + b"v" * 64).hex()  # bench/_meshfaas.py's put, as big


async def async_calls(target: Target, n: int, what: str) -> Sample:
    async with target.async_client() as c:
        async def once() -> None:
            if what == "invoke":
                await c.invoke(target.function, PAYLOAD)
            elif what == "put":
                await c.update_config("kv", description=PUT_DESCRIPTION)
            else:
                await c.ping()

        for _ in range(min(200, n)):
            await once()
        out = []
        cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
        for _ in range(n):
            t0 = time.perf_counter()
            await once()
            out.append(time.perf_counter() - t0)
        return Sample(out, time.process_time() - cpu0, time.perf_counter() - wall0,
                      time.thread_time() - thread0)


async def concurrent_invokes(target: Target, n: int, concurrency: int) -> Sample:
    """``concurrency`` clients in one loop, ``n`` invocations in all (after a warm-up)."""
    out: list[float] = []
    per_client = max(1, n // concurrency)

    async def worker(c: sdk.AsyncClient, calls: int, record: bool) -> None:
        for _ in range(calls):
            t0 = time.perf_counter()
            await c.invoke(target.function, PAYLOAD)
            if record:
                out.append(time.perf_counter() - t0)

    clients = [target.async_client(i) for i in range(concurrency)]
    try:
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(worker, c, 20, False)
        cpu0, wall0, thread0 = time.process_time(), time.perf_counter(), time.thread_time()
        async with trio.open_nursery() as nursery:
            for c in clients:
                nursery.start_soon(worker, c, per_client, True)
        return Sample(out, time.process_time() - cpu0, time.perf_counter() - wall0,
                      time.thread_time() - thread0)
    finally:
        for c in clients:
            c.close()


def run_modes(target: Target, ctx: zmq.Context[Any], modes: set[str], n: int,
              concurrency: int) -> None:
    with target.sync_client(ctx) as c:
        if "ping" in modes:
            print(timed(c.ping, n).line("Client.ping()"))
        if "invoke" in modes:
            fn = target.function
            print(timed(lambda: c.invoke(fn, PAYLOAD), n).line("Client.invoke() (echo)"))
        if "put" in modes:
            put = lambda: c.update_config("kv", description=PUT_DESCRIPTION)  # noqa: E731
            print(timed(put, n).line("Client.update_config()"))
    if "aping" in modes:
        print(trio.run(async_calls, target, n, "ping").line("AsyncClient.ping()"))
    if "ainvoke" in modes:
        print(trio.run(async_calls, target, n, "invoke").line("AsyncClient.invoke()"))
    if "aput" in modes:
        print(trio.run(async_calls, target, n, "put").line("AsyncClient.update_config()"))
    if "aconc" in modes:
        sample = trio.run(concurrent_invokes, target, n, concurrency)
        print(sample.line(f"AsyncClient.invoke() x{concurrency}"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--curve", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--modes", default="bare,ping,invoke,aping,ainvoke,aconc")
    parser.add_argument("--data-dir", default="", help="a mesh started by meshfaas up")
    parser.add_argument("--function", default="echo", help="(with --data-dir)")
    parser.add_argument("--delay-ms", type=float, default=0.0,
                        help="the canned server waits this long before each answer")
    args = parser.parse_args()
    modes = set(args.modes.split(","))
    ctx: zmq.Context[Any] = zmq.Context()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    if args.data_dir:
        print(f"# {describe()}, zmq {zmq.zmq_version()}, mesh {args.data_dir}, n={args.n}, "
              f"load average {load}")
        try:
            run_modes(Target(data_dir=args.data_dir, function=args.function), ctx,
                      modes - {"bare"}, args.n, args.concurrency)
        finally:
            ctx.destroy(linger=0)
        return
    curve = zmq.curve_keypair() if args.curve else None
    endpoints: Any = mp.Queue()
    server = mp.Process(target=serve, args=(endpoints, curve, args.delay_ms / 1000),
                        daemon=True)
    server.start()
    endpoint = endpoints.get(timeout=30)
    print(f"# {describe()}, zmq {zmq.zmq_version()}, curve={bool(curve)}, n={args.n}, "
          f"delay {args.delay_ms:g} ms, load average {load}")
    try:
        if "bare" in modes:
            print(bare(ctx, endpoint, args.n, curve).line("bare pyzmq DEALER/ROUTER"))
        run_modes(Target(endpoint, curve[0] if curve else None), ctx, modes, args.n,
                  args.concurrency)
    finally:
        server.kill()
        server.join()
        ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
