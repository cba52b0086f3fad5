"""Helpers shared by the sandbox tests (imported by conftest and the test modules)."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sandbox.executor import find_nsjail

HANDLERS = Path(__file__).parent / "handlers"
UID_BASE = 230_000
MAX_SANDBOXES = 24


@functools.cache
def nsjail_problem() -> str | None:
    """None when a trivial jail runs here; otherwise why not."""
    try:
        path = find_nsjail(None)
        done = subprocess.run(
            [path, "--mode", "o", "--quiet", "--user", "65534:65534:1", "--group", "65534:65534:1",
             "-R", "/usr", "-R", "/lib", "-R", "/lib64", "--", "/usr/bin/true"],
            capture_output=True, text=True, timeout=20)
    except Exception as exc:
        return f"nsjail could not be run: {exc!r}"
    if done.returncode != 0:
        return f"nsjail exit {done.returncode}: {done.stderr.strip()[-500:]}"
    return None


def require_nsjail() -> None:
    problem = nsjail_problem()
    if problem:
        message = f"!!! SANDBOX TESTS SKIPPED: nsjail cannot run on this host: {problem} !!!"
        print(message, file=sys.stderr)
        warnings.warn(message, stacklevel=2)
        pytest.skip(message)


def sandbox_uid_processes(uid_base: int = UID_BASE, count: int = MAX_SANDBOXES + 4) -> list[int]:
    """Host pids of processes running as any sandbox uid (must be none once sandboxes are gone)."""
    return [pid for pid, _ in sandbox_processes(uid_base, count)]


def processes_per_jail(uid_base: int = UID_BASE, count: int = MAX_SANDBOXES + 4) -> Counter[str]:
    """How many sandbox-uid processes each jail holds, a jail told by its pid namespace.

    Not by uid: every test suite on the host numbers its sandboxes' uids from the
    same base, so another suite running at the same time has processes under the
    same uids (a fork bomb capped at 32 was once counted 33 that way).
    """
    jails: Counter[str] = Counter()
    for pid, _ in sandbox_processes(uid_base, count):
        try:
            jails[os.readlink(f"/proc/{pid}/ns/pid")] += 1
        except OSError:  # exited since it was listed
            continue
    return jails


def sandbox_processes(uid_base: int = UID_BASE, count: int = MAX_SANDBOXES + 4) -> list[tuple[int, int]]:
    """(host pid, uid) of processes running as any sandbox uid."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                real = int(line.split()[1])
                if uid_base <= real < uid_base + count:
                    pids.append((int(entry), real))
    return pids


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Poll a condition with a deadline (no bare sleeps in tests)."""
    with trio.move_on_after(timeout_s):
        while not predicate():
            await trio.sleep(0.02)
        return True
    return predicate()
