"""A damaged store is set aside and the node starts as a replica that lost its disk."""

from __future__ import annotations

import os
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


def test_a_damaged_journal_sets_the_store_aside_with_it(tmp_path: Path) -> None:
    store, _, _ = _open_store(tmp_path)
    store.write([Write(table="p.meta", key="member", value=1)])
    store.sync()  # in the journal only: the process dies without a clean close
    os.close(store._fd)
    store._conn.close()
    journal = tmp_path / "node.db.journal"
    with open(journal, "r+b") as f:
        f.write(b"\x00" * 1024)  # both header slots
    store, disk, lost = _open_store(tmp_path)
    store.close()
    assert lost and disk == {}
    assert [p.name for p in tmp_path.glob("node.db.journal.damaged-*")], "the journal was not kept"
    assert journal.exists(), "the new store has a journal of its own"
