"""Tests for simulator.checkers_kv: each checker fed by hand, clean and broken streams."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Any

from meshfaas.core.types import NodeId, Notification
from simulator.checkers_kv import AckedNotLost, AppliedPrefix, NoDuplicateApply, OneValuePerSlot

WORLD: Any = None  # the checkers never look at the world
N1, N2, N3 = NodeId("n1"), NodeId("n2"), NodeId("n3")


def note(kind: str, **data: Any) -> Notification:
    return Notification(kind=kind, data=data)


def slot_value(n: Notification) -> tuple[int, Any] | None:
    return (n.data["index"], n.data["value"]) if "value" in n.data else None


def feed(checker: Any, events: list[tuple[NodeId, Notification]]) -> None:
    for t, (node, n) in enumerate(events):
        checker.on_notification(node, n, 1000 * t)


# ---------------------------------------------------------------------------
# OneValuePerSlot
# ---------------------------------------------------------------------------


def test_one_value_per_slot_accepts_agreement() -> None:
    c = OneValuePerSlot("chosen", slot_value)
    feed(c, [(N1, note("chosen", index=1, value="x")), (N2, note("chosen", index=1, value="x"))])
    feed(c, [(N3, note("chosen", index=2, value="y")), (N1, note("other", index=2, value="z"))])
    assert c.check_during(WORLD) == []
    assert c.check_final(WORLD) == []


def test_one_value_per_slot_reports_a_conflict_once() -> None:
    c = OneValuePerSlot("chosen", slot_value)
    feed(c, [(N1, note("chosen", index=3, value="x")), (N2, note("chosen", index=3, value="y"))])
    found = c.check_during(WORLD)
    assert found == ["slot 3: n2 learned 'y' at 1000 ns but n1 learned 'x' at 0 ns"]
    assert c.check_during(WORLD) == []  # reported once
    assert c.total == 1


def test_extractor_none_ignores_the_notification() -> None:
    c = OneValuePerSlot("chosen", slot_value)
    feed(c, [(N1, note("chosen", index=1, value="x")), (N2, note("chosen", index=1))])
    assert c.check_final(WORLD) == []


# ---------------------------------------------------------------------------
# AppliedPrefix
# ---------------------------------------------------------------------------


def prefix_checker() -> AppliedPrefix:
    return AppliedPrefix(
        "applied", slot_value, restore_kind="restored", restore=lambda n: n.data["index"]
    )


def test_applied_prefix_accepts_nodes_at_different_points() -> None:
    c = prefix_checker()
    feed(
        c,
        [
            (N1, note("applied", index=1, value="a")),
            (N1, note("applied", index=2, value="b")),
            (N2, note("applied", index=1, value="a")),
            (N1, note("applied", index=3, value="c")),
        ],
    )
    assert c.check_final(WORLD) == []


def test_applied_prefix_reports_a_gap() -> None:
    c = prefix_checker()
    feed(c, [(N1, note("applied", index=1, value="a")), (N1, note("applied", index=3, value="c"))])
    assert c.check_during(WORLD) == ["n1 applied index 3 after 1 at 1000 ns (a gap)"]


def test_applied_prefix_allows_a_jump_by_restore() -> None:
    c = prefix_checker()
    feed(c, [(N2, note("restored", index=10)), (N2, note("applied", index=11, value="k"))])
    assert c.check_final(WORLD) == []


def test_applied_prefix_reports_divergence() -> None:
    c = prefix_checker()
    feed(c, [(N1, note("applied", index=1, value="a")), (N2, note("applied", index=1, value="b"))])
    assert c.check_final(WORLD) == ["index 1: n2 applied 'b' at 1000 ns but n1 applied 'a'"]


def test_applied_prefix_allows_reapplying_the_same_values_after_a_restart() -> None:
    c = prefix_checker()
    events = [(N1, note("applied", index=i, value=str(i))) for i in (1, 2, 1, 2, 3)]
    feed(c, events)
    assert c.check_final(WORLD) == []
    feed(c, [(N1, note("applied", index=2, value="other"))])
    assert c.check_final(WORLD) == ["index 2: n1 applied 'other' at 0 ns but n1 applied '2'"]


# ---------------------------------------------------------------------------
# NoDuplicateApply
# ---------------------------------------------------------------------------


def executed(n: Notification) -> Iterable[tuple[Hashable, int]]:
    return [(cmd, n.data["index"]) for cmd in n.data["fresh"]]


def test_no_duplicate_apply_accepts_replicas_executing_the_same_index() -> None:
    c = NoDuplicateApply("applied", executed)
    feed(
        c,
        [
            (N1, note("applied", index=1, fresh=[("c1", 1)])),
            (N2, note("applied", index=1, fresh=[("c1", 1)])),
            (N1, note("applied", index=2, fresh=[("c1", 2), ("c2", 1)])),
            (N1, note("other", index=3, fresh=[("c1", 1)])),
        ],
    )
    assert c.check_final(WORLD) == []


def test_no_duplicate_apply_reports_a_command_at_two_indices() -> None:
    c = NoDuplicateApply("applied", executed)
    feed(
        c,
        [
            (N1, note("applied", index=4, fresh=[("c1", 7)])),
            (N2, note("applied", index=9, fresh=[("c1", 7)])),
        ],
    )
    assert c.check_during(WORLD) == [
        "command ('c1', 7) executed at index 9 on n2 at 1000 ns, and before at index 4"
    ]


# ---------------------------------------------------------------------------
# AckedNotLost
# ---------------------------------------------------------------------------


def acked_checker() -> AckedNotLost:
    return AckedNotLost(
        ack_kind="result",
        ack=lambda n: (n.data["cmd"], n.data["index"]) if n.data["ok"] else None,
        log_kind="chosen",
        log=lambda n: (n.data["index"], n.data["cmds"]),
    )


def test_acked_not_lost_accepts_acks_in_the_log_in_either_order() -> None:
    c = acked_checker()
    feed(
        c,
        [
            (N1, note("chosen", index=1, cmds=["a", "b"])),
            (N1, note("result", cmd="a", index=1, ok=True)),
            (N2, note("result", cmd="c", index=2, ok=True)),  # ack seen before the slot
            (N3, note("chosen", index=2, cmds=["c"])),
            (N3, note("result", cmd="zz", index=0, ok=False)),  # refusals are not acks
        ],
    )
    assert c.check_during(WORLD) == []
    assert c.check_final(WORLD) == []


def test_acked_not_lost_reports_an_ack_whose_slot_holds_something_else() -> None:
    c = acked_checker()
    feed(
        c,
        [
            (N1, note("result", cmd="a", index=5, ok=True)),
            (N2, note("chosen", index=5, cmds=["b"])),
            (N3, note("chosen", index=5, cmds=["b"])),
        ],
    )
    assert c.check_during(WORLD) == [
        "command 'a' acknowledged by n1 at 0 ns at index 5, but index 5 holds ['b']"
    ]
    assert c.check_final(WORLD) == []  # reported once


def test_acked_not_lost_reports_an_ack_whose_slot_never_appeared() -> None:
    c = acked_checker()
    feed(c, [(N1, note("result", cmd="a", index=8, ok=True))])
    assert c.check_during(WORLD) == []
    assert c.check_final(WORLD) == [
        "command 'a' acknowledged by n1 at 0 ns at index 8, but no node ever reported index 8 "
        "in the log"
    ]
