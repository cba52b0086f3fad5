"""Table tests for the shared vocabulary: Outbox batches and keyed deadlines."""

import pytest

from meshfaas.core.types import Deadlines, NodeId, Now, Outbox, Ready


def test_now_after_moves_both_clocks():
    assert Now(mono_ns=5, wall_ns=10).after(3) == Now(mono_ns=8, wall_ns=13)


def test_outbox_empty_gives_none_and_keeps_seq():
    out = Outbox()
    assert out.take() is None
    assert out.last_seq == 0


def test_outbox_after_persist_sends_wait_only_when_something_is_persisted():
    out = Outbox()
    out.send_after_persist(NodeId("b"), "m1")
    ready = out.take()
    assert ready is not None and ready.seq == 1
    assert [o.msg for o in ready.send_now] == ["m1"]
    assert ready.send_after_persist == ()
    assert not ready.needs_sync

    out.persist("t", 1, "v")
    out.send_after_persist(NodeId("b"), "m2")
    out.send(NodeId("c"), "m3")
    ready = out.take()
    assert ready is not None and ready.seq == 2
    assert [o.msg for o in ready.send_after_persist] == ["m2"]
    assert [o.msg for o in ready.send_now] == ["m3"]
    assert ready.needs_sync


def test_outbox_take_clears():
    out = Outbox()
    out.notify("x", 1)
    first = out.take()
    assert first is not None and [n.kind for n in first.notifications] == ["x"]
    assert out.take() is None


def test_ready_is_empty():
    assert Ready(seq=1).is_empty()


@pytest.mark.parametrize(
    ("sets", "cancels", "now", "due", "next_after"),
    [
        ([("a", 10)], [], 9, [], 10),
        ([("a", 10)], [], 10, ["a"], None),
        ([("a", 10), ("b", 5)], [], 20, ["b", "a"], None),
        ([("a", 10), ("a", 30)], [], 20, [], 30),  # replaced: the old one never fires
        ([("a", 10)], ["a"], 20, [], None),  # cancelled
        ([("b", 7), ("a", 7)], [], 7, ["a", "b"], None),  # ties in key order
    ],
)
def test_deadlines_table(sets, cancels, now, due, next_after):
    d = Deadlines()
    for key, at in sets:
        d.set(key, at)
    for key in cancels:
        d.cancel(key)
    assert d.pop_due(now) == due
    assert d.next_deadline() == next_after


def test_deadlines_set_earliest_keeps_the_earlier():
    d = Deadlines()
    d.set_earliest("k", 10)
    d.set_earliest("k", 20)
    assert d.get("k") == 10
    d.set_earliest("k", 5)
    assert d.get("k") == 5 and len(d) == 1 and "k" in d
