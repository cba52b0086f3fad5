"""What one ZeroMQ round trip costs on this machine after the processes idled.

    .venv/bin/python bench/wake_floor.py [--n 3000] [--gaps-ms 0,0.5,2]

A child process runs a trio loop with a CURVE ROUTER on 127.0.0.1 that echoes
every message; this process, a trio loop with a CURVE DEALER, sends 200 bytes
and waits for the echo, ``--n`` times, pausing ``gap`` between round trips
(a blocking sleep: both processes and their libzmq I/O threads idle, as the
nodes of a single-client Paxos commit idle between their turns). For each gap:
p50/p90 of the round trip and this process's CPU per round trip (every thread,
so libzmq's I/O thread counts).

On a virtual machine whose vCPUs halt when idle, the same round trip costs
more after a gap: the vCPU must be woken and scheduled, and it comes back to
cold caches (so the CPU per round trip grows too). A commit's four hops pay
that each; this is the floor no change in meshfaas' own code moves
(docs/paxos.md, "Session 6").
"""

from __future__ import annotations

import argparse
import multiprocessing
import time
from typing import Any, cast

import trio
import zmq

PAYLOAD = b"x" * 200


def _readable(sock: zmq.Socket[Any]) -> bool:
    return bool(cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN)


async def _wait(sock: zmq.Socket[Any]) -> None:
    while not _readable(sock):
        await trio.lowlevel.wait_readable(cast(int, sock.getsockopt(zmq.FD)))


async def _echo(port_out: Any, keys: tuple[bytes, bytes]) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.curve_server = True
    sock.curve_publickey, sock.curve_secretkey = keys
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_out.send(port)
    while True:
        await _wait(sock)
        while _readable(sock):
            sock.send_multipart(sock.recv_multipart(zmq.NOBLOCK), zmq.NOBLOCK)


def _serve(port_out: Any, keys: tuple[bytes, bytes]) -> None:
    trio.run(_echo, port_out, keys)


async def _round_trips(port: int, server_key: bytes, n: int, gap_s: float) -> tuple[list[float], float]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.curve_serverkey = server_key
    sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
    sock.connect(f"tcp://127.0.0.1:{port}")
    samples: list[float] = []
    cpu = 0.0
    try:
        for _ in range(n):
            c0, t0 = time.process_time(), time.perf_counter_ns()
            sock.send(PAYLOAD)
            await _wait(sock)
            sock.recv(zmq.NOBLOCK)
            samples.append((time.perf_counter_ns() - t0) / 1000)
            cpu += time.process_time() - c0
            if gap_s:
                time.sleep(gap_s)
    finally:
        sock.close(linger=0)
        ctx.term()
    return samples, cpu * 1e6 / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--gaps-ms", default="0,0.5,2", help="pauses between round trips")
    args = parser.parse_args()
    keys = zmq.curve_keypair()
    reader, writer = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.Process(target=_serve, args=(writer, keys), daemon=True)
    server.start()
    try:
        port = reader.recv()
        print(f"{'gap ms':>7} {'p50 us':>8} {'p90 us':>8} {'CPU us/rt':>10}")
        for gap in (float(g) for g in args.gaps_ms.split(",")):
            samples, cpu_us = trio.run(_round_trips, port, keys[0], args.n, gap / 1000)
            ordered = sorted(samples[args.n // 10:])  # the first tenth warms up
            print(f"{gap:7.1f} {ordered[len(ordered) // 2]:8.0f} "
                  f"{ordered[len(ordered) * 9 // 10]:8.0f} {cpu_us:10.0f}")
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
