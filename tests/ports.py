"""Loopback ports for real-process tests that cannot collide across test runs.

Probing for a free port (bind to port 0, close, hand the number to a child
process) races twice: another suite running at the same time can probe the
same number, and the kernel hands ports of the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 here) to every
outgoing connection, so a port seen free there can be taken by some process's
``connect`` before the child binds it ("Address already in use").

So ports come from *blocks* below the ephemeral range, which the kernel never
assigns on its own. A process claims a block by holding an exclusive
``flock`` on ``$TMPDIR/meshfaas-test-ports/block-<k>.lock`` for as long as it
lives (the kernel drops the lock when the process exits, even on kill -9, so
nothing is left to clean up), then hands out the block's ports in order,
skipping any port that something outside this scheme has bound (each is checked
with a bind). The first block tried is derived from the pid, so concurrent
suites usually start far apart and rarely even contend for a lock.

Use ``free_port()`` for one port and ``port_range(n)`` for ``n`` consecutive
ones (``meshfaas up``'s ``base_port`` layout). Ports are never handed out twice
in one process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from pathlib import Path
from typing import IO

BLOCK_PORTS = 64
LOWEST_PORT = 20_000
LOCK_DIR = Path(tempfile.gettempdir()) / "meshfaas-test-ports"


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        return int(text.split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    """Whether nothing holds ``port`` on 127.0.0.1 now (bound without SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _make_lock_dir() -> None:
    """The shared lock folder, writable by every user (sticky, like /tmp itself)."""
    if not LOCK_DIR.is_dir():
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # someone else made it first
            LOCK_DIR.chmod(0o1777)


def _locked(path: Path) -> IO[bytes] | None:
    """``path`` opened and exclusively flock'ed, or None if another process holds it
    (or it belongs to a user whose file we may not open)."""
    try:
        lock = open(path, "ab")  # noqa: SIM115 (held open: closing it frees the block)
    except PermissionError:
        return None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        lock.close()
        return None
    with contextlib.suppress(OSError):
        os.fchmod(lock.fileno(), 0o666)  # so another user's run can take it later
    return lock


class _Allocator:
    """This process's claimed blocks and the next port to hand out."""

    def __init__(self, first_block: int | None = None) -> None:
        top = min(_ephemeral_low(), 65_536)
        self.block_count = max(1, (top - LOWEST_PORT) // BLOCK_PORTS)
        self.locks: list[IO[bytes]] = []  # open lock files: closing one frees its block
        self.next_port = 0
        self.end_port = 0  # one past the current block's last port
        self.tried = 0
        self.first_block = os.getpid() * 7919 if first_block is None else first_block

    def claim_block(self) -> None:
        """Lock the next unlocked block, starting from a pid-derived one."""
        _make_lock_dir()
        start = self.first_block % self.block_count
        while self.tried < self.block_count:
            index = (start + self.tried) % self.block_count
            self.tried += 1
            lock = _locked(LOCK_DIR / f"block-{index}.lock")
            if lock is None:
                continue
            self.locks.append(lock)
            self.next_port = LOWEST_PORT + index * BLOCK_PORTS
            self.end_port = self.next_port + BLOCK_PORTS
            return
        raise RuntimeError(f"every test port block under {LOCK_DIR} is held by another process")

    def take(self, count: int) -> int:
        """The first of ``count`` consecutive bindable ports in a block this process holds."""
        if not 1 <= count <= BLOCK_PORTS:
            raise ValueError(f"between 1 and {BLOCK_PORTS} consecutive ports, not {count}")
        while True:
            if self.end_port - self.next_port < count:
                self.claim_block()
                continue
            base = self.next_port
            busy = next((p for p in range(base, base + count) if not _bindable(p)), None)
            if busy is None:
                self.next_port = base + count
                return base
            self.next_port = busy + 1  # skip past the port someone else holds


_ALLOCATOR: _Allocator | None = None


def _allocator() -> _Allocator:
    global _ALLOCATOR
    if _ALLOCATOR is None:
        _ALLOCATOR = _Allocator()
    return _ALLOCATOR


def port_range(count: int) -> int:
    """The first of ``count`` consecutive free loopback ports reserved for this process."""
    return _allocator().take(count)


def free_port() -> int:
    """One free loopback port reserved for this process."""
    return port_range(1)


def free_endpoint() -> str:
    """``tcp://127.0.0.1:PORT`` on a port reserved for this process."""
    return f"tcp://127.0.0.1:{free_port()}"
