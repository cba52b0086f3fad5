"""One trio task per ZeroMQ socket.

Theory of operation
-------------------
pyzmq has no trio integration, and a zmq socket is not safe to touch from two
places at once. So every socket here belongs to exactly one :class:`ZSock`,
whose :meth:`ZSock.run` task is the only code that ever calls the socket.
Other tasks reach it through a bounded queue (:meth:`ZSock.send_nowait`,
which never blocks: a message that cannot be queued is dropped and counted), and
what it receives is handed to an ``on_recv`` callback (itself non-blocking:
a ``send_nowait`` into a bounded channel, or the message's whole handling), and
after each burst of receives to ``on_burst_end`` (e.g. the driver's
end-of-burst sync).

The socket's ``FD`` is edge-triggered: it signals that zmq's *state* changed,
not that a message is waiting, and any call on the socket (a send, a read of
``EVENTS``) may consume that edge. The owner therefore

1. drains the outbound queue with ``NOBLOCK`` sends (``zmq.Again`` means the
   high-water mark is reached: the message is dropped and counted, as for a
   datagram);
2. drains the socket with ``NOBLOCK`` receives until ``zmq.Again``;
3. and only then waits, checking ``getsockopt(EVENTS) & POLLIN`` *before* each
   ``wait_readable(fd)``, never the fd alone.

While it waits with nothing queued (*parked*), a caller's ``send_nowait`` sends
at once itself: the caller runs on the same thread and the owner is not inside
a socket call, so this is safe, and it spares a wake-up of the owner per
message (a node's replies mostly leave this way). That send may consume the
fd's edge for a message that arrived meanwhile, so the caller then checks
``EVENTS & POLLIN`` and, if a message waits, wakes the owner with
``trio.lowlevel.notify_closing(fd)``, which the owner's wait takes as "look
again" (no cancel scope per wait: entering and leaving one costs about 9 us).
When the owner is busy (or woken and not yet running), messages queue; the
owner drains the queue before it parks again, so nothing sits behind an idle
socket; a burst queued while the owner works leaves together, one wake-up of
libzmq's I/O thread. After every
batch of ``batch`` messages the owner yields, so one busy socket cannot starve the
rest of the node, but it does not wait on the fd again until fully drained.

When the task ends (cancelled or not) it closes the socket with ``linger=0``.

Everything here runs on the trio thread: ``send_nowait`` must not be called from
a worker thread (use ``trio.from_thread.run_sync``).
"""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import trio
import zmq

Parts = list[bytes]
OnRecv = Callable[[Parts], None]
OnBurstEnd = Callable[[], None]

DEFAULT_OUT_CAPACITY = 1024
# pyzmq's flag enums cost microseconds per use (enum construction and ``&``):
# the hot paths use plain ints.
EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
RCVMORE = int(zmq.RCVMORE)
NOBLOCK = int(zmq.NOBLOCK)
NOBLOCK_SNDMORE = int(zmq.NOBLOCK) | int(zmq.SNDMORE)
DEFAULT_BATCH = 256


class Counters:
    """Named event counts, shared by the sockets of one component."""

    def __init__(self, prefix: str = "") -> None:
        self._prefix = prefix
        self._counts: dict[str, int] = {}

    def inc(self, name: str, n: int = 1) -> None:
        key = self._prefix + name if self._prefix else name
        counts = self._counts
        counts[key] = counts.get(key, 0) + n

    def get(self, name: str) -> int:
        return self._counts.get(self._prefix + name, 0)

    def snapshot(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(self.snapshot().items())


def set_options(sock: zmq.Socket[Any], options: Iterable[tuple[int, Any]]) -> None:
    for opt, value in options:
        sock.setsockopt(opt, value)


class ZSock:
    """Owns one zmq socket; see the module docstring for the protocol.

    ``counters`` receives ``sent``, ``received``, ``dropped_queue_full`` (the
    outbound channel was full), ``dropped_hwm`` (zmq refused with ``Again``),
    ``dropped_unroutable`` (``EHOSTUNREACH`` from a mandatory ROUTER) and
    ``send_errors``, each prefixed with ``name + "."``.
    """

    def __init__(
        self,
        sock: zmq.Socket[Any],
        *,
        name: str,
        on_recv: OnRecv | None = None,
        on_burst_end: OnBurstEnd | None = None,
        counters: Counters | None = None,
        out_capacity: int = DEFAULT_OUT_CAPACITY,
        batch: int = DEFAULT_BATCH,
        receives: bool = True,
    ) -> None:
        self.sock = sock
        self.name = name
        self._on_recv = on_recv
        self._on_burst_end = on_burst_end
        self.counters = counters if counters is not None else Counters()
        self._out: deque[Parts] = deque()  # only the owner takes from it
        self._out_capacity = out_capacity
        self._batch = batch
        self._receives = receives  # False for send-only sockets (PUB)
        self._fd = -1
        self._sent_key = f"{name}.sent"  # (the hot paths' counter names, made once)
        self._received_key = f"{name}.received"
        self._parked = False  # the owner waits on the fd with nothing queued
        self._closed = False
        # A ROUTER's message is its sender's routing id then at least one part,
        # so the RCVMORE check after the first part is skipped there.
        self._router = receives and sock.type == zmq.ROUTER
        self._readable = False  # _wait saw EVENTS & POLLIN: the next receive needs no check

    # -- callers ------------------------------------------------------------

    def send_nowait(self, parts: Parts) -> bool:
        """Queue ``parts`` for sending; False (and counted) if it cannot be queued."""
        if self._closed:
            self._count("dropped_closed")
            return False
        if self._parked:
            self._send_direct(parts)
            return True
        if len(self._out) >= self._out_capacity:
            self._count("dropped_queue_full")
            return False
        self._out.append(parts)  # the owner is busy: it drains this before it waits
        return True

    def _send_direct(self, parts: Parts) -> None:
        """The owner is parked with nothing queued: send from here (same thread,
        and the owner is not inside a socket call), sparing it a wake-up. The
        send may consume the FD's edge for a message that arrived meanwhile, so
        the owner is woken if one is waiting."""
        self._send_one(parts)
        if self._receives and int(self.sock.getsockopt(EVENTS)) & POLLIN:
            self._parked = False
            trio.lowlevel.notify_closing(self._fd)  # wakes the owner (see _wait)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the owner task -----------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Own the socket until cancelled; then close it."""
        try:
            fd = self._fd = int(self.sock.getsockopt(zmq.FD))
            task_status.started()
            while True:
                busy = self._drain_out()
                busy = self._drain_in() or busy
                if busy:
                    await trio.lowlevel.checkpoint()
                    continue
                await self._wait(fd)
        finally:
            self._close()

    def _drain_out(self) -> bool:
        """Send up to ``batch`` queued messages. True if more may be queued."""
        out = self._out
        for _ in range(self._batch):
            if not out:
                return False
            self._send_one(out.popleft())
        return bool(out)

    def _send_one(self, parts: Parts) -> None:
        try:
            send = self.sock.send
            for part in parts[:-1]:  # (send_multipart's generality costs more than this)
                send(part, NOBLOCK_SNDMORE)
            send(parts[-1], NOBLOCK)
        except zmq.Again:
            self._count("dropped_hwm")
        except zmq.ZMQError as exc:
            self._count("dropped_unroutable" if exc.errno == errno.EHOSTUNREACH else "send_errors")
        else:
            self.counters.inc(self._sent_key)

    def _drain_in(self) -> bool:
        """Receive up to ``batch`` messages, then call ``on_burst_end`` if any
        came. True if the batch limit was hit."""
        if not self._receives:
            return False
        received, more = self._receive_burst()
        if received and self._on_burst_end is not None:
            self._on_burst_end()
        return more

    def _receive_burst(self) -> tuple[int, bool]:
        sock = self.sock
        for n in range(self._batch):
            if self._readable:  # _wait just read EVENTS: a message is waiting
                self._readable = False
            elif not int(sock.getsockopt(EVENTS)) & POLLIN:  # (cheaper than zmq.Again)
                return n, False
            try:
                parts = self._recv_parts()
            except zmq.Again:
                return n, False
            self.counters.inc(self._received_key)
            if self._on_recv is not None:
                self._on_recv(parts)
        return self._batch, True

    def _recv_parts(self) -> Parts:
        """One whole message (zmq delivers a message's parts atomically)."""
        sock = self.sock
        parts = [sock.recv(NOBLOCK)]
        if self._router:  # the routing id: the message itself follows
            parts.append(sock.recv(NOBLOCK))
        while sock.getsockopt(RCVMORE):
            parts.append(sock.recv(NOBLOCK))
        return parts

    async def _wait(self, fd: int) -> None:
        """Wait until the socket is readable. Parked, the owner has nothing
        queued, and callers send directly instead of queueing (everything from
        the check of ``_out`` to the park is synchronous, and once woken it
        stays "parked" until it runs, so nothing is ever queued behind a parked
        owner). A caller's direct send that finds a message waiting wakes it with
        ``notify_closing(fd)`` (a ClosedResourceError here: no cancel scope per
        wait, and the fd is only ever closed by this task, after its loop)."""
        sock = self.sock
        try:
            while not self._out:
                if int(sock.getsockopt(EVENTS)) & POLLIN:
                    self._readable = True
                    return
                self._parked = True
                try:
                    await trio.lowlevel.wait_readable(fd)
                except trio.ClosedResourceError:
                    self._count("woken")  # by _send_direct: look again
                self._parked = False
        finally:
            self._parked = False

    def _close(self) -> None:
        self._closed = True
        self._out.clear()
        self.sock.close(linger=0)

    def _count(self, what: str) -> None:
        self.counters.inc(f"{self.name}.{what}")


def last_endpoint(sock: zmq.Socket[Any]) -> str:
    """The endpoint a socket actually bound (``tcp://127.0.0.1:*`` -> the real port)."""
    raw = sock.getsockopt(zmq.LAST_ENDPOINT)
    return raw.decode() if isinstance(raw, bytes) else str(raw)
