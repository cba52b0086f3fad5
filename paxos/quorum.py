"""Pure arithmetic of quorums, configurations and leases (table-tested).

A configuration history is a sorted tuple of ``(start_slot, voters)``: the
voters of slot ``s`` are those of the last entry whose start is ``<= s``. With
the alpha window, a voter change chosen at slot ``i`` starts at ``i + alpha``,
and the leader never proposes past ``chosen prefix + alpha``, so the voters of
every slot it proposes are already known.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

Config = tuple[tuple[int, tuple[str, ...]], ...]


def majority(n_voters: int) -> int:
    """The smallest quorum of ``n_voters``: more than half."""
    return n_voters // 2 + 1


def is_quorum(voters: Sequence[str], ayes: Iterable[str]) -> bool:
    """True when the voters among ``ayes`` are a majority of ``voters``."""
    members = set(voters)
    return len(members.intersection(ayes)) >= majority(len(members))


def voters_at(config: Config, slot: int) -> tuple[str, ...]:
    """The voters of ``slot`` under the configuration history ``config``."""
    current: tuple[str, ...] = ()
    for start, voters in config:
        if start > slot:
            break
        current = voters
    return current


def add_change(config: Config, start_slot: int, voters: Sequence[str]) -> Config:
    """``config`` with ``voters`` taking over from ``start_slot`` (later entries dropped)."""
    kept = tuple(entry for entry in config if entry[0] < start_slot)
    return (*kept, (start_slot, tuple(sorted(voters))))


def compact(config: Config, upto_slot: int) -> Config:
    """Drop entries superseded at or before ``upto_slot`` (keeps the one in force then)."""
    in_force = [entry for entry in config if entry[0] <= upto_slot]
    later = tuple(entry for entry in config if entry[0] > upto_slot)
    return (*in_force[-1:], *later)


def all_members(config: Config, from_slot: int) -> tuple[str, ...]:
    """Every node that votes at some slot from ``from_slot`` on, sorted."""
    names: set[str] = set(voters_at(config, from_slot))
    for start, voters in config:
        if start > from_slot:
            names.update(voters)
    return tuple(sorted(names))


def lease_end_ns(sent_mono_ns: int, lease_ns: int, max_drift_ppm: int) -> int:
    """Until when (leader's clock) a lease granted by acks of a heartbeat sent then holds.

    A follower that acks refuses other candidates for ``lease_ns`` of its own
    clock after receiving the heartbeat, which is after ``sent``. With every
    clock's rate within ``max_drift_ppm`` of real time, the follower's promise
    lasts at least ``lease_ns * (1 - d)`` real time and the leader's clock runs
    at most ``(1 + d)`` fast, so ``lease_ns * (1 - d) / (1 + d)`` of the
    leader's clock, rounded down by ``(1 - 2d)``, is safe.
    """
    margin = lease_ns * 2 * max_drift_ppm // 1_000_000
    return sent_mono_ns + lease_ns - margin
