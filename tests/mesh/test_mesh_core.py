"""MeshNode in a small simulated World: keys, deploys, invocations, routing, failures, results."""

from __future__ import annotations

import attrs
from mesh_harness import CODE, Mesh

from meshfaas.core import auth, faas
from meshfaas.core import client_proto as proto
from meshfaas.core.node import InvokeRefused, InvokeRequest
from meshfaas.core.types import NS_PER_S, NodeId


def started(**kwargs: object) -> Mesh:
    mesh = Mesh(**kwargs)  # type: ignore[arg-type]
    mesh.start()
    return mesh


def error_kind(response: proto.ClientResponse) -> str:
    assert not response.ok, f"expected an error, got {response.value!r}"
    assert response.error is not None
    return response.error.kind


def test_bootstrap_key_is_on_every_node_and_works_everywhere() -> None:
    mesh = started()
    for node in mesh.ids:
        keys = mesh.core(node).sm.list_keys()
        assert [k.key_id for k in keys] == [mesh.put_key.key_id]
        assert keys[0].role == "admin"
        response = mesh.request(node, proto.Ping())
        assert response.ok and response.value == proto.Pong(node=node)


def test_deploy_then_invoke_from_every_node() -> None:
    mesh = started()
    deployed = mesh.deploy("n2")
    assert deployed.created and deployed.function.revision == 1
    mesh.wait_for(lambda: all(mesh.core(n).sm.get_function("hello") for n in mesh.ids),
                  within_s=2, what="the function on every node")
    for node in mesh.ids:
        response = mesh.request(node, proto.Invoke(name="hello", payload=b"{}"))
        assert response.ok, response.error
        result = response.value
        assert isinstance(result, proto.InvokeResult)
        assert result.payload == b'{"ran_on":"' + result.node.encode() + b'"}'
        assert result.executed_version == faas.LATEST
    listed = mesh.request("n3", proto.ListFunctions())
    assert [f.name for f in listed.value] == ["hello"]


def test_invoking_a_missing_function_is_not_found() -> None:
    mesh = started()
    assert error_kind(mesh.request("n1", proto.Invoke(name="ghost", payload=b"{}"))) == "NotFound"
    event = proto.Invoke(name="ghost", payload=b"{}", invocation_type="Event")
    assert error_kind(mesh.request("n2", event)) == "NotFound"
    assert mesh.runs == []


def test_a_bad_api_key_is_unauthorized() -> None:
    mesh = started()
    stranger = auth.make_api_key(bytes(range(auth.random_bytes_needed()))).token
    for token in (stranger, "not-a-key", mesh.token[:-1] + ("x" if mesh.token[-1] != "x" else "y")):
        assert error_kind(mesh.request("n1", proto.ListFunctions(), token=token)) == "Unauthorized"
    assert error_kind(mesh.request("n1", proto.GetResult(invocation_id="n1~00"),
                                   token=stranger)) == "Unauthorized"


def test_a_viewer_key_cannot_deploy_but_can_read() -> None:
    mesh = started()
    viewer = mesh.make_key("viewer")
    mesh.wait_for(lambda: len(mesh.core("n3").sm.list_keys()) == 2, within_s=2,
                  what="the new key on n3")
    deploy = proto.Deploy(name="hello", code=faas.CodeRef(sha256="cd" * 32, size_bytes=1),
                          handler="app.handler")
    assert error_kind(mesh.request("n3", deploy, token=viewer)) == "Forbidden"
    listed = mesh.request("n3", proto.ListFunctions(), token=viewer)
    assert listed.ok and listed.value == []


def test_async_invoke_with_the_same_idempotency_key_gives_the_same_id() -> None:
    mesh = started()
    mesh.deploy()
    body = proto.Invoke(name="hello", payload=b"{}", invocation_type="Event",
                        idempotency_key="order-42")
    first = mesh.request("n1", body)
    second = mesh.request("n3", body)
    other = mesh.request("n2", proto.Invoke(name="hello", payload=b"{}",
                                            invocation_type="Event", idempotency_key="order-43"))
    assert first.ok and second.ok and other.ok
    assert first.value == second.value
    assert other.value != first.value
    invocation_id = first.value.invocation_id
    mesh.wait_for(lambda: mesh.core("n2").sm.get_async(invocation_id).status == "succeeded",
                  within_s=5, what="the async invocation to succeed")
    assert len(mesh.runs_of(invocation_id)) == 1


def test_a_full_node_refuses_and_the_router_tries_another() -> None:
    refusals = 0
    for seed in range(1, 6):
        mesh = started(seed=seed, capacity=1, auto=False)
        mesh.deploy()
        mesh.run_for(1)
        # n2 runs its own caller's invocation; n1 runs one and must forward the
        # other, and its gossiped view of n2 does not show n2 busy yet.
        conns = [mesh.call(node, proto.Invoke(name="hello", payload=b"{}"))
                 for node in ("n2", "n1", "n1")]
        mesh.wait_for(lambda m=mesh: len(m.runs) == 3, within_s=3, what="three invocations running")
        assert sorted(r.node for r in mesh.runs) == mesh.ids  # one per node: capacity 1 each
        refusals += sum(mesh.core(n).counters.get("refused_full", 0) for n in mesh.ids)
        late = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}"))
        assert error_kind(late) == "Throttled"
        mesh.finish_all()
        for conn in conns:
            assert mesh.wait_reply(conn).ok
    assert refusals > 0, "no node was ever full when asked: the refusal path never ran"


def test_a_full_mesh_looks_again_before_answering_throttled() -> None:
    """Every slot is taken when the call comes; one frees 3 ms later. The entry,
    having tried every node, looks again after a short backoff (a new routing
    round, which a node that refused the first one may take) instead of
    answering Throttled at once; with no slot freed it does answer Throttled."""
    mesh = started(capacity=1, auto=False)
    mesh.deploy()
    mesh.run_for(1)
    for node in mesh.ids:  # one held run per node: every slot taken
        mesh.call(node, proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: len(mesh.runs) == 3, within_s=3, what="every slot taken")
    waiting = mesh.call("n1", proto.Invoke(name="hello", payload=b"{}"))
    mesh.run_for(0.003)
    assert waiting not in mesh.replies  # not Throttled at once
    freed = next(r for r in mesh.runs if r.node == "n2")
    mesh._complete(freed)
    mesh.wait_for(lambda: len(mesh.runs) == 4, within_s=1, what="the waiting call to run")
    assert mesh.runs[-1].node == "n2"  # in the freed slot
    assert mesh.core("n1").counters.get("route_waits", 0) >= 1
    # A copy of an older round's refusal from that target must not re-route it.
    invocation_id = mesh.runs[-1].task.invocation_id
    route = mesh.core("n1").routing[invocation_id]
    assert route.rounds >= 1 and route.target == "n2"
    entry = mesh.core("n1")
    entry.handle(NodeId("n2"), InvokeRefused(invocation_id=invocation_id, reason="full",
                                             round=0), entry.now)
    ready = entry.take_ready()
    assert ready is None or not ready.send_now  # no new InvokeRequest anywhere
    assert route.target == "n2" and entry.routing[invocation_id] is route
    late = mesh.request("n3", proto.Invoke(name="hello", payload=b"{}"))
    assert error_kind(late) == "Throttled"  # nothing frees up: Throttled after the rounds
    mesh.finish_all()
    assert mesh.wait_reply(waiting).ok


def test_killing_the_node_running_a_sync_invocation_answers_unavailable() -> None:
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 8}, auto=False)
    mesh.deploy(timeout_s=60)  # the caller must hear of the death, not of a timeout
    conn = mesh.call("n1", proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: len(mesh.runs) == 1, within_s=2, what="the invocation to start")
    runner = mesh.runs[0].node
    assert runner != "n1"
    mesh.world.crash(runner)
    response = mesh.wait_reply(conn, within_s=15)
    assert error_kind(response) == "Unavailable"
    assert runner in response.error.message


def test_an_async_invocation_whose_node_crashes_is_retried_and_completes() -> None:
    mesh = started(auto=False)
    mesh.deploy(timeout_s=2)
    accepted = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}",
                                               invocation_type="Event"))
    assert accepted.ok
    invocation_id = accepted.value.invocation_id
    mesh.wait_for(lambda: mesh.runs_of(invocation_id), within_s=5, what="the first attempt")
    runner = mesh.runs_of(invocation_id)[0].node
    mesh.world.crash(runner)
    mesh.auto = True
    mesh.finish_all()  # the crashed node's result is never heard
    survivor = next(n for n in mesh.ids if n != runner)
    mesh.wait_for(lambda: mesh.core(survivor).sm.get_async(invocation_id).status == "succeeded",
                  within_s=120, what="the retried attempt to succeed")
    record = mesh.core(survivor).sm.get_async(invocation_id)
    assert record.attempts == 2
    assert record.node != runner
    assert len(mesh.runs_of(invocation_id)) == 2


def test_an_async_attempt_whose_dispatching_leader_dies_is_retried_before_its_lease() -> None:
    """The leader that dispatched an attempt dies: nobody will record the attempt's
    outcome (its runner answers the dispatcher). With the longest timeout the lease
    is 905 s; the new leader fails the attempt once gossip holds the old one dead,
    and the retry runs after the first backoff (60 s), well inside the lease."""
    mesh = started(auto=False)
    mesh.deploy(timeout_s=faas.TIMEOUT_S_MAX)
    accepted = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}",
                                               invocation_type="Event"))
    assert accepted.ok
    invocation_id = accepted.value.invocation_id
    mesh.wait_for(lambda: mesh.runs_of(invocation_id), within_s=5, what="the first attempt")
    dispatcher = mesh.leader()
    assert dispatcher is not None
    mesh.world.crash(dispatcher)
    mesh.auto = True
    mesh.finish_all()  # the first run ends, but its answer goes to the dead dispatcher
    survivor = next(n for n in mesh.ids if n != dispatcher)
    mesh.wait_for(lambda: mesh.core(survivor).sm.get_async(invocation_id).status == "succeeded",
                  within_s=120, what="the retried attempt to succeed")
    record = mesh.core(survivor).sm.get_async(invocation_id)
    assert record.attempts == 2 and record.node != dispatcher


def test_get_result_from_a_node_that_did_not_run_it() -> None:
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 0})
    mesh.deploy()
    invoked = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}"))
    assert invoked.ok and invoked.value.node == "n2"
    found = mesh.request("n3", proto.GetResult(invocation_id=invoked.value.invocation_id))
    assert found.ok, found.error
    assert found.value.status == "succeeded" and found.value.node == "n2"
    missing = mesh.request("n3", proto.GetResult(invocation_id="n1~feedface"))
    assert error_kind(missing) == "NotFound"


def test_results_survive_a_restart() -> None:
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 0})
    mesh.deploy()
    invoked = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}"))
    invocation_id = invoked.value.invocation_id
    mesh.run_for(0.5)  # the result store's writes are synced
    for node in ("n1", "n2"):
        mesh.world.crash(NodeId(node))
        mesh.world.restart(NodeId(node))
    assert not mesh.core("n1").results  # nothing is loaded at start: read from the store
    mesh.start()
    for node in ("n1", "n2"):
        found = mesh.request(node, proto.GetResult(invocation_id=invocation_id))
        assert found.ok and found.value.payload == b'{"ran_on":"n2"}'
    assert mesh.lookups >= 2


def test_a_duplicated_invoke_request_does_not_run_twice() -> None:
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 8}, run_ms=1)
    mesh.deploy()
    net = mesh.world.network
    net.duplicate, net.reorder, net.reorder_max_ns = 1.0, 1.0, 30_000_000
    conns = [mesh.call("n1", proto.Invoke(name="hello", payload=b"{}")) for _ in range(10)]
    for conn in conns:
        assert mesh.wait_reply(conn).ok
    mesh.run_for(1)  # late copies arrive
    ids = {r.task.invocation_id for r in mesh.runs}
    assert len(ids) == 10
    assert all(len(mesh.runs_of(i)) == 1 for i in ids)
    answered = sum(mesh.core(n).counters.get("duplicate_invoke_answered", 0) for n in mesh.ids)
    assert answered > 0, "no copy arrived after its run finished: the path was not exercised"


def test_a_node_that_lost_its_disk_gets_its_own_answers() -> None:
    mesh = started()
    for i in range(3):  # use the first lanes' sessions on n2
        mesh.deploy("n2", code=faas.CodeRef(sha256=f"{i:02x}" * 32, size_bytes=10 + i))
    mesh.world.crash(NodeId("n2"), lose_disk=True)
    mesh.world.restart(NodeId("n2"))
    mesh.wait_for(lambda: mesh.core("n2").sm.get_function("hello") is not None, within_s=10,
                  what="n2 to catch up")
    new_code = faas.CodeRef(sha256="ee" * 32, size_bytes=99)
    deployed = mesh.deploy("n2", code=new_code)
    assert deployed.function.code == new_code
    assert mesh.core("n1").sm.get_function("hello").code == new_code


def test_many_commands_in_one_paxos_slot_all_apply() -> None:
    mesh = started()
    batched: list[int] = []
    mesh.world.observe(lambda node, note, t: batched.append(len(note.data.commands))
                       if note.kind == "paxos.applied" and node == "n1" else None)
    conns = [mesh.call(node, proto.Deploy(name=f"fn{i}", handler="app.handler",
                                          code=faas.CodeRef(sha256=f"{i:02x}" * 32, size_bytes=9)))
             for i, node in enumerate(mesh.ids * 20)]
    for conn in conns:
        response = mesh.wait_reply(conn)
        assert response.ok, response.error
    assert max(batched) > 1, "Paxos never batched: this test no longer tests that"
    mesh.run_for(0.5)
    for node in mesh.ids:
        assert len(mesh.core(node).sm.list_functions()) == 60


def test_a_node_passes_on_applied_entries_but_not_chosen_slots() -> None:
    """What the outside reads (the runtime's observer, the scenarios) is passed on;
    Paxos' chosen notes, one per commit on every node and read by nobody, are not."""
    mesh = started()
    kinds: set[str] = set()
    mesh.world.observe(lambda node, note, t: kinds.add(note.kind))
    mesh.deploy()
    mesh.run_for(0.5)
    assert {"paxos.applied", "client_reply"} <= kinds
    assert "paxos.chosen" not in kinds


def test_the_entry_node_runs_what_it_can_and_a_gateway_forwards_everything() -> None:
    mesh = started(capacity={"n1": 8, "n2": 8, "n3": 0})
    mesh.deploy()
    mesh.run_for(1)
    for _ in range(6):
        assert mesh.request("n1", proto.Invoke(name="hello", payload=b"{}")).ok
        assert mesh.request("n3", proto.Invoke(name="hello", payload=b"{}")).ok
    ran_on = sorted(r.node for r in mesh.runs)
    assert "n3" not in ran_on  # capacity 0: a gateway never runs anything
    assert ran_on.count("n1") >= 6  # n1's own callers ran on n1 (nothing was busy)
    assert ran_on.count("n2") >= 1  # n3's callers were forwarded, to n1 or n2


def _invoke_ids(mesh: Mesh, node: str, count: int) -> list[str]:
    ids = []
    for _ in range(count):
        response = mesh.request(node, proto.Invoke(name="hello", payload=b"{}"))
        assert response.ok
        ids.append(response.value.invocation_id)
    return ids


def test_the_recent_cache_keeps_the_newest_records_and_the_store_keeps_all() -> None:
    mesh = started(cfg={"max_results": 3})
    mesh.deploy()
    ids = _invoke_ids(mesh, "n1", 5)
    assert list(mesh.core("n1").results) == ids[2:]  # the two oldest left the cache
    mesh.world.crash(NodeId("n1"))
    mesh.world.restart(NodeId("n1"))
    mesh.run_for(1)
    assert not mesh.core("n1").results  # a restart loads nothing
    newer = _invoke_ids(mesh, "n1", 1)
    assert list(mesh.core("n1").results) == newer
    for invocation_id in ids:
        found = mesh.request("n1", proto.GetResult(invocation_id=invocation_id))
        assert found.ok and found.value.invocation_id == invocation_id


def test_results_expire_after_the_retention() -> None:
    mesh = started(cfg={"result_retention_ns": 90 * NS_PER_S})
    mesh.deploy()
    old = _invoke_ids(mesh, "n1", 2)
    mesh.run_for(40)
    young = _invoke_ids(mesh, "n1", 1)
    mesh.run_for(85)  # expiry runs every 60 s: at about 120 s the old ones are older than 90 s
    assert set(mesh.core("n1").results) == set(young)
    assert not set(old) & set(mesh.core("n1").results)


def _handle_now(mesh: Mesh, node: str, src: str, msg: object) -> tuple[list[object], list[str]]:
    """Hand ``msg`` to ``node``'s core outside the simulated network; what it sends and
    the kinds of effects it starts."""
    core = mesh.core(node)
    core.handle(NodeId(src), msg, core.now)
    ready = core.take_ready()
    assert ready is not None and not ready.persist
    core.on_persisted(ready.seq)
    return [o.msg for o in ready.send_now], [e.kind for e in ready.effects]


def _n2_full(invocation_id: str, **cfg: int) -> tuple[Mesh, InvokeRequest]:
    """A mesh of capacity-1 nodes whose n2 runs its own caller's invocation (held),
    and a request for ``invocation_id`` as n1 would forward it to n2."""
    mesh = started(capacity=1, auto=False, cfg=cfg)
    mesh.deploy()
    mesh.run_for(1)
    mesh.call("n2", proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: len(mesh.runs) == 1, within_s=3, what="n2 busy with its own caller")
    task = mesh.runs[0].task
    return mesh, InvokeRequest(invocation_id=invocation_id, function=task.function,
                               version=task.version, code=task.code, config=task.config,
                               payload=b"{}")


def test_a_late_copy_of_a_refused_request_is_refused_again() -> None:
    """n2, full, refuses a forwarded request; the entry runs it elsewhere. A copy
    arriving once n2 has room (a resend or a network duplicate) must not run."""
    mesh, late = _n2_full("n1~forwarded")
    sent, effects = _handle_now(mesh, "n2", "n1", late)
    assert sent == [InvokeRefused(invocation_id="n1~forwarded", reason="full")]
    mesh.finish_all()
    mesh.run_for(1)
    assert mesh.core("n2").load == 0
    sent, effects = _handle_now(mesh, "n2", "n1", late)
    assert sent == [InvokeRefused(invocation_id="n1~forwarded", reason="full")]
    assert "invoke" not in effects
    assert mesh.core("n2").counters.get("refused_again", 0) == 1


def test_an_async_invocation_still_running_is_found_through_any_node() -> None:
    """No node holds a result record yet (the run is held), every peer says so:
    the asked node answers from the replicated log (status running), not NotFound."""
    mesh = started(auto=False)
    mesh.deploy()
    accepted = mesh.request("n1", proto.Invoke(name="hello", payload=b"{}",
                                               invocation_type="Event"))
    assert accepted.ok
    invocation_id = accepted.value.invocation_id
    mesh.wait_for(lambda: len(mesh.runs) == 1, within_s=10, what="the attempt to start")
    for node in mesh.ids:
        answer = mesh.request(node, proto.GetResult(invocation_id=invocation_id))
        assert answer.ok, f"{node}: {answer.error}"
        assert answer.value.invocation_id == invocation_id
        assert answer.value.status in ("pending", "running")
    mesh.finish_all()
    mesh.wait_for(lambda: mesh.request("n3", proto.GetResult(invocation_id=invocation_id)
                                       ).value.status == "succeeded",
                  within_s=10, what="the result to be readable")


def test_a_refusal_is_forgotten_before_the_next_async_attempt_could_come() -> None:
    """Async attempts keep their invocation id: a node remembers a refusal for at
    most half the retry delay, so the next attempt is not refused for it."""
    mesh, attempt = _n2_full("n1~async-1", async_retry_base_ns=2 * NS_PER_S)
    sent, _ = _handle_now(mesh, "n2", "n1", attempt)
    assert sent == [InvokeRefused(invocation_id="n1~async-1", reason="full")]
    mesh.finish_all()
    mesh.run_for(1.5)  # more than half the 2 s retry delay
    sent, effects = _handle_now(mesh, "n2", "n1", attempt)
    assert effects == ["invoke"] and sent == []  # runs; confirmed by its InvokeDone


def test_a_node_that_refused_one_routing_round_may_run_a_later_one() -> None:
    """The entry looks again after every node refused (a new round, numbered in the
    request): n2, which refused round 0, runs round 1 once it has room, while a
    late copy of round 0 is still refused, with its round in the answer."""
    mesh, round0 = _n2_full("n1~rounds")
    sent, _ = _handle_now(mesh, "n2", "n1", round0)
    assert sent == [InvokeRefused(invocation_id="n1~rounds", reason="full", round=0)]
    mesh.finish_all()
    mesh.run_for(0.5)
    sent, effects = _handle_now(mesh, "n2", "n1", round0)  # a late copy of round 0
    assert sent == [InvokeRefused(invocation_id="n1~rounds", reason="full", round=0)]
    assert "invoke" not in effects
    sent, effects = _handle_now(mesh, "n2", "n1", attrs.evolve(round0, round=1))
    assert effects == ["invoke"] and sent == []


def test_a_function_deployed_a_moment_ago_is_not_answered_not_found_by_a_follower() -> None:
    """A follower learns that the deploy's slot is chosen from the next Accept, a
    commit notice or a push of chosen slots (within notice_delay_ns), and with
    accept_to="quorum" one follower never had the slot's Accept: a call arriving
    before that must sync with the leader, not answer NotFound. Both followers
    (the one that accepted the slot and the one that did not) are asked."""
    mesh = started()
    leader = mesh.leader()
    assert leader is not None
    for i, follower in enumerate(n for n in mesh.ids if n != leader):
        name = f"hello{i}"
        conn = mesh.call(leader, proto.Deploy(name=name, code=CODE, handler="app.handler"))
        while conn not in mesh.replies:  # to the moment the deploy is acknowledged
            mesh.world.run_until(mesh.world.time_ns + NS_PER_S // 10_000)
        assert mesh.replies[conn].ok, mesh.replies[conn].error
        assert mesh.core(follower).sm.get_function(name) is None  # not applied there yet
        response = mesh.request(follower, proto.Invoke(name=name, payload=b"{}"))
        assert response.ok, response.error
        missing = mesh.request(follower, proto.Invoke(name="ghost", payload=b"{}"))
        assert error_kind(missing) == "NotFound"  # a function that does not exist still is


def test_a_key_created_a_moment_ago_is_not_refused_by_a_follower() -> None:
    mesh = started()
    leader = mesh.leader()
    assert leader is not None
    for i, follower in enumerate(n for n in mesh.ids if n != leader):
        conn = mesh.call(leader, proto.CreateKey(name=f"fresh{i}", role="viewer"))
        while conn not in mesh.replies:  # to the moment the key is acknowledged
            mesh.world.run_until(mesh.world.time_ns + NS_PER_S // 10_000)
        created = mesh.replies[conn]
        assert created.ok, created.error
        known = {k.name for k in mesh.core(follower).sm.list_keys()}
        assert f"fresh{i}" not in known  # not applied there yet
        listed = mesh.request(follower, proto.ListFunctions(), token=created.value.api_key)
        assert listed.ok, listed.error


# ---------------------------------------------------------------------------
# A resend addressed to an earlier life of its target (restart fence)
# ---------------------------------------------------------------------------


def _runner_restarts_unnoticed(mesh: Mesh, entry: str, target: str, invocation_id: str) -> int:
    """``target`` (the only node with room) runs ``invocation_id``, but neither its
    confirmation nor its answer reaches ``entry``; it crashes and restarts from its
    synced disk before gossip notices, while ``entry`` keeps resending. Returns the
    incarnation its first life started with."""
    mesh.wait_for(lambda: len(mesh.runs_of(invocation_id)) == 1, within_s=10,
                  what=f"{target} to run it")
    first_life = mesh.core(target).fence_incarnation
    mesh.finish_all()  # it ran (and succeeded) on the first life
    mesh.run_for(0.05)
    mesh.world.crash(NodeId(target))
    mesh.world.restart(NodeId(target))
    mesh.world.heal()
    assert mesh.core(target).fence_incarnation > first_life
    assert mesh.core(entry).gossip.state_of(NodeId(target)) != "dead"  # nobody noticed
    return first_life


def test_a_resend_to_a_restarted_runner_is_refused_and_the_caller_told_it_may_have_run() -> None:
    """n1 sends to n2 (the only node with room), n2 runs it and restarts before its
    answer gets out: n1's resend is refused, not run, and the caller is told the
    outcome is unknown (not retryable), not rerouted."""
    mesh = started(capacity={"n1": 0, "n2": 1, "n3": 0}, auto=False)
    mesh.deploy()
    mesh.run_for(1)
    mesh.world.block(NodeId("n2"), NodeId("n1"))  # n2's InvokeAccepted and InvokeDone are lost
    conn = mesh.call("n1", proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: mesh.runs != [], within_s=3, what="n2 to run it")
    invocation_id = mesh.runs[0].task.invocation_id
    _runner_restarts_unnoticed(mesh, "n1", "n2", invocation_id)
    response = mesh.wait_reply(conn, within_s=6)  # the next resend reaches the new n2
    assert len(mesh.runs_of(invocation_id)) == 1  # not run again
    assert error_kind(response) == "Unavailable"
    assert response.error is not None and not response.error.retryable
    assert "n2 restarted" in response.error.message
    assert "may or may not have run" in response.error.message
    assert mesh.core("n2").counters.get("refused_restarted", 0) >= 1
    assert mesh.core("n1").results[invocation_id][1].status == "failed"


def test_an_async_attempt_refused_by_a_restarted_runner_is_failed_then_retried() -> None:
    """The leader dispatches attempt 1 to n2, which runs it and restarts unnoticed: the
    leader's resend is refused, attempt 1 is recorded failed (outcome unknown, not
    rerouted), and attempt 2 runs after the backoff (a second run after a failure)."""
    mesh = started(seed=3, capacity={"n1": 0, "n2": 1, "n3": 0}, auto=False,
                   cfg={"async_retry_base_ns": 2 * NS_PER_S})
    leader = mesh.leader()
    assert leader is not None and leader != "n2", "this test needs n2 not to lead (seed)"
    mesh.deploy()
    mesh.run_for(1)
    mesh.world.block(NodeId("n2"), NodeId(leader))
    accepted = mesh.request("n3", proto.Invoke(name="hello", payload=b"{}",
                                               invocation_type="Event"))
    assert accepted.ok, accepted.error
    invocation_id = accepted.value.invocation_id
    _runner_restarts_unnoticed(mesh, leader, "n2", invocation_id)

    def record() -> faas.AsyncRecord:
        found = mesh.core(leader).sm.get_async(invocation_id)
        assert found is not None
        return found

    mesh.wait_for(lambda: record().status == "pending" and record().attempts == 1,
                  within_s=6, what="attempt 1 recorded failed")
    assert len(mesh.runs_of(invocation_id)) == 1  # the resend did not run it again
    assert "n2 restarted" in record().error_message
    mesh.wait_for(lambda: len(mesh.runs_of(invocation_id)) == 2, within_s=10,
                  what="attempt 2 to run after the backoff")
    mesh.finish_all()
    mesh.wait_for(lambda: record().status == "succeeded", within_s=5, what="attempt 2 to succeed")
    assert record().attempts == 2


def test_only_a_request_stamped_for_an_earlier_life_is_refused() -> None:
    """n2 restarted: a request stamped with an incarnation of its first life is
    refused; one stamped with the current life's (or unstamped: 0) runs."""
    mesh = started(capacity=2, auto=False)
    mesh.deploy()
    first_life = mesh.core("n2").fence_incarnation
    mesh.world.crash(NodeId("n2"))
    mesh.world.restart(NodeId("n2"))
    mesh.run_for(1)
    n2 = mesh.core("n2")
    assert n2.fence_incarnation > first_life
    fn = n2.sm.get_function("hello")
    assert fn is not None

    def request(invocation_id: str, incarnation: int) -> InvokeRequest:
        return InvokeRequest(invocation_id=invocation_id, function="hello", version=faas.LATEST,
                             code=fn.code, config=fn.config, payload=b"{}",
                             incarnation=incarnation)

    sent, effects = _handle_now(mesh, "n2", "n1", request("n1~old", first_life))
    assert sent == [InvokeRefused(invocation_id="n1~old", reason="restarted")]
    assert "invoke" not in effects
    sent, effects = _handle_now(mesh, "n2", "n1", request("n1~now", n2.gossip.incarnation))
    assert effects == ["invoke"] and sent == []
    sent, effects = _handle_now(mesh, "n2", "n1", request("n1~unstamped", 0))
    assert effects == ["invoke"] and sent == []
    above = request("n1~above", n2.gossip.incarnation + 1)  # never ours in this life
    sent, effects = _handle_now(mesh, "n2", "n1", above)
    assert sent == [InvokeRefused(invocation_id="n1~above", reason="restarted")]


def test_after_a_lost_disk_stamped_requests_are_refused_until_gossip_refuted_the_past() -> None:
    """A node that lost its disk starts gossip from incarnation 1 again, as its first
    life did: it cannot tell that life's stamps from its own until gossip made it
    refute them, so it refuses every stamped request for lost_disk_fence_ns."""
    mesh = started(capacity={"n1": 0, "n2": 1, "n3": 0}, auto=False)
    mesh.deploy()
    mesh.run_for(1)
    mesh.world.block(NodeId("n2"), NodeId("n1"))
    conn = mesh.call("n1", proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: mesh.runs != [], within_s=3, what="n2 to run it")
    invocation_id = mesh.runs[0].task.invocation_id
    stamp = mesh.core("n1")._incarnation_of("n2")
    mesh.finish_all()
    mesh.run_for(0.05)
    mesh.world.crash(NodeId("n2"), lose_disk=True)
    mesh.world.restart(NodeId("n2"))
    mesh.world.heal()
    assert not mesh.core("n2").fence_settled
    assert mesh.core("n2").fence_incarnation <= stamp  # the first life's stamp looks current
    response = mesh.wait_reply(conn, within_s=6)
    assert len(mesh.runs_of(invocation_id)) == 1  # not run again
    assert error_kind(response) == "Unavailable" and "n2 restarted" in response.error.message
    mesh.run_for(5)
    n2 = mesh.core("n2")
    assert n2.fence_settled and n2.fence_incarnation > stamp
    fn = n2.sm.get_function("hello")
    assert fn is not None
    old = InvokeRequest(invocation_id="n1~old", function="hello", version=faas.LATEST,
                        code=fn.code, config=fn.config, payload=b"{}", incarnation=stamp)
    sent, effects = _handle_now(mesh, "n2", "n1", old)
    assert sent == [InvokeRefused(invocation_id="n1~old", reason="restarted")]
    current = attrs.evolve(old, invocation_id="n1~now", incarnation=n2.gossip.incarnation)
    sent, effects = _handle_now(mesh, "n2", "n1", current)
    assert effects == ["invoke"] and sent == []
    mesh.run_for(0.5)  # the settled mark synced
    mesh.world.crash(NodeId("n2"))  # a plain crash: the world still reports the lost disk
    mesh.world.restart(NodeId("n2"))
    assert mesh.core("n2").fence_settled  # its gossip ceiling is on disk again
    assert mesh.core("n2").fence_incarnation > n2.fence_incarnation


def test_a_node_that_holds_every_peer_dead_still_knows_whom_to_ask_for_code() -> None:
    """A node whose gossip holds no peer alive (here cut off until it declared both
    dead; on a real mesh, one that declared its peers dead before they came up) runs
    an invocation itself: the task must still name peers to fetch the code blob
    from, not none ("no peer of 0 had blob")."""
    mesh = started()
    mesh.deploy("n1")
    mesh.world.partition([[NodeId("n1"), NodeId("n2")], [NodeId("n3")]])
    mesh.wait_for(lambda: not mesh.core("n3").live_peers(), within_s=30,
                  what="n3 to hold n1 and n2 dead")
    assert mesh.core("n3").sm.get_function("hello") is not None
    mesh.call("n3", proto.Invoke(name="hello", payload=b"{}"))
    mesh.wait_for(lambda: any(r.node == "n3" for r in mesh.runs), within_s=3,
                  what="n3 to run it")
    (run,) = [r for r in mesh.runs if r.node == "n3"]
    assert run.task.peers == ("n1", "n2")
