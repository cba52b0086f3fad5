"""Deferred chosen marks live in the ``marks`` record (ranges of slots per ballot), not in
rewritten log rows: what a replica writes, what it loads back, and that a range never
marks a row whose value may not be the chosen one."""

from __future__ import annotations

import random
from typing import Any

from meshfaas.core.types import NodeId, Ready
from paxos.kv import KvStateMachine
from paxos.messages import Accept, Batch, Heartbeat
from paxos.replica import (
    COMMIT_NOTICE,
    MAX_MARK_RANGES,
    T_LOG,
    T_META,
    PaxosConfig,
    Replica,
    _Slot,
)
from tests.paxos.test_commit_path import B2, LATER, NOW, accept, follower, put

B1 = (4, "n3")  # an older leader's ballot


def restart(disk: dict[str, dict[Any, Any]]) -> Replica:
    config = PaxosConfig(node_id="n1", voters=("n1", "n2", "n3"))
    return Replica(config, KvStateMachine(), random.Random(1), disk, NOW)


def written(ready: Ready, disk: dict[str, dict[Any, Any]]) -> None:
    for w in ready.persist:
        if w.value is None:
            disk.get(w.table, {}).pop(w.key, None)
        else:
            disk.setdefault(w.table, {})[w.key] = w.value


def value(slot: int) -> Batch:
    return Batch(ballot=B2, cmds=(put("c", slot),))


def test_marks_are_ranges_and_rows_are_written_once() -> None:
    r = follower()
    disk: dict[str, dict[Any, Any]] = {}
    rows = 0
    for slot in range(1, 7):
        r.handle(NodeId("n2"), Accept(ballot=B2, entries=((slot, value(slot)),),
                                      commit_upto=slot - 1), LATER)
        r.on_marks_timer(LATER.mono_ns)  # the deferred marks written with this Accept
        ready = r.take_ready()
        assert ready is not None
        rows += sum(w.table == T_LOG for w in ready.persist)
        written(ready, disk)
        r.on_persisted(ready.seq)  # slot - 1 is learned chosen once this Accept is durable
    r.on_marks_timer(LATER.mono_ns)
    last = r.take_ready()
    assert last is not None and not any(w.table == T_LOG for w in last.persist)
    written(last, disk)
    assert rows == 6  # each value written once, never rewritten for its mark
    assert disk[T_META]["marks"] == [[5, "n2", 1, 5]]  # one growing range
    again = restart(disk)
    assert [again.log[s].chosen for s in range(1, 7)] == [True] * 5 + [False]
    assert again.chosen_upto == 5 and again.sm.query(["get", "k"]) == "c5"


def test_a_range_covers_only_rows_of_its_ballot() -> None:
    disk: dict[str, dict[Any, Any]] = {
        T_META: {"member": 1, "marks": [[5, "n2", 1, 3]]},
        T_LOG: {1: [[5, "n2"], value(1), False], 2: [[4, "n3"], value(2), False],
                3: [[5, "n2"], value(3), False], 4: [[5, "n2"], value(4), False]},
    }
    r = restart(disk)
    assert [r.log[s].chosen for s in range(1, 5)] == [True, False, True, False]
    assert r.chosen_upto == 1  # slot 2 (another ballot's row) is not taken as chosen


def test_rows_marked_the_old_way_still_load_chosen() -> None:
    disk: dict[str, dict[Any, Any]] = {
        T_META: {"member": 1},
        T_LOG: {1: [[5, "n2"], value(1), True], 2: [[5, "n2"], value(2), False]},
    }
    r = restart(disk)
    assert r.chosen_upto == 1 and not r.log[2].chosen


def deferred(r: Replica, slot: int, ballot: tuple[int, str]) -> _Slot:
    """Slot ``slot`` accepted under ``ballot`` and learned chosen, its mark deferred."""
    entry = _Slot(ballot, value(slot), True)
    r.log[slot] = entry
    r.unmarked[slot] = entry
    return entry


def marks_written(r: Replica) -> tuple[list[Any], list[int]]:
    r.on_marks_timer(LATER.mono_ns)
    ready = r.take_ready()
    assert ready is not None
    records = [w.value for w in ready.persist if w.table == T_META and w.key == "marks"]
    return (records[-1] if records else []), sorted(w.key for w in ready.persist
                                                    if w.table == T_LOG)


def test_a_range_does_not_span_a_slot_not_chosen_under_its_ballot() -> None:
    r = follower()
    deferred(r, 1, B2)
    r.log[2] = _Slot(B1, Batch(ballot=B1, cmds=(put("x", 1),)), False)  # older, not chosen
    deferred(r, 3, B2)
    record, rows = marks_written(r)
    assert record == [[5, "n2", 1, 1], [5, "n2", 3, 3]] and rows == []
    r.log[2] = _Slot(B2, value(2), True)  # chosen under B2 (row written when learned)
    deferred(r, 4, B2)
    record, rows = marks_written(r)
    assert record == [[5, "n2", 1, 1], [5, "n2", 3, 4]] and rows == []


def test_past_the_range_limit_a_mark_rewrites_its_row() -> None:
    r = follower()
    for i in range(MAX_MARK_RANGES + 2):
        deferred(r, 2 * i + 1, B2)  # gaps: every mark needs a range of its own
    record, rows = marks_written(r)
    assert len(record) == MAX_MARK_RANGES
    assert rows == [2 * MAX_MARK_RANGES + 1, 2 * MAX_MARK_RANGES + 3]


def test_marks_below_the_truncation_point_are_dropped() -> None:
    r = follower()
    deferred(r, 1, B2)
    marks_written(r)
    r.truncated_upto = 1
    del r.log[1]
    deferred(r, 5, B2)
    record, _rows = marks_written(r)
    assert record == [[5, "n2", 5, 5]]


def test_a_notice_after_restart_marks_the_relearned_slots() -> None:
    r = follower()
    accept(r, 1, commit_upto=0)
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=1, hb_id=COMMIT_NOTICE), LATER)
    assert r.unmarked  # crash before the mark is written: the slot loads as accepted
    disk: dict[str, dict[Any, Any]] = {T_META: {"member": 1},
                                       T_LOG: {1: [[5, "n2"], r.log[1].value, False]}}
    again = restart(disk)
    assert not again.log[1].chosen and again.chosen_upto == 0
