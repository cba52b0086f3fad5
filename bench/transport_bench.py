"""Round trip and throughput of the peer transport vs bare pyzmq REQ/REP, same run.

    .venv/bin/python bench/transport_bench.py [--round-trips 5000] [--messages 50000]

* transport: two PeerTransports (ROUTER in, DEALER per peer out) in one trio loop on
  127.0.0.1; A sends a 64-byte frame to B, B's task sends it back. Measured with
  CURVE (the default) and with the insecure mode. Round trip p50/p99 one at a time,
  then throughput with a window of 256 frames in flight (round trips per second).
* codec + Driver + transport: two minimal cores (answer a TransportProbe) under
  the generic Driver: what one peer round trip costs a core, encoding included.
* references: a bare pyzmq REQ/REP echo between two threads, blocking calls; a
  bare DEALER/ROUTER echo with both ends in one trio loop (no owner tasks, no
  channels, no CURVE), the floor for anything trio-driven.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
import warnings
from typing import Any

import trio
import zmq

from meshfaas.core.codec import Codec
from meshfaas.core.types import EffectResult, NodeId, Now, Outbox, Ready
from meshfaas.runtime.clock import SystemClock
from meshfaas.runtime.driver import Driver, drain_nowait
from meshfaas.runtime.keys import ClusterKeys, Security
from meshfaas.runtime.messages import TransportProbe
from meshfaas.runtime.transport import PeerTransport, open_network, open_peer_transport

A, B = NodeId("a"), NodeId("b")
PAYLOAD = b"x" * 64
WINDOW = 256


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def echo(tb: PeerTransport) -> None:
    async for frame in tb.inbound:  # a burst at a time, as the Driver reads
        tb.send(A, frame)
        for more in drain_nowait(tb.inbound):
            tb.send(A, more)


async def connect(ta: PeerTransport) -> None:
    with trio.fail_after(10):
        while True:
            ta.send(B, b"hello")
            with trio.move_on_after(0.05):
                await ta.inbound.receive()
                return


async def round_trips(ta: PeerTransport, n: int) -> list[float]:
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        ta.send(B, PAYLOAD)
        await ta.inbound.receive()
        samples.append((time.perf_counter_ns() - t0) / 1000)
    return samples


async def throughput(ta: PeerTransport, n: int) -> float:
    sent = received = 0
    t0 = time.perf_counter()
    while received < n:
        while sent < n and sent - received < WINDOW:
            if ta.send(B, PAYLOAD):
                sent += 1
            else:
                break
        await ta.inbound.receive()
        received += 1 + sum(1 for _ in drain_nowait(ta.inbound))
    return n / (time.perf_counter() - t0)


async def bench_transport(security: Security, rtt_n: int, msg_n: int) -> dict[str, Any]:
    async with (
        open_network(security) as na,
        open_network(security) as nb,
        open_peer_transport(na, A) as ta,
        open_peer_transport(nb, B) as tb,
        trio.open_nursery() as nursery,
    ):
        ta.set_peer(B, tb.endpoint)
        tb.set_peer(A, ta.endpoint)
        nursery.start_soon(echo, tb)
        await connect(ta)
        await round_trips(ta, 200)  # warm up
        samples = await round_trips(ta, rtt_n)
        rate = await throughput(ta, msg_n)
        drops = {k: v for k, v in (ta.counters() | tb.counters()).items() if "drop" in k and v}
        nursery.cancel_scope.cancel()
    return {
        "p50_us": statistics.median(samples),
        "p99_us": percentile(samples, 0.99),
        "rt_per_s": rate,
        "drops": drops,
    }


async def _wait_in(sock: zmq.Socket[Any]) -> None:
    while not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
        await trio.lowlevel.wait_readable(int(sock.getsockopt(zmq.FD)))


async def _recv(sock: zmq.Socket[Any]) -> list[bytes]:
    while True:
        try:
            return sock.recv_multipart(zmq.NOBLOCK)
        except zmq.Again:
            await _wait_in(sock)


async def bench_raw_trio(rtt_n: int, msg_n: int) -> dict[str, Any]:
    """A bare DEALER/ROUTER echo, both ends in one trio loop, no owner tasks or channels."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")

    async def echo() -> None:
        while True:
            router.send_multipart(await _recv(router))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo)
        samples = []
        for i in range(rtt_n + 200):
            t0 = time.perf_counter_ns()
            dealer.send(PAYLOAD)
            await _recv(dealer)
            if i >= 200:
                samples.append((time.perf_counter_ns() - t0) / 1000)
        sent = received = 0
        t_start = time.perf_counter()
        while received < msg_n:
            while sent < msg_n and sent - received < WINDOW:
                dealer.send(PAYLOAD)
                sent += 1
            await _recv(dealer)
            received += 1
        rate = msg_n / (time.perf_counter() - t_start)
        nursery.cancel_scope.cancel()
    ctx.destroy(linger=0)
    return {"p50_us": statistics.median(samples), "p99_us": percentile(samples, 0.99),
            "rt_per_s": rate}


class EchoCore:
    """A minimal core: answers a TransportProbe; a reply becomes a notification."""

    def __init__(self, peer: NodeId) -> None:
        self.peer = peer
        self.outbox = Outbox()

    def handle(self, src: NodeId, msg: TransportProbe, now: Now) -> None:
        if msg.reply:
            self.outbox.notify("pong", msg.nonce)
        else:
            self.outbox.send(src, TransportProbe(nonce=msg.nonce, payload=msg.payload, reply=True))

    def command(self, cmd: int, now: Now) -> None:
        self.outbox.send(self.peer, TransportProbe(nonce=cmd, payload=PAYLOAD))

    def tick(self, now: Now) -> None:
        pass

    def next_deadline(self) -> int | None:
        return None

    def take_ready(self) -> Ready | None:
        return self.outbox.take()

    def on_persisted(self, seq: int) -> None:
        pass

    def on_result(self, result: EffectResult, now: Now) -> None:
        pass


class NoStore:
    def write(self, writes: Any) -> None:
        pass

    def sync(self) -> None:
        pass

    def load(self) -> dict[str, Any]:
        return {}


async def bench_driver(security: Security, rtt_n: int, msg_n: int) -> dict[str, Any]:
    """Two EchoCores under Drivers over two transports: codec + driver + transport."""
    codec = Codec("bench")
    async with open_network(security) as na, open_network(security) as nb, \
            open_peer_transport(na, A) as ta, open_peer_transport(nb, B) as tb, \
            trio.open_nursery() as nursery:
        ta.set_peer(B, tb.endpoint)
        tb.set_peer(A, ta.endpoint)
        drivers = [Driver(EchoCore(peer), node_id=me, transport=t, codec=codec, store=NoStore(),
                          clock=SystemClock())
                   for me, peer, t in ((A, B, ta), (B, A, tb))]
        pongs = drivers[0].subscribe(capacity=WINDOW * 4)
        for driver, t in zip(drivers, (ta, tb), strict=True):
            await nursery.start(driver.run, t.inbound)
        with trio.fail_after(10):
            while True:  # until connected
                drivers[0].command(0)
                with trio.move_on_after(0.05):
                    await pongs.receive()
                    break
        samples = []
        for i in range(rtt_n + 200):
            t0 = time.perf_counter_ns()
            drivers[0].command(i)
            await pongs.receive()
            if i >= 200:
                samples.append((time.perf_counter_ns() - t0) / 1000)
        sent = received = 0
        t_start = time.perf_counter()
        while received < msg_n:
            while sent < msg_n and sent - received < WINDOW:
                drivers[0].command(sent)
                sent += 1
            await pongs.receive()
            received += 1 + sum(1 for _ in drain_nowait(pongs))
        rate = msg_n / (time.perf_counter() - t_start)
        nursery.cancel_scope.cancel()
    return {"p50_us": statistics.median(samples), "p99_us": percentile(samples, 0.99),
            "rt_per_s": rate}


def bench_reqrep(n: int) -> dict[str, Any]:
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    port = rep.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        for _ in range(n + 200):
            rep.send(rep.recv())

    thread = threading.Thread(target=serve)
    thread.start()
    req = ctx.socket(zmq.REQ)
    req.connect(f"tcp://127.0.0.1:{port}")
    samples = []
    t_start = time.perf_counter()
    for i in range(n + 200):
        t0 = time.perf_counter_ns()
        req.send(PAYLOAD)
        req.recv()
        if i >= 200:
            samples.append((time.perf_counter_ns() - t0) / 1000)
    elapsed = time.perf_counter() - t_start
    thread.join()
    req.close()
    rep.close()
    ctx.term()
    return {
        "p50_us": statistics.median(samples),
        "p99_us": percentile(samples, 0.99),
        "rt_per_s": (n + 200) / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--round-trips", type=int, default=5000)
    parser.add_argument("--messages", type=int, default=50_000)
    args = parser.parse_args()
    keys = ClusterKeys.generate("bench")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        insecure = Security.insecure()
    rows = {
        "bare pyzmq REQ/REP (2 threads, 1 in flight)": bench_reqrep(args.round_trips),
        "bare DEALER/ROUTER, one trio loop": trio.run(bench_raw_trio, args.round_trips,
                                                      args.messages),
        "transport, CURVE": trio.run(
            bench_transport, Security.curve(keys), args.round_trips, args.messages
        ),
        "transport, insecure": trio.run(bench_transport, insecure, args.round_trips, args.messages),
        "codec + Driver + transport, CURVE": trio.run(bench_driver, Security.curve(keys),
                                                      args.round_trips, args.messages),
    }
    print(f"{'':48} {'p50 us':>8} {'p99 us':>8} {'round trips/s':>14}")
    for name, r in rows.items():
        print(
            f"{name:48} {r['p50_us']:8.0f} {r['p99_us']:8.0f} {r['rt_per_s']:14,.0f}  {r.get('drops', '')}"
        )


if __name__ == "__main__":
    main()
