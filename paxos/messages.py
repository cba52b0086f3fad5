"""The Paxos wire messages (tags 200-299, append-only).

A slot's value is a :class:`Batch`: the commands of many clients (batching),
or a voter change, or neither (a no-op that fills a gap). ``Batch.ballot`` is
the ballot of the leader that first proposed it: the fencing token handed to
the application with the applied entry.
"""

from __future__ import annotations

from typing import Any

import attrs

from meshfaas.core.codec import message

Ballot = tuple[int, str]


@message(200)
@attrs.frozen(kw_only=True)
class Command:
    """One client command inside a batch."""

    client_id: str
    seq: int
    payload: Any


@message(201)
@attrs.frozen(kw_only=True)
class Batch:
    """A slot's value: commands, or a new voter set, or a no-op (both empty)."""

    ballot: tuple[int, str]
    cmds: tuple[Command, ...] = ()
    voters: tuple[str, ...] | None = None
    reconfig_client: tuple[str, int] | None = None


@message(202)
@attrs.frozen(kw_only=True)
class Prepare:
    """Phase 1a for every slot from ``from_slot`` on."""

    ballot: tuple[int, str]
    from_slot: int


@message(203)
@attrs.frozen(kw_only=True)
class AcceptedEntry:
    """An acceptor's accepted value at a slot, and whether it knows it is chosen."""

    slot: int
    ballot: tuple[int, str]
    value: Batch
    chosen: bool


@message(204)
@attrs.frozen(kw_only=True)
class Promise:
    """Phase 1b. ``ok=False`` is a refusal carrying the higher ``promised`` (or a lease)."""

    ballot: tuple[int, str]
    ok: bool
    promised: tuple[int, str]
    entries: tuple[AcceptedEntry, ...] = ()
    truncated_upto: int = 0
    chosen_upto: int = 0


@message(205)
@attrs.frozen(kw_only=True)
class Accept:
    """Phase 2a for several slots; ``commit_upto`` piggybacks the leader's chosen prefix."""

    ballot: tuple[int, str]
    entries: tuple[tuple[int, Batch], ...]
    commit_upto: int


@message(206)
@attrs.frozen(kw_only=True)
class Accepted:
    """Phase 2b for ``slots`` (``ok=False``: refused, ``promised`` is higher)."""

    ballot: tuple[int, str]
    slots: tuple[int, ...]
    ok: bool
    promised: tuple[int, str]
    chosen_upto: int


@message(207)
@attrs.frozen(kw_only=True)
class Heartbeat:
    """The leader is alive; slots up to ``commit_upto`` are chosen with this ballot's values."""

    ballot: tuple[int, str]
    commit_upto: int
    hb_id: int


@message(208)
@attrs.frozen(kw_only=True)
class HeartbeatAck:
    ballot: tuple[int, str]
    hb_id: int
    ok: bool
    promised: tuple[int, str]
    chosen_upto: int


@message(209)
@attrs.frozen(kw_only=True)
class Forward:
    """Commands a follower received, for the leader to order."""

    cmds: tuple[Command, ...]
    voters: tuple[str, ...] | None = None
    reconfig_client: tuple[str, int] | None = None


@message(210)
@attrs.frozen(kw_only=True)
class CatchupRequest:
    """Send me chosen slots from ``from_slot`` (or snapshot ``snap_index`` from ``offset``).

    A ``nonce`` above 0 asks for an answer even when nothing is missing: a
    follower syncing with the leader (:meth:`paxos.replica.Replica.sync_with_leader`)."""

    from_slot: int
    snap_index: int
    offset: int
    nonce: int = 0


@message(211)
@attrs.frozen(kw_only=True)
class CatchupEntries:
    """Chosen slots, and the sender's chosen prefix; ``nonce`` echoes the request's
    (0: an answer to a plain catch-up request, or entries the leader pushed)."""

    entries: tuple[tuple[int, Batch], ...]
    chosen_upto: int
    nonce: int = 0


@message(212)
@attrs.frozen(kw_only=True)
class SnapshotChunk:
    """``data`` is bytes ``[offset, offset+len)`` of the snapshot at ``index`` (``total`` long)."""

    index: int
    offset: int
    total: int
    data: bytes


@message(213)
@attrs.frozen(kw_only=True)
class RecoverQuery:
    """A replica that lost its disk asks what ballots and slots exist."""

    nonce: int


@message(214)
@attrs.frozen(kw_only=True)
class RecoverInfo:
    nonce: int
    max_round: int
    max_slot: int
    recovering: bool
