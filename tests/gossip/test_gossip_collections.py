"""BroadcastQueue and IdSet: the containers behind O(1) per-message work."""

from __future__ import annotations

import random

import pytest

from gossip._collections import BroadcastQueue, IdSet
from meshfaas.core.types import NodeId


def n(i: int) -> NodeId:
    return NodeId(f"n{i}")


def test_queue_prefers_least_sent_then_newest() -> None:
    q = BroadcastQueue(100)
    for i in range(4):
        q.enqueue(n(i), f"u{i}")
    assert q.take(2, retransmit_limit=10) == ["u3", "u2"]
    assert q.take(2, retransmit_limit=10) == ["u1", "u0"]  # not yet sent ones first
    third = q.take(3, retransmit_limit=10)
    assert len(set(third)) == 3
    fourth = q.take(3, retransmit_limit=10)
    assert set(third) | set(fourth) == {"u0", "u1", "u2", "u3"}  # all twice before any thrice


def test_queue_keeps_one_update_per_node_and_resets_its_count() -> None:
    q = BroadcastQueue(100)
    q.enqueue(n(1), "old")
    q.enqueue(n(2), "other")
    assert q.take(2, 10) == ["other", "old"]
    q.enqueue(n(1), "new")
    assert len(q) == 2
    assert q.pending(n(1)) == "new"
    assert q.take(1, 10) == ["new"]


def test_queue_drops_an_update_after_the_retransmit_limit() -> None:
    q = BroadcastQueue(100)
    q.enqueue(n(1), "u")
    sent = [q.take(5, retransmit_limit=3) for _ in range(5)]
    assert sent == [["u"], ["u"], ["u"], [], []]
    assert len(q) == 0


def test_urgent_updates_go_before_normal_ones() -> None:
    q = BroadcastQueue(100)
    q.enqueue(n(1), "join1")
    q.enqueue(n(2), "join2")
    q.enqueue(n(3), "dead3", urgent=True)
    assert q.take(1, 10) == ["dead3"]
    assert q.take(3, 10) == ["dead3", "join2", "join1"]


def test_queue_is_bounded_and_evicts_the_most_sent_oldest_normal_update() -> None:
    q = BroadcastQueue(3)
    q.enqueue(n(1), "a", urgent=True)
    q.enqueue(n(2), "b")
    q.enqueue(n(3), "c")
    q.take(3, 10)
    q.enqueue(n(4), "d")
    assert len(q) == 3 and q.dropped == 1
    assert [q.pending(n(2)), q.pending(n(3))].count(None) == 1  # a sent normal entry
    assert q.pending(n(1)) == "a" and q.pending(n(4)) == "d"


def test_queue_refuses_a_zero_bound() -> None:
    with pytest.raises(ValueError):
        BroadcastQueue(0)


def test_idset_add_discard_choice_sample() -> None:
    s = IdSet()
    for i in range(5):
        s.add(n(i))
    s.add(n(2))
    s.discard(n(0))
    s.discard(n(9))
    assert sorted(s) == [n(1), n(2), n(3), n(4)] and len(s) == 4
    rng = random.Random(1)
    assert s.choice(rng) in s
    picked = s.sample(rng, 3, lambda x: x != n(4))
    assert len(picked) == len(set(picked)) <= 3
    assert n(4) not in picked
    assert IdSet().choice(rng) is None
    assert IdSet().sample(rng, 3, lambda x: True) == []
