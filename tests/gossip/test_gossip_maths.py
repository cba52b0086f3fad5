"""Table tests for gossip's pure arithmetic (gossip/_maths.py)."""

from __future__ import annotations

import pytest

from gossip import _maths as m

S = 1_000_000_000
MS = 1_000_000


@pytest.mark.parametrize(
    ("mult", "n", "interval_ns", "expected_ns"),
    [
        (4, 1000, S, 12 * S),  # memberlist's LAN defaults at N=1000
        (4, 10, S, 4 * S),
        (4, 1, S, 4 * S),  # node scale never below 1
        (4, 0, S, 4 * S),
        (1, 100, S, 2 * S),
        (1, 1000, 500 * MS, 1500 * MS),
        (2.5, 10_000, S, 10 * S),
    ],
)
def test_suspicion_min(mult: float, n: int, interval_ns: int, expected_ns: int) -> None:
    assert m.suspicion_min_ns(mult, n, interval_ns) == expected_ns


def test_suspicion_max_is_a_multiple_of_min() -> None:
    assert m.suspicion_max_ns(6, 2 * S) == 12 * S
    assert m.suspicion_max_ns(1, 2 * S) == 2 * S


@pytest.mark.parametrize(
    ("k", "n", "expected"),
    [(3, 100, 3), (3, 5, 3), (3, 4, 2), (3, 3, 1), (3, 2, 0), (3, 1, 0), (0, 100, 0), (2, 4, 2)],
)
def test_confirmations_wanted(k: int, n: int, expected: int) -> None:
    assert m.confirmations_wanted(k, n) == expected


@pytest.mark.parametrize(
    ("c", "k", "expected_ns"),
    [
        (0, 3, 12 * S),  # starts at max
        (1, 3, 7 * S),  # log 2 / log 4 = 1/2 of the way down
        (3, 3, 2 * S),  # k confirmations: the minimum
        (9, 3, 2 * S),  # more than k changes nothing
        (0, 0, 2 * S),  # nothing wanted (plain SWIM): the minimum at once
        (5, 0, 2 * S),
        (0, 1, 12 * S),
        (1, 1, 2 * S),
        (-1, 3, 12 * S),
    ],
)
def test_suspicion_timeout(c: int, k: int, expected_ns: int) -> None:
    assert m.suspicion_timeout_ns(c, k, 2 * S, 12 * S) == expected_ns


def test_suspicion_timeout_shrinks_monotonically() -> None:
    values = [m.suspicion_timeout_ns(c, 8, S, 6 * S) for c in range(10)]
    assert values == sorted(values, reverse=True)
    assert values[0] == 6 * S and values[-1] == S
    assert len(set(values[:9])) == 9


@pytest.mark.parametrize(
    ("mult", "n", "expected"),
    [(4, 1000, 16), (4, 999, 12), (4, 10, 8), (4, 9, 4), (4, 0, 4), (3, 99, 6), (3, 100, 9)],
)
def test_retransmit_limit(mult: int, n: int, expected: int) -> None:
    assert m.retransmit_limit(mult, n) == expected


@pytest.mark.parametrize(
    ("score", "delta", "max_mult", "expected"),
    [(0, -1, 8, 0), (7, 1, 8, 7), (3, 2, 8, 5), (0, 10, 8, 7), (5, -9, 8, 0), (0, 1, 1, 0)],
)
def test_awareness_apply(score: int, delta: int, max_mult: int, expected: int) -> None:
    assert m.awareness_apply(score, delta, max_mult) == expected


@pytest.mark.parametrize(
    ("duration_ns", "score", "expected_ns"),
    [(500 * MS, 0, 500 * MS), (500 * MS, 7, 4 * S), (S, 2, 3 * S)],
)
def test_awareness_scale(duration_ns: int, score: int, expected_ns: int) -> None:
    assert m.awareness_scale_ns(duration_ns, score) == expected_ns


@pytest.mark.parametrize(
    ("n", "expected_ns"),
    [(1, 30 * S), (32, 30 * S), (33, 60 * S), (64, 60 * S), (65, 90 * S), (1000, 180 * S)],
)
def test_push_pull_interval(n: int, expected_ns: int) -> None:
    assert m.push_pull_interval_ns(30 * S, n) == expected_ns


@pytest.mark.parametrize(
    "call",
    [
        lambda: m.suspicion_min_ns(0, 10, S),
        lambda: m.suspicion_min_ns(1, 10, 0),
        lambda: m.suspicion_max_ns(0.5, S),
        lambda: m.suspicion_timeout_ns(0, 3, 2 * S, S),
        lambda: m.retransmit_limit(0, 10),
        lambda: m.awareness_apply(0, 1, 0),
        lambda: m.awareness_scale_ns(S, -1),
    ],
)
def test_misuse_raises(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]
