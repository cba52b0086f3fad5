"""A damaged store is set aside and the node starts as a replica that lost its disk."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from meshfaas.core.types import Write
from meshfaas.runtime.mesh import _open_store


def test_a_record_failing_its_checksum_sets_the_store_aside(tmp_path: Path) -> None:
    store, disk, lost = _open_store(tmp_path)
    assert (disk, lost) == ({}, False)
    store.write([Write(table="p.meta", key="member", value=1)])
    store.sync()
    store.close()
    with sqlite3.connect(tmp_path / "node.db") as con:
        con.execute("UPDATE records SET value = X'00'")
    store, disk, lost = _open_store(tmp_path)
    store.close()
    assert lost and disk == {}
    assert [p.name for p in tmp_path.glob("node.db.damaged-*")], "the damaged store was not kept"


def test_a_healthy_store_reopens_with_its_records(tmp_path: Path) -> None:
    store, _, _ = _open_store(tmp_path)
    store.write([Write(table="p.meta", key="member", value=1)])
    store.sync()
    store.close()
    store, disk, lost = _open_store(tmp_path)
    store.close()
    assert not lost and disk == {"p.meta": {"member": 1}}
