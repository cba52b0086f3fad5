"""Shared helpers for the runtime tests."""

from __future__ import annotations

from collections.abc import Callable

import trio

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
