"""The router: tables for the pure maths, Hypothesis for the promises."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfaas.core.router import (
    PeerView,
    RouteRequest,
    cost_bp,
    has_room,
    pick,
    pick_random,
    reserved_shares,
)

PY = "python3.11"
REQ = RouteRequest(function="f", warm_key="f:$LATEST", runtime=PY)


def peer(node: str, load: int = 0, *, state: str = "alive", capacity: int = 10,
         warm: bool = False, runtimes: tuple[str, ...] = (PY,), running: dict[str, int] | None = None
         ) -> PeerView:
    return PeerView(node=node, state=state, runtimes=frozenset(runtimes),  # type: ignore[arg-type]
                    capacity=capacity, load=load,
                    warm=frozenset({"f:$LATEST"}) if warm else frozenset(),
                    running=running or {})


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

SHARE_CASES = [
    # capacities, total, expected shares
    ({"a": 10, "b": 10}, 4, {"a": 2, "b": 2}),
    ({"a": 10, "b": 10}, 3, {"a": 2, "b": 1}),
    ({"a": 10, "b": 10, "c": 10}, 1, {"a": 1, "b": 0, "c": 0}),
    ({"a": 30, "b": 10}, 4, {"a": 3, "b": 1}),
    ({"a": 30, "b": 10}, 5, {"a": 4, "b": 1}),
    ({"a": 10}, 0, {"a": 0}),
    ({}, 5, {}),
]


@pytest.mark.parametrize(("capacities", "total", "expected"), SHARE_CASES)
def test_reserved_shares_table(capacities: dict[str, int], total: int, expected: dict[str, int]) -> None:
    peers = [peer(n, capacity=c) for n, c in capacities.items()]
    assert reserved_shares(peers, PY, total) == expected


def test_reserved_shares_skip_dead_and_other_runtimes() -> None:
    peers = [peer("a"), peer("b", state="dead"), peer("c", runtimes=("python3.12",)),
             peer("d", state="suspect")]
    assert reserved_shares(peers, PY, 5) == {"a": 3, "d": 2}


ROOM_CASES: list[tuple[dict[str, Any], str, bool]] = [
    ({"load": 10, "running": {"f": 1}}, "f", False),
    ({"load": 10}, "g", False),
    # f has 4 reserved of which this node's share is 2 (two equal nodes)
    ({"load": 1, "running": {"f": 1}}, "f", True),
    ({"load": 2, "running": {"f": 2}}, "f", False),
    # the unreserved pool is capacity 10 - share 2 = 8
    ({"load": 7}, "g", True),
    ({"load": 8}, "g", False),
    ({"load": 9, "running": {"f": 2}}, "g", True),
]


@pytest.mark.parametrize(("fields", "function", "expected"), ROOM_CASES)
def test_has_room_table(fields: dict[str, Any], function: str, expected: bool) -> None:
    me = peer("a", **fields)
    shares = {"f": reserved_shares([me, peer("b")], PY, 4)}
    assert has_room(me, function, shares) is expected


@pytest.mark.parametrize(
    ("load", "capacity", "warm", "expected"),
    [(0, 10, True, 0), (0, 10, False, 2500), (5, 10, True, 5000), (10, 10, False, 12_500),
     (1, 3, True, 3333)],
)
def test_cost_table(load: int, capacity: int, warm: bool, expected: int) -> None:
    assert cost_bp(peer("a", load, capacity=capacity, warm=warm), "f:$LATEST") == expected


PICK_CASES: list[tuple[list[PeerView], RouteRequest, str | None, str]] = [
    ([], REQ, None, "no_runtime"),
    ([peer("a", runtimes=("python3.12",))], REQ, None, "no_runtime"),
    ([peer("a", state="dead")], REQ, None, "no_runtime"),
    ([peer("a")], RouteRequest(function="f", warm_key="k", runtime=PY, exclude=frozenset({"a"})),
     None, "all_excluded"),
    ([peer("a", load=10)], REQ, None, "throttled"),
    ([peer("a")], REQ, "a", "ok"),
    ([peer("a", load=9), peer("b", load=0)], REQ, "b", "ok"),
    ([peer("a", state="suspect"), peer("b", load=9)], REQ, "b", "ok"),
    ([peer("a", state="suspect"), peer("b", load=10)], REQ, "a", "ok"),
    ([peer("a", load=3, warm=True), peer("b", load=3)], REQ, "a", "ok"),
    ([peer("a", load=2), peer("b", load=3, warm=True)], REQ, "b", "ok"),
    ([peer("a", load=0), peer("b", load=9, warm=True)], REQ, "a", "ok"),
]


@pytest.mark.parametrize(("peers", "request_", "node", "reason"), PICK_CASES)
def test_pick_table(peers: list[PeerView], request_: RouteRequest, node: str | None, reason: str) -> None:
    decision = pick(peers, request_, random.Random(7))
    assert (decision.node, decision.reason) == (node, reason)


def test_reserved_zero_is_always_throttled() -> None:
    decision = pick([peer("a"), peer("b")], REQ, random.Random(1), reservations={"f": (PY, 0)})
    assert decision.reason == "throttled"


def test_reserved_concurrency_holds_across_the_mesh() -> None:
    """Route 100 invocations that never finish: exactly R start, mesh-wide."""
    peers = {n: peer(n, capacity=10) for n in ("a", "b", "c")}
    rng = random.Random(3)
    started = 0
    for _ in range(100):
        decision = pick(list(peers.values()), REQ, rng, reservations={"f": (PY, 5)})
        if decision.node is None:
            assert decision.reason == "throttled"
            continue
        p = peers[decision.node]
        running = dict(p.running)
        running["f"] = running.get("f", 0) + 1
        peers[decision.node] = PeerView(node=p.node, state=p.state, runtimes=p.runtimes,
                                        capacity=p.capacity, load=p.load + 1, running=running)
        started += 1
    assert started == 5


def test_two_choices_spreads_load() -> None:
    """With equal nodes and stale (unchanging) loads, no node takes everything."""
    peers = [peer(n) for n in "abcd"]
    rng = random.Random(5)
    counts = Counter(pick(peers, REQ, rng).node for _ in range(400))
    assert len(counts) == 4 and max(counts.values()) < 200


LOCAL_CASES = [
    # the entry node "a" and the others, what the entry picks
    ([peer("a", 3, warm=True), peer("b", 3, warm=True), peer("c", 3, warm=True)], {"a"}),
    ([peer("a", 4, warm=True), peer("b", 3, warm=True)], {"a"}),  # 10% dearer: within the hop
    ([peer("a", 6, warm=True), peer("b", 3, warm=True)], {"b"}),  # 30% dearer: forward
    ([peer("a", 0), peer("b", 0, warm=True)], {"b"}),  # a cold start costs more than a hop
    ([peer("a", 10, warm=True), peer("b", 9, warm=True)], {"b"}),  # full here
    ([peer("a", 0, state="suspect"), peer("b", 5)], {"b"}),  # alive peers first
    ([peer("a", 2, warm=True)], {"a"}),
]


@pytest.mark.parametrize(("peers", "expected"), LOCAL_CASES)
def test_the_entry_node_runs_it_unless_another_is_clearly_cheaper(
        peers: list[PeerView], expected: set[str]) -> None:
    for seed in range(20):
        assert pick(peers, REQ, random.Random(seed), local="a").node in expected


def test_locality_does_not_herd_the_entries_onto_one_peer() -> None:
    """Every entry full: each forwards, and the forwards spread over the others."""
    peers = [peer("a", 10)] + [peer(n, 2, warm=True) for n in "bcde"]
    rng = random.Random(3)
    counts = Counter(pick(peers, REQ, rng, local="a").node for _ in range(400))
    assert set(counts) == set("bcde") and max(counts.values()) < 200


def test_pick_is_deterministic_for_a_seed() -> None:
    peers = [peer(n, load=i % 3) for i, n in enumerate("abcdefg")]
    first = [pick(peers, REQ, random.Random(11)).node for _ in range(5)]
    again = [pick(list(reversed(peers)), REQ, random.Random(11)).node for _ in range(5)]
    assert first == again


def test_pick_random_baseline() -> None:
    peers = [peer("a"), peer("b", state="dead"), peer("c", runtimes=("python3.12",))]
    assert pick_random(peers, REQ, random.Random(1)).node == "a"
    assert pick_random([], REQ, random.Random(1)).reason == "no_runtime"


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

peer_views = st.builds(
    peer,
    node=st.sampled_from("abcdefgh"),
    load=st.integers(0, 12),
    state=st.sampled_from(["alive", "suspect", "dead"]),
    capacity=st.integers(1, 10),
    warm=st.booleans(),
    runtimes=st.sampled_from([(PY,), ("python3.12",), (PY, "python3.12")]),
)
meshes = st.lists(peer_views, max_size=8, unique_by=lambda p: p.node)


@given(meshes, st.frozensets(st.sampled_from("abcdefgh")), st.integers(0, 2**32))
def test_never_dead_excluded_without_runtime_or_full(
    peers: list[PeerView], exclude: frozenset[str], seed: int
) -> None:
    request = RouteRequest(function="f", warm_key="f:$LATEST", runtime=PY, exclude=exclude)
    decision = pick(peers, request, random.Random(seed))
    if decision.node is None:
        assert decision.reason != "ok"
        return
    chosen = next(p for p in peers if p.node == decision.node)
    assert chosen.state != "dead" and chosen.node not in exclude
    assert PY in chosen.runtimes and chosen.load < chosen.capacity
    if any(p.state == "alive" and p.node not in exclude and PY in p.runtimes
           and p.load < p.capacity for p in peers):
        assert chosen.state == "alive"


@given(st.integers(2, 8), st.integers(0, 9), st.integers(1, 7), st.integers(0, 2**32))
def test_prefers_warm_when_loads_are_equal(n: int, load: int, warm_count: int, seed: int) -> None:
    warm_nodes = set("abcdefgh"[: min(warm_count, n - 1)])
    peers = [peer(c, load, warm=c in warm_nodes) for c in "abcdefgh"[:n]]
    decision = pick(peers, REQ, random.Random(seed))
    assert decision.node in warm_nodes


@given(meshes, st.integers(0, 20), st.integers(0, 2**32))
def test_shares_sum_to_the_reservation(peers: list[PeerView], total: int, seed: int) -> None:
    shares = reserved_shares(peers, PY, total)
    if shares and any(p.capacity > 0 for p in peers if p.node in shares):
        assert sum(shares.values()) == total
    assert all(v >= 0 for v in shares.values())
    assert shares == reserved_shares(random.Random(seed).sample(peers, len(peers)), PY, total)
