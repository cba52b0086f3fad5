"""The public face of the Paxos core: the state machine it drives, and its commands.

Theory of operation
-------------------
A :class:`~paxos.replica.Replica` orders commands in a log and applies each
chosen slot, strictly in order, to an application :class:`StateMachine`. The
application talks to the replica only through local commands
(``replica.command(cmd, now)``) and hears back through notifications in the
replica's Ready batches:

==========================  ==================================================
command                     answered by
==========================  ==================================================
:class:`Propose`            a ``paxos.result`` notification (:class:`CommandResult`)
                            once the command is applied here, or at once with
                            ``ok=False`` and ``error="not-leader"`` when no
                            leader is known (retry, the session dedupes)
:class:`Read`               a ``paxos.read`` notification (:class:`ReadResult`):
                            served under the leader's lease, else after one
                            quorum round (read index); ``error="not-leader"``
                            with ``leader_hint`` on a follower
:class:`Reconfigure`        a ``paxos.result`` like a proposal; the new voters
                            take over ``alpha`` slots after the change's slot
:class:`Suspect`            nothing: a hint (from gossip) that a node is dead;
                            a follower suspecting its leader starts an election
:class:`LeaderQuery`        returned directly: a :class:`LeaderInfo` (fencing)
==========================  ==================================================

Every applied slot is also announced as ``paxos.applied`` (:class:`Applied`),
and every slot learned chosen as ``paxos.chosen`` -- the simulator's checkers
and the application's event stream both use them.

Exactly once: a command carries ``(client_id, seq)``; a client has at most one
command in flight and numbers them 1, 2, 3... The replicated session table
keeps each client's last seq and its result, so a retried command is applied
once and its first result is returned. The table is part of every snapshot.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import attrs

Ballot = tuple[int, str]
"""A ballot: (round, node id). Totally ordered; unique because the node id is in it."""

ZERO_BALLOT: Ballot = (0, "")


@runtime_checkable
class StateMachine(Protocol):
    """The replicated application. ``apply`` must be deterministic."""

    def apply(self, index: int, command: Any) -> Any:
        """Apply one command chosen at log ``index``; the return value goes to its client."""
        ...

    def snapshot(self) -> bytes:
        """The whole state as bytes (restore(snapshot()) gives an equal machine)."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace the whole state by a snapshot's."""
        ...


@runtime_checkable
class Queryable(Protocol):
    """A state machine that also answers read-only queries (needed by :class:`Read`)."""

    def query(self, query: Any) -> Any:
        """Answer ``query`` from the current state, with no side effect."""
        ...


# ---------------------------------------------------------------------------
# Local commands (application -> replica). Never on the wire.
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Propose:
    """Order ``payload`` in the log for client ``client_id``, its command number ``seq``."""

    client_id: str
    seq: int
    payload: Any


@attrs.frozen(kw_only=True)
class Read:
    """A linearizable read-only ``query`` (lease, else read index) at the leader."""

    client_id: str
    req_id: int
    query: Any


@attrs.frozen(kw_only=True)
class Reconfigure:
    """Replace the voters; ordered in the log like a proposal (``client_id``, ``seq``)."""

    client_id: str
    seq: int
    voters: tuple[str, ...]


@attrs.frozen(kw_only=True)
class Suspect:
    """A failure detector (gossip) suspects ``node_id``; ``alive=True`` clears it."""

    node_id: str
    alive: bool = False


@attrs.frozen(kw_only=True)
class LeaderQuery:
    """Ask who leads; answered directly with a :class:`LeaderInfo`."""


# ---------------------------------------------------------------------------
# What the replica tells the application
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class LeaderInfo:
    """The replica's view of leadership. ``ballot`` is the fencing token.

    ``is_leader`` and ``lease_valid`` are true only while this node leads under
    ``ballot`` and holds a lease: work done for a leader (cron) should carry
    ``ballot`` and be refused by its target once a higher ballot is known.
    """

    node_id: str
    is_leader: bool
    ballot: Ballot
    leader_hint: str | None
    lease_valid: bool
    applied_index: int
    voters: tuple[str, ...]


@attrs.frozen(kw_only=True)
class CommandResult:
    """The answer to a :class:`Propose` or :class:`Reconfigure`."""

    client_id: str
    seq: int
    ok: bool
    value: Any = None
    error: str = ""
    leader_hint: str | None = None
    index: int = 0
    fencing: Ballot = ZERO_BALLOT


@attrs.frozen(kw_only=True)
class ReadResult:
    """The answer to a :class:`Read`. ``via`` is ``"lease"`` or ``"read-index"``."""

    client_id: str
    req_id: int
    ok: bool
    value: Any = None
    error: str = ""
    leader_hint: str | None = None
    via: str = ""


@attrs.frozen(kw_only=True)
class AppliedCommand:
    """One command of an applied slot: ``fresh`` is False for a deduplicated retry."""

    client_id: str
    seq: int
    result: Any
    fresh: bool


@attrs.frozen(kw_only=True)
class Applied:
    """Slot ``index`` was applied here; ``fencing`` is the ballot that proposed it."""

    index: int
    commands: tuple[AppliedCommand, ...]
    voters: tuple[str, ...] | None
    fencing: Ballot


@attrs.frozen(kw_only=True)
class Chosen:
    """This replica learned that ``value`` is chosen at slot ``index``."""

    index: int
    value: Any


NOTE_RESULT = "paxos.result"
NOTE_READ = "paxos.read"
NOTE_APPLIED = "paxos.applied"
NOTE_CHOSEN = "paxos.chosen"
NOTE_LEADER = "paxos.leader"
NOTE_PROPOSED = "paxos.proposed"
NOTE_SYNCED = "paxos.synced"  # data: the nonce a leader answered (Replica.sync_with_leader)


@attrs.frozen(kw_only=True)
class Proposed:
    """The leader at ``ballot`` proposed ``value`` at slot ``index`` (for checkers and traces)."""

    index: int
    ballot: Ballot
    value: Any
