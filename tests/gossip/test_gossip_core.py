"""The gossip core, one node driven by hand and several wired back to back."""

from __future__ import annotations

import random
from typing import Any

import pytest
from gossip_harness import Net

from gossip import AddSeeds, Gossip, GossipConfig, Leave, NodeMeta, UpdateMeta
from gossip.core import INCARNATION_KEY, TABLE
from gossip.messages import (
    MAX_INCARNATION,
    Ack,
    Alive,
    Dead,
    MemberState,
    Nack,
    Ping,
    PingReq,
    PushPullReply,
    Suspect,
)
from gossip.messages import Gossip as GossipMsg
from meshfaas.core.types import NS_PER_MS, NS_PER_S, NodeId, Now, Ready

ME = NodeId("me")
X, Y = NodeId("x"), NodeId("y")
META = NodeMeta(peer_addr="tcp://me:7000")
T0 = Now(mono_ns=10**15, wall_ns=10**18)


def make(config: GossipConfig | None = None, disk: Any = None, **kw: Any) -> Gossip:
    g = Gossip(config or GossipConfig(), ME, disk or {}, random.Random(7), T0, meta=META, **kw)
    ready = g.take_ready()
    assert ready is not None and ready.persist  # the incarnation ceiling
    g.on_persisted(ready.seq)
    return g


def feed(g: Gossip, *updates: Any, src: NodeId = Y, now: Now = T0) -> None:
    g.handle(src, GossipMsg(updates=tuple(updates)), now)


def drain(g: Gossip) -> list[Ready]:
    out = []
    while (r := g.take_ready()) is not None:
        out.append(r)
        g.on_persisted(r.seq)
    return out


def sent(g: Gossip) -> list[tuple[NodeId, Any]]:
    return [(o.dst, o.msg) for r in drain(g) for o in (*r.send_now, *r.send_after_persist)]


def alive(node: NodeId, inc: int, meta: NodeMeta | None = None) -> Alive:
    return Alive(node=node, incarnation=inc, meta=meta or NodeMeta(peer_addr=f"tcp://{node}"))


def add_members(g: Gossip, count: int) -> list[NodeId]:
    ids = [NodeId(f"m{i:02d}") for i in range(count)]
    for start in range(0, count, 50):
        feed(g, *[alive(i, 1) for i in ids[start:start + 50]])
    drain(g)
    assert g.live_count() == count + 1
    return ids


# ---------------------------------------------------------------- precedence

SETUPS: dict[str, tuple[Any, ...]] = {
    "alive5": (alive(X, 5),),
    "suspect5": (alive(X, 5), Suspect(node=X, incarnation=5, accuser=Y)),
    "dead5": (alive(X, 5), Dead(node=X, incarnation=5, accuser=Y)),
    "left5": (alive(X, 5), Dead(node=X, incarnation=5, accuser=X)),
}


@pytest.mark.parametrize(
    ("setup", "update", "state", "inc"),
    [
        ("alive5", alive(X, 4), "alive", 5),
        ("alive5", alive(X, 5), "alive", 5),
        ("alive5", alive(X, 6), "alive", 6),
        ("alive5", Suspect(node=X, incarnation=4, accuser=Y), "alive", 5),
        ("alive5", Suspect(node=X, incarnation=5, accuser=Y), "suspect", 5),  # tie: suspect
        ("alive5", Suspect(node=X, incarnation=6, accuser=Y), "suspect", 6),
        ("alive5", Dead(node=X, incarnation=4, accuser=Y), "alive", 5),
        ("alive5", Dead(node=X, incarnation=5, accuser=Y), "dead", 5),
        ("alive5", Dead(node=X, incarnation=5, accuser=X), "left", 5),
        ("suspect5", alive(X, 5), "suspect", 5),
        ("suspect5", alive(X, 6), "alive", 6),  # refuted
        ("suspect5", Suspect(node=X, incarnation=6, accuser=Y), "suspect", 6),
        ("suspect5", Dead(node=X, incarnation=4, accuser=Y), "suspect", 5),
        ("suspect5", Dead(node=X, incarnation=5, accuser=Y), "dead", 5),
        ("dead5", alive(X, 5), "dead", 5),
        ("dead5", Suspect(node=X, incarnation=7, accuser=Y), "dead", 5),
        ("dead5", alive(X, 6), "alive", 6),  # a restarted node rejoins
        ("left5", alive(X, 5), "left", 5),
        ("left5", Dead(node=X, incarnation=9, accuser=Y), "left", 5),
        ("left5", alive(X, 6), "alive", 6),
    ],
)
def test_precedence(setup: str, update: Any, state: str, inc: int) -> None:
    g = make()
    feed(g, *SETUPS[setup])
    feed(g, update)
    row = next(m for m in g.members() if m.node_id == X)
    assert (row.state, row.incarnation) == (state, inc)


def test_unknown_nodes_are_learned_only_from_alive() -> None:
    g = make()
    feed(g, Suspect(node=X, incarnation=1, accuser=Y), Dead(node=Y, incarnation=1, accuser=X))
    assert [m.node_id for m in g.members()] == [ME]
    feed(g, alive(X, 3))
    assert g.state_of(X) == "alive"


def test_incarnation_of_a_member_ourselves_and_a_stranger() -> None:
    g = make()
    assert g.incarnation_of(X) is None
    feed(g, alive(X, 3))
    assert g.incarnation_of(X) == 3
    feed(g, alive(X, 5))
    assert g.incarnation_of(X) == 5
    assert g.incarnation_of(ME) == g.incarnation


# ----------------------------------------------------------- about ourselves


def ack_updates(g: Gossip) -> tuple[Any, ...]:
    """What ``g`` piggybacks on its answer to a ping."""
    g.handle(Y, Ping(seq=99, target=ME), T0)
    (dst, ack), = [(d, m) for d, m in sent(g) if isinstance(m, Ack)]
    assert dst == Y and ack.seq == 99
    return tuple(ack.updates)


@pytest.mark.parametrize("accusation", [Suspect, Dead])
def test_an_accusation_about_us_is_refuted(accusation: Any) -> None:
    g = make()
    inc = g.incarnation
    feed(g, accusation(node=ME, incarnation=inc, accuser=Y))
    assert g.incarnation == inc + 1 and g.counters["refutes"] == 1
    assert alive(ME, inc + 1, META) in ack_updates(g)
    assert g.awareness == 1  # Lifeguard: having to refute is a sign of ill health


def test_a_stale_accusation_about_us_is_ignored() -> None:
    g = make()
    feed(g, alive(X, 1))
    g.update_meta(META, T0)
    inc = g.incarnation
    feed(g, Suspect(node=ME, incarnation=inc - 1, accuser=Y))
    assert g.incarnation == inc and "refutes" not in g.counters


def test_an_alive_forged_for_us_is_dropped_counted_and_refuted() -> None:
    g = make()
    inc = g.incarnation
    forged = NodeMeta(peer_addr="tcp://evil:1", role="voter")
    feed(g, alive(ME, inc + 50, forged))
    assert g.counters["drop_forged_alive"] == 1
    assert g.incarnation == inc + 51
    feed(g, alive(ME, inc + 51, forged))  # our incarnation, someone else's metadata
    assert g.counters["drop_forged_alive"] == 2 and g.incarnation == inc + 52
    me = next(m for m in g.members() if m.node_id == ME)
    assert me.meta == META and me.state == "alive"


# ------------------------------------------------------------------ bad input


BAD_MESSAGES: list[Any] = [
    "garbage",
    b"\x00\x01",
    None,
    Ping(seq=-1, target=ME),
    Ack(seq=2**70),
    GossipMsg(updates=("not an update",)),  # type: ignore[arg-type]
    GossipMsg(updates=(Alive(node=X, incarnation=-1, meta=NodeMeta()),)),
    GossipMsg(updates=(Alive(node=NodeId(""), incarnation=1, meta=NodeMeta()),)),
    GossipMsg(updates=(Suspect(node=X, incarnation=MAX_INCARNATION, accuser=Y),)),
    GossipMsg(updates=(Alive(node=X, incarnation=1, meta="meta"),)),  # type: ignore[arg-type]
    GossipMsg(updates=(Dead(node=X, incarnation=1, accuser=7),)),  # type: ignore[arg-type]
    GossipMsg(updates=[alive(X, 1)]),  # type: ignore[arg-type]
    PushPullReply(members=(MemberState(node=X, state="alive", incarnation=1,
                                       meta=NodeMeta()),) * 70_000),
    PushPullReply(members=("row",)),  # type: ignore[arg-type]
    PingReq(seq=1, target=ME),
    Ping(seq=1, target=X),  # misdirected
]


@pytest.mark.parametrize("msg", BAD_MESSAGES, ids=lambda m: type(m).__name__)
def test_bad_input_is_dropped_counted_and_the_node_keeps_running(msg: Any) -> None:
    g = make()
    g.handle(Y, msg, T0)
    drops = {k: v for k, v in g.counters.items() if k.startswith("drop")}
    assert sum(drops.values()) >= 1, g.counters
    assert [m.node_id for m in g.members()] == [ME]
    assert ack_updates(g) is not None  # still answers pings


def test_a_bad_source_is_dropped() -> None:
    g = make()
    g.handle(7, Ping(seq=1, target=ME), T0)  # type: ignore[arg-type]
    assert g.counters["drop_malformed"] == 1


def test_excess_piggybacked_updates_are_cut_and_counted() -> None:
    g = make()
    feed(g, *[alive(NodeId(f"z{i}"), 1) for i in range(100)])
    assert g.counters["drop_excess_updates"] == 1
    assert len(g.members()) == 1 + 64


def test_a_caller_misuse_raises() -> None:
    g = make()
    with pytest.raises(TypeError):
        g.command("join please", T0)
    with pytest.raises(TypeError):
        g.command(UpdateMeta(meta="x"), T0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        NodeMeta(warm=tuple(f"f{i}" for i in range(65)))
    with pytest.raises(ValueError):
        NodeMeta(peer_addr="x" * 300)
    with pytest.raises(ValueError):
        GossipConfig(probe_timeout_ns=2 * NS_PER_S)
    with pytest.raises(ValueError):
        Gossip(GossipConfig(), NodeId(""), {}, random.Random(1), T0)


# ------------------------------------------------------------- probe details


def test_a_helper_relays_the_ack_or_answers_nack() -> None:
    g = make()
    feed(g, alive(X, 1))
    drain(g)
    g.handle(Y, PingReq(seq=41, target=X), T0)
    (dst, ping), = sent(g)
    assert dst == X and isinstance(ping, Ping) and ping.target == X
    g.handle(X, Ack(seq=ping.seq), T0)
    assert [(d, type(m), m.seq) for d, m in sent(g)] == [(Y, Ack, 41)]
    # Now a target that never answers: a nack after 80% of the probe timeout.
    g.handle(Y, PingReq(seq=42, target=X), T0)
    drain(g)
    g.tick(T0.after(159 * NS_PER_MS))
    assert not [m for _, m in sent(g) if isinstance(m, Nack)]
    g.tick(T0.after(160 * NS_PER_MS))
    assert [(d, type(m), m.seq) for d, m in sent(g)] == [(Y, Nack, 42)]


def run_until_probe(g: Gossip, target: NodeId | None, now: Now) -> tuple[Ping, Now]:
    for _ in range(1000):
        now = now.after(10 * NS_PER_MS)
        g.tick(now)
        pings = [m for d, m in sent(g) if isinstance(m, Ping) and target in (None, d)]
        if pings:
            return pings[0], now
    raise AssertionError("no probe")


def test_buddy_rule_a_ping_to_a_suspect_carries_the_suspicion() -> None:
    g = make()
    feed(g, alive(X, 3), Suspect(node=X, incarnation=3, accuser=Y))
    drain(g)
    ping, _ = run_until_probe(g, X, T0)
    assert ping.updates[0] == Suspect(node=X, incarnation=3, accuser=ME)


def test_no_buddy_rule_without_lifeguard() -> None:
    g = make(GossipConfig(lifeguard=False))
    feed(g, alive(X, 3), Suspect(node=X, incarnation=3, accuser=Y))
    drain(g)
    ping, _ = run_until_probe(g, X, T0)
    assert Suspect(node=X, incarnation=3, accuser=Y) in ping.updates  # gossip, not buddy
    assert not any(isinstance(u, Suspect) and u.accuser == ME for u in ping.updates)


def test_a_failed_probe_without_nacks_raises_awareness_and_stretches_the_period() -> None:
    g = make()
    add_members(g, 5)
    ping, now = run_until_probe(g, None, T0)
    target = ping.target
    now = now.after(200 * NS_PER_MS)
    g.tick(now)
    reqs = [(d, m) for d, m in sent(g) if isinstance(m, PingReq)]
    assert len(reqs) == 3 and all(m.target == target and d != target for d, m in reqs)
    now = now.after(800 * NS_PER_MS)
    g.tick(now)  # period over: no ack, no nack
    assert g.awareness == 3 and g.state_of(target) == "suspect"
    # the next probe period is 4 s long now (score 3 -> x4)
    assert g._deadlines.get(("probe",)) == now.mono_ns + 4 * NS_PER_S
    ping2 = next(m for _, m in sent(g) if isinstance(m, Ping))
    g.handle(ping2.target, Ack(seq=ping2.seq), now)
    assert g.awareness == 2


def test_nacks_from_every_helper_conclude_the_probe_early_without_penalty() -> None:
    g = make()
    add_members(g, 5)
    now = T0
    for _ in range(200):
        now = now.after(10 * NS_PER_MS)
        g.tick(now)
        reqs = [(d, m) for d, m in sent(g) if isinstance(m, PingReq)]
        if reqs:
            break
    for helper, req in reqs:
        g.handle(helper, Nack(seq=req.seq), now)
    assert g.state_of(reqs[0][1].target) == "suspect"
    assert g.awareness == 0


def test_an_ack_from_a_stranger_does_not_count() -> None:
    g = make()
    add_members(g, 3)
    ping, now = run_until_probe(g, None, T0)
    g.handle(NodeId("stranger"), Ack(seq=ping.seq), now)
    assert g.counters["drop_ack_from_stranger"] == 1


LIFEGUARD_6 = GossipConfig(suspicion_max_timeout_mult=6.0)


def test_suspicion_starts_at_max_and_shrinks_with_confirmations() -> None:
    g = make(LIFEGUARD_6)
    add_members(g, 99)  # n = 100 with us: min = 2 s, max = 12 s, k = 3
    feed(g, Suspect(node=NodeId("m00"), incarnation=1, accuser=NodeId("m01")))
    key = ("suspect", NodeId("m00"))
    start = T0.mono_ns
    assert g._deadlines.get(key) == start + 12 * NS_PER_S
    feed(g, Suspect(node=NodeId("m00"), incarnation=1, accuser=NodeId("m01")))  # duplicate
    assert g._deadlines.get(key) == start + 12 * NS_PER_S
    feed(g, Suspect(node=NodeId("m00"), incarnation=1, accuser=NodeId("m02")))
    assert g._deadlines.get(key) == start + 7 * NS_PER_S
    for accuser in ("m03", "m04", "m05"):
        feed(g, Suspect(node=NodeId("m00"), incarnation=1, accuser=NodeId(accuser)))
    assert g._deadlines.get(key) == start + 2 * NS_PER_S
    g.tick(T0.after(2 * NS_PER_S))
    assert g.state_of(NodeId("m00")) == "dead"


def test_plain_swim_suspicion_is_the_fixed_minimum() -> None:
    g = make(GossipConfig(lifeguard=False))
    add_members(g, 99)
    feed(g, Suspect(node=NodeId("m00"), incarnation=1, accuser=NodeId("m01")))
    assert g._deadlines.get(("suspect", NodeId("m00"))) == T0.mono_ns + 2 * NS_PER_S


# ------------------------------------------------------------- incarnations


def test_a_restart_reads_the_persisted_ceiling_and_starts_above_it() -> None:
    cfg = GossipConfig(incarnation_block=100)
    g = Gossip(cfg, ME, {TABLE: {INCARNATION_KEY: 2000}}, random.Random(1), T0,
               seeds=[X], meta=META)
    assert g.incarnation == 2001
    first = g.take_ready()
    assert first is not None
    assert [(w.table, w.key, w.value) for w in first.persist] == [(TABLE, INCARNATION_KEY, 2101)]
    # nothing announcing 2001 leaves before the ceiling is durable
    g.tick(T0)
    assert not [o for r in [g.take_ready()] if r for o in r.send_now]
    g.on_persisted(first.seq)
    g.tick(T0)
    joins = [m for _, m in sent(g)]
    assert joins and all(any(r.node == ME and r.incarnation == 2001 for r in m.members)
                         for m in joins)


def test_incarnations_past_the_block_reserve_a_new_ceiling() -> None:
    g = make(GossipConfig(incarnation_block=2))
    writes = []
    for _ in range(5):
        g.update_meta(NodeMeta(load=g.incarnation), T0)
        writes += [w.value for r in drain(g) for w in r.persist]
    assert g.incarnation == 6
    assert writes and max(writes) >= 6


# ------------------------------------------------------------ back to back


def test_nodes_join_through_one_seed_and_agree() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.run(3 * NS_PER_S)
    for obs in net.ids:
        assert [m.state for m in net.cores[obs].members()] == ["alive"] * 5


def test_a_crashed_node_is_suspected_then_declared_dead_by_all() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.run(3 * NS_PER_S)
    net.crash(NodeId("c"))
    net.run(20 * NS_PER_S)
    for obs in ("a", "b", "d", "e"):
        assert net.state(obs, "c") == "dead"
        kinds = [k for o, k in net.kinds_about("c") if o == obs]
        assert kinds.index("member_suspect") < kinds.index("member_dead")


def test_a_restarted_node_rejoins_with_a_higher_incarnation() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(3 * NS_PER_S)
    old = net.cores[NodeId("c")].incarnation
    net.crash(NodeId("c"))
    net.run(20 * NS_PER_S)
    assert net.state("a", "c") == "dead"
    new = net.restart(NodeId("c")).incarnation
    assert new > old
    net.run(5 * NS_PER_S)
    for obs in ("a", "b", "d"):
        assert net.state(obs, "c") == "alive"
        assert ("member_joined") in [k for o, k in net.kinds_about("c")[-3:]]


def test_ping_req_keeps_a_node_alive_across_a_broken_link() -> None:
    net = Net(["a", "b", "c"])
    net.run(2 * NS_PER_S)
    net.blocked |= {(NodeId("a"), NodeId("c")), (NodeId("c"), NodeId("a"))}
    net.run(30 * NS_PER_S)
    assert net.cores[NodeId("a")].counters.get("ping_reqs", 0) > 0
    assert ("a", "member_dead") not in net.kinds_about("c")
    assert net.state("a", "c") == "alive"


def test_a_partition_heals_through_push_pull() -> None:
    cfg = GossipConfig(push_pull_interval_ns=3 * NS_PER_S)
    net = Net([f"n{i}" for i in range(6)], cfg)
    net.run(3 * NS_PER_S)
    left, right = net.ids[:3], net.ids[3:]
    net.blocked = {(a, b) for a in left for b in right} | {(b, a) for a in left for b in right}
    net.run(20 * NS_PER_S)
    assert net.state("n0", "n5") == "dead" and net.state("n5", "n0") == "dead"
    net.blocked.clear()
    net.run(60 * NS_PER_S)
    for obs in net.ids:
        assert {m.state for m in net.cores[obs].members()} == {"alive"}, obs


def test_a_graceful_leave_is_seen_as_left_not_dead() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(3 * NS_PER_S)
    net.cores[NodeId("b")].command(Leave(), net.now())
    net.drain(NodeId("b"))
    net.run(2 * NS_PER_S)
    net.crash(NodeId("b"))
    net.run(20 * NS_PER_S)
    for obs in ("a", "c", "d"):
        assert net.state(obs, "b") == "left"
        assert (obs, "member_dead") not in net.kinds_about("b")


def test_metadata_updates_spread_with_a_new_incarnation() -> None:
    net = Net(["a", "b", "c", "d"])
    net.run(3 * NS_PER_S)
    new_meta = NodeMeta(peer_addr="tcp://b:7000", load=7, warm=("fn-1",), role="voter")
    inc = net.cores[NodeId("b")].command(UpdateMeta(meta=new_meta), net.now())
    net.drain(NodeId("b"))
    net.run(5 * NS_PER_S)
    for obs in ("a", "c", "d"):
        row = next(m for m in net.cores[NodeId(obs)].members() if m.node_id == "b")
        assert (row.meta, row.incarnation) == (new_meta, inc)
        assert (obs, "meta_changed") in net.kinds_about("b")


def test_a_node_started_without_seeds_joins_when_given_some() -> None:
    net = Net(["a", "b"], seeds=[])
    net.run(2 * NS_PER_S)
    assert net.state("a", "b") is None
    net.cores[NodeId("b")].command(AddSeeds(seeds=(NodeId("a"),)), net.now())
    net.drain(NodeId("b"))
    net.run(2 * NS_PER_S)
    assert net.state("a", "b") == "alive" and net.state("b", "a") == "alive"


def test_a_failed_probe_tells_the_suspect_directly() -> None:
    g = make()
    add_members(g, 5)
    ping, now = run_until_probe(g, None, T0)
    g.tick(now.after(NS_PER_S))  # no ack, no nack: the period ends
    notices = [(d, m) for d, m in sent(g) if isinstance(m, GossipMsg)]
    assert notices == [(ping.target, GossipMsg(updates=(
        Suspect(node=ping.target, incarnation=1, accuser=ME),)))]


def test_a_merged_view_never_confirms_a_suspicion() -> None:
    g = make(LIFEGUARD_6)
    add_members(g, 99)
    subject = NodeId("m00")
    feed(g, Suspect(node=subject, incarnation=1, accuser=NodeId("m01")))
    row = MemberState(node=subject, state="suspect", incarnation=1, meta=NodeMeta())
    for peer in ("m02", "m03", "m04"):
        g.handle(NodeId(peer), PushPullReply(members=(row,)), T0)
    assert g._deadlines.get(("suspect", subject)) == T0.mono_ns + 12 * NS_PER_S
    assert "confirmations" not in g.counters


def test_a_stale_accusation_is_answered_with_our_current_alive() -> None:
    g = make()
    inc = g.incarnation
    feed(g, Suspect(node=ME, incarnation=inc, accuser=X))  # refuted: inc + 1
    drain(g)
    g.handle(Y, Ping(seq=5, target=ME, updates=(Suspect(node=ME, incarnation=inc, accuser=Y),)),
             T0)
    out = sent(g)
    assert (Y, GossipMsg(updates=(alive(ME, inc + 1, META),))) in out
    assert g.incarnation == inc + 1 and g.counters["stale_accusations"] == 1


def test_suspect_rows_of_a_push_pull_are_not_copied() -> None:
    g = make()
    feed(g, alive(X, 2))
    row = MemberState(node=X, state="suspect", incarnation=2, meta=NodeMeta())
    g.handle(Y, PushPullReply(members=(row,)), T0)
    assert g.state_of(X) == "alive"
    dead_row = MemberState(node=X, state="dead", incarnation=2, meta=NodeMeta())
    g.handle(Y, PushPullReply(members=(dead_row,)), T0)
    assert g.state_of(X) == "suspect"  # another view's death: a suspicion here


def test_a_suspicion_gossips_all_its_accusers_in_one_update() -> None:
    g = make(LIFEGUARD_6)
    add_members(g, 99)  # n = 100: min 2 s, max 12 s, k = 3
    subject = NodeId("m00")
    feed(g, Suspect(node=subject, incarnation=1, accuser=NodeId("m01"),
                    others=(NodeId("m02"), NodeId("m03"), subject)))  # the suspect never counts
    two_of_three = 4_075_187_496  # 12 s - (12 s - 2 s) * log 3 / log 4, floored
    assert g._deadlines.get(("suspect", subject)) == T0.mono_ns + two_of_three
    feed(g, Suspect(node=subject, incarnation=1, accuser=NodeId("m04")))
    assert g._deadlines.get(("suspect", subject)) == T0.mono_ns + 2 * NS_PER_S
    queued = g._queue.pending(subject)
    assert queued == Suspect(node=subject, incarnation=1, accuser=NodeId("m01"),
                             others=(NodeId("m02"), NodeId("m03"), NodeId("m04")))


def test_the_member_list_follows_every_change_between_reads() -> None:
    """members() is cached: read it after each kind of change, never stale."""
    g = make()

    def row(node: NodeId) -> Any:
        return next(m for m in g.members() if m.node_id == node)

    feed(g, alive(X, 1))
    assert row(X).state == "alive"
    feed(g, Suspect(node=X, incarnation=1, accuser=Y))
    assert row(X).state == "suspect"
    feed(g, alive(X, 2, NodeMeta(peer_addr="tcp://x:2", role="voter")))
    assert (row(X).state, row(X).incarnation, row(X).meta.peer_addr) == ("alive", 2, "tcp://x:2")
    new_meta = NodeMeta(peer_addr="tcp://me:2", role="voter")
    g.update_meta(new_meta, T0)
    assert row(ME).meta == new_meta
    g.leave(T0)
    assert row(ME).state == "left"
