"""Routing: which peer runs an invocation.

Theory of operation
-------------------
An invocation may enter any node. That node calls :func:`pick` with its view
of the mesh (one :class:`PeerView` per member, built from gossip metadata plus
what it has itself sent recently) and a seeded ``random.Random``; ``pick``
answers a :class:`RouteDecision`: a node, or why there is none.

1. Candidates are the members that are not dead, have the function's runtime
   and are not in the request's ``exclude`` set (peers that already refused
   this invocation). None with the runtime: ``no_runtime``; all excluded:
   ``all_excluded``.
2. A candidate must have room (:func:`has_room`), else the answer is
   ``throttled``. Alive members are preferred; a suspect one is used only
   when no alive member has room (SWIM suspects are often alive).
3. Power of two choices: the first candidate is drawn among those holding a
   warm sandbox for the function (``warm_key``, ``"name:version"``) if any,
   else among all; the second among the rest. The one with the lower cost
   wins; cost is utilisation (``load / capacity`` in basis points) plus
   ``cold_penalty_bp`` when not warm; ties go to the warm one, then to the
   first draw (so equal peers share the traffic evenly). Drawing two at random instead of taking the global minimum
   keeps nodes acting on the same stale gossip from all herding onto one
   peer; always offering a warm one means equal loads always pick warm.
4. Locality: when the entry node itself (``local``) is a roomy candidate it is
   always the first draw, and the second is drawn among the others (warm ones
   first). The entry wins unless the other's cost is lower by more than
   ``hop_penalty_bp``: forwarding costs two extra messages on two nodes and a
   network round trip, so it is worth it only to escape a real imbalance.
   Each entry still compares itself with one random peer, so nodes acting on
   the same stale figures do not herd onto one peer.

Reserved concurrency across the mesh
------------------------------------
A function with reserved concurrency ``R`` may run at most ``R`` copies
mesh-wide, and ``R`` slots are kept free for it. Each node's share of ``R`` is
computed the same way on every node from membership (:func:`reserved_shares`):
``R`` split over the non-dead members with the runtime in proportion to their
capacity, largest remainder first, ties by node id. A node runs at most its
share of a reserved function (the executor refuses beyond it, and the router
does not send there), and its unreserved pool is its capacity minus the sum of
its shares. No coordination is needed per invocation; while two nodes see
different membership (a few gossip periods) the total may briefly exceed ``R``
by the share of a node one of them counts and the other does not.

The module is pure: no clock, no IO, randomness only from the ``rng`` argument,
and every collection is sorted before a draw so the outcome does not depend on
hashing.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import attrs

PeerState = Literal["alive", "suspect", "dead"]
Reason = Literal["ok", "no_runtime", "all_excluded", "throttled"]

SCALE_BP = 10_000
DEFAULT_COLD_PENALTY_BP = 2_500  # a cold start weighs like a quarter of a node's capacity
DEFAULT_HOP_PENALTY_BP = 1_000  # forwarding weighs like a tenth of a node's capacity
MAX_ROUTE_ATTEMPTS = 3  # peers tried for one invocation before answering Throttled


@attrs.frozen(kw_only=True)
class PeerView:
    """One member as the router sees it.

    ``capacity`` is the most invocations the node runs at once; ``load`` the
    invocations in flight there (gossip's figure plus what this node sent since);
    ``warm`` the ``name:version`` keys with an idle warm sandbox; ``running``
    in-flight counts of reserved functions (by function name).
    """

    node: str
    state: PeerState
    runtimes: frozenset[str]
    capacity: int
    load: int
    warm: frozenset[str] = frozenset()
    running: Mapping[str, int] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class RouteRequest:
    """What is being routed: the function, its warm key and runtime, peers to avoid."""

    function: str
    warm_key: str
    runtime: str
    exclude: frozenset[str] = frozenset()


@attrs.frozen(kw_only=True)
class RouteDecision:
    node: str | None
    reason: Reason


# ---------------------------------------------------------------------------
# Reserved concurrency
# ---------------------------------------------------------------------------


def reserved_shares(peers: Iterable[PeerView], runtime: str, total: int) -> dict[str, int]:
    """Split ``total`` reserved slots over the non-dead peers with ``runtime``.

    Proportional to capacity, largest remainder first, ties by node id. The
    shares always sum to ``total`` when at least one peer has capacity.
    """
    eligible = sorted(
        (p for p in peers if p.state != "dead" and runtime in p.runtimes and p.capacity > 0),
        key=lambda p: p.node,
    )
    capacity = sum(p.capacity for p in eligible)
    if capacity == 0 or total <= 0:
        return {p.node: 0 for p in eligible}
    shares = {p.node: total * p.capacity // capacity for p in eligible}
    left = total - sum(shares.values())
    by_remainder = sorted(eligible, key=lambda p: (-(total * p.capacity % capacity), p.node))
    for p in by_remainder[:left]:
        shares[p.node] += 1
    return shares


def all_shares(
    peers: Sequence[PeerView], reservations: Mapping[str, tuple[str, int]]
) -> dict[str, dict[str, int]]:
    """Shares for every reserved function: ``{function: {node: share}}``.

    ``reservations`` maps a function name to ``(runtime, reserved_concurrency)``.
    """
    return {
        fn: reserved_shares(peers, runtime, total)
        for fn, (runtime, total) in sorted(reservations.items())
    }


def has_room(peer: PeerView, function: str, shares: Mapping[str, Mapping[str, int]]) -> bool:
    """Whether ``peer`` may start one more invocation of ``function``.

    A reserved function needs its own share free on the peer; any other one
    needs the peer's unreserved pool (capacity minus its shares) free.
    """
    if peer.load >= peer.capacity:
        return False
    if not shares:
        return True
    if function in shares:
        return peer.running.get(function, 0) < shares[function].get(peer.node, 0)
    reserved_here = sum(s.get(peer.node, 0) for s in shares.values())
    reserved_running = sum(peer.running.get(fn, 0) for fn in shares)
    unreserved_load = max(peer.load - reserved_running, 0)
    return unreserved_load < peer.capacity - reserved_here


# ---------------------------------------------------------------------------
# Picking
# ---------------------------------------------------------------------------


def cost_bp(peer: PeerView, warm_key: str, cold_penalty_bp: int = DEFAULT_COLD_PENALTY_BP) -> int:
    """Utilisation in basis points, plus the cold penalty when not warm."""
    utilisation = peer.load * SCALE_BP // max(peer.capacity, 1)
    return utilisation + (0 if warm_key in peer.warm else cold_penalty_bp)


def _better(a: PeerView, b: PeerView, warm_key: str, cold_penalty_bp: int) -> PeerView:
    def key(p: PeerView) -> tuple[int, int]:
        return (cost_bp(p, warm_key, cold_penalty_bp), 0 if warm_key in p.warm else 1)

    return a if key(a) <= key(b) else b


def two_choices(
    pool: Sequence[PeerView], warm_key: str, rng: random.Random,
    cold_penalty_bp: int = DEFAULT_COLD_PENALTY_BP,
) -> PeerView:
    """Power of two choices over ``pool`` (non-empty), the first draw among warm peers."""
    ordered = sorted(pool, key=lambda p: p.node)
    warm = [p for p in ordered if warm_key in p.warm]
    first = rng.choice(warm or ordered)
    rest = [p for p in ordered if p.node != first.node]
    if not rest:
        return first
    return _better(first, rng.choice(rest), warm_key, cold_penalty_bp)


def local_or_other(
    local: PeerView, pool: Sequence[PeerView], warm_key: str, rng: random.Random,
    cold_penalty_bp: int = DEFAULT_COLD_PENALTY_BP, hop_penalty_bp: int = DEFAULT_HOP_PENALTY_BP,
) -> PeerView:
    """The entry node against one other candidate (warm ones drawn first); see step 4."""
    others = sorted((p for p in pool if p.node != local.node), key=lambda p: p.node)
    if not others:
        return local
    warm = [p for p in others if warm_key in p.warm]
    other = rng.choice(warm or others)
    local_cost = cost_bp(local, warm_key, cold_penalty_bp)
    return other if cost_bp(other, warm_key, cold_penalty_bp) + hop_penalty_bp < local_cost else local


def candidates(peers: Iterable[PeerView], request: RouteRequest) -> tuple[list[PeerView], Reason]:
    """Non-dead peers with the runtime, minus the excluded ones, sorted by node id."""
    with_runtime = [p for p in peers if p.state != "dead" and request.runtime in p.runtimes]
    if not with_runtime:
        return [], "no_runtime"
    chosen = sorted((p for p in with_runtime if p.node not in request.exclude), key=lambda p: p.node)
    return chosen, ("ok" if chosen else "all_excluded")


def pick(
    peers: Sequence[PeerView],
    request: RouteRequest,
    rng: random.Random,
    *,
    reservations: Mapping[str, tuple[str, int]] | None = None,
    cold_penalty_bp: int = DEFAULT_COLD_PENALTY_BP,
    local: str | None = None,
    hop_penalty_bp: int = DEFAULT_HOP_PENALTY_BP,
) -> RouteDecision:
    """Choose the peer to run ``request`` (see the module docstring).

    ``local`` names the entry node: when it is an alive candidate with room it
    is preferred unless another is cheaper by more than ``hop_penalty_bp``.
    """
    pool, reason = candidates(peers, request)
    if not pool:
        return RouteDecision(node=None, reason=reason)
    shares = all_shares(peers, reservations) if reservations else {}
    roomy = [p for p in pool if has_room(p, request.function, shares)]
    if not roomy:
        return RouteDecision(node=None, reason="throttled")
    alive = [p for p in roomy if p.state == "alive"]
    pool = alive or roomy
    here = next((p for p in pool if p.node == local), None)
    if here is not None:
        chosen = local_or_other(here, pool, request.warm_key, rng, cold_penalty_bp, hop_penalty_bp)
    else:
        chosen = two_choices(pool, request.warm_key, rng, cold_penalty_bp)
    return RouteDecision(node=chosen.node, reason="ok")


def pick_random(peers: Sequence[PeerView], request: RouteRequest, rng: random.Random) -> RouteDecision:
    """The baseline for benchmarks: any live candidate with the runtime, uniformly."""
    pool, reason = candidates(peers, request)
    alive = [p for p in pool if p.state == "alive"] or pool
    if not alive:
        return RouteDecision(node=None, reason=reason)
    return RouteDecision(node=rng.choice(alive).node, reason="ok")
