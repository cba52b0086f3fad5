"""The socket-owner pattern itself: sockets that send and receive at once.

A stress test of the owner loop (sends, receives, waits on an edge-triggered fd)
with traffic both ways on both sockets: everything arrives, in order, nothing is
dropped, and the sockets are closed at the end. It is not a precise detector of
a lost edge (continuing traffic makes new edges that hide one); the owner checks
EVENTS before every wait and drains its sends before its receives, so an edge
consumed by a send is never waited on.
"""

from __future__ import annotations

from typing import Any

import trio
import zmq

from meshfaas.runtime.zsock import Counters, ZSock

from .helpers import receive_within, wait_until

N = 5000
WINDOW = 200


async def test_two_owners_exchange_everything_both_ways_at_once() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    left_sock, right_sock = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    port = left_sock.bind_to_random_port("tcp://127.0.0.1")
    right_sock.connect(f"tcp://127.0.0.1:{port}")
    got: dict[str, list[int]] = {"left": [], "right": []}
    counters = Counters()
    left = ZSock(left_sock, name="left", counters=counters,
                 on_recv=lambda parts: got["left"].append(int(parts[0])))
    right = ZSock(right_sock, name="right", counters=counters,
                  on_recv=lambda parts: got["right"].append(int(parts[0])))

    async def pump(me: ZSock, them: str) -> None:
        sent = 0
        while sent < N:
            if sent - len(got[them]) < WINDOW and me.send_nowait([b"%d" % sent]):
                sent += 1
            else:
                await trio.sleep(0.0005)  # pacing the window, not waiting for a condition

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(left.run)
            nursery.start_soon(right.run)
            # The bound DEALER has nowhere to send (zmq.Again: dropped) until the
            # connecting one is attached; the connecting one queues until then.
            right.send_nowait([b"-1"])
            await wait_until(lambda: got["left"] == [-1], what="the connection")
            got["left"].clear()
            nursery.start_soon(pump, left, "right")
            nursery.start_soon(pump, right, "left")
            await wait_until(lambda: len(got["left"]) == N and len(got["right"]) == N,
                             timeout_s=60, what="every message both ways")
            nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)
    assert got["left"] == list(range(N)) and got["right"] == list(range(N))
    counts = counters.snapshot()
    assert counts["left.sent"] == counts["right.received"] == N
    assert counts["right.sent"] == counts["left.received"] == N + 1
    assert "left.dropped_hwm" not in counts and "right.dropped_hwm" not in counts
    assert left.closed and right.closed


async def test_send_after_close_is_a_counted_drop() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    counters = Counters()
    owner = ZSock(ctx.socket(zmq.DEALER), name="d", counters=counters)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(owner.run)
        await trio.lowlevel.checkpoint()
        nursery.cancel_scope.cancel()
    assert owner.closed and not owner.send_nowait([b"late"])
    assert counters.get("d.dropped_closed") == 1
    ctx.destroy(linger=0)


async def test_replies_sent_while_the_owner_is_parked_never_strand_a_message() -> None:
    """Pings with a few in flight, each answered by a task other than the socket's
    owner, often while the owner is parked on its fd (the direct-send path) and
    while more pings arrive. A ping stranded behind an edge that a direct send
    consumed would stop the exchange: the window stays full, no new ping makes a
    new edge, and the wait's deadline fails the test."""
    ctx: zmq.Context[Any] = zmq.Context()
    a_sock, b_sock = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    port = a_sock.bind_to_random_port("tcp://127.0.0.1")
    b_sock.connect(f"tcp://127.0.0.1:{port}")
    rounds, window = 5000, 4
    counters = Counters()
    send_a, recv_a = trio.open_memory_channel[int](rounds + 1)
    send_b, recv_b = trio.open_memory_channel[bytes](rounds + 1)
    a = ZSock(a_sock, name="a", counters=counters,
              on_recv=lambda parts: send_a.send_nowait(int(parts[0])))
    b = ZSock(b_sock, name="b", counters=counters, on_recv=lambda parts: send_b.send_nowait(parts[0]))

    async def replier() -> None:
        async for ping in recv_a:  # a task other than a's owner: a is parked, or about to be
            a.send_nowait([b"%d" % ping])

    pongs = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.run)
            nursery.start_soon(b.run)
            nursery.start_soon(replier)
            for i in range(window):
                b.send_nowait([b"%d" % i])
            for i in range(window, rounds + window):
                pongs.append(int(await receive_within(recv_b, timeout_s=10)))
                if i < rounds:
                    b.send_nowait([b"%d" % i])
            nursery.cancel_scope.cancel()
    finally:
        ctx.destroy(linger=0)
    assert pongs == list(range(rounds))
    assert counters.get("a.sent") == rounds and counters.get("b.received") == rounds


async def test_a_router_owner_receives_whole_messages_of_any_length() -> None:
    """A ROUTER's owner skips the RCVMORE check after the routing id (one always
    follows it); every message still comes whole, whatever its number of parts."""
    ctx: zmq.Context[Any] = zmq.Context()
    router_sock, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    port = router_sock.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    got: list[list[bytes]] = []
    router = ZSock(router_sock, name="router", on_recv=got.append)
    sent = [[b""], [b"a"], [b"a", b"b"], [b"a", b"b", b"c"], [b"x" * 100, b""]] * 20
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(router.run)
            for parts in sent:
                dealer.send_multipart(parts)
            await wait_until(lambda: len(got) == len(sent), what="every message")
            nursery.cancel_scope.cancel()
    finally:
        dealer.close(linger=0)
        ctx.destroy(linger=0)
    assert [parts[1:] for parts in got] == sent
    assert len({parts[0] for parts in got}) == 1  # the one dealer's routing id
