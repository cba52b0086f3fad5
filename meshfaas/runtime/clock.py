"""The Clock port for the real runtime.

:class:`SystemClock` reads the OS (``time.monotonic_ns``, ``time.time_ns``).
:class:`TrioClock` reads trio's clock, so under ``trio.testing.MockClock`` (with
autojump) the cores see virtual time and timeout tests take no real time; its wall
time is the wall time at construction plus the trio time elapsed since.
"""

from __future__ import annotations

import time

import trio

from meshfaas.core.types import NS_PER_S, Now


class SystemClock:
    def now(self) -> Now:
        return Now(mono_ns=time.monotonic_ns(), wall_ns=time.time_ns())


class TrioClock:
    """Monotonic time from ``trio.current_time()`` (call inside ``trio.run``)."""

    def __init__(self, wall_start_ns: int | None = None) -> None:
        self._mono_start_ns = self._trio_ns()
        self._wall_start_ns = time.time_ns() if wall_start_ns is None else wall_start_ns

    @staticmethod
    def _trio_ns() -> int:
        return round(trio.current_time() * NS_PER_S)

    def now(self) -> Now:
        mono = self._trio_ns()
        return Now(mono_ns=mono, wall_ns=self._wall_start_ns + mono - self._mono_start_ns)
