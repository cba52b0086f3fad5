"""The shared vocabulary of every sans-IO core.

Theory of operation
-------------------
A core (gossip, Paxos, the FaaS state machine, ...) is a deterministic object. It
is driven by three inputs::

    core.handle(src, msg, now)     a message from a peer
    core.command(cmd, now)         a local request (from the node or a client)
    core.tick(now)                 time passed; due deadlines fire

and it never reads a clock, opens a socket or draws from the global random
generator. ``now`` is a :class:`Now` carrying monotonic and wall nanoseconds. A
core keeps its own deadlines (see :class:`Deadlines`) and answers
``next_deadline()`` with the earliest monotonic instant at which it wants a
``tick``; there are no timer effects, so a stale timer can never fire.

Everything a core wants done leaves through ``take_ready()`` as one
:class:`Ready` batch. The driver's contract, the same for the trio runtime and the
simulator, is written once here and tested:

1. write every record of ``ready.persist`` to durable storage and fsync it;
2. only then send ``ready.send_after_persist``;
3. call ``core.on_persisted(ready.seq)``.

``ready.send_now`` may go at once, before or while persisting, because nothing
in it depends on the batch's writes. ``ready.effects`` are work for the driver
(start an invocation, fetch a blob); each result comes back through
``core.on_result(effect_id, result, now)``. ``ready.notifications`` tell the
application what happened (a member died, an entry was committed).

Errors follow three rules: a caller's misuse raises; a peer's bad message never
escapes a core (it is dropped and counted); a failure of the environment (disk,
sandbox) is an explicit result value.
"""

from __future__ import annotations

import heapq
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, NewType, Protocol, runtime_checkable

import attrs

NodeId = NewType("NodeId", str)
"""A node's stable name in the cluster (for example ``"n1"``)."""

NS_PER_MS = 1_000_000
NS_PER_S = 1_000_000_000


@attrs.frozen(order=True)
class Now:
    """One reading of a node's clocks, both in integer nanoseconds.

    ``mono_ns`` only moves forward and is what deadlines are kept in;
    ``wall_ns`` is the Unix time, used for records shown to people and for cron.
    """

    mono_ns: int
    wall_ns: int

    def after(self, delta_ns: int) -> Now:
        """The same clocks ``delta_ns`` later."""
        return Now(mono_ns=self.mono_ns + delta_ns, wall_ns=self.wall_ns + delta_ns)


# ---------------------------------------------------------------------------
# What a core hands back
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Outbound:
    """A message for one peer. ``msg`` is a codec-registered attrs instance."""

    dst: NodeId
    msg: Any


@attrs.frozen(kw_only=True)
class Write:
    """One durable record: ``value`` stored under ``(table, key)``.

    ``value=None`` deletes the record. Values are CBOR-encodable (the codec's
    registered messages, ints, strings, bytes, lists, dicts).
    """

    table: str
    key: Hashable
    value: Any


@attrs.frozen(kw_only=True)
class Effect:
    """Work for the driver. Its result returns via ``on_result(effect_id, ...)``."""

    effect_id: int
    kind: str
    args: Any


@attrs.frozen(kw_only=True)
class EffectResult:
    """The outcome of an :class:`Effect`: ``ok`` and a value, or an error."""

    effect_id: int
    ok: bool
    value: Any = None
    error: str = ""


@attrs.frozen(kw_only=True)
class Notification:
    """Something the application may want to know (``kind`` plus a payload)."""

    kind: str
    data: Any = None


@attrs.frozen(kw_only=True)
class Ready:
    """One batch of output. See the module docstring for the driver's contract.

    ``seq`` increases by one per non-empty batch of a core; ``on_persisted(seq)``
    acknowledges that this batch's ``persist`` is on disk and its
    ``send_after_persist`` has been handed to the transport.
    """

    seq: int
    persist: tuple[Write, ...] = ()
    send_after_persist: tuple[Outbound, ...] = ()
    send_now: tuple[Outbound, ...] = ()
    effects: tuple[Effect, ...] = ()
    notifications: tuple[Notification, ...] = ()

    @property
    def needs_sync(self) -> bool:
        """True when the driver must fsync before ``send_after_persist`` leaves."""
        return bool(self.persist)

    def is_empty(self) -> bool:
        return not (
            self.persist
            or self.send_after_persist
            or self.send_now
            or self.effects
            or self.notifications
        )


class Outbox:
    """The accumulator a core fills between two ``take_ready`` calls.

    A send that must wait for this batch's writes uses :meth:`send_after_persist`;
    one that does not uses :meth:`send`. When nothing was persisted in the batch,
    ``take`` moves after-persist sends to ``send_now``: there is nothing to wait for.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._persist: list[Write] = []
        self._after: list[Outbound] = []
        self._now: list[Outbound] = []
        self._effects: list[Effect] = []
        self._notes: list[Notification] = []

    def persist(self, table: str, key: Hashable, value: Any) -> None:
        self._persist.append(Write(table=table, key=key, value=value))

    def send(self, dst: NodeId, msg: Any) -> None:
        self._now.append(Outbound(dst=dst, msg=msg))

    def send_after_persist(self, dst: NodeId, msg: Any) -> None:
        self._after.append(Outbound(dst=dst, msg=msg))

    def effect(self, effect: Effect) -> None:
        self._effects.append(effect)

    def notify(self, kind: str, data: Any = None) -> None:
        self._notes.append(Notification(kind=kind, data=data))

    @property
    def last_seq(self) -> int:
        return self._seq

    def take(self) -> Ready | None:
        """Hand back everything accumulated as one :class:`Ready`, or None."""
        if not (self._persist or self._after or self._now or self._effects or self._notes):
            return None  # (every pump of every core asks: no helper call here)
        self._seq += 1
        after: tuple[Outbound, ...] = tuple(self._after)
        now: tuple[Outbound, ...] = tuple(self._now)
        if not self._persist:
            now, after = now + after, ()
        ready = Ready(
            seq=self._seq,
            persist=tuple(self._persist),
            send_after_persist=after,
            send_now=now,
            effects=tuple(self._effects),
            notifications=tuple(self._notes),
        )
        self._persist, self._after, self._now = [], [], []
        self._effects, self._notes = [], []
        return ready


# ---------------------------------------------------------------------------
# Deadlines owned by a core
# ---------------------------------------------------------------------------


class Deadlines:
    """Keyed deadlines in monotonic nanoseconds, owned by a core.

    Setting a key replaces its previous deadline; cancelling removes it. Because
    the core asks ``pop_due(now)`` and the stored deadline is the only truth, a
    replaced or cancelled deadline can never fire. Ties fire in key order
    (keys must be mutually orderable, e.g. all tuples of ints and strings), so
    the order never depends on hashing.
    """

    def __init__(self) -> None:
        self._at: dict[Hashable, int] = {}
        self._heap: list[tuple[int, Any]] = []

    def set(self, key: Hashable, at_ns: int) -> None:
        self._at[key] = at_ns
        heapq.heappush(self._heap, (at_ns, key))

    def set_earliest(self, key: Hashable, at_ns: int) -> None:
        """Set ``key`` unless it is already due no later than ``at_ns``."""
        current = self._at.get(key)
        if current is None or at_ns < current:
            self.set(key, at_ns)

    def cancel(self, key: Hashable) -> None:
        self._at.pop(key, None)

    def get(self, key: Hashable) -> int | None:
        return self._at.get(key)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._at

    def __len__(self) -> int:
        return len(self._at)

    def next_deadline(self) -> int | None:
        """The earliest live deadline (stale heap heads, of keys set again or
        cancelled, are dropped on the way; this runs after every input)."""
        heap, at = self._heap, self._at
        while heap:
            head_ns, key = heap[0]
            if at.get(key) == head_ns:
                return head_ns
            heapq.heappop(heap)
        return None

    def pop_due(self, now_ns: int) -> list[Hashable]:
        """Remove and return every key due at or before ``now_ns``, earliest first."""
        due: list[Hashable] = []
        while True:
            head_ns = self.next_deadline()
            if head_ns is None or head_ns > now_ns:
                return due
            _, key = heapq.heappop(self._heap)
            del self._at[key]
            due.append(key)


# ---------------------------------------------------------------------------
# The core contract and the ports the drivers provide
# ---------------------------------------------------------------------------


@runtime_checkable
class Core(Protocol):
    """The one shape every sans-IO core has."""

    def handle(self, src: NodeId, msg: Any, now: Now) -> None: ...

    def command(self, cmd: Any, now: Now) -> Any: ...

    def tick(self, now: Now) -> None: ...

    def next_deadline(self) -> int | None: ...

    def take_ready(self) -> Ready | None: ...

    def on_persisted(self, seq: int) -> None: ...

    def on_result(self, result: EffectResult, now: Now) -> None: ...


class Clock(Protocol):
    """Where a driver reads time. The simulator's clocks start at a large offset and drift."""

    def now(self) -> Now: ...


class Transport(Protocol):
    """Datagram-like delivery of encoded frames to peers.

    ``send`` never blocks: it returns False when the frame was dropped (queue
    full, unknown peer). Protocols tolerate loss, so callers count and move on.
    """

    def send(self, dst: NodeId, frame: bytes) -> bool: ...


class DurableStore(Protocol):
    """A node's durable records, keyed by (table, key).

    ``write`` stages records; ``sync`` makes every staged record durable (fsync).
    After a crash only synced records survive: ``load`` returns exactly those.
    """

    def write(self, writes: Sequence[Write]) -> None: ...

    def sync(self) -> None: ...

    def load(self) -> Mapping[str, Mapping[Hashable, Any]]: ...


def apply_writes(
    tables: dict[str, dict[Hashable, Any]], writes: Iterable[Write]
) -> None:
    """Apply ``writes`` to an in-memory ``{table: {key: value}}`` image."""
    for w in writes:
        table = tables.setdefault(w.table, {})
        if w.value is None:
            table.pop(w.key, None)
        else:
            table[w.key] = w.value
