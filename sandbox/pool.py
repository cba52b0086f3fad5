"""Warm pools: which idle sandboxes exist for which function version.

Theory of operation
-------------------
The pool is bookkeeping only (no IO, time is an argument in seconds of trio's
clock), so its rules are table-tested without processes:

- a sandbox serves one invocation at a time: :meth:`take` hands out an idle
  sandbox and removes it from the pool until :meth:`put` returns it;
- each key (a function version with its exact configuration) has at most
  ``max_per_function`` live sandboxes (idle + busy + starting), counted by
  :meth:`reserve` / :meth:`release`; the node has at most ``max_total``,
  and when full, :meth:`reserve` evicts the least recently used idle sandbox
  of another key (the caller kills it);
- an idle sandbox older than ``idle_expiry_s`` is returned by
  :meth:`expired` for the caller to stop, so a pool shrinks to zero;
- the most recently used idle sandbox is taken first, so the others age out.

A sandbox that timed out, ran out of memory or crashed is never ``put``
back: the executor releases its slot and kills it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, Literal, TypeVar

import attrs

S = TypeVar("S")


@attrs.define
class _Idle(Generic[S]):
    since_s: float
    sandbox: S


@attrs.frozen(kw_only=True)
class Reservation(Generic[S]):
    granted: bool
    evicted: tuple[S, ...] = ()
    full: Literal["", "function", "node"] = ""
    """Why not granted: the function's limit, or the node's (every sandbox busy)."""


class WarmPool(Generic[S]):
    def __init__(self, *, max_per_function: int, max_total: int, idle_expiry_s: float) -> None:
        if max_per_function <= 0 or max_total <= 0:
            raise ValueError("pool limits must be positive")
        self.max_per_function = max_per_function
        self.max_total = max_total
        self.idle_expiry_s = idle_expiry_s
        self._idle: dict[Hashable, list[_Idle[S]]] = {}
        self._live: dict[Hashable, int] = {}

    # -- capacity ---------------------------------------------------------

    def live(self, key: Hashable) -> int:
        return self._live.get(key, 0)

    def total_live(self) -> int:
        return sum(self._live.values())

    def reserve(self, key: Hashable) -> Reservation[S]:
        """Claim a slot for a new sandbox of ``key`` (evicting idle ones of others if needed)."""
        if self.live(key) >= self.max_per_function:
            return Reservation(granted=False, full="function")
        evicted: list[S] = []
        while self.total_live() >= self.max_total:
            victim = self._evict_lru(exclude=key)
            if victim is None:
                return Reservation(granted=False, evicted=tuple(evicted), full="node")
            evicted.append(victim)
        self._live[key] = self.live(key) + 1
        return Reservation(granted=True, evicted=tuple(evicted))

    def release(self, key: Hashable) -> None:
        """A sandbox of ``key`` is gone (killed, expired, failed to start)."""
        count = self.live(key) - 1
        if count < 0:
            raise RuntimeError(f"release without reserve for {key!r}")
        if count:
            self._live[key] = count
        else:
            self._live.pop(key, None)

    def _evict_lru(self, exclude: Hashable) -> S | None:
        oldest: tuple[float, Hashable] | None = None
        for key, idle in self._idle.items():
            if key != exclude and idle and (oldest is None or idle[0].since_s < oldest[0]):
                oldest = (idle[0].since_s, key)
        if oldest is None:
            return None
        key = oldest[1]
        victim = self._idle[key].pop(0).sandbox
        self._forget_if_empty(key)
        self.release(key)
        return victim

    # -- idle sandboxes ---------------------------------------------------

    def take(self, key: Hashable) -> S | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        sandbox = idle.pop().sandbox
        self._forget_if_empty(key)
        return sandbox

    def put(self, key: Hashable, sandbox: S, now_s: float) -> None:
        self._idle.setdefault(key, []).append(_Idle(since_s=now_s, sandbox=sandbox))

    def expired(self, now_s: float) -> list[tuple[Hashable, S]]:
        """Remove and return idle sandboxes past their expiry (their slots are released)."""
        out: list[tuple[Hashable, S]] = []
        for key in list(self._idle):
            idle = self._idle[key]
            while idle and now_s - idle[0].since_s >= self.idle_expiry_s:
                out.append((key, idle.pop(0).sandbox))
                self.release(key)
            self._forget_if_empty(key)
        return out

    def next_expiry_s(self) -> float | None:
        times = [idle[0].since_s + self.idle_expiry_s for idle in self._idle.values() if idle]
        return min(times) if times else None

    def remove_where(self, predicate: Callable[[Hashable], bool]) -> list[tuple[Hashable, S]]:
        """Remove the idle sandboxes whose key matches (their slots are released)."""
        out = []
        for key in [k for k in self._idle if predicate(k)]:
            for entry in self._idle.pop(key):
                out.append((key, entry.sandbox))
                self.release(key)
        return out

    def drain(self) -> list[tuple[Hashable, S]]:
        """Remove every idle sandbox (shutdown); their slots are released."""
        out = [(key, entry.sandbox) for key, idle in self._idle.items() for entry in idle]
        for key, _ in out:
            self.release(key)
        self._idle.clear()
        return out

    def _forget_if_empty(self, key: Hashable) -> None:
        if key in self._idle and not self._idle[key]:
            del self._idle[key]

    # -- stats ------------------------------------------------------------

    def warm_counts(self) -> dict[Hashable, int]:
        """Idle (warm, ready to serve) sandboxes per key."""
        return {key: len(idle) for key, idle in self._idle.items() if idle}

    def live_counts(self) -> dict[Hashable, int]:
        return dict(self._live)
