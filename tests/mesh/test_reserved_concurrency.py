"""Reserved concurrency holds across the mesh, and keeps room for its function."""

from __future__ import annotations

from mesh_harness import CODE, Mesh

from meshfaas.core import client_proto as proto
from meshfaas.core.faas import ConfigPatch


def _mesh() -> Mesh:
    mesh = Mesh(capacity=4, auto=False)  # invocations run until finish_all()
    mesh.start()
    for name in ("reserved", "other"):
        response = mesh.request("n1", proto.Deploy(name=name, code=CODE, handler="app.handler",
                                                   timeout_s=60))
        assert response.ok, response.error
    response = mesh.request("n1", proto.UpdateConfig(
        name="reserved", patch=ConfigPatch(reserved_concurrency=3)))
    assert response.ok, response.error
    mesh.wait_for(lambda: all(mesh.core(n).reservations() for n in mesh.ids), within_s=5,
                  what="the reservation on every node")
    return mesh


def _running(mesh: Mesh, function: str) -> int:
    return sum(1 for r in mesh.runs if r.task.function == function and not r.done)


def test_a_reserved_function_never_runs_more_copies_than_reserved() -> None:
    mesh = _mesh()
    conns = [mesh.call(mesh.ids[i % 3], proto.Invoke(name="reserved", payload=b"{}"))
             for i in range(8)]
    mesh.run_for(2)
    assert _running(mesh, "reserved") == 3
    throttled = [c for c in conns if c in mesh.replies]
    assert len(throttled) == 5
    assert all(mesh.replies[c].error is not None and mesh.replies[c].error.kind == "Throttled"
               for c in throttled)
    mesh.finish_all()
    mesh.run_for(1)
    assert all(mesh.replies[c].ok for c in conns if c not in throttled)


def test_other_functions_get_the_capacity_left_after_the_reservation() -> None:
    mesh = _mesh()  # 3 nodes x 4 slots = 12, of which 3 are kept for "reserved"
    conns = [mesh.call(mesh.ids[i % 3], proto.Invoke(name="other", payload=b"{}"))
             for i in range(12)]
    mesh.run_for(2)
    assert _running(mesh, "other") == 9
    assert sum(1 for c in conns if c in mesh.replies) == 3  # throttled
    more = [mesh.call("n2", proto.Invoke(name="reserved", payload=b"{}")) for _ in range(3)]
    mesh.run_for(2)
    assert _running(mesh, "reserved") == 3  # the kept slots were free for it
    assert not any(c in mesh.replies for c in more)
