"""The SDK's own cost per request, against a bare pyzmq round trip in the same run.

A thread runs a pyzmq ROUTER on 127.0.0.1 that answers every client-protocol
request with a canned response (``Pong``, or an ``InvokeResult`` echoing the
payload). The script measures, in one process and one run:

* bare: a pyzmq DEALER sending a pre-encoded request frame and waiting for the reply;
* ``Client.ping()`` and ``Client.invoke()``: the same round trip through the SDK
  (request encoding, request id check, failover logic, response decoding);
* ``AsyncClient.ping()`` under trio.

Usage: .venv/bin/python bench/sdk_roundtrip.py [--n 5000] [--curve]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import threading
import time
from typing import Any

import trio
import zmq

from meshfaas import client as sdk
from meshfaas.core import client_proto as proto


def serve(ctx: zmq.Context[Any], endpoint_box: list[str], stop: threading.Event,
          curve: tuple[bytes, bytes] | None) -> None:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        sock.curve_publickey, sock.curve_secretkey = curve
        sock.curve_server = True
    sock.bind("tcp://127.0.0.1:*")
    endpoint_box.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while not stop.is_set():
        if not poller.poll(100):
            continue
        ident, frame = sock.recv_multipart()
        request = proto.decode_request(frame)
        if isinstance(request.body, proto.Invoke):
            value: Any = proto.InvokeResult(invocation_id="n1~x", payload=request.body.payload,
                                            executed_version="$LATEST", node="n1")
        else:
            value = proto.Pong(node="n1")
        sock.send_multipart([ident, proto.encode(proto.ok(request.request_id, value))])
    sock.close()


def percentiles(samples_s: list[float]) -> str:
    us = sorted(s * 1e6 for s in samples_s)
    p50 = statistics.median(us)
    p99 = us[int(len(us) * 0.99) - 1]
    return f"p50 {p50:7.1f} us   p99 {p99:7.1f} us"


def timed(fn: Any, n: int) -> list[float]:
    for _ in range(min(200, n)):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def bare(ctx: zmq.Context[Any], endpoint: str, n: int, curve: tuple[bytes, bytes] | None) -> list[float]:
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


async def async_pings(endpoint: str, n: int, server_key: bytes | None) -> list[float]:
    async with sdk.AsyncClient(endpoint, api_key="k", server_public_key=server_key) as c:
        for _ in range(min(200, n)):
            await c.ping()
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await c.ping()
            out.append(time.perf_counter() - t0)
        return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--curve", action="store_true")
    args = parser.parse_args()
    ctx: zmq.Context[Any] = zmq.Context()
    curve = zmq.curve_keypair() if args.curve else None
    box: list[str] = []
    stop = threading.Event()
    server = threading.Thread(target=serve, args=(ctx, box, stop, curve), daemon=True)
    server.start()
    while not box:
        time.sleep(0.01)
    endpoint = box[0]
    key = curve[0] if curve else None
    print(f"# {platform.processor() or platform.machine()}, {platform.python_version()}, "
          f"zmq {zmq.zmq_version()}, curve={bool(curve)}, n={args.n}")
    print(f"bare pyzmq DEALER/ROUTER   {percentiles(bare(ctx, endpoint, args.n, curve))}")
    with sdk.Client(endpoint, api_key="k", server_public_key=key, context=ctx) as c:
        print(f"Client.ping()              {percentiles(timed(c.ping, args.n))}")
        payload = {"name": "bench"}
        print(f"Client.invoke() (echo)     {percentiles(timed(lambda: c.invoke('f', payload), args.n))}")
    print(f"AsyncClient.ping() (trio)  {percentiles(trio.run(async_pings, endpoint, args.n, key))}")
    stop.set()
    server.join()
    ctx.term()


if __name__ == "__main__":
    main()
