"""Real node processes: an invocation record is read by id from any node, across a
kill -9 and restart of the node that holds it, and is gone after the retention
(the core stops serving it, and the node's results.db deletes the row).

Every wait is on a condition with a deadline; every process started here is stopped.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from test_real_mesh import EXAMPLE, LocalMesh, wait_for

from meshfaas.client import NotFound

pytestmark = pytest.mark.slow

RETENTION_S = 20


def _rows(db: Path, invocation_id: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM results WHERE id=?",
                                (invocation_id,)).fetchone()[0])
    finally:
        conn.close()


def _not_found(mesh: LocalMesh, node: str, invocation_id: str) -> bool:
    with mesh.client(node) as client:
        try:
            client.result(invocation_id)
        except NotFound:
            return True
    return False


def test_a_record_outlives_a_kill_9_and_expires_after_the_retention(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, 3, extra_args=("--result-retention", str(RETENTION_S)))
    try:
        mesh.start()
        with mesh.client("n1") as client:
            client.deploy("hello", str(EXAMPLE), handler="app.handler")
            done = client.invoke_detailed("hello", {"name": "kept"})
        stored_at = time.monotonic()
        invocation_id, holder = done.invocation_id, done.node
        db = tmp_path / holder / "results.db"
        wait_for(lambda: _rows(db, invocation_id) == 1, 5, "the record in the holder's results.db")
        mesh.mesh.kill(holder)
        mesh.mesh.start_node(mesh.mesh.ids.index(holder))
        for node in mesh.mesh.ids:  # the holder from its disk; the others ask it
            with mesh.client(node) as client:
                found = wait_for(lambda c=client: c.result(invocation_id), 30,
                                 f"the record through {node}")
            assert found.status == "succeeded" and b"Hello, kept!" in (found.payload or b"")
            assert found.node == holder and found.billed_duration_ms >= 1
        with mesh.client("n2") as client:
            for malformed in ("", "x" * 300, "n1~\u00e9"):
                with pytest.raises(NotFound):
                    client.result(malformed)
        assert time.monotonic() - stored_at < RETENTION_S, "too slow to test the expiry"
        wait_for(lambda: all(_not_found(mesh, n, invocation_id) for n in mesh.mesh.ids),
                 RETENTION_S + 10, "the record to expire on every node")
        wait_for(lambda: _rows(db, invocation_id) == 0, 30, "the expired row to be deleted")
    finally:
        mesh.stop()
