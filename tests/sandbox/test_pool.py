"""Table tests for the warm pool's bookkeeping (no processes)."""

from __future__ import annotations

import pytest

from sandbox.pool import WarmPool


def pool(max_per_function: int = 2, max_total: int = 3, idle_expiry_s: float = 10.0) -> WarmPool[str]:
    return WarmPool(max_per_function=max_per_function, max_total=max_total, idle_expiry_s=idle_expiry_s)


def test_take_returns_none_when_cold_then_the_sandbox_put_back() -> None:
    p = pool()
    assert p.take("f") is None
    assert p.reserve("f").granted
    p.put("f", "s1", now_s=0.0)
    assert p.warm_counts() == {"f": 1}
    assert p.take("f") == "s1"
    assert p.take("f") is None  # one invocation at a time: it is out of the pool now
    assert p.live("f") == 1


def test_max_per_function_counts_busy_and_idle() -> None:
    p = pool(max_per_function=2)
    assert p.reserve("f").granted
    assert p.reserve("f").granted
    refused = p.reserve("f")
    assert not refused.granted and refused.full == "function"
    p.release("f")
    assert p.reserve("f").granted


def test_most_recent_idle_is_taken_first() -> None:
    p = pool()
    for name, t in (("old", 1.0), ("new", 2.0)):
        p.reserve("f")
        p.put("f", name, now_s=t)
    assert p.take("f") == "new"


@pytest.mark.parametrize(
    ("now_s", "expected"),
    [(5.0, []), (11.0, ["a"]), (12.0, ["a", "b"]), (100.0, ["a", "b"])],
)
def test_idle_expiry_down_to_zero(now_s: float, expected: list[str]) -> None:
    p = pool(idle_expiry_s=10.0)
    for name, t in (("a", 1.0), ("b", 2.0)):
        p.reserve("f")
        p.put("f", name, now_s=t)
    assert [s for _, s in p.expired(now_s)] == expected
    assert p.live("f") == 2 - len(expected)
    if len(expected) == 2:
        assert p.warm_counts() == {}
        assert p.next_expiry_s() is None


def test_full_node_evicts_least_recently_used_idle_of_another_function() -> None:
    p = pool(max_per_function=3, max_total=2)
    p.reserve("f")
    p.put("f", "f1", now_s=1.0)
    p.reserve("g")
    p.put("g", "g1", now_s=2.0)
    got = p.reserve("h")
    assert got.granted and got.evicted == ("f1",)
    assert p.live("f") == 0 and p.total_live() == 2


def test_full_node_with_only_busy_sandboxes_refuses() -> None:
    p = pool(max_per_function=3, max_total=1)
    p.reserve("f")  # busy, not idle
    got = p.reserve("g")
    assert not got.granted and got.evicted == () and got.full == "node"


def test_release_without_reserve_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        pool().release("f")


def test_drain_empties_everything() -> None:
    p = pool()
    p.reserve("f")
    p.put("f", "s", now_s=0.0)
    assert p.drain() == [("f", "s")]
    assert p.total_live() == 0 and p.warm_counts() == {}
