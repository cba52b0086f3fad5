"""Pure arithmetic of SWIM and Lifeguard, kept apart so it can be table-tested.

Theory of operation
-------------------
Every timeout the gossip core uses is computed here from the cluster size and
the local health score; the core only stores the results as deadlines.

* Suspicion (Lifeguard, after memberlist's ``suspicion.go`` and ``util.go``):
  ``min = suspicion_mult * max(1, log10(max(1, n))) * probe_interval`` and
  ``max = max_mult * min``. A suspicion timer starts at ``max`` and, with ``c``
  independent confirmations out of the ``k`` wanted, shrinks to
  ``max - (max - min) * log(c + 1) / log(k + 1)``, never below ``min``, where
  ``k = min(k_wanted, n - 2)``. With ``k < 1`` (a 2-node cluster, or plain
  SWIM) it is ``min`` at once.
* Retransmission: an update is piggybacked at most
  ``retransmit_mult * ceil(log10(n + 1))`` times by each node.
* Local health awareness: a score in ``[0, max_mult - 1]``; probe interval and
  probe timeout are multiplied by ``score + 1``.
* Push-pull: its interval is stretched by ``ceil(log2(n) - log2(32)) + 1`` once
  the cluster is larger than 32, so full-state traffic stays bounded.

All durations are integer nanoseconds; the functions raise ``ValueError`` on
arguments no caller should pass (a caller's misuse).
"""

from __future__ import annotations

import math

PUSH_PULL_SCALE_THRESHOLD = 32


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ValueError(what)


def suspicion_min_ns(suspicion_mult: float, n: int, probe_interval_ns: int) -> int:
    """The shortest suspicion timeout for a cluster of ``n`` members."""
    _require(suspicion_mult > 0 and probe_interval_ns > 0, "multiplier and interval must be > 0")
    node_scale = max(1.0, math.log10(max(1, n)))
    return int(suspicion_mult * node_scale * probe_interval_ns)


def suspicion_max_ns(max_timeout_mult: float, min_ns: int) -> int:
    """The timeout a fresh suspicion starts with: ``max_timeout_mult * min``."""
    _require(max_timeout_mult >= 1, "max timeout multiplier must be >= 1")
    return int(max_timeout_mult * min_ns)


def confirmations_wanted(k: int, n: int) -> int:
    """How many confirmations drive the timer to its minimum.

    With ``n`` members, at most ``n - 2`` others can confirm (not the suspect,
    not the first accuser), so we ask for ``min(k, n - 2)``. (memberlist asks
    for none at all when ``n - 2 < k``, which in a 3-node cluster leaves only
    the minimum timeout for a refutation to travel two gossip hops each way.)
    """
    return max(0, min(k, n - 2))


def suspicion_timeout_ns(confirmations: int, k: int, min_ns: int, max_ns: int) -> int:
    """The total timeout of a suspicion after ``confirmations`` of ``k`` wanted."""
    _require(0 <= min_ns <= max_ns, "need 0 <= min <= max")
    if k < 1:
        return min_ns
    c = max(0, min(confirmations, k))
    frac = math.log(c + 1.0) / math.log(k + 1.0)
    raw = max_ns - frac * (max_ns - min_ns)
    return max(min_ns, math.floor(raw))


def retransmit_limit(retransmit_mult: int, n: int) -> int:
    """How many times one node piggybacks one update in a cluster of ``n``."""
    _require(retransmit_mult >= 1 and n >= 0, "multiplier >= 1 and n >= 0")
    return retransmit_mult * max(1, math.ceil(math.log10(n + 1)))


def awareness_apply(score: int, delta: int, max_mult: int) -> int:
    """The local health score after ``delta``, clamped to ``[0, max_mult - 1]``."""
    _require(max_mult >= 1, "awareness max multiplier must be >= 1")
    return min(max(score + delta, 0), max_mult - 1)


def awareness_scale_ns(duration_ns: int, score: int) -> int:
    """A probe interval or timeout stretched by the local health score."""
    _require(score >= 0, "score must be >= 0")
    return duration_ns * (score + 1)


def push_pull_interval_ns(base_ns: int, n: int) -> int:
    """The push-pull interval stretched for clusters larger than 32."""
    if n <= PUSH_PULL_SCALE_THRESHOLD:
        return base_ns
    mult = math.ceil(math.log2(n) - math.log2(PUSH_PULL_SCALE_THRESHOLD)) + 1
    return mult * base_ns
