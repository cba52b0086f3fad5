"""Generic safety checkers for replicated logs, fed from notification streams.

Theory of operation
-------------------
Each class holds one property and has the simulator's checker shape
(:class:`simulator.scenario.Checker`)::

    on_notification(node_id, note, time_ns)   called for every notification
    check_during(world) -> list[str]          polled periodically
    check_final(world) -> list[str]           once, at the end of the run

Each returns violation strings; a violation found while notifications arrive
is reported once, by the next ``check_during`` (or ``check_final``). The
checkers do not know any protocol's notification types: the caller passes a
notification ``kind`` and an *extractor*, a function from the notification to
the few values the property needs (or None to ignore that notification). For
the Paxos core, for example::

    OneValuePerSlot("paxos.chosen", lambda n: (n.data.index, n.data.value))
    AppliedPrefix("paxos.applied", lambda n: (n.data.index, n.data.commands),
                  restore_kind="paxos.restored", restore=lambda n: n.data)
    NoDuplicateApply("paxos.applied", lambda n: [
        ((c.client_id, c.seq), n.data.index) for c in n.data.commands if c.fresh])
    AckedNotLost(ack_kind="paxos.result",
                 ack=lambda n: ((n.data.client_id, n.data.seq), n.data.index)
                 if n.data.ok and n.data.index else None,
                 log_kind="paxos.chosen",
                 log=lambda n: (n.data.index,
                                [(c.client_id, c.seq) for c in n.data.value.cmds]))

The properties:

* :class:`OneValuePerSlot`: no two nodes learn different values for a slot.
* :class:`AppliedPrefix`: every node applies slots 1, 2, 3... with no gap (a
  restore, e.g. a snapshot install, moves a node to a given index), and all
  nodes apply the same value at each index -- so every node's applied sequence
  is a prefix of every other's. A node may apply an index again (after a
  restart that lost its in-memory state) only with the same value.
* :class:`NoDuplicateApply`: no command id is executed at two log indices.
* :class:`AckedNotLost`: every acknowledged command is in the log at the
  index it was acknowledged with (checked as soon as that slot is known, and
  at the end for acks whose slot no node ever reported).

Values are compared with ``==``; messages are built in a deterministic order
(sorted), so the same run gives the same strings.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import Any

from meshfaas.core.types import NodeId, Notification
from simulator.scenario import Checker
from simulator.world import World

SlotValue = Callable[[Notification], "tuple[int, Any] | None"]
"""Extracts (log index, value) from a notification, or None to ignore it."""


class _Reporting(Checker):
    """Collects violations as notifications arrive; each poll hands over the new ones."""

    def __init__(self) -> None:
        self.found: list[str] = []
        self.total = 0

    def report(self, violation: str) -> None:
        self.found.append(violation)
        self.total += 1

    def check_during(self, world: World) -> list[str]:
        found, self.found = self.found, []
        return found

    def check_final(self, world: World) -> list[str]:
        return self.check_during(world)


class OneValuePerSlot(_Reporting):
    """At most one value is chosen per slot, whoever learns it."""

    name = "one-value-per-slot"

    def __init__(self, kind: str, chosen: SlotValue) -> None:
        super().__init__()
        self.kind = kind
        self.chosen = chosen
        self.first: dict[int, tuple[Any, NodeId, int]] = {}  # slot -> (value, node, time_ns)

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        got = self.chosen(note) if note.kind == self.kind else None
        if got is None:
            return
        slot, value = got
        first = self.first.setdefault(slot, (value, node_id, time_ns))
        if first[0] != value:
            self.report(
                f"slot {slot}: {node_id} learned {value!r} at {time_ns} ns but "
                f"{first[1]} learned {first[0]!r} at {first[2]} ns"
            )


class AppliedPrefix(_Reporting):
    """Every node applies the same values at the same indices, in order, without gaps."""

    name = "applied-prefix"

    def __init__(
        self,
        kind: str,
        applied: SlotValue,
        *,
        restore_kind: str | None = None,
        restore: Callable[[Notification], int | None] | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.applied = applied
        self.restore_kind = restore_kind
        self.restore = restore
        self.last: dict[NodeId, int] = {}  # node -> last index it applied (or restored to)
        self.values: dict[int, tuple[Any, NodeId]] = {}  # index -> (value, first node)

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == self.restore_kind and self.restore is not None:
            index = self.restore(note)
            if index is not None:
                self.last[node_id] = index
        if note.kind != self.kind:
            return
        got = self.applied(note)
        if got is not None:
            self._on_applied(node_id, got[0], got[1], time_ns)

    def _on_applied(self, node_id: NodeId, index: int, value: Any, time_ns: int) -> None:
        last = self.last.get(node_id, 0)
        if index > last + 1:
            self.report(f"{node_id} applied index {index} after {last} at {time_ns} ns (a gap)")
        self.last[node_id] = index
        first = self.values.setdefault(index, (value, node_id))
        if first[0] != value:
            self.report(
                f"index {index}: {node_id} applied {value!r} at {time_ns} ns but "
                f"{first[1]} applied {first[0]!r}"
            )


class NoDuplicateApply(_Reporting):
    """No command is executed at two different log indices."""

    name = "no-duplicate-apply"

    def __init__(
        self, kind: str, executed: Callable[[Notification], Iterable[tuple[Hashable, int]]]
    ) -> None:
        super().__init__()
        self.kind = kind
        self.executed = executed  # -> (command id, index) for each command executed
        self.where: dict[Hashable, int] = {}

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind != self.kind:
            return
        for command_id, index in self.executed(note):
            first = self.where.setdefault(command_id, index)
            if first != index:
                self.report(
                    f"command {command_id!r} executed at index {index} on {node_id} "
                    f"at {time_ns} ns, and before at index {first}"
                )


class AckedNotLost(_Reporting):
    """Every acknowledged command is in the log at the index it was acknowledged with."""

    name = "no-acked-lost"

    def __init__(
        self,
        *,
        ack_kind: str,
        ack: Callable[[Notification], tuple[Hashable, int] | None],
        log_kind: str,
        log: Callable[[Notification], tuple[int, Iterable[Hashable]] | None],
    ) -> None:
        super().__init__()
        self.ack_kind, self.ack = ack_kind, ack
        self.log_kind, self.log = log_kind, log
        self.acked: dict[Hashable, tuple[int, NodeId, int]] = {}  # id -> (index, node, time)
        self.slots: dict[int, frozenset[Hashable]] = {}  # index -> command ids in it
        self.reported: set[Hashable] = set()

    def on_notification(self, node_id: NodeId, note: Notification, time_ns: int) -> None:
        if note.kind == self.ack_kind:
            got = self.ack(note)
            if got is not None:
                self.acked.setdefault(got[0], (got[1], node_id, time_ns))
                self._verify(got[0])
        if note.kind == self.log_kind:
            entry = self.log(note)
            if entry is not None:
                self.slots.setdefault(entry[0], frozenset(entry[1]))
                for command_id in self._acked_at(entry[0]):
                    self._verify(command_id)

    def _acked_at(self, index: int) -> list[Hashable]:
        return sorted((c for c, a in self.acked.items() if a[0] == index), key=repr)

    def _verify(self, command_id: Hashable) -> None:
        index, node_id, time_ns = self.acked[command_id]
        slot = self.slots.get(index)
        if slot is None or command_id in slot or command_id in self.reported:
            return
        self.reported.add(command_id)
        self.report(
            f"command {command_id!r} acknowledged by {node_id} at {time_ns} ns at index "
            f"{index}, but index {index} holds {sorted(slot, key=repr)!r}"
        )

    def check_final(self, world: World) -> list[str]:
        unknown = sorted((c for c, a in self.acked.items() if a[0] not in self.slots), key=repr)
        for command_id in unknown:
            index, node_id, time_ns = self.acked[command_id]
            self.report(
                f"command {command_id!r} acknowledged by {node_id} at {time_ns} ns at index "
                f"{index}, but no node ever reported index {index} in the log"
            )
        return self.check_during(world)
