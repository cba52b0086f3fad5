"""Shared helpers for the runtime tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio
import zmq

POLL_S = 0.005


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0, what: str = "") -> None:
    """Wait for ``predicate()`` to hold, failing after ``timeout_s``."""
    try:
        with trio.fail_after(timeout_s):
            while not predicate():
                await trio.sleep(POLL_S)
    except trio.TooSlowError:
        raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}") from None


async def receive_within(channel: trio.MemoryReceiveChannel[bytes], timeout_s: float = 5.0) -> bytes:
    with trio.fail_after(timeout_s):
        return await channel.receive()


def send_unless_refused(sock: zmq.Socket[Any], *parts: bytes) -> bool:
    """Send without blocking; False when the socket has no connection to queue on.

    For a socket refused at the handshake (no CURVE, a wrong key): when its own
    side is the first to see the failure, libzmq takes it for a protocol error,
    ends that connection's session and never reconnects, so the socket is left
    without a pipe and a blocking send waits forever. Whether it comes to that
    is a race between the two sides, won more often the later the send comes
    after ``connect`` (a test thread descheduled in between hung 300 s). Not
    even queued is refused too.
    """
    try:
        sock.send_multipart(list(parts), zmq.NOBLOCK)
    except zmq.Again:
        return False
    return True
