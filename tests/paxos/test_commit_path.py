"""The commit path's economy: what a commit costs in messages and writes, and that the
savings keep every guarantee (a lone replica fed by hand for the Ready contract, the
fault-free cluster for restarts)."""

from __future__ import annotations

import random

import pytest

from meshfaas.core.types import NodeId, Now, Ready
from paxos.api import Propose
from paxos.kv import KvStateMachine
from paxos.messages import (
    Accept,
    Accepted,
    Batch,
    CatchupEntries,
    CatchupRequest,
    Command,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Promise,
)
from paxos.replica import COMMIT_NOTICE, T_LOG, T_META, PaxosConfig, Replica
from tests.paxos.cluster import Cluster

NOW = Now(mono_ns=10**12, wall_ns=10**18)
LATER = NOW.after(10**9)  # past the boot lease guard
B2 = (5, "n2")  # a leader n2's ballot
ELECTED = NOW.after(10 * 10**9)  # when lone_leader() stands for election


def follower() -> Replica:
    config = PaxosConfig(node_id="n1", voters=("n1", "n2", "n3"))
    r = Replica(config, KvStateMachine(), random.Random(1), {}, NOW)
    r.take_ready()
    return r


def put(client: str, seq: int) -> Command:
    return Command(client_id=client, seq=seq, payload=["put", "k", f"{client}{seq}"])


def accept(r: Replica, slot: int, commit_upto: int) -> None:
    """n2 (leading at B2) sends slot ``slot``; the replica syncs and acks it."""
    value = Batch(ballot=B2, cmds=(put("c", slot),))
    r.handle(NodeId("n2"), Accept(ballot=B2, entries=((slot, value),), commit_upto=commit_upto),
             LATER)
    ready = r.take_ready()
    assert ready is not None and [type(o.msg) for o in ready.send_after_persist] == [Accepted]
    r.on_persisted(ready.seq)


def log_rows(ready: Ready) -> list[tuple[int, bool]]:
    """(slot, chosen) of every log row the batch writes."""
    return sorted((w.key, w.value[2]) for w in ready.persist if w.table == T_LOG)


def marked(ready: Ready) -> list[int]:
    """Slots the batch's ``marks`` record marks chosen (each range's first to last slot)."""
    records = [w.value for w in ready.persist if w.table == T_META and w.key == "marks"]
    return sorted({s for record in records for _r, _n, lo, hi in record
                   for s in range(lo, hi + 1)})


def test_a_commit_notice_is_applied_without_an_ack_or_a_write() -> None:
    r = follower()
    accept(r, 1, commit_upto=0)
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=1, hb_id=COMMIT_NOTICE), LATER)
    assert r.chosen_upto == 1 and r.log[1].chosen
    ready = r.take_ready()
    assert ready is not None and not ready.persist  # the chosen mark waits
    assert not ready.send_now and not ready.send_after_persist  # and no ack
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=1, hb_id=7), LATER)
    acked = r.take_ready()
    assert acked is not None and [type(o.msg) for o in acked.send_now] == [HeartbeatAck]


def test_a_piggybacked_prefix_is_applied_once_its_accept_is_durable() -> None:
    r = follower()
    accept(r, 1, commit_upto=0)
    r.handle(NodeId("n2"), Accept(ballot=B2, entries=((2, Batch(ballot=B2)),), commit_upto=1),
             LATER)
    assert r.chosen_upto == 0  # not before the sync the leader waits for
    ready = r.take_ready()
    assert ready is not None and [type(o.msg) for o in ready.send_after_persist] == [Accepted]
    r.on_persisted(ready.seq)
    assert r.chosen_upto == 1 and r.log[1].chosen


def test_a_deferred_chosen_mark_rides_with_the_next_write() -> None:
    r = follower()
    accept(r, 1, commit_upto=0)
    accept(r, 2, commit_upto=1)  # slot 1 is learned chosen after slot 2's write
    assert r.chosen_upto == 1
    r.handle(NodeId("n2"), Accept(ballot=B2, entries=((3, Batch(ballot=B2)),), commit_upto=1),
             LATER)
    ready = r.take_ready()
    assert ready is not None
    assert log_rows(ready) == [(3, False)] and marked(ready) == [1]  # slot 1's mark joins it


def test_a_slot_learned_by_catch_up_is_marked_at_once() -> None:
    r = follower()
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=1, hb_id=COMMIT_NOTICE), LATER)
    r.take_ready()
    value = Batch(ballot=B2, cmds=(put("c", 1),))
    r.handle(NodeId("n2"), CatchupEntries(entries=((1, value),), chosen_upto=1), LATER)
    ready = r.take_ready()
    assert ready is not None and r.chosen_upto == 1
    assert [(w.key, w.value[2]) for w in ready.persist if w.table == T_LOG] == [(1, True)]


def lone_leader(**settings: object) -> Replica:
    """n1 elected with n2's promise: leads at its ballot, nothing in flight."""
    config = PaxosConfig(node_id="n1", voters=("n1", "n2", "n3"), **settings)  # type: ignore[arg-type]
    r = Replica(config, KvStateMachine(), random.Random(1), {}, NOW)
    r.tick(ELECTED)
    ready = r.take_ready()
    assert ready is not None
    r.on_persisted(ready.seq)
    r.handle(NodeId("n2"), Promise(ballot=r.ballot, ok=True, promised=r.ballot), ELECTED)
    settle(r)
    assert r.role == "leader"
    return r


def settle(r: Replica, acks_from: tuple[str, ...] = ("n2",)) -> list[tuple[str, object]]:
    """Sync every batch, ack every Accept from ``acks_from``; returns what was sent."""
    sent: list[tuple[str, object]] = []
    while (ready := r.take_ready()) is not None:
        r.on_persisted(ready.seq)
        for out in (*ready.send_now, *ready.send_after_persist):
            sent.append((out.dst, out.msg))
            if isinstance(out.msg, Accept) and out.dst in acks_from:
                slots = tuple(s for s, _ in out.msg.entries)
                r.handle(NodeId(out.dst), Accepted(ballot=r.ballot, slots=slots, ok=True,
                                                   promised=r.ballot, chosen_upto=0), ELECTED)
    return sent


def notices(sent: list[tuple[str, object]]) -> list[str]:
    return sorted(dst for dst, msg in sent
                  if isinstance(msg, Heartbeat) and msg.hb_id == COMMIT_NOTICE)


def test_commit_notices_go_to_every_peer_not_told_by_an_accept() -> None:
    r = lone_leader()
    r.handle(NodeId("n3"), Forward(cmds=(put("c", 1),)), ELECTED)
    sent = settle(r)
    assert r.chosen_upto >= 2  # the leader's no-op and the command
    assert notices(sent) == ["n3"]  # at once: n3's client waits for its command
    assert not any(isinstance(msg, HeartbeatAck) for _dst, msg in sent)
    r.tick(ELECTED.after(r.cfg.notice_delay_ns - 1))
    assert notices(settle(r)) == []
    r.tick(ELECTED.after(r.cfg.notice_delay_ns))
    assert notices(settle(r)) == ["n2"]  # n2 is told within the delay
    r.tick(ELECTED.after(2 * r.cfg.notice_delay_ns))
    assert notices(settle(r)) == []  # once


def test_an_accept_within_the_delay_carries_the_prefix_instead_of_a_notice() -> None:
    r = lone_leader()
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED)
    sent = settle(r)
    assert r.chosen_upto >= 2 and notices(sent) == []
    r.command(Propose(client_id="c", seq=2, payload=["put", "k", "w"]), ELECTED.after(10**6))
    sent = settle(r)
    carried = [msg.commit_upto for dst, msg in sent if isinstance(msg, Accept) and dst == "n3"]
    assert carried and carried[0] >= 2
    assert ("notice",) in r.deadlines  # the second command's own prefix is still untold
    r.tick(ELECTED.after(10**6 + r.cfg.notice_delay_ns))
    assert notices(settle(r)) == ["n2", "n3"]


def test_a_zero_notice_delay_tells_every_peer_at_once() -> None:
    r = lone_leader(notice_delay_ns=0)
    r.handle(NodeId("n3"), Forward(cmds=(put("c", 1),)), ELECTED)
    assert notices(settle(r)) == ["n2", "n3"]


def test_waiting_commit_notices_go_only_to_the_forwarder() -> None:
    r = lone_leader(commit_notice="waiting")
    r.handle(NodeId("n3"), Forward(cmds=(put("c", 1),)), ELECTED)
    sent = settle(r)
    assert r.chosen_upto >= 2
    assert notices(sent) == ["n3"]


def test_an_idle_leader_keeps_no_retry_timer_and_takes_no_ready() -> None:
    r = lone_leader()
    r.handle(NodeId("n3"), Promise(ballot=r.ballot, ok=True, promised=r.ballot), ELECTED)
    settle(r, acks_from=("n2", "n3"))
    assert r.inflight == {}
    r.tick(ELECTED.after(r.cfg.retry_ns))  # the timer armed while slots were in flight
    settle(r)
    assert ("retry",) not in r.deadlines  # not re-armed: nothing to resend
    assert r.take_ready() is None
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED.after(10**8))
    ready = r.take_ready()
    assert ready is not None and ("retry",) in r.deadlines  # armed while in flight
    r.on_persisted(ready.seq)


def test_a_replica_restarted_before_its_marks_were_written_relearns_them() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    for seq in range(1, 4):
        c.command(leader, Propose(client_id="a", seq=seq, payload=["append", "k", str(seq)]))
        c.wait_result("a", seq)
    c.wait_for(lambda: all(c.core(n).chosen_upto == c.core(leader).chosen_upto for n in c.ids))
    top = c.core(leader).chosen_upto
    other = next(n for n in c.ids if n != leader)
    assert c.core(other).unmarked  # its newest marks are not on disk
    c.world.crash(other)
    c.world.restart(other)
    c.wait_for(lambda: c.core(other).chosen_upto >= top)
    assert c.core(other).sm.query(["get", "k"]) == "123"


def test_a_deferred_chosen_mark_is_written_within_the_mark_delay() -> None:
    r = follower()
    accept(r, 1, commit_upto=0)
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=1, hb_id=COMMIT_NOTICE), LATER)
    r.take_ready()
    r.tick(LATER.after(r.cfg.mark_delay_ns))
    ready = r.take_ready()
    assert ready is not None
    assert log_rows(ready) == [] and marked(ready) == [1]
    assert not r.unmarked


def test_commands_wait_for_a_free_pipeline_slot_and_share_a_batch() -> None:
    r = lone_leader(max_inflight=1)
    r.handle(NodeId("n3"), Promise(ballot=r.ballot, ok=True, promised=r.ballot), ELECTED)
    settle(r, acks_from=("n2", "n3"))
    t = ELECTED.after(10**8)
    r.command(Propose(client_id="a", seq=1, payload=["put", "k", "1"]), t)
    first = r.take_ready()
    assert first is not None and len(r.inflight) == 1
    for client in ("b", "c"):
        r.command(Propose(client_id=client, seq=1, payload=["put", "k", client]), t)
    waiting = r.take_ready()
    assert waiting is None or not any(isinstance(o.msg, Accept) for o in waiting.send_now)
    assert len(r.queue) == 2  # both wait for the slot in flight
    r.on_persisted(first.seq)
    (slot,) = r.inflight
    r.handle(NodeId("n2"), Accepted(ballot=r.ballot, slots=(slot,), ok=True, promised=r.ballot,
                                    chosen_upto=0), t)
    sent = settle(r)
    batches = [value for _dst, msg in sent if isinstance(msg, Accept)
               for _slot, value in msg.entries]
    assert [len(b.cmds) for b in batches] == [2, 2]  # one batch of both, to n2 and n3


def test_a_follower_forwards_at_once_then_batches_until_the_leader_speaks() -> None:
    r = follower()  # forward_burst 4
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=0, hb_id=1), LATER)
    r.take_ready()

    def forwards() -> list[tuple[str, ...]]:
        ready = r.take_ready()
        out = [] if ready is None else [*ready.send_now, *ready.send_after_persist]
        return [tuple(c.client_id for c in o.msg.cmds) for o in out if isinstance(o.msg, Forward)]

    def propose(client: str) -> None:
        r.command(Propose(client_id=client, seq=1, payload=["put", "k", client]), LATER)

    for client in "abcd":
        propose(client)
        assert forwards() == [(client,)]  # fewer than forward_burst unanswered: at once
    propose("e")
    propose("f")
    assert forwards() == []  # four unanswered: they wait
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=0, hb_id=COMMIT_NOTICE), LATER)
    assert forwards() == [("e", "f")]  # one Forward for both
    propose("g")
    assert forwards() == [("g",)]


def test_commands_waiting_to_be_forwarded_are_refused_when_the_follower_stands() -> None:
    r = follower()
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=0, hb_id=1), LATER)
    for client in "abcdef":
        r.command(Propose(client_id=client, seq=1, payload=["put", "k", client]), LATER)
    r.take_ready()
    r.tick(LATER.after(10 * 10**9))  # the leader went silent: an election
    ready = r.take_ready()
    assert ready is not None and r.role == "candidate"
    refused = [n.data.client_id for n in ready.notifications if n.kind == "paxos.result"]
    assert refused == ["e", "f"] and not r.fwd_buffer  # a-d left; e and f are told to retry


def accepts_to(sent: list[tuple[str, object]]) -> list[str]:
    return sorted(dst for dst, msg in sent if isinstance(msg, Accept))


def test_thrifty_accepts_go_to_a_majority_only() -> None:
    r = lone_leader(accept_to="quorum")
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED)
    sent = settle(r)
    assert accepts_to(sent) == ["n2"]  # n1 itself and one follower: a majority of three
    assert r.chosen_upto >= 2 and r.inflight == {}


def test_thrifty_sends_an_unanswered_accept_to_the_other_voters_after_spread_ns() -> None:
    r = lone_leader(accept_to="quorum")
    settle(r)
    r.heard_ns["n2"] = ELECTED.mono_ns - 1  # n2 answered last: it is asked first
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED)
    sent = settle(r, acks_from=())  # n2 says nothing
    assert accepts_to(sent) == ["n2"]
    r.tick(ELECTED.after(r.cfg.spread_ns - 1))
    assert accepts_to(settle(r, acks_from=())) == []
    r.tick(ELECTED.after(r.cfg.spread_ns))
    assert accepts_to(settle(r, acks_from=("n3",))) == ["n3"]
    assert r.inflight == {} and r.chosen_upto >= 2  # n1 and n3 chose it
    r.command(Propose(client_id="c", seq=2, payload=["put", "k", "w"]), ELECTED.after(10**7))
    assert accepts_to(settle(r, acks_from=("n3",))) == ["n3"]  # the one that answered


def test_no_spread_or_retry_timer_is_left_when_nothing_is_in_flight() -> None:
    """A commit answered in time leaves no timer to wake the loop for nothing."""
    r = lone_leader(accept_to="quorum")
    r.handle(NodeId("n3"), Promise(ballot=r.ballot, ok=True, promised=r.ballot), ELECTED)
    settle(r)  # every voter has promised: no Prepare waits for an answer
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED)
    settle(r, acks_from=())  # n2 has not answered yet: both timers are armed
    assert ("spread",) in r.deadlines and ("retry",) in r.deadlines
    r.handle(NodeId("n2"), Accepted(ballot=r.ballot, slots=tuple(sorted(r.inflight)), ok=True,
                                    promised=r.ballot, chosen_upto=0), ELECTED)
    settle(r)
    assert r.inflight == {} and r.chosen_upto >= 2
    assert ("spread",) not in r.deadlines and ("retry",) not in r.deadlines
    r.command(Propose(client_id="c", seq=2, payload=["put", "k", "w"]), ELECTED.after(10**6))
    settle(r, acks_from=())  # the next Accept arms them again, from its own send
    assert r.deadlines.get(("spread",)) == ELECTED.after(10**6).mono_ns + r._spread_after_ns()


def test_thrifty_accepts_include_the_follower_whose_client_waits() -> None:
    r = lone_leader(accept_to="quorum")
    settle(r)
    r.handle(NodeId("n3"), Forward(cmds=(put("c", 1),)), ELECTED)
    assert accepts_to(settle(r, acks_from=("n3",))) == ["n3"]


def test_an_unknown_accept_to_is_refused() -> None:
    with pytest.raises(ValueError, match="accept_to"):
        PaxosConfig(node_id="n1", voters=("n1",), accept_to="some")


def test_thrifty_pushes_the_chosen_slots_to_the_voter_left_out_with_its_notice() -> None:
    r = lone_leader(accept_to="quorum")
    settle(r)
    r.command(Propose(client_id="c", seq=1, payload=["put", "k", "v"]), ELECTED)
    assert accepts_to(settle(r)) == ["n2"]
    chosen = [(s, r.log[s].value) for s in range(1, r.chosen_upto + 1)]
    r.tick(ELECTED.after(r.cfg.notice_delay_ns))
    sent = settle(r)
    pushed = [msg for dst, msg in sent if dst == "n3" and isinstance(msg, CatchupEntries)]
    assert pushed == [CatchupEntries(entries=tuple(chosen), chosen_upto=r.chosen_upto)]
    assert notices(sent) == ["n2"]  # n3's push tells it the prefix: no notice besides
    assert r.deferred == {}


def test_a_pushed_slot_is_applied_by_the_voter_that_had_no_accept() -> None:
    r = follower()
    value = Batch(ballot=B2, cmds=(put("c", 1),))
    r.handle(NodeId("n2"), CatchupEntries(entries=((1, value),), chosen_upto=1), LATER)
    assert r.chosen_upto == 1 and r.sm.query(["get", "k"]) == "c1"
    ready = r.take_ready()
    assert ready is not None and log_rows(ready) == [(1, True)]
    assert not ready.send_now and not ready.send_after_persist  # no answer, no catch-up


def test_a_follower_syncs_with_the_leader_before_trusting_what_it_lacks() -> None:
    r = follower()
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=0, hb_id=1), LATER)
    r.take_ready()
    token = r.sync_with_leader()
    assert token is not None and not r.synced(token)
    ready = r.take_ready()
    assert ready is not None
    (request,) = [o.msg for o in ready.send_now]
    assert request == CatchupRequest(from_slot=1, snap_index=0, offset=0, nonce=token)
    second = r.sync_with_leader()  # one in flight: the next one waits for its answer
    assert second == token + 1 and r.take_ready() is None
    value = Batch(ballot=B2, cmds=(put("c", 1),))
    r.handle(NodeId("n2"), CatchupEntries(entries=((1, value),), chosen_upto=1, nonce=token), LATER)
    assert r.synced(token) and not r.synced(second) and r.chosen_upto == 1
    ready = r.take_ready()
    assert ready is not None
    assert [o.msg.nonce for o in ready.send_now if isinstance(o.msg, CatchupRequest)] == [second]
    assert [n.data for n in ready.notifications if n.kind == "paxos.synced"] == [token]
    r.handle(NodeId("n2"), CatchupEntries(entries=(), chosen_upto=1, nonce=token), LATER)
    assert not r.synced(second)  # a copy of the first answer is not the second's
    r.handle(NodeId("n2"), CatchupEntries(entries=(), chosen_upto=1, nonce=second), LATER)
    assert r.synced(second)


def test_a_lost_sync_is_sent_again_by_the_next_caller_after_retry_ns() -> None:
    r = follower()
    r.handle(NodeId("n2"), Heartbeat(ballot=B2, commit_upto=0, hb_id=1), LATER)
    first = r.sync_with_leader()
    r.take_ready()
    r.tick(LATER.after(r.cfg.retry_ns))
    again = r.sync_with_leader()
    ready = r.take_ready()
    assert first is not None and again == first + 1 and ready is not None
    assert [o.msg.nonce for o in ready.send_now if isinstance(o.msg, CatchupRequest)] == [again]


def test_the_leader_and_a_follower_without_a_leader_do_not_sync() -> None:
    assert follower().sync_with_leader() is None  # no leader known: nobody to ask
    assert lone_leader().sync_with_leader() is None


def test_thrifty_waits_longer_before_spreading_when_answers_are_slow() -> None:
    """Under load every answer is slow: spreading after spread_ns would send every slot
    to every voter (the saving undone). The wait follows 4x the usual answer time."""
    r = lone_leader(accept_to="quorum")
    settle(r)
    t = ELECTED
    for seq in range(1, 31):  # n2 answers each Accept 3 ms after the proposal
        r.command(Propose(client_id="c", seq=seq, payload=["put", "k", str(seq)]), t)
        sent = settle(r, acks_from=())
        (slot,) = {s for _dst, msg in sent if isinstance(msg, Accept) for s, _v in msg.entries}
        t = t.after(3 * 10**6)
        r.handle(NodeId("n2"), Accepted(ballot=r.ballot, slots=(slot,), ok=True, promised=r.ballot,
                                        chosen_upto=0), t)
        settle(r, acks_from=())
    wait_ns = r._spread_after_ns()
    assert 4 * 2 * 10**6 < wait_ns <= 4 * 3 * 10**6  # about 4 x 3 ms, not spread_ns (5 ms)
    r.command(Propose(client_id="c", seq=99, payload=["put", "k", "last"]), t)
    assert accepts_to(settle(r, acks_from=())) == ["n2"]
    r.tick(t.after(r.cfg.spread_ns))
    assert accepts_to(settle(r, acks_from=())) == []  # not yet: answers usually take 3 ms
    r.tick(t.after(wait_ns))
    assert accepts_to(settle(r, acks_from=())) == ["n3"]
