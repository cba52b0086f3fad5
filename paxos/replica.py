"""A Multi-Paxos replica: acceptor, leader (proposer) and learner in one sans-IO core.

Theory of operation
-------------------
Every replica plays all three roles of Multi-Paxos over one log of slots
(1, 2, 3, ...), each slot's value a :class:`~paxos.messages.Batch`.

Acceptor. Durable state: the highest ballot promised, and per slot the
accepted ``(ballot, value)`` plus a ``chosen`` mark. A Prepare or Accept at a
ballot lower than the promise is refused. Every reply that reports or depends
on this state leaves only once it is on disk (the Ready contract:
``send_after_persist``, or held until ``on_persisted`` covers the write).

Leader. A follower that hears nothing from a leader for a randomized election
timeout becomes a candidate: it persists a new round (``max_round``) before
sending ``Prepare((round, me), first unchosen slot)`` -- one Phase 1 for every
open slot. With promises from a majority it becomes leader: for each open slot
it re-proposes the highest-ballot accepted value reported, fills gaps with
no-ops, then orders new commands, many per slot (batching), with up to
``window`` slots in flight (pipelining). A slot is chosen once a majority of
its voters accepted it; the leader's own acceptance counts only once it is
durable. Heartbeats carry the chosen prefix (``commit_upto``): a follower that
accepted a slot under that very ballot knows its value is chosen; anything else
it fetches (catch-up: chosen entries, or a chunked snapshot if truncated).
With ``accept_to="quorum"`` a slot's Accept goes to a majority only, and the
leader pushes the chosen slots to the voters left out. A follower about to
answer from state that may be a moment old can sync with the leader first
(:meth:`Replica.sync_with_leader`: one catch-up round trip with a nonce).

Learner. Chosen slots are applied strictly in order to the application
:class:`~paxos.api.StateMachine`, through the replicated session table
(``client_id -> (last seq, result)``) so a retried command is applied once.
Every ``snapshot_every`` slots the state machine, sessions and configuration
are snapshotted and the log below ``snapshot - log_keep`` is truncated.

Leases. A follower that acks a heartbeat refuses other candidates for
``lease_ns`` of its own clock; a leader whose heartbeat (sent at t) was acked
by a majority may serve reads locally until ``t + lease_ns*(1 - 2*drift)``.
Without a lease a read waits for one heartbeat quorum (read index).

Reconfiguration (alpha window). A voter change chosen at slot i takes effect
at slot ``i + window``; the leader never proposes past ``chosen + window``, so
the voters of every slot it proposes are known, and it proposes a slot only
with promises from a majority of that slot's voters.

Lost disks. A replica told its disk was lost (``PaxosConfig.disk_lost``)
is a learner only until it has (1) asked every other member for the highest
round and slot it knows and got every answer, with fewer than a majority of
the members (itself included) recovering, so every quorum holds a healthy
replica that answered, (2) persisted a promise above every round those know,
and (3) learned every slot up to the highest slot they hold. Only then does it
vote again.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from meshfaas.core.codec import from_cbor, to_cbor
from meshfaas.core.types import (
    NS_PER_MS,
    Deadlines,
    EffectResult,
    NodeId,
    Now,
    Outbox,
    Ready,
)
from paxos import quorum
from paxos.api import (
    NOTE_APPLIED,
    NOTE_CHOSEN,
    NOTE_LEADER,
    NOTE_PROPOSED,
    NOTE_READ,
    NOTE_RESULT,
    NOTE_SYNCED,
    ZERO_BALLOT,
    Applied,
    AppliedCommand,
    Ballot,
    Chosen,
    CommandResult,
    LeaderInfo,
    LeaderQuery,
    Propose,
    Proposed,
    Queryable,
    Read,
    ReadResult,
    Reconfigure,
    StateMachine,
    Suspect,
)
from paxos.messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    Batch,
    CatchupEntries,
    CatchupRequest,
    Command,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    Promise,
    RecoverInfo,
    RecoverQuery,
    SnapshotChunk,
)

VARIANTS = ("", "reply_before_persist", "reuse_ballot_after_restart", "skip_reproposal",
            "apply_out_of_order", "forget_sessions")

T_META = "paxos_meta"
T_LOG = "paxos_log"
T_SNAP = "paxos_snap"
NOTE_RESTORED = "paxos.restored"
COMMIT_NOTICE = 0  # the hb_id of a Heartbeat that only announces the chosen prefix


@attrs.frozen(kw_only=True)
class PaxosConfig:
    """Static settings of one replica. Times are in the node's monotonic nanoseconds."""

    node_id: str
    voters: tuple[str, ...]
    heartbeat_interval_ns: int = 40 * NS_PER_MS
    election_timeout_ns: int = 200 * NS_PER_MS
    lease_ns: int = 150 * NS_PER_MS
    max_drift_ppm: int = 1_000
    retry_ns: int = 60 * NS_PER_MS
    batch_max: int = 64
    window: int = 16
    max_inflight: int = 2  # new batches in flight at once; more commands wait to fill one
    forward_burst: int = 4  # Forwards a follower sends before the leader speaks; more wait
    snapshot_every: int = 256
    log_keep: int = 64
    chunk_bytes: int = 64 * 1024
    catchup_max_entries: int = 128
    max_waiting_clients: int = 10_000
    disk_lost: bool = False
    commit_notice: str = "all"  # or "waiting": see Replica.send_commit_notices
    mark_delay_ns: int = 100 * NS_PER_MS  # a deferred chosen mark is written within this
    notice_delay_ns: int = 5 * NS_PER_MS  # a commit notice waits this long for an Accept to carry it
    accept_to: str = "all"  # or "quorum": see Replica._accept_targets
    # "quorum": an Accept unanswered for this long, or for 4 times the usual answer
    # time when that is longer (at most retry_ns), goes to every voter
    spread_ns: int = 5 * NS_PER_MS
    variant: str = ""

    def __attrs_post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown variant {self.variant!r}")
        if self.commit_notice not in ("all", "waiting"):
            raise ValueError(f"unknown commit_notice {self.commit_notice!r}")
        if self.accept_to not in ("all", "quorum"):
            raise ValueError(f"unknown accept_to {self.accept_to!r}")
        if self.lease_ns >= self.election_timeout_ns:
            raise ValueError("lease_ns must be shorter than election_timeout_ns")
        if min(self.window, self.batch_max, self.max_inflight, self.forward_burst) < 1:
            raise ValueError("window, batch_max, max_inflight and forward_burst must be >= 1")


@attrs.define
class _Slot:
    """A log entry: the accepted ballot and value, and whether it is known chosen."""

    ballot: Ballot
    value: Batch
    chosen: bool


@attrs.define
class _InFlight:
    """A slot the leader proposed and has not seen chosen yet."""

    value: Batch
    acks: set[str]
    sent_ns: int
    sent_to: set[str] = attrs.Factory(set)  # peers sent this slot's Accept
    spread: bool = False  # sent to more voters after it went unanswered (on_spread_timer)


@attrs.define
class _PendingRead:
    """A read-index read: answer once heartbeat ``hb_id`` is confirmed and ``index`` applied."""

    read: Read
    index: int
    hb_id: int
    confirmed: bool = False


@attrs.define
class _SnapshotRx:
    """A snapshot being received in chunks."""

    index: int = 0
    total: int = 0
    data: bytearray = attrs.Factory(bytearray)


def _ballot(raw: Any) -> Ballot:
    return (int(raw[0]), str(raw[1]))


_MarkRange = tuple[int, str, int, int]  # (ballot round, ballot node, first slot, last slot)
MAX_MARK_RANGES = 64  # ranges in the ``marks`` record; past it a slot's row is rewritten
MAX_MARK_GAP = 64  # slots between two marks that a range may span (each checked)


def _mark_range(raw: Any) -> _MarkRange:
    return (int(raw[0]), str(raw[1]), int(raw[2]), int(raw[3]))


def _log_row(entry: _Slot) -> list[Any]:
    """A slot's row in ``T_LOG``: ``[ballot, value, chosen]``."""
    return [list(entry.ballot), entry.value, entry.chosen]


def _noop(ballot: Ballot) -> Batch:
    return Batch(ballot=ballot)


class Replica:
    """One Multi-Paxos replica. See the module docstring."""

    # ------------------------------------------------------------------ set-up

    def __init__(self, config: PaxosConfig, sm: StateMachine, rng: random.Random,
                 disk: Mapping[str, Mapping[Any, Any]], now: Now) -> None:
        self.cfg = config
        self.node_id = NodeId(config.node_id)
        self.sm = sm
        self.rng = rng
        self.out = Outbox()
        self.deadlines = Deadlines()
        self.now_ns = now.mono_ns
        self.dropped = 0  # peers' messages dropped as invalid or unexpected
        self._init_durable_state()
        self._init_learner_state()
        self._init_role_state()
        self._load(disk)
        self.guard_until_ns = now.mono_ns + config.lease_ns  # leases we may have granted
        self._set_election_deadline(now.mono_ns)
        if not disk.get(T_META, {}).get("member"):
            self.persist_meta("member", 1)
        if self.recovering:
            self.persist_meta("recovering", 1)
            self._recover_tick(now.mono_ns)

    def _init_durable_state(self) -> None:
        self.promised: Ballot = ZERO_BALLOT  # highest ballot promised (durable)
        self.max_round = 0  # highest round this node has used or seen (durable when used)
        self.log: dict[int, _Slot] = {}  # slot -> accepted/chosen entry (durable)
        self.truncated_upto = 0  # slots <= this were removed from the log (durable)
        self.snap_index = 0  # index of the last snapshot (durable)
        self.snap_blob = b""
        self.recovering = False  # lost disk: learner only (durable marker)
        self.mark_ranges: list[_MarkRange] = []  # the durable ``marks`` record, see _write_marks

    def _init_learner_state(self) -> None:
        self.chosen_upto = 0  # every slot <= this is chosen and applied here
        self.config: quorum.Config = ((1, tuple(sorted(self.cfg.voters))),)
        self.known_nodes: set[str] = set(self.cfg.voters)  # every voter of any config seen
        self.sessions: dict[str, tuple[int, Any]] = {}  # client -> (last seq, result)
        self.waiting: dict[tuple[str, int], bool] = {}  # local clients awaiting a result
        self.known_commit = 0  # highest chosen prefix a leader told us about
        self.catchup_peer: NodeId | None = None
        self.snap_rx = _SnapshotRx()
        self.recover_info: dict[str, RecoverInfo] = {}
        self.recover_nonce = 0
        self.recover_target: int | None = None
        self.applied_early: set[int] = set()  # only the apply_out_of_order variant uses it
        self.unmarked: dict[int, _Slot] = {}  # chosen here, chosen mark not yet written
        self.sync_nonce = 0  # the last leader sync sent (sync_with_leader)
        self.sync_sent_ns = 0
        self.sync_answered = 0  # the highest sync nonce answered
        self.sync_upto = 0  # the leader's chosen prefix in that answer
        self.sync_again = False  # a sync was asked for while one was in flight

    def _init_role_state(self) -> None:
        self.role = "follower"
        self.ballot: Ballot = ZERO_BALLOT  # our ballot as candidate or leader
        self.leader_hint: NodeId | None = None
        self.leader_ballot: Ballot = ZERO_BALLOT
        self.suspected: set[str] = set()
        self.promises: dict[str, Promise] = {}
        self.p1_asked: set[str] = set()  # nodes sent our current Prepare
        self.p1_from = 0
        self.p1_values: dict[int, tuple[Ballot, Batch]] = {}
        self.p1_max_slot = 0
        self.next_slot = 0
        self.establish_slot = 0
        self.inflight: dict[int, _InFlight] = {}
        self.to_send: list[tuple[int, Batch]] = []
        self.queue: list[Command] = []
        self.queued: set[tuple[str, int]] = set()
        self.reconfigs: list[tuple[tuple[str, ...], str, int]] = []
        self.hb_id = 0
        self.hb_sent: dict[int, tuple[int, set[str]]] = {}
        self.lease_until_ns = 0
        self.last_quorum_ns = 0
        self.reads: list[_PendingRead] = []
        self.commit_dirty = False
        self.fwd_buffer: list[Command] = []  # commands to forward with the next Forward
        self.fwd_unanswered = 0  # Forwards sent since the leader last spoke
        self.forwarded: dict[tuple[str, int], str] = {}  # command -> the peer awaiting it
        self.notify_peers: set[str] = set()  # peers whose forwarded commands were applied
        self.told_upto: dict[str, int] = {}  # the chosen prefix last sent to each peer
        self.heard_ns: dict[str, int] = {}  # when each peer last accepted for us
        self.answer_ewma_ns = 0  # how long a follower's Accepted takes (smoothed, thrifty)
        self.deferred: dict[str, list[tuple[int, Batch]]] = {}  # chosen, not sent there (thrifty)
        # durability bookkeeping: replies wait until the writes they depend on are synced
        self.write_seq = 0
        self.persisted_seq = 0
        self.held: list[tuple[int, Callable[[], None]]] = []

    def _load(self, disk: Mapping[str, Mapping[Any, Any]]) -> None:
        meta = disk.get(T_META, {})
        lost = self.cfg.disk_lost and not meta.get("member")
        self.recovering = lost or bool(meta.get("recovering", 0))
        if "promised" in meta:
            self.promised = _ballot(meta["promised"])
        if self.cfg.variant != "reuse_ballot_after_restart":
            self.max_round = int(meta.get("max_round", 0))
        self.truncated_upto = int(meta.get("truncated", 0))
        snap = disk.get(T_SNAP, {}).get("snap")
        if snap is not None:
            self._install_blob(int(snap[0]), bytes(snap[1]))
        self.mark_ranges = [r for r in map(_mark_range, meta.get("marks", ()))
                            if r[3] > self.truncated_upto]
        for slot, row in disk.get(T_LOG, {}).items():
            if int(slot) > self.truncated_upto:
                ballot = _ballot(row[0])
                chosen = bool(row[2]) or self._marked(int(slot), ballot)
                self.log[int(slot)] = _Slot(ballot, row[1], chosen)
        self.out.notify(NOTE_RESTORED, self.chosen_upto)
        self._advance()

    # --------------------------------------------------------------- the Core

    def handle(self, src: NodeId, msg: Any, now: Now) -> None:
        self.now_ns = now.mono_ns
        handler = self._HANDLERS.get(type(msg))
        if handler is None or src == self.node_id or not self._valid(msg):
            self.dropped += 1
            return
        handler(self, src, msg)

    def command(self, cmd: Any, now: Now) -> Any:
        self.now_ns = now.mono_ns
        if isinstance(cmd, Propose):
            return self.cmd_propose(cmd)
        if isinstance(cmd, Read):
            return self.cmd_read(cmd)
        if isinstance(cmd, Reconfigure):
            return self.cmd_reconfigure(cmd)
        if isinstance(cmd, Suspect):
            return self.cmd_suspect(cmd)
        if isinstance(cmd, LeaderQuery):
            return self.leader_info()
        raise TypeError(f"unknown Paxos command {type(cmd).__name__}")

    def tick(self, now: Now) -> None:
        self.now_ns = now.mono_ns
        for key in self.deadlines.pop_due(now.mono_ns):
            name = str(key[0]) if isinstance(key, tuple) else str(key)
            self._TIMERS[name](self, now.mono_ns)

    def next_deadline(self) -> int | None:
        return self.deadlines.next_deadline()

    def take_ready(self) -> Ready | None:
        if self.role == "leader":
            if self._may_propose():
                self._fill_window()
            told = self._flush_accepts()
            if self.commit_dirty:
                self.send_commit_notices(told)
        if self.unmarked and self.write_seq == self.out.last_seq + 1:
            self._write_marks()  # this batch writes anyway: the deferred marks join it
        return self.out.take()

    def on_persisted(self, seq: int) -> None:
        self.persisted_seq = max(self.persisted_seq, seq)
        due = [fn for s, fn in self.held if s <= seq]
        self.held = [(s, fn) for s, fn in self.held if s > seq]
        for fn in due:
            fn()

    def on_result(self, result: EffectResult, now: Now) -> None:
        return None  # the replica starts no effects

    # ------------------------------------------------------------- durability

    def persist_meta(self, key: str, value: Any) -> None:
        self._persist(T_META, key, value)

    def _persist(self, table: str, key: Any, value: Any) -> None:
        if self.unmarked:
            self._write_marks()
        self.out.persist(table, key, value)
        self.write_seq = self.out.last_seq + 1

    def on_marks_timer(self, now_ns: int) -> None:
        if self.unmarked:
            self._write_marks()

    def _write_marks(self) -> None:
        """Write the deferred chosen marks (they ride along with any other write).

        Each slot joins the ranges of the ``marks`` meta record, ``(ballot, lo, hi)``:
        a slot in a range whose row holds that ballot is chosen. The record (a few
        ranges) is rewritten instead of each slot's row with its value. A slot joins
        only if its value, accepted under that ballot, is already written (on disk or
        staged before the record), and a range spans only such slots, so the record
        never marks a value that is not the chosen one. Past ``MAX_MARK_RANGES``
        ranges a slot's own row carries its mark, as before."""
        marks, self.unmarked = self.unmarked, {}
        self.mark_ranges = [r for r in self.mark_ranges if r[3] > self.truncated_upto]
        added = False
        for slot, entry in sorted(marks.items()):
            if slot <= self.truncated_upto or self.log.get(slot) is not entry:
                continue
            if self._extend_marks(slot, entry.ballot):
                added = True
            else:
                self.out.persist(T_LOG, slot, _log_row(entry))
                self.write_seq = self.out.last_seq + 1
        if added:
            self.out.persist(T_META, "marks", [list(r) for r in self.mark_ranges])
            self.write_seq = self.out.last_seq + 1

    def _extend_marks(self, slot: int, ballot: Ballot) -> bool:
        """Put ``slot`` (chosen, accepted here under ``ballot``) in the mark ranges:
        the last range grows when it has the same ballot and every slot between holds
        a chosen value accepted under it; else a new range, if there is room."""
        if self.mark_ranges:
            rnd, node, lo, hi = self.mark_ranges[-1]
            if (rnd, node) == ballot and hi < slot and self._chosen_under(hi + 1, slot, ballot):
                self.mark_ranges[-1] = (rnd, node, lo, slot)
                return True
        if len(self.mark_ranges) >= MAX_MARK_RANGES:
            return False
        self.mark_ranges.append((ballot[0], ballot[1], slot, slot))
        return True

    def _chosen_under(self, lo: int, hi: int, ballot: Ballot) -> bool:
        """Whether every slot in ``lo .. hi - 1`` is chosen here with a value accepted
        under ``ballot`` (so its written row holds that ballot and the chosen value)."""
        if hi - lo > MAX_MARK_GAP:
            return False
        for slot in range(lo, hi):
            entry = self.log.get(slot)
            if entry is None or not entry.chosen or entry.ballot != ballot:
                return False
        return True

    def _marked(self, slot: int, ballot: Ballot) -> bool:
        """Whether the loaded ``marks`` record marks ``slot``'s row of ``ballot`` chosen."""
        return any(lo <= slot <= hi and (rnd, node) == ballot
                   for rnd, node, lo, hi in self.mark_ranges)

    def _persist_slot(self, slot: int, entry: _Slot) -> None:
        self._persist(T_LOG, slot, _log_row(entry))

    def when_durable(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once every write made so far is on disk."""
        if self.write_seq <= self.persisted_seq or self.cfg.variant == "reply_before_persist":
            fn()
        else:
            self.held.append((self.write_seq, fn))

    def send_durable(self, dst: NodeId, msg: Any) -> None:
        """Send ``msg`` once every write made so far is on disk (to self: handle it then)."""
        if dst == self.node_id:
            self.when_durable(lambda: self._HANDLERS[type(msg)](self, self.node_id, msg))
        elif self.write_seq <= self.persisted_seq or self.cfg.variant == "reply_before_persist":
            self.out.send(dst, msg)
        elif self.write_seq == self.out.last_seq + 1:
            self.out.send_after_persist(dst, msg)
        else:
            self.held.append((self.write_seq, lambda: self.out.send(dst, msg)))

    def _promise_ballot(self, ballot: Ballot) -> None:
        if ballot > self.promised:
            self.promised = ballot
            self.persist_meta("promised", list(ballot))
        self.max_round = max(self.max_round, ballot[0])

    # ------------------------------------------------------------- validation

    def _valid(self, msg: Any) -> bool:
        ballot = getattr(msg, "ballot", ZERO_BALLOT)
        if ballot[0] < 0:
            return False
        for name in ("from_slot", "commit_upto", "chosen_upto", "index", "offset", "total"):
            if getattr(msg, name, 0) < 0:
                return False
        entries = getattr(msg, "entries", ())
        return all(_slot_of(e) >= 1 for e in entries)

    # --------------------------------------------------------------- acceptor

    def handle_prepare(self, src: NodeId, msg: Prepare) -> None:
        if self.recovering:
            return
        if msg.ballot < self.promised or self._lease_guard_refuses(src, msg.ballot):
            self.out.send(src, Promise(ballot=msg.ballot, ok=False, promised=self.promised))
            return
        self._promise_ballot(msg.ballot)
        if src != self.node_id:
            self._hear_higher(msg.ballot)
            self._set_election_deadline(self.now_ns)
        entries = tuple(
            AcceptedEntry(slot=slot, ballot=e.ballot, value=e.value, chosen=e.chosen)
            for slot, e in sorted(self.log.items()) if slot >= msg.from_slot
        )
        reply = Promise(ballot=msg.ballot, ok=True, promised=self.promised, entries=entries,
                        truncated_upto=self.truncated_upto, chosen_upto=self.chosen_upto)
        self.send_durable(src, reply)

    def _lease_guard_refuses(self, src: NodeId, ballot: Ballot) -> bool:
        """While we honour a lease (ours or our leader's), refuse other candidates."""
        if src == self.node_id or (ballot[1] == self.leader_hint and self.role != "leader"):
            return False
        if self.role == "leader" and self.lease_until_ns > self.now_ns:
            return True
        return self.guard_until_ns > self.now_ns

    def handle_accept(self, src: NodeId, msg: Accept) -> None:
        if msg.ballot < self.promised or self.recovering:
            if not self.recovering:
                self.out.send(src, Accepted(ballot=msg.ballot, slots=(), ok=False,
                                            promised=self.promised, chosen_upto=self.chosen_upto))
            else:
                self._follow(src, msg.ballot)
                self._learn_commit(src, msg.ballot, msg.commit_upto)
            return
        self._promise_ballot(msg.ballot)
        if src != self.node_id:
            self._follow(src, msg.ballot)
        acked = tuple(slot for slot, value in msg.entries if self._accept_one(slot, msg.ballot, value))
        reply = Accepted(ballot=msg.ballot, slots=acked, ok=True, promised=self.promised,
                         chosen_upto=self.chosen_upto)
        self.send_durable(src, reply)
        if src != self.node_id:
            # Applying what the piggybacked prefix chose waits for this Accept's
            # sync and reply: the leader waits for those, not for our apply.
            ballot, upto = msg.ballot, msg.commit_upto
            self.when_durable(lambda: self._learn_commit(src, ballot, upto))

    def _accept_one(self, slot: int, ballot: Ballot, value: Batch) -> bool:
        if slot <= self.truncated_upto:
            return False
        current = self.log.get(slot)
        if current is not None and current.chosen:
            return current.value == value
        entry = _Slot(ballot, value, False)
        self.log[slot] = entry
        self._persist_slot(slot, entry)
        return True

    def handle_heartbeat(self, src: NodeId, msg: Heartbeat) -> None:
        if msg.ballot < self.promised:
            if not self.recovering:
                self.out.send(src, HeartbeatAck(ballot=msg.ballot, hb_id=msg.hb_id, ok=False,
                                                promised=self.promised, chosen_upto=self.chosen_upto))
            return
        if not self.recovering:
            self._promise_ballot(msg.ballot)
        self._follow(src, msg.ballot)
        if not self.recovering and msg.hb_id != COMMIT_NOTICE:
            self.send_durable(src, HeartbeatAck(ballot=msg.ballot, hb_id=msg.hb_id, ok=True,
                                                promised=self.promised, chosen_upto=self.chosen_upto))
        self._learn_commit(src, msg.ballot, msg.commit_upto)

    def _follow(self, src: NodeId, ballot: Ballot) -> None:
        """A leader at ``ballot`` (>= our promise) spoke: follow it and grant its lease."""
        self._hear_higher(ballot)
        if self.leader_hint != src or self.leader_ballot != ballot:
            self.leader_hint, self.leader_ballot = src, ballot
            self.out.notify(NOTE_LEADER, (src, list(ballot)))
        self.suspected.discard(src)
        self.guard_until_ns = max(self.guard_until_ns, self.now_ns + self.cfg.lease_ns)
        self._set_election_deadline(self.now_ns)
        if self.fwd_unanswered or self.fwd_buffer:
            self._flush_forwards()

    def _hear_higher(self, ballot: Ballot) -> None:
        """A ballot above ours exists: a candidate or leader with a lower one steps down."""
        self.max_round = max(self.max_round, ballot[0])
        if self.role != "follower" and ballot > self.ballot:
            self.become_follower()

    # ---------------------------------------------------------------- learner

    def _learn_commit(self, src: NodeId, ballot: Ballot, commit_upto: int) -> None:
        """``src`` (leading at ``ballot``) says slots <= commit_upto are chosen."""
        self.known_commit = max(self.known_commit, commit_upto)
        top = min(commit_upto, self.chosen_upto + 4 * self.cfg.window + self.cfg.batch_max)
        for slot in range(self.chosen_upto + 1, top + 1):
            entry = self.log.get(slot)
            if entry is not None and not entry.chosen and entry.ballot == ballot:
                self.learn_chosen(slot, entry.value, ballot)
        if self.chosen_upto < commit_upto:
            self.request_catchup(src)

    def learn_chosen(self, slot: int, value: Batch, ballot: Ballot) -> None:
        """``value`` is chosen at ``slot``: record it durably and apply what we can."""
        if slot <= self.chosen_upto or slot <= self.truncated_upto:
            return
        entry = self.log.get(slot)
        if entry is not None and entry.chosen:
            return
        # Accepted here under the same ballot (one value per ballot and slot): that
        # accept is durable, so the chosen mark may wait for the next write.
        deferred = entry is not None and entry.ballot == ballot
        entry = _Slot(ballot, value, True)
        self.log[slot] = entry
        if deferred:
            self.unmarked[slot] = entry
            if ("marks",) not in self.deadlines:
                self.deadlines.set(("marks",), self.now_ns + self.cfg.mark_delay_ns)
        else:
            self._persist_slot(slot, entry)
        self.out.notify(NOTE_CHOSEN, Chosen(index=slot, value=value))
        if self.inflight.pop(slot, None) is not None and not self.inflight:
            self._disarm_idle_timers()
        if self.cfg.variant == "apply_out_of_order" and slot > self.chosen_upto + 1:
            self.applied_early.add(slot)
            self._apply(slot, value)
        self._advance()

    def _advance(self) -> None:
        """Apply chosen slots strictly in order; snapshot when due."""
        before = self.chosen_upto
        while True:
            entry = self.log.get(self.chosen_upto + 1)
            if entry is None or not entry.chosen:
                break
            self.chosen_upto += 1
            if self.chosen_upto not in self.applied_early:
                self._apply(self.chosen_upto, entry.value)
            self.applied_early.discard(self.chosen_upto)
        if self.chosen_upto != before:
            self.commit_dirty = self.role == "leader"
            self._after_progress()

    def _apply(self, index: int, value: Batch) -> None:
        results: list[AppliedCommand] = []
        if value.voters is not None:
            self._apply_reconfig(index, value, results)
        for cmd in value.cmds:
            results.append(self._apply_session(index, cmd))
            self.queued.discard((cmd.client_id, cmd.seq))
        self.out.notify(NOTE_APPLIED, Applied(index=index, commands=tuple(results),
                                              voters=value.voters, fencing=value.ballot))
        for res in results:
            self._answer_client(res, index, value.ballot)

    def _apply_reconfig(self, index: int, value: Batch, results: list[AppliedCommand]) -> None:
        assert value.voters is not None
        if value.reconfig_client is not None:
            client, seq = value.reconfig_client
            res = self._apply_session(index, Command(client_id=client, seq=seq, payload=None),
                                      reconfig=True)
            results.append(res)
            if not res.fresh:
                return
        self.config = quorum.add_change(self.config, index + self.cfg.window, value.voters)
        self.known_nodes.update(value.voters)

    def _apply_session(self, index: int, cmd: Command, *, reconfig: bool = False) -> AppliedCommand:
        last = self.sessions.get(cmd.client_id)
        if last is not None and cmd.seq <= last[0] and self.cfg.variant != "forget_sessions":
            result = last[1] if cmd.seq == last[0] else ["error", "stale"]
            return AppliedCommand(client_id=cmd.client_id, seq=cmd.seq, result=result, fresh=False)
        result = "reconfigured" if reconfig else self.sm.apply(index, cmd.payload)
        self.sessions[cmd.client_id] = (cmd.seq, result)
        return AppliedCommand(client_id=cmd.client_id, seq=cmd.seq, result=result, fresh=True)

    def _answer_client(self, res: AppliedCommand, index: int, fencing: Ballot) -> None:
        forwarder = self.forwarded.pop((res.client_id, res.seq), None)
        if forwarder is not None and self.role == "leader":
            self.notify_peers.add(forwarder)
        if self.waiting.pop((res.client_id, res.seq), None) is None:
            return
        self.queued.discard((res.client_id, res.seq))
        self.out.notify(NOTE_RESULT, CommandResult(client_id=res.client_id, seq=res.seq, ok=True,
                                                   value=res.result, index=index, fencing=fencing))

    def _after_progress(self) -> None:
        if self.chosen_upto - self.snap_index >= self.cfg.snapshot_every:
            self.take_snapshot()
        self._maybe_finish_recovery()
        self._serve_reads()

    # -------------------------------------------------------------- snapshots

    def take_snapshot(self) -> None:
        """Snapshot at the applied index and truncate the log ``log_keep`` below it."""
        index = self.chosen_upto
        self.config = quorum.compact(self.config, index)
        sessions = [[c, s, r] for c, (s, r) in sorted(self.sessions.items())]
        config = [[start, list(voters)] for start, voters in self.config]
        self.snap_index = index
        self.snap_blob = to_cbor([self.sm.snapshot(), sessions, config])
        self._persist(T_SNAP, "snap", [index, self.snap_blob])
        self._truncate(index - self.cfg.log_keep)

    def _truncate(self, upto: int) -> None:
        if upto <= self.truncated_upto:
            return
        for slot in sorted(s for s in self.log if s <= upto):
            del self.log[slot]
            self._persist(T_LOG, slot, None)
        self.truncated_upto = upto
        self.persist_meta("truncated", upto)

    def _install_blob(self, index: int, blob: bytes) -> None:
        sm_bytes, sessions, config = from_cbor(blob)
        self.sm.restore(bytes(sm_bytes))
        self.sessions = {str(c): (int(s), r) for c, s, r in sessions}
        self.config = tuple((int(start), tuple(str(v) for v in voters)) for start, voters in config)
        for _start, voters in self.config:
            self.known_nodes.update(voters)
        self.snap_index = self.chosen_upto = index
        self.snap_blob = blob

    def install_snapshot(self, index: int, blob: bytes) -> None:
        """A snapshot received from a peer replaces everything up to ``index``."""
        self._install_blob(index, blob)
        self._persist(T_SNAP, "snap", [index, blob])
        self._truncate(index)
        self.out.notify(NOTE_RESTORED, index)
        for slot in sorted(s for s in self.inflight if s <= index):
            del self.inflight[slot]
        self._advance()
        self._after_progress()

    # ---------------------------------------------------------------- catch-up

    def request_catchup(self, peer: NodeId) -> None:
        """Ask ``peer`` for what we miss, at most once per ``retry_ns``."""
        self.catchup_peer = peer
        if ("catchup",) in self.deadlines:
            return
        self._send_catchup_request()
        self.deadlines.set(("catchup",), self.now_ns + self.cfg.retry_ns)

    def _send_catchup_request(self) -> None:
        if self.catchup_peer is None or self.catchup_peer == self.node_id:
            return
        self.out.send(self.catchup_peer, self._catchup_request())

    def _catchup_request(self, nonce: int = 0) -> CatchupRequest:
        """Ask for what we miss: the chosen slots after ours, or the rest of the
        snapshot being received."""
        rx = self.snap_rx
        return CatchupRequest(from_slot=self.chosen_upto + 1, snap_index=rx.index,
                              offset=len(rx.data), nonce=nonce)

    def on_catchup_timer(self, now_ns: int) -> None:
        if self.known_commit > self.chosen_upto:
            self._send_catchup_request()
            self.deadlines.set(("catchup",), now_ns + self.cfg.retry_ns)

    def handle_catchup_request(self, src: NodeId, msg: CatchupRequest) -> None:
        if msg.from_slot > self.truncated_upto:
            top = min(self.chosen_upto, msg.from_slot + self.cfg.catchup_max_entries - 1)
            entries = tuple((s, self.log[s].value) for s in range(msg.from_slot, top + 1))
            self.out.send(src, CatchupEntries(entries=entries, chosen_upto=self.chosen_upto,
                                              nonce=msg.nonce))
            return
        if self.snap_index < msg.from_slot:
            return
        offset = msg.offset if msg.snap_index == self.snap_index else 0
        data = self.snap_blob[offset:offset + self.cfg.chunk_bytes]
        self.out.send(src, SnapshotChunk(index=self.snap_index, offset=offset,
                                         total=len(self.snap_blob), data=data))

    def handle_catchup_entries(self, src: NodeId, msg: CatchupEntries) -> None:
        for slot, value in msg.entries:
            self.learn_chosen(slot, value, ZERO_BALLOT)
        self.known_commit = max(self.known_commit, msg.chosen_upto)
        if self.chosen_upto < msg.chosen_upto and msg.entries:
            self.catchup_peer = src
            self._send_catchup_request()
        if self.sync_answered < msg.nonce <= self.sync_nonce:
            self._sync_answered(msg.nonce, msg.chosen_upto)

    # ------------------------------------------------------------ leader sync

    def sync_with_leader(self) -> int | None:
        """Ask the leader for its chosen prefix and the chosen slots we miss, now.

        For a follower about to answer from state that may be a moment old (say
        "not found" for something created through another replica just before):
        :meth:`synced` turns true once a sync sent at or after this call is
        answered and everything the answer says is chosen is applied here (a
        ``paxos.synced`` notification tells when an answer arrives). One sync is
        in flight at a time; a call meanwhile gets the next one, sent when that
        answer arrives (or at once, if it is older than ``retry_ns``: lost).
        Returns the token for :meth:`synced`, or None when this replica leads or
        knows no leader (nobody to ask)."""
        leader = self.leader_hint
        if self.role != "follower" or leader is None or leader == self.node_id:
            return None
        in_flight = self.sync_nonce > self.sync_answered
        if in_flight and self.now_ns - self.sync_sent_ns < self.cfg.retry_ns:
            self.sync_again = True
            return self.sync_nonce + 1
        self._send_sync(leader)
        return self.sync_nonce

    def synced(self, token: int) -> bool:
        return self.sync_answered >= token and self.chosen_upto >= self.sync_upto

    def _send_sync(self, leader: NodeId) -> None:
        self.sync_nonce += 1
        self.sync_sent_ns, self.sync_again = self.now_ns, False
        self.out.send(leader, self._catchup_request(self.sync_nonce))

    def _sync_answered(self, nonce: int, chosen_upto: int) -> None:
        self.sync_answered = nonce
        self.sync_upto = max(self.sync_upto, chosen_upto)
        if self.sync_again and self.leader_hint is not None and self.role == "follower":
            self._send_sync(self.leader_hint)
        self.out.notify(NOTE_SYNCED, nonce)

    def handle_snapshot_chunk(self, src: NodeId, msg: SnapshotChunk) -> None:
        if msg.index <= self.chosen_upto or msg.offset + len(msg.data) > msg.total:
            return
        rx = self.snap_rx
        if rx.index != msg.index:
            self.snap_rx = rx = _SnapshotRx(index=msg.index, total=msg.total)
        if msg.offset == len(rx.data):
            rx.data.extend(msg.data)
        self.known_commit = max(self.known_commit, msg.index)
        if len(rx.data) >= rx.total:
            blob = bytes(rx.data)
            self.snap_rx = _SnapshotRx()
            self.install_snapshot(msg.index, blob)
        self.catchup_peer = src
        self._send_catchup_request()

    # ------------------------------------------------------------- recovering

    def _recover_tick(self, now_ns: int) -> None:
        if not self.recovering:
            return
        if self.recover_target is None:
            self.recover_nonce += 1
            self.recover_info = {}
            for peer in self._members():
                if peer != self.node_id:
                    self.out.send(NodeId(peer), RecoverQuery(nonce=self.recover_nonce))
        self.deadlines.set(("recover",), now_ns + self.cfg.retry_ns * 2)

    def handle_recover_query(self, src: NodeId, msg: RecoverQuery) -> None:
        top_slot = max(self.log, default=self.chosen_upto)
        info = RecoverInfo(nonce=msg.nonce, max_round=max(self.max_round, self.promised[0]),
                           max_slot=max(top_slot, self.chosen_upto), recovering=self.recovering)
        self.send_durable(src, info)

    def handle_recover_info(self, src: NodeId, msg: RecoverInfo) -> None:
        if not self.recovering or self.recover_target is not None or msg.nonce != self.recover_nonce:
            return
        self.recover_info[src] = msg
        members = self._members()
        others = [p for p in members if p != self.node_id]
        if any(p not in self.recover_info for p in others):
            return
        healthy = [self.recover_info[p] for p in others if not self.recover_info[p].recovering]
        if len(members) - len(healthy) >= quorum.majority(len(members)):
            return  # some quorum may hold no healthy replica: wait (a majority of disks lost)
        self._finish_recover_query(src, healthy)

    def _finish_recover_query(self, src: NodeId, healthy: list[RecoverInfo]) -> None:
        """Every quorum holds a healthy replica that answered: promise above every round
        they know and learn every slot up to the highest they hold."""
        floor_round = max(i.max_round for i in healthy) + 1
        self.recover_target = max(i.max_slot for i in healthy)
        self.max_round = max(self.max_round, floor_round)
        self.persist_meta("max_round", self.max_round)
        self._promise_ballot((floor_round, ""))
        self.known_commit = max(self.known_commit, self.recover_target)
        self.request_catchup(src)
        self._maybe_finish_recovery()

    def _maybe_finish_recovery(self) -> None:
        if not self.recovering or self.recover_target is None:
            return
        if self.chosen_upto >= self.recover_target:
            self.recovering = False
            self.persist_meta("recovering", None)
            self.deadlines.cancel(("recover",))

    # ------------------------------------------------------------- elections

    def _members(self) -> tuple[str, ...]:
        return quorum.all_members(self.config, self.chosen_upto + 1)

    def _is_voter(self) -> bool:
        return self.node_id in self._members()

    def _set_election_deadline(self, now_ns: int) -> None:
        timeout = self.cfg.election_timeout_ns
        self.deadlines.set(("election",), now_ns + timeout + self.rng.randrange(timeout))

    def on_election_timer(self, now_ns: int) -> None:
        self._set_election_deadline(now_ns)
        if self.role == "leader":
            return
        if self.recovering or not self._is_voter():
            self._pull_from_someone()  # a learner with no leader in sight asks around
            return
        if self.known_commit > self.chosen_upto + self.cfg.window and self.catchup_peer:
            self.request_catchup(self.catchup_peer)
            return
        if self.guard_until_ns > now_ns:  # we still honour a lease we granted
            self.deadlines.set(("election",), self.guard_until_ns + self.rng.randrange(
                self.cfg.election_timeout_ns // 4 + 1))
            return
        self.become_candidate()

    def _pull_from_someone(self) -> None:
        peers = sorted(self.known_nodes - {self.node_id})
        if peers:
            self.catchup_peer = NodeId(peers[self.rng.randrange(len(peers))])
            self._send_catchup_request()

    def cmd_suspect(self, cmd: Suspect) -> None:
        if cmd.alive:
            self.suspected.discard(cmd.node_id)
            return
        self.suspected.add(cmd.node_id)
        if self.role == "follower" and cmd.node_id == self.leader_hint:
            backoff = self.rng.randrange(self.cfg.election_timeout_ns // 2 + 1)
            self.deadlines.set(("election",), self.now_ns + backoff)

    def _next_round(self) -> int:
        top = max(self.max_round, self.promised[0])
        if self.cfg.variant == "reuse_ballot_after_restart" and self.promised[1] == self.node_id:
            top = max(self.max_round, self.promised[0] - 1)
        return top + 1

    def become_candidate(self) -> None:
        self.become_follower()
        self.role = "candidate"
        round_ = self._next_round()
        self.max_round = round_
        if self.cfg.variant != "reuse_ballot_after_restart":
            self.persist_meta("max_round", round_)
        self.ballot = (round_, self.node_id)
        self.p1_from = self.chosen_upto + 1
        self.deadlines.set(("retry",), self.now_ns + self.cfg.retry_ns)
        self.broadcast_prepare(self._members())

    def broadcast_prepare(self, targets: Iterable[str], *, again: bool = False) -> None:
        """Send our Prepare to ``targets`` that have not promised (once, unless ``again``)."""
        msg = Prepare(ballot=self.ballot, from_slot=self.p1_from)
        for peer in targets:
            if peer not in self.promises and (again or peer not in self.p1_asked):
                self.p1_asked.add(peer)
                if peer == self.node_id:
                    self.handle_prepare(self.node_id, msg)
                else:
                    self.send_durable(NodeId(peer), msg)
                    self._arm_retry()

    def handle_promise(self, src: NodeId, msg: Promise) -> None:
        if not msg.ok:
            if msg.promised > self.ballot:
                self._hear_higher(msg.promised)
            return
        if self.role == "follower" or msg.ballot != self.ballot or src in self.promises:
            return
        if msg.truncated_upto >= self.p1_from:
            self.become_follower()
            self.request_catchup(src)  # we are behind a snapshot: catch up first
            return
        self.promises[src] = msg
        self._merge_promise(msg)
        first_voters = quorum.voters_at(self.config, self.p1_from)
        if self.role == "candidate" and quorum.is_quorum(first_voters, self.promises):
            self.become_leader()

    def _merge_promise(self, msg: Promise) -> None:
        for e in msg.entries:
            if e.chosen:
                self.learn_chosen(e.slot, e.value, e.ballot)
                continue
            if self.cfg.variant == "skip_reproposal":
                continue
            best = self.p1_values.get(e.slot)
            if best is None or e.ballot > best[0]:
                self.p1_values[e.slot] = (e.ballot, e.value)
            self.p1_max_slot = max(self.p1_max_slot, e.slot)

    def become_leader(self) -> None:
        self.role = "leader"
        self.leader_hint, self.leader_ballot = self.node_id, self.ballot
        self.next_slot = self.chosen_upto + 1
        self.establish_slot = max(self.p1_max_slot, self.chosen_upto) + 1
        self.last_quorum_ns = self.now_ns
        self.out.notify(NOTE_LEADER, (self.node_id, list(self.ballot)))
        self.broadcast_heartbeat()
        self._fill_window()

    def become_follower(self) -> None:
        was = self.role
        self.role = "follower"
        self.promises, self.p1_values, self.p1_max_slot = {}, {}, 0
        self.p1_asked = set()
        self.inflight, self.to_send = {}, []
        self.lease_until_ns = 0
        self.hb_sent, self.notify_peers, self.told_upto = {}, set(), {}
        self.heard_ns, self.deferred = {}, {}
        self.deadlines.cancel(("heartbeat",))
        self.deadlines.cancel(("spread",))
        self.deadlines.cancel(("notice",))
        self.deadlines.cancel(("retry",))
        if was == "leader":
            self.leader_hint = None
        for cmd in self.queue:
            self._refuse(cmd.client_id, cmd.seq)
        for _voters, client, seq in self.reconfigs:
            self._refuse(client, seq)
        for cmd in self.fwd_buffer:
            self._refuse(cmd.client_id, cmd.seq)
        self.fwd_buffer, self.fwd_unanswered = [], 0
        self.queue, self.queued, self.reconfigs = [], set(), []
        for pending in self.reads:
            self._refuse_read(pending.read)
        self.reads = []
        self._set_election_deadline(self.now_ns)

    def _refuse(self, client_id: str, seq: int) -> None:
        if self.waiting.pop((client_id, seq), None) is None:
            return
        self.out.notify(NOTE_RESULT, CommandResult(client_id=client_id, seq=seq, ok=False,
                                                   error="not-leader", leader_hint=self.leader_hint))

    def _refuse_read(self, read: Read) -> None:
        self.out.notify(NOTE_READ, ReadResult(client_id=read.client_id, req_id=read.req_id,
                                              ok=False, error="not-leader",
                                              leader_hint=self.leader_hint))

    def on_retry_timer(self, now_ns: int) -> None:
        """Resend what has not been answered: Prepares (candidate) or Accepts (leader)."""
        if self.role == "candidate":
            self.broadcast_prepare(self._members(), again=True)
        elif self.role == "leader":
            self._resend_accepts(now_ns)
            self.broadcast_prepare(sorted(self.p1_asked), again=True)
        if self.role == "candidate" or (self.role == "leader" and self._awaiting_answers()):
            self.deadlines.set(("retry",), now_ns + self.cfg.retry_ns)

    def _awaiting_answers(self) -> bool:
        """A leader has something to resend: slots in flight or unanswered Prepares."""
        return bool(self.inflight) or any(p not in self.promises for p in self.p1_asked)

    def _disarm_idle_timers(self) -> None:
        """Nothing is in flight any more: the spread timer, and the retry timer unless
        Prepares wait for answers, would only wake the loop to find nothing to do
        (a single client's commit met one of them about every third time). The
        next Accept sets them again."""
        self.deadlines.cancel(("spread",))
        if not self._awaiting_answers():
            self.deadlines.cancel(("retry",))

    def _arm_retry(self) -> None:
        if ("retry",) not in self.deadlines:
            self.deadlines.set(("retry",), self.now_ns + self.cfg.retry_ns)

    # ----------------------------------------------------------------- leader

    def cmd_propose(self, cmd: Propose) -> None:
        key = (cmd.client_id, cmd.seq)
        last = self.sessions.get(cmd.client_id)
        if last is not None and cmd.seq <= last[0] and self.cfg.variant != "forget_sessions":
            value = last[1] if cmd.seq == last[0] else ["error", "stale"]
            self.out.notify(NOTE_RESULT, CommandResult(client_id=cmd.client_id, seq=cmd.seq,
                                                       ok=True, value=value))
            return
        command = Command(client_id=cmd.client_id, seq=cmd.seq, payload=cmd.payload)
        if not self._route(key, command, None):
            return
        if key not in self.queued:
            self.queued.add(key)
            self.queue.append(command)

    def _route(self, key: tuple[str, int], command: Command | None,
               voters: tuple[str, ...] | None) -> bool:
        """Remember the waiting client; True if we lead, else forward or refuse."""
        self._wait(key)
        if self.role == "leader" and not self.recovering:
            return True
        if self.leader_hint is not None and self.leader_hint != self.node_id:
            if command is not None:
                self._forward(command)
            else:
                self.out.send(self.leader_hint, Forward(cmds=(), voters=voters,
                                                        reconfig_client=key))
            return False
        self._refuse(*key)
        return False

    def _forward(self, command: Command) -> None:
        """Forward to the leader at once, unless ``forward_burst`` Forwards are already
        unanswered: then the command waits for the leader's next message and leaves
        with the others (one Forward for many commands when the leader is busy)."""
        if self.fwd_unanswered >= self.cfg.forward_burst:
            self.fwd_buffer.append(command)
            return
        assert self.leader_hint is not None
        self.out.send(self.leader_hint, Forward(cmds=(command,)))
        self.fwd_unanswered += 1

    def _flush_forwards(self) -> None:
        """The leader spoke: send what waited (to the leader we now know)."""
        self.fwd_unanswered = 0
        if not self.fwd_buffer:
            return
        cmds, self.fwd_buffer = tuple(self.fwd_buffer), []
        if self.role == "follower" and self.leader_hint not in (None, self.node_id):
            assert self.leader_hint is not None
            self.out.send(self.leader_hint, Forward(cmds=cmds))
            self.fwd_unanswered = 1
            return
        for cmd in cmds:
            self._refuse(cmd.client_id, cmd.seq)

    def _wait(self, key: tuple[str, int]) -> None:
        self.waiting[key] = True
        if len(self.waiting) > self.cfg.max_waiting_clients:
            del self.waiting[next(iter(self.waiting))]

    def cmd_reconfigure(self, cmd: Reconfigure) -> None:
        voters = tuple(sorted(set(cmd.voters)))
        if not voters:
            raise ValueError("a configuration needs at least one voter")
        if self._route((cmd.client_id, cmd.seq), None, voters):
            self.reconfigs.append((voters, cmd.client_id, cmd.seq))

    def handle_forward(self, src: NodeId, msg: Forward) -> None:
        if self.role != "leader":
            self.dropped += 1
            return
        for command in msg.cmds:
            key = (command.client_id, command.seq)
            last = self.sessions.get(command.client_id)
            if key in self.queued or (last is not None and command.seq <= last[0]):
                continue
            self._remember_forwarder(key, src)
            self.queued.add(key)
            self.queue.append(command)
        if msg.voters is not None and msg.reconfig_client is not None:
            client, seq = msg.reconfig_client
            self._remember_forwarder((client, seq), src)
            self.reconfigs.append((msg.voters, client, seq))

    def _remember_forwarder(self, key: tuple[str, int], src: str) -> None:
        self.forwarded[key] = src
        if len(self.forwarded) > self.cfg.max_waiting_clients:
            del self.forwarded[next(iter(self.forwarded))]

    def _fill_window(self) -> None:
        """Propose into every free slot of the window: re-proposals, then new batches."""
        while self.role == "leader":
            slot = self.next_slot
            if slot > self.chosen_upto + self.cfg.window:
                return
            entry = self.log.get(slot)
            if slot <= self.truncated_upto or (entry is not None and entry.chosen):
                self.next_slot += 1
                continue
            voters = quorum.voters_at(self.config, slot)
            if not quorum.is_quorum(voters, self.promises):
                self.broadcast_prepare(voters)
                return
            value = self._value_for(slot)
            if value is None:
                return
            self.propose(slot, value)
            self.next_slot += 1

    def _value_for(self, slot: int) -> Batch | None:
        if slot <= self.p1_max_slot:
            found = self.p1_values.get(slot)
            return found[1] if found is not None else _noop(self.ballot)
        if self.reconfigs:
            voters, client, seq = self.reconfigs.pop(0)
            return Batch(ballot=self.ballot, voters=voters, reconfig_client=(client, seq))
        if self.queue and (len(self.inflight) < self.cfg.max_inflight
                           or len(self.queue) >= self.cfg.batch_max):
            cmds, self.queue = self.queue[:self.cfg.batch_max], self.queue[self.cfg.batch_max:]
            return Batch(ballot=self.ballot, cmds=tuple(cmds))
        if slot <= self.establish_slot or any(start > slot for start, _ in self.config):
            return _noop(self.ballot)  # establish our ballot, or bring a new config into force
        return None

    def propose(self, slot: int, value: Batch) -> None:
        self.inflight[slot] = _InFlight(value=value, acks=set(), sent_ns=self.now_ns)
        self.out.notify(NOTE_PROPOSED, Proposed(index=slot, ballot=self.ballot, value=value))
        self.to_send.append((slot, value))

    def _may_propose(self) -> bool:
        """Whether _fill_window could propose anything now (a cheap test, run per batch)."""
        if self.reconfigs or self.next_slot <= self.window_top:
            return True
        return bool(self.queue) and (len(self.inflight) < self.cfg.max_inflight
                                     or len(self.queue) >= self.cfg.batch_max)

    @property
    def window_top(self) -> int:
        """The last slot the leader may propose now, or the highest it must fill anyway."""
        return max(self.p1_max_slot, self.establish_slot, self.config[-1][0])

    def _flush_accepts(self) -> set[str]:
        """Send the queued proposals; returns the peers told the chosen prefix with them."""
        if not self.to_send:
            return set()
        entries, self.to_send = tuple(self.to_send), []
        targets = self._accept_targets(entries)
        for slot, _value in entries:
            flight = self.inflight.get(slot)
            if flight is not None:
                flight.sent_to.update(targets)
        self._send_accepts(entries, sorted(targets))
        return targets

    def _accept_targets(self, entries: tuple[tuple[int, Batch], ...]) -> set[str]:
        """Who gets these slots' Accept: every voter, or with ``accept_to="quorum"``
        ("thrifty") a majority: this leader, the followers that accepted for it most
        recently, and any follower whose forwarded command is in the batch (its client
        waits there). The other voters get the slots once chosen, pushed with their
        next commit notice or heartbeat (``_defer_for_unsent``: no catch-up round
        trip); an Accept unanswered for ``spread_ns`` (longer when answers are slow:
        ``_spread_after_ns``) goes to them too (``on_spread_timer``), so a slow or dead
        follower costs that delay, not ``retry_ns``. Safety does not depend on who gets an Accept."""
        targets: set[str] = set()
        for slot, _value in entries:
            targets.update(quorum.voters_at(self.config, slot))
        voter_sets = {quorum.voters_at(self.config, slot) for slot, _value in entries}
        if self.cfg.accept_to != "quorum" or len(voter_sets) != 1 or self.node_id not in targets:
            return targets
        voters = sorted(targets)
        chosen: set[str] = {self.node_id}
        for _slot, value in entries:
            for cmd in value.cmds:
                forwarder = self.forwarded.get((cmd.client_id, cmd.seq))
                if forwarder in targets:
                    chosen.add(forwarder)
        by_recency = sorted((p for p in voters if p not in chosen),
                            key=lambda p: (-self.heard_ns.get(p, -1), p))
        need = quorum.majority(len(voters)) - len(chosen)
        chosen.update(by_recency[:max(0, need)])
        if chosen != targets and ("spread",) not in self.deadlines:
            self.deadlines.set(("spread",), self.now_ns + self._spread_after_ns())
        return chosen

    def _spread_after_ns(self) -> int:
        """How long a thrifty Accept waits for its answer before it goes to every voter:
        ``spread_ns``, or 4 times the usual answer time when the machine or network is
        slow (so that load alone does not undo the saving), at most ``retry_ns``. Slots
        sent again this way are not sampled (their answers include the wait)."""
        return min(self.cfg.retry_ns, max(self.cfg.spread_ns, 4 * self.answer_ewma_ns))

    def on_spread_timer(self, now_ns: int) -> None:
        """Send the Accept of every slot unanswered for ``_spread_after_ns`` to the
        voters that have not had it yet."""
        if self.role != "leader":
            return
        by_peer: dict[str, list[tuple[int, Batch]]] = {}
        next_ns: int | None = None  # when the next slot still waiting is due
        after_ns = self._spread_after_ns()
        for slot, flight in sorted(self.inflight.items()):
            missing = [p for p in quorum.voters_at(self.config, slot) if p not in flight.sent_to]
            if not missing:
                continue
            if now_ns - flight.sent_ns < after_ns:
                due_ns = flight.sent_ns + after_ns
                next_ns = due_ns if next_ns is None else min(next_ns, due_ns)
                continue
            flight.spread = True
            for peer in missing:
                by_peer.setdefault(peer, []).append((slot, flight.value))
                flight.sent_to.add(peer)
        for peer, entries in sorted(by_peer.items()):
            self._send_accepts(tuple(entries), [peer])
        if next_ns is not None:
            self.deadlines.set(("spread",), next_ns)

    def _send_accepts(self, entries: tuple[tuple[int, Batch], ...], targets: Iterable[str]) -> None:
        msg = Accept(ballot=self.ballot, entries=entries, commit_upto=self.chosen_upto)
        for peer in targets:
            if peer == self.node_id:
                self.handle_accept(self.node_id, msg)
            else:
                self.out.send(NodeId(peer), msg)
                self.told_upto[peer] = self.chosen_upto
        self._arm_retry()
        if ("notice",) in self.deadlines and not self._untold():
            self.deadlines.cancel(("notice",))

    def _resend_accepts(self, now_ns: int) -> None:
        stale = [(s, f) for s, f in sorted(self.inflight.items())
                 if now_ns - f.sent_ns >= self.cfg.retry_ns]
        if not stale:
            return
        by_peer: dict[str, list[tuple[int, Batch]]] = {}
        for slot, flight in stale:
            flight.sent_ns = now_ns
            for peer in quorum.voters_at(self.config, slot):
                if peer not in flight.acks:
                    by_peer.setdefault(peer, []).append((slot, flight.value))
        for peer, entries in sorted(by_peer.items()):
            self._send_accepts(tuple(entries), [peer])

    def handle_accepted(self, src: NodeId, msg: Accepted) -> None:
        if not msg.ok:
            if msg.promised > self.ballot:
                self._hear_higher(msg.promised)
            return
        if self.role != "leader" or msg.ballot != self.ballot:
            return
        for slot in msg.slots:
            flight = self.inflight.get(slot)
            if flight is None:
                continue
            flight.acks.add(src)
            self.heard_ns[src] = self.now_ns
            if src != self.node_id and not flight.spread:
                self.answer_ewma_ns += (self.now_ns - flight.sent_ns - self.answer_ewma_ns) // 8
            voters = quorum.voters_at(self.config, slot)
            if quorum.is_quorum(voters, flight.acks):
                self._defer_for_unsent(slot, flight, voters)
                self.learn_chosen(slot, flight.value, self.ballot)
        if msg.chosen_upto > self.chosen_upto:
            self.request_catchup(src)

    # ------------------------------------------------------ heartbeats, leases

    def _defer_for_unsent(self, slot: int, flight: _InFlight, voters: Iterable[str]) -> None:
        """A slot chosen without its Accept going to every voter (thrifty): keep it for
        the voters that did not get it, to push with their next notice or heartbeat
        (:meth:`_push_deferred`), so they need no catch-up round trip. At most
        ``catchup_max_entries`` wait per peer; past that the peer catches up itself."""
        for peer in voters:
            if peer in flight.sent_to or peer == self.node_id:
                continue
            waiting = self.deferred.setdefault(peer, [])
            if len(waiting) < self.cfg.catchup_max_entries:
                waiting.append((slot, flight.value))

    def _push_deferred(self, peer: str) -> bool:
        """Send ``peer`` the chosen slots it was not sent (as CatchupEntries, which also
        tells it the prefix). True if anything was sent."""
        waiting = self.deferred.pop(peer, None)
        if not waiting:
            return False
        self.out.send(NodeId(peer), CatchupEntries(entries=tuple(sorted(waiting)),
                                                   chosen_upto=self.chosen_upto))
        self.told_upto[peer] = self.chosen_upto
        return True

    def on_heartbeat_timer(self, now_ns: int) -> None:
        if self.role != "leader":
            return
        if now_ns - self.last_quorum_ns > self.cfg.election_timeout_ns:
            self.become_follower()  # no majority has answered for too long
            return
        self.broadcast_heartbeat()

    def send_commit_notices(self, told: set[str]) -> None:
        """The chosen prefix moved: tell the peers not told by an Accept just now. A
        notice is a Heartbeat with ``hb_id`` 0: it wants no ack.

        Peers whose forwarded commands were just applied (their clients wait) are
        told at once. The others (only with ``commit_notice="all"``) are told within
        ``notice_delay_ns``, by the next Accept if one leaves by then (it carries
        the prefix), else by a notice: under steady load no notice is sent at all,
        which spares each follower a message per commit. With ``"waiting"`` they
        learn it from the next Accept or heartbeat."""
        self.commit_dirty = False
        peers, self.notify_peers = self.notify_peers, set()
        self._send_notices(peers - told)
        if self.cfg.commit_notice != "all":
            return
        if self.cfg.notice_delay_ns <= 0:
            self._send_notices(self._untold())
        elif ("notice",) not in self.deadlines and self._untold():
            self.deadlines.set(("notice",), self.now_ns + self.cfg.notice_delay_ns)

    def _untold(self) -> list[str]:
        """Peers that do not know our chosen prefix yet."""
        upto = self.chosen_upto
        return [p for p in self.known_nodes
                if p != self.node_id and self.told_upto.get(p, -1) < upto]

    def _send_notices(self, peers: Iterable[str]) -> None:
        msg = Heartbeat(ballot=self.ballot, commit_upto=self.chosen_upto, hb_id=COMMIT_NOTICE)
        for peer in sorted(peers):
            if peer != self.node_id and not self._push_deferred(peer):
                self.out.send(NodeId(peer), msg)
                self.told_upto[peer] = self.chosen_upto

    def on_notice_timer(self, now_ns: int) -> None:
        if self.role == "leader":
            self._send_notices(self._untold())

    def broadcast_heartbeat(self) -> None:
        self.commit_dirty = False
        self.hb_id += 1
        self.hb_sent[self.hb_id] = (self.now_ns, {self.node_id})
        for old in [h for h in self.hb_sent if h < self.hb_id - 64]:
            del self.hb_sent[old]
        msg = Heartbeat(ballot=self.ballot, commit_upto=self.chosen_upto, hb_id=self.hb_id)
        for peer in sorted(self.known_nodes):  # learners and removed voters keep up too
            if peer != self.node_id:
                self._push_deferred(peer)  # (first: the heartbeat's prefix needs them)
                self.out.send(NodeId(peer), msg)
                self.told_upto[peer] = self.chosen_upto
        self.deadlines.set(("heartbeat",), self.now_ns + self.cfg.heartbeat_interval_ns)

    def handle_heartbeat_ack(self, src: NodeId, msg: HeartbeatAck) -> None:
        if not msg.ok:
            if msg.promised > self.ballot:
                self._hear_higher(msg.promised)
            return
        if self.role != "leader" or msg.ballot != self.ballot:
            return
        if msg.chosen_upto > self.chosen_upto:
            self.request_catchup(src)
        sent = self.hb_sent.get(msg.hb_id)
        if sent is None:
            return
        sent[1].add(src)
        if quorum.is_quorum(quorum.voters_at(self.config, self.chosen_upto + 1), sent[1]):
            self._quorum_heard(msg.hb_id, sent[0])

    def _quorum_heard(self, hb_id: int, sent_ns: int) -> None:
        self.last_quorum_ns = max(self.last_quorum_ns, sent_ns)
        end = quorum.lease_end_ns(sent_ns, self.cfg.lease_ns, self.cfg.max_drift_ppm)
        self.lease_until_ns = max(self.lease_until_ns, end)
        for pending in self.reads:
            pending.confirmed = pending.confirmed or pending.hb_id <= hb_id
        self._serve_reads()

    def cmd_read(self, cmd: Read) -> None:
        if self.role != "leader" or self.recovering:
            self._refuse_read(cmd)
            return
        if self._lease_valid():
            self._answer_read(cmd, "lease")
            return
        self.broadcast_heartbeat()
        index = max(self.chosen_upto, self.establish_slot)
        self.reads.append(_PendingRead(read=cmd, index=index, hb_id=self.hb_id))

    def _lease_valid(self) -> bool:
        return (self.role == "leader" and self.lease_until_ns > self.now_ns
                and self.chosen_upto >= self.establish_slot)

    def _serve_reads(self) -> None:
        """Answer read-index reads whose heartbeat a quorum confirmed, once applied."""
        keep = []
        for pending in self.reads:
            if pending.confirmed and self.chosen_upto >= pending.index:
                self._answer_read(pending.read, "read-index")
            else:
                keep.append(pending)
        self.reads = keep

    def _answer_read(self, cmd: Read, via: str) -> None:
        if not isinstance(self.sm, Queryable):
            raise TypeError("the state machine has no query method")
        value = self.sm.query(cmd.query)
        self.out.notify(NOTE_READ, ReadResult(client_id=cmd.client_id, req_id=cmd.req_id, ok=True,
                                              value=value, via=via))

    def leader_info(self) -> LeaderInfo:
        is_leader = self.role == "leader"
        return LeaderInfo(
            node_id=self.node_id, is_leader=is_leader,
            ballot=self.ballot if is_leader else self.leader_ballot,
            leader_hint=self.leader_hint, lease_valid=self._lease_valid(),
            applied_index=self.chosen_upto,
            voters=quorum.voters_at(self.config, self.chosen_upto + 1),
        )

    # ------------------------------------------------------------ dispatching

    _HANDLERS: dict[type, Callable[[Replica, NodeId, Any], None]] = {
        Prepare: handle_prepare,
        Promise: handle_promise,
        Accept: handle_accept,
        Accepted: handle_accepted,
        Heartbeat: handle_heartbeat,
        HeartbeatAck: handle_heartbeat_ack,
        Forward: handle_forward,
        CatchupRequest: handle_catchup_request,
        CatchupEntries: handle_catchup_entries,
        SnapshotChunk: handle_snapshot_chunk,
        RecoverQuery: handle_recover_query,
        RecoverInfo: handle_recover_info,
    }

    _TIMERS: dict[str, Callable[[Replica, int], None]] = {
        "election": on_election_timer,
        "heartbeat": on_heartbeat_timer,
        "retry": on_retry_timer,
        "catchup": on_catchup_timer,
        "recover": _recover_tick,
        "marks": on_marks_timer,
        "notice": on_notice_timer,
        "spread": on_spread_timer,
    }


def _slot_of(entry: Any) -> int:
    if isinstance(entry, AcceptedEntry):
        return entry.slot
    return int(entry[0])
