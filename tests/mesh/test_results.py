"""Invocation records readable by id from any node for the whole retention time.

MeshNode keeps only its newest records in memory (the recent cache,
``max_results``); the others are read back from the result store through the
``result_lookup`` port (here: the simulated disk, as in the mesh scenario).
"""

from __future__ import annotations

import pytest
from mesh_harness import Mesh

from meshfaas.core import client_proto as proto
from meshfaas.core.results import LOOKUP_KIND, RESULTS_TABLE
from meshfaas.core.types import NS_PER_S, Effect, EffectResult, NodeId
from simulator import World


def started(**kwargs: object) -> Mesh:
    mesh = Mesh(**kwargs)  # type: ignore[arg-type]
    mesh.start()
    return mesh


def invoke_all(mesh: Mesh, node: str, count: int) -> list[str]:
    """``count`` synchronous invocations through ``node``, in flight together; their ids."""
    conns = [mesh.call(node, proto.Invoke(name="hello", payload=b"{}")) for _ in range(count)]
    ids = []
    for conn in conns:
        response = mesh.wait_reply(conn, within_s=120)
        assert response.ok, response.error
        ids.append(response.value.invocation_id)
    return ids


def read(mesh: Mesh, node: str, invocation_id: str) -> proto.ClientResponse:
    return mesh.request(node, proto.GetResult(invocation_id=invocation_id))


@pytest.mark.slow  # about 5 s: 10,051 invocations in the simulator
def test_a_record_is_read_after_more_than_ten_thousand_newer_ones() -> None:
    """The default cache holds 10,000 records: the first of 10,051 left it, yet is
    found, on its entry node (from the store) and through a peer."""
    mesh = started(capacity=64)
    mesh.deploy()
    first = invoke_all(mesh, "n1", 1)[0]
    for _ in range(67):
        invoke_all(mesh, "n1", 150)  # within the mesh's 192 slots
    core = mesh.core("n1")
    assert len(core.results) == 10_000 and first not in core.results
    for node in ("n1", "n3"):
        found = read(mesh, node, first)
        assert found.ok, f"{node}: {found.error}"
        assert found.value.invocation_id == first and found.value.status == "succeeded"
    assert mesh.lookups >= 1


def test_the_peer_path_reads_another_node_s_store() -> None:
    """n1 routes, n2 runs, n3 holds nothing: with one cached record per node, n3's
    query is answered by n1's or n2's store, not their memory."""
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 0}, cfg={"max_results": 1})
    mesh.deploy()
    target = invoke_all(mesh, "n1", 1)[0]
    invoke_all(mesh, "n1", 2)
    assert all(target not in mesh.core(n).results for n in mesh.ids)
    before = mesh.lookups
    found = read(mesh, "n3", target)
    assert found.ok, found.error
    assert found.value.node == "n2" and found.value.payload == b'{"ran_on":"n2"}'
    assert mesh.lookups - before >= 2  # n3's own store, then the peers' stores


def test_a_record_is_read_after_a_restart_of_every_node_that_holds_it() -> None:
    mesh = started(capacity={"n1": 0, "n2": 8, "n3": 0})
    mesh.deploy()
    target = invoke_all(mesh, "n1", 1)[0]
    mesh.run_for(0.5)  # the records are synced
    for node in ("n1", "n2"):
        mesh.world.crash(NodeId(node))
        mesh.world.restart(NodeId(node))
    mesh.start()
    for node in mesh.ids:
        found = read(mesh, node, target)
        assert found.ok, f"{node}: {found.error}"
        assert found.value.payload == b'{"ran_on":"n2"}'


def test_a_record_is_not_found_after_the_retention_though_still_stored() -> None:
    """The core applies the retention to what the store answers: a row the store
    has not deleted yet is NotFound all the same."""
    mesh = started(cfg={"result_retention_ns": 90 * NS_PER_S, "max_results": 1})
    mesh.deploy()
    old = invoke_all(mesh, "n1", 2)
    assert read(mesh, "n3", old[0]).ok  # from a store, within the retention
    mesh.run_for(100)
    young = invoke_all(mesh, "n1", 2)
    assert mesh.world.nodes[NodeId("n1")].disk.durable[RESULTS_TABLE].keys() >= set(old)
    for node in mesh.ids:
        for invocation_id in old:
            answer = read(mesh, node, invocation_id)
            assert not answer.ok and answer.error.kind == "NotFound", (node, answer)
        assert read(mesh, node, young[0]).ok


def test_malformed_and_unknown_ids_are_not_found() -> None:
    mesh = started()
    malformed = ["", "x" * 257, "n1~\x00ab", "n1 ~ab", "n1~ü", "\n"]
    for node in mesh.ids:
        for invocation_id in malformed:
            answer = read(mesh, node, invocation_id)
            assert not answer.ok and answer.error.kind == "NotFound", (invocation_id, answer)
    assert mesh.lookups == 0  # never worth a disk read
    assert mesh.core("n1").counters["result_id_malformed"] == len(malformed)
    for invocation_id in ("n1~feedface", "n9~00", "x" * 256):
        answer = read(mesh, "n2", invocation_id)
        assert not answer.ok and answer.error.kind == "NotFound", (invocation_id, answer)
    assert mesh.lookups == 3 * 3  # each unknown id: n2's store, then n1's and n3's


class FailingStoreMesh(Mesh):
    """A mesh whose nodes' stores all fail every lookup (the disk is gone)."""

    def _effect(self, world: World, node: NodeId, effect: Effect) -> None:
        if effect.kind == LOOKUP_KIND:
            self.lookups += 1
            world.complete_effect(node, EffectResult(effect_id=effect.effect_id, ok=False,
                                                     error="disk I/O error"))
            return
        super()._effect(world, node, effect)


def test_a_failed_lookup_is_a_miss_and_a_peer_s_cache_still_answers() -> None:
    mesh = FailingStoreMesh(capacity={"n1": 8, "n2": 0, "n3": 0}, cfg={"max_results": 1})
    mesh.start()
    mesh.deploy()
    target = invoke_all(mesh, "n1", 1)[0]
    found = read(mesh, "n2", target)
    assert found.ok and found.value.invocation_id == target  # n2's lookup failed; n1's cache
    assert mesh.core("n2").counters["result_lookup_failed"] == 1
    invoke_all(mesh, "n1", 1)  # the target leaves n1's cache; every store fails
    answer = read(mesh, "n2", target)
    assert not answer.ok and answer.error.kind == "NotFound"
