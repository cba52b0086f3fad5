"""The meshfaas side of bench/paxos_bench.py: a 3-node mesh as a ``KvTarget``.

:func:`open_mesh` starts three real node processes on loopback (``meshfaas node
start``, fsync on, SQLite in temporary data directories, removed on exit), waits
until the admin key is accepted everywhere, and deploys one function ``kv``.

A benchmark "put" is one configuration change of that function
(``update_config(description=...)``), sent by a ``meshfaas.AsyncClient``: the
node proposes it to Multi-Paxos and answers only once it is chosen and applied,
hence durable on a majority -- the same "committed" the etcd side measures.
Clients are spread round-robin over the three nodes (a follower forwards to the
leader, as an etcd follower does).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ECHO = Path(__file__).resolve().parent / "handlers" / "echo"


def unavailable_reason() -> str | None:
    """Why the meshfaas target cannot run, or None when it can."""
    return None


class MeshConnection:
    def __init__(self, client: Any) -> None:
        self._client = client

    async def put(self, key: bytes, value: bytes) -> None:
        await self._client.update_config("kv", description=(key + b"=" + value).hex()[:200])

    async def aclose(self) -> None:
        self._client.close()


class MeshTarget:
    name = "meshfaas"

    def __init__(self, mesh: Any) -> None:
        self._mesh = mesh
        self.first = 0  # client i talks to node (first + i) mod n (see place_from_leader)

    def place_from_leader(self) -> None:
        """Client i talks to the node i places after the Paxos leader (client 0 to the
        leader itself), not after n1: a lone client's puts are then commits at the
        leader, not forwarded to it by a follower (two hops more)."""
        leader = self.leader()
        if leader in self._mesh.mesh.ids:
            self.first = self._mesh.mesh.ids.index(leader)

    async def connect(self, client_index: int) -> MeshConnection:
        from meshfaas.client import AsyncClient

        eps = self._mesh.mesh.endpoints()
        first = (self.first + client_index) % len(eps)
        server_key = self._mesh.mesh.info[self._mesh.mesh.ids[0]]["public_key"]
        client = AsyncClient(eps[first:] + eps[:first], self._mesh.api_key,
                             server_public_key=server_key, timeout_s=30)
        return MeshConnection(client)

    def leader(self) -> str | None:
        """The Paxos leader's node id, as n1 sees it."""
        with self._mesh.client() as client:
            leader: str | None = client.status().leader
        return leader

    def server_pids(self) -> Sequence[int]:
        return [p.pid for p in self._mesh.mesh.procs.values()]


@contextlib.contextmanager
def open_mesh() -> Iterator[MeshTarget]:
    sys.path.insert(0, str(ROOT / "tests" / "mesh"))
    sys.path.insert(0, str(ROOT))  # test_real_mesh imports tests.ports
    from test_real_mesh import LocalMesh

    with tempfile.TemporaryDirectory(prefix="meshfaas-bench-") as tmp:
        mesh = LocalMesh(Path(tmp), 3)
        try:
            mesh.start()
            with mesh.client() as client:
                client.deploy("kv", str(ECHO), handler="app.handler")
            yield MeshTarget(mesh)
        finally:
            mesh.stop()
