"""tests/ports.py: port blocks below the ephemeral range, one process per block."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests import ports

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from tests import ports
print(ports.port_range(15), flush=True)
sys.stdin.read()  # hold the block until the parent closes our stdin
"""


def _block_of(port: int) -> int:
    return (port - ports.LOWEST_PORT) // ports.BLOCK_PORTS


def test_ports_are_below_the_ephemeral_range_and_never_repeat() -> None:
    got = [ports.free_port() for _ in range(5)] + [ports.port_range(15)]
    assert len(set(got)) == len(got)
    assert all(ports.LOWEST_PORT <= p < ports._ephemeral_low() for p in got)


def test_a_port_someone_holds_is_skipped() -> None:
    base = ports.port_range(1)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", base + 1))
        nxt = ports.port_range(2)
    assert nxt >= base + 2  # base + 1 was held: the pair starts after it


def test_two_processes_never_share_a_block() -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD], cwd=ROOT, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        theirs = int(child.stdout.readline())
        contender = ports._Allocator(first_block=_block_of(theirs))  # aims at their block
        ours = contender.take(15)
        assert _block_of(ours) != _block_of(theirs)
        for lock in contender.locks:
            lock.close()
    finally:
        child.communicate("", timeout=30)
    assert child.returncode == 0
