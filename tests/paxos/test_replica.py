"""The replica wired back to back in a fault-free simulated world (and alone, for the
Ready contract). Each test waits on a condition with a virtual-time deadline."""

from __future__ import annotations

import random

from meshfaas.core.types import NS_PER_MS, NodeId, Now
from paxos.api import (
    NOTE_RESULT,
    LeaderQuery,
    Propose,
    Read,
    Reconfigure,
    Suspect,
)
from paxos.kv import KvStateMachine
from paxos.messages import Accept, Batch, Heartbeat, Prepare, Promise
from paxos.replica import NOTE_RESTORED, PaxosConfig, Replica
from tests.paxos.cluster import Cluster

NOW = Now(mono_ns=10**12, wall_ns=10**18)


def lone_replica(**settings: object) -> Replica:
    config = PaxosConfig(node_id="n1", voters=("n1", "n2", "n3"), **settings)  # type: ignore[arg-type]
    return Replica(config, KvStateMachine(), random.Random(1), {}, NOW)


def test_elects_one_leader_and_commits() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    c.command(leader, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    assert c.wait_result("a", 1).ok
    c.command(leader, Propose(client_id="a", seq=2, payload=["get", "k"]))
    res = c.wait_result("a", 2)
    assert res.ok and res.value == "v" and res.index >= 1
    assert sum(1 for n in c.ids if c.core(n).role == "leader") == 1


def test_a_follower_forwards_and_answers_when_it_applies() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    c.command(follower, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    res = c.wait_result("a", 1)
    assert res.ok
    assert any(n == follower and note.kind == NOTE_RESULT for n, note, _ in c.notes)


def test_without_a_leader_a_proposal_is_refused() -> None:
    c = Cluster(3)
    c.command("n1", Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    res = c.wait_result("a", 1)
    assert not res.ok and res.error == "not-leader"


def test_a_retried_command_is_applied_once_with_its_first_result() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    others = [n for n in c.ids if n != leader]
    c.command(leader, Propose(client_id="a", seq=1, payload=["append", "k", "x"]))
    first = c.wait_result("a", 1)
    c.notes.clear()
    c.command(others[0], Propose(client_id="a", seq=1, payload=["append", "k", "x"]))
    again = c.wait_result("a", 1)
    assert again.ok and again.value == first.value == "x"
    c.command(leader, Propose(client_id="a", seq=2, payload=["get", "k"]))
    assert c.wait_result("a", 2).value == "x"


def test_restart_rebuilds_from_disk_and_never_reuses_a_ballot() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    for seq in range(1, 6):
        c.command(leader, Propose(client_id="a", seq=seq, payload=["append", "k", str(seq)]))
        c.wait_result("a", seq)
    old_ballot = c.core(leader).ballot
    for n in c.ids:
        c.world.crash(n)
    for n in c.ids:
        c.world.restart(n)
    assert all(c.core(n).sm.data.get("k") == "12345" for n in c.ids if c.core(n).chosen_upto >= 6)
    new_leader = c.wait_leader()
    assert c.core(new_leader).ballot > old_ballot
    c.command(new_leader, Propose(client_id="a", seq=6, payload=["get", "k"]))
    assert c.wait_result("a", 6).value == "12345"


def test_the_round_is_persisted_before_any_prepare_leaves() -> None:
    r = lone_replica()
    r.tick(NOW.after(10 * 10**9))
    ready = r.take_ready()
    assert ready is not None
    assert any(w.table == "paxos_meta" and w.key == "max_round" for w in ready.persist)
    prepares = [o for o in ready.send_after_persist if isinstance(o.msg, Prepare)]
    assert {o.dst for o in prepares} == {"n2", "n3"}
    assert not any(isinstance(o.msg, Prepare) for o in ready.send_now)


def test_a_promise_leaves_only_after_its_write_is_durable() -> None:
    r = lone_replica()
    r.take_ready()
    later = NOW.after(10**9)  # past the boot lease guard
    r.handle(NodeId("n2"), Prepare(ballot=(5, "n2"), from_slot=1), later)
    first = r.take_ready()
    assert first is not None
    assert any(w.key == "promised" for w in first.persist)
    assert [type(o.msg) for o in first.send_after_persist] == [Promise]
    # A duplicate arrives before the fsync completes: its reply must wait too.
    r.handle(NodeId("n2"), Prepare(ballot=(5, "n2"), from_slot=1), later)
    second = r.take_ready()
    assert second is None or not any(isinstance(o.msg, Promise) for o in second.send_now)
    r.on_persisted(first.seq)
    third = r.take_ready()
    assert third is not None and [type(o.msg) for o in third.send_now] == [Promise]


def test_an_accept_below_the_promise_is_refused() -> None:
    r = lone_replica()
    later = NOW.after(10**9)
    r.handle(NodeId("n2"), Prepare(ballot=(5, "n2"), from_slot=1), later)
    r.take_ready()
    r.handle(NodeId("n3"), Accept(ballot=(4, "n3"), entries=((1, Batch(ballot=(4, "n3"))),),
                                  commit_upto=0), later)
    ready = r.take_ready()
    assert ready is not None and not ready.persist
    assert [o.msg.ok for o in ready.send_now] == [False]


def test_bad_peer_messages_are_dropped_and_counted() -> None:
    r = lone_replica()
    r.handle(NodeId("n2"), "garbage", NOW)
    r.handle(NodeId("n2"), Heartbeat(ballot=(-1, "n2"), commit_upto=0, hb_id=1), NOW)
    r.handle(NodeId("n2"), Accept(ballot=(1, "n2"), entries=((0, Batch(ballot=(1, "n2"))),),
                                  commit_upto=0), NOW)
    assert r.dropped == 3


def test_lease_reads_and_read_index_reads() -> None:
    c = Cluster(3, election_timeout_ns=1_000 * NS_PER_MS)  # the leader keeps leading
    leader = c.wait_leader()
    c.command(leader, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    c.wait_result("a", 1)
    c.run_ms(100)
    c.command(leader, Read(client_id="r", req_id=1, query=["get", "k"]))
    lease_read = c.wait_read("r", 1)
    assert lease_read.ok and lease_read.value == "v" and lease_read.via == "lease"
    for n in c.ids:  # followers can no longer answer the leader: its lease runs out
        if n != leader:
            c.world.block(n, leader)
    c.run_ms(200)
    assert not c.core(leader).leader_info().lease_valid
    c.command(leader, Read(client_id="r", req_id=2, query=["get", "k"]))
    c.run_ms(20)
    assert c.result("r", 2, "paxos.read") is None  # no quorum, no answer
    c.world.heal()
    slow = c.wait_read("r", 2)
    assert slow.ok and slow.value == "v" and slow.via == "read-index"


def test_a_follower_refuses_reads_with_a_leader_hint() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    follower = next(n for n in c.ids if n != leader)
    c.command(leader, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    c.wait_result("a", 1)
    c.command(follower, Read(client_id="r", req_id=1, query=["get", "k"]))
    res = c.wait_read("r", 1)
    assert not res.ok and res.leader_hint == leader


def test_the_fencing_token_is_the_leaders_ballot_and_grows() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    info = c.core(leader).command(LeaderQuery(), c.world.now_of(leader))
    assert info.is_leader and info.ballot[1] == leader
    c.command(leader, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    assert c.wait_result("a", 1).fencing == info.ballot
    c.world.crash(leader)
    new = c.wait_for(lambda: (lambda found: found if found and found != leader else None)(c.leader()))
    new_info = c.core(new).leader_info()
    assert new_info.ballot > info.ballot
    c.command(new, Propose(client_id="a", seq=2, payload=["get", "k"]))
    assert c.wait_result("a", 2).fencing == new_info.ballot


def test_batching_pipelining_and_group_commit() -> None:
    c = Cluster(3, window=4, batch_max=16)
    leader = c.wait_leader()
    syncs_before = c.world.stats["fsyncs"]
    for i in range(100):
        c.command(leader, Propose(client_id=f"c{i}", seq=1, payload=["append", "k", "x"]))
    c.wait_for(lambda: all(c.result(f"c{i}", 1) for i in range(100)))
    slots = {c.result(f"c{i}", 1).index for i in range(100)}
    assert len(slots) <= 100 // 16 + 4  # many commands per slot
    assert c.world.stats["fsyncs"] - syncs_before < 100  # one fsync covers many commands
    assert c.core(leader).sm.data["k"] == "x" * 100


def test_a_lagging_replica_catches_up_by_chunked_snapshot() -> None:
    c = Cluster(3, snapshot_every=10, log_keep=2, chunk_bytes=64)
    leader = c.wait_leader()
    lagging = next(n for n in c.ids if n != leader)
    c.world.crash(lagging)
    for seq in range(1, 41):
        c.command(leader, Propose(client_id="a", seq=seq, payload=["append", "k", "y"]))
        c.wait_result("a", seq)
    assert c.core(leader).truncated_upto > 0
    c.world.restart(lagging)
    c.wait_for(lambda: c.core(lagging).chosen_upto >= c.core(leader).chosen_upto)
    assert c.core(lagging).sm.data == c.core(leader).sm.data
    restored = [note.data for n, note, _ in c.notes if n == lagging and note.kind == NOTE_RESTORED]
    assert max(restored) >= 10  # it installed a snapshot it received in 64-byte chunks


def test_a_replica_that_lost_its_disk_does_not_vote_until_caught_up() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    for seq in range(1, 6):
        c.command(leader, Propose(client_id="a", seq=seq, payload=["append", "k", "z"]))
        c.wait_result("a", seq)
    victim = next(n for n in c.ids if n != leader)
    c.world.crash(victim, lose_disk=True)
    c.world.restart(victim)
    core = c.core(victim)
    assert core.recovering
    core.handle(leader, Prepare(ballot=(99, leader), from_slot=1), c.world.now_of(victim))
    ready = core.take_ready()
    assert ready is None or not any(isinstance(o.msg, Promise)
                                    for o in ready.send_now + ready.send_after_persist)
    c.world.run_until(c.world.time_ns)  # hand the batch back to the world
    c.wait_for(lambda: not c.core(victim).recovering)
    assert c.core(victim).sm.data == c.core(leader).sm.data
    assert c.core(victim).promised[0] > 0


def test_voters_are_replaced_through_the_log() -> None:
    c = Cluster(5, voters=3, window=4)
    leader = c.wait_leader()
    c.command(leader, Reconfigure(client_id="op", seq=1, voters=("n3", "n4", "n5")))
    assert c.wait_result("op", 1).ok
    c.wait_for(lambda: all(c.core(n).leader_info().voters == ("n3", "n4", "n5")
                           for n in ("n3", "n4", "n5")))
    c.world.crash(NodeId("n1"))
    c.world.crash(NodeId("n2"))
    new = c.wait_for(lambda: (lambda found: found if found in ("n3", "n4", "n5") else None)(c.leader()))
    c.command(new, Propose(client_id="a", seq=1, payload=["put", "k", "after"]))
    assert c.wait_result("a", 1).ok
    c.wait_for(lambda: all(c.core(n).sm.data.get("k") == "after" for n in ("n3", "n4", "n5")))


def test_suspicion_of_the_leader_starts_an_election_early() -> None:
    c = Cluster(3, election_timeout_ns=2_000 * NS_PER_MS, lease_ns=100 * NS_PER_MS)
    leader = c.wait_leader()
    c.run_ms(200)
    follower = next(n for n in c.ids if n != leader)
    c.world.crash(leader)
    c.command(follower, Suspect(node_id=leader))
    c.wait_for(lambda: c.leader() not in (None, leader), within_ms=1_500)


def test_two_lost_disks_of_five_both_recover() -> None:
    c = Cluster(5)
    leader = c.wait_leader()
    for seq in range(1, 4):
        c.command(leader, Propose(client_id="a", seq=seq, payload=["append", "k", "q"]))
        c.wait_result("a", seq)
    victims = [n for n in c.ids if n != leader][:2]
    for n in victims:
        c.world.crash(n, lose_disk=True)
    for n in victims:
        c.world.restart(n)
    c.wait_for(lambda: not any(c.core(n).recovering for n in victims))
    assert all(c.core(n).sm.data == c.core(leader).sm.data for n in victims)


def test_two_lost_disks_of_three_never_vote_again() -> None:
    c = Cluster(3)
    leader = c.wait_leader()
    c.command(leader, Propose(client_id="a", seq=1, payload=["put", "k", "v"]))
    c.wait_result("a", 1)
    victims = [n for n in c.ids if n != leader]
    for n in victims:
        c.world.crash(n, lose_disk=True)
        c.world.restart(n)
    c.run_ms(2_000)
    assert all(c.core(n).recovering for n in victims)  # a majority of disks is gone
