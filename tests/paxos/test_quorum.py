"""Table tests for the pure quorum, configuration and lease arithmetic."""

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from paxos import quorum


@pytest.mark.parametrize(("n", "q"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(n: int, q: int) -> None:
    assert quorum.majority(n) == q


@pytest.mark.parametrize(("voters", "ayes", "ok"), [
    (("a", "b", "c"), {"a", "b"}, True),
    (("a", "b", "c"), {"a"}, False),
    (("a", "b", "c"), {"a", "x", "y"}, False),  # non-voters never count
    (("a", "b", "c", "d"), {"a", "b"}, False),
    (("a",), {"a"}, True),
])
def test_is_quorum(voters: tuple[str, ...], ayes: set[str], ok: bool) -> None:
    assert quorum.is_quorum(voters, ayes) is ok


CONFIG: quorum.Config = ((1, ("a", "b", "c")), (10, ("b", "c", "d")), (20, ("d",)))


@pytest.mark.parametrize(("slot", "voters"), [
    (1, ("a", "b", "c")), (9, ("a", "b", "c")), (10, ("b", "c", "d")), (19, ("b", "c", "d")),
    (20, ("d",)), (10**9, ("d",)),
])
def test_voters_at(slot: int, voters: tuple[str, ...]) -> None:
    assert quorum.voters_at(CONFIG, slot) == voters


def test_add_change_replaces_later_entries_and_sorts() -> None:
    assert quorum.add_change(CONFIG, 15, ["z", "a"]) == (
        (1, ("a", "b", "c")), (10, ("b", "c", "d")), (15, ("a", "z")))


def test_compact_keeps_the_config_in_force() -> None:
    assert quorum.compact(CONFIG, 12) == ((10, ("b", "c", "d")), (20, ("d",)))
    assert quorum.compact(CONFIG, 0) == CONFIG


def test_all_members_from_a_slot() -> None:
    assert quorum.all_members(CONFIG, 12) == ("b", "c", "d")
    assert quorum.all_members(CONFIG, 1) == ("a", "b", "c", "d")


@pytest.mark.parametrize(("lease", "ppm", "end"), [
    (1000, 0, 1000), (1_000_000, 100, 999_800), (150_000_000, 200, 149_940_000),
])
def test_lease_end_shrinks_by_twice_the_drift(lease: int, ppm: int, end: int) -> None:
    assert quorum.lease_end_ns(0, lease, ppm) == end


@given(st.lists(st.lists(st.sampled_from("abcde"), min_size=1, unique=True), min_size=1,
                max_size=6),
       st.integers(1, 5), st.integers(1, 60))
def test_a_slot_has_one_config_so_its_quorums_intersect(
        changes: list[list[str]], alpha: int, slot: int) -> None:
    """Under the alpha window every slot has exactly one voter set: any two of its
    quorums share a voter, however the changes are spread (no two disjoint majorities)."""
    config: quorum.Config = ((1, ("a", "b", "c")),)
    for i, voters in enumerate(changes):
        config = quorum.add_change(config, (i + 1) * 3 + alpha, voters)
    voters = quorum.voters_at(config, slot)
    quorums = [set(q) for size in range(len(voters) + 1)
               for q in itertools.combinations(voters, size) if quorum.is_quorum(voters, q)]
    assert quorums
    assert all(q1 & q2 for q1 in quorums for q2 in quorums)
