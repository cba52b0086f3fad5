"""The journal in front of the SQLite store: what a sync made durable survives
reopens, checkpoints, torn tails and crashes mid-checkpoint; damage is reported."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfaas.core.types import Write
from meshfaas.runtime import journal
from meshfaas.runtime.journal import JournaledStore
from meshfaas.runtime.store import SqliteStore, StoreError

SMALL = 8 * 1024  # a journal this small checkpoints every few syncs


def reopen(path: Path, journal_bytes: int = SMALL,
           direct_bytes: int = journal.DEFAULT_DIRECT_BYTES) -> tuple[JournaledStore, dict[str, Any]]:
    store = JournaledStore(path, journal_bytes=journal_bytes, direct_bytes=direct_bytes)
    result = store.load_checked()
    assert result.ok, (result.error, result.corrupt)
    return store, result.tables


def crash(store: JournaledStore) -> None:
    """Stop without the checkpoint a clean close makes (the journal keeps the rows)."""
    os.close(store._fd)
    store._fd = -1
    store._conn.close()


def entry_offsets(path: Path) -> list[int]:
    """Where the current generation's entries start in the journal file."""
    store = JournaledStore(path, journal_bytes=SMALL)
    data = (path.with_name(path.name + journal.JOURNAL_SUFFIX)).read_bytes()
    store.load_checked()
    offsets, offset = [], journal._DATA_START
    for seq in range(1, store._seq + 1):
        offsets.append(offset)
        body = journal._read_entry(data, offset, store._generation, seq)
        assert body is not None
        offset += journal._ENTRY.size + len(body)
    crash(store)
    return offsets


def test_synced_rows_survive_a_crash_and_unsynced_ones_do_not(tmp_path: Path) -> None:
    store, tables = reopen(tmp_path / "node.db")
    assert tables == {}
    store.write([Write(table="log", key=1, value={"v": 1}), Write(table="meta", key="m", value=[1])])
    store.sync()
    store.write([Write(table="meta", key="m", value=None), Write(table="log", key=2, value="two")])
    store.sync()
    store.write([Write(table="log", key=3, value="never synced")])
    assert store.syncs == 2 and store.checkpoints == 0
    crash(store)
    store, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: {"v": 1}, 2: "two"}, "meta": {}}
    store.write([Write(table="log", key=4, value=4)])  # the journal goes on after the replay
    store.sync()
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables["log"] == {1: {"v": 1}, 2: "two", 4: 4}


def test_a_full_journal_checkpoints_into_sqlite(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    for i in range(200):
        store.write([Write(table="log", key=i, value="x" * 100), Write(table="meta", key="top", value=i)])
        store.sync()
    assert store.checkpoints >= 3 and store.syncs == 200
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {i: "x" * 100 for i in range(200)}, "meta": {"top": 199}}


def test_an_entry_bigger_than_the_journal_goes_to_sqlite(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    store.write([Write(table="log", key=1, value="small")])
    store.sync()
    store.write([Write(table="snap", key="s", value=b"\x01" * (3 * SMALL))])
    store.sync()
    assert store.checkpoints == 1
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: "small"}, "snap": {"s": b"\x01" * (3 * SMALL)}}


def test_a_clean_close_leaves_everything_in_sqlite(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    store.write([Write(table="log", key=1, value=1)])
    store.sync()
    store.close()
    plain = SqliteStore(tmp_path / "node.db")  # reads node.db alone (a backup would)
    assert plain.load_checked().tables == {"log": {1: 1}}
    plain.close()
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: 1}}


def test_a_torn_last_entry_is_the_crash_and_not_damage(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    for i in range(3):
        store.write([Write(table="log", key=i, value=i)])
        store.sync()
    crash(store)
    last = entry_offsets(tmp_path / "node.db")[-1]
    with open(tmp_path / "node.db.journal", "r+b") as f:  # the write a crash interrupted
        f.seek(last + journal._ENTRY.size)
        f.write(b"\xff\xff")
    store, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {0: 0, 1: 1}}
    store.write([Write(table="log", key=9, value=9)])
    store.sync()
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {0: 0, 1: 1, 9: 9}}


def test_a_damaged_entry_before_good_ones_is_reported(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    for i in range(4):
        store.write([Write(table="log", key=i, value=f"value {i}")])
        store.sync()
    crash(store)
    second = entry_offsets(tmp_path / "node.db")[1]
    with open(tmp_path / "node.db.journal", "r+b") as f:
        f.seek(second + journal._ENTRY.size + 3)
        f.write(b"\x00")
    store = JournaledStore(tmp_path / "node.db", journal_bytes=SMALL)
    result = store.load_checked()
    assert not result.ok
    assert [(c.table, c.reason) for c in result.corrupt] == [
        ("journal", "entry 2 of generation 1 is damaged and later entries are not")]
    store.write([Write(table="log", key=5, value=5)])
    with pytest.raises(StoreError, match="damaged"):  # it never writes over the damage
        store.sync()
    store.close()


def test_unreadable_headers_are_damage(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    store.write([Write(table="log", key=1, value=1)])
    store.sync()
    crash(store)
    with open(tmp_path / "node.db.journal", "r+b") as f:
        f.write(b"\x00" * journal._DATA_START)
    result = JournaledStore(tmp_path / "node.db", journal_bytes=SMALL).load_checked()
    assert [c.reason for c in result.corrupt] == ["no valid journal header"]


def test_a_database_is_never_opened_with_another_journal_or_none(tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        store, _ = reopen(tmp_path / name / "node.db")
        store.write([Write(table="log", key=name, value=name)])
        store.sync()
        crash(store)
    (tmp_path / "b" / "node.db.journal").replace(tmp_path / "a" / "node.db.journal")
    result = JournaledStore(tmp_path / "a" / "node.db", journal_bytes=SMALL).load_checked()
    assert [c.reason for c in result.corrupt] == ["the journal belongs to another database"]
    result = JournaledStore(tmp_path / "b" / "node.db", journal_bytes=SMALL).load_checked()
    assert [c.reason for c in result.corrupt] == ["node.db.journal is missing"]
    (tmp_path / "a" / "node.db").unlink()  # a journal left without its database
    result = JournaledStore(tmp_path / "a" / "node.db", journal_bytes=SMALL).load_checked()
    assert [c.reason for c in result.corrupt] == ["the journal belongs to another database"]


def test_a_crash_while_the_journal_is_created_is_finished_at_the_next_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The id is in SQLite, the new journal not yet renamed into place."""
    store = JournaledStore(tmp_path / "node.db", journal_bytes=SMALL)

    def stopped(tmp: Path) -> None:
        raise OSError("the machine stopped")

    monkeypatch.setattr(store, "_put_in_place", stopped)
    with pytest.raises(OSError):
        store._open_journal()
    monkeypatch.undo()
    store._conn.close()
    assert not (tmp_path / "node.db.journal").exists()
    assert (tmp_path / "node.db.journal.new").exists()
    store, tables = reopen(tmp_path / "node.db")
    assert tables == {}
    store.write([Write(table="log", key=1, value=1)])
    store.sync()
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: 1}}
    assert not (tmp_path / "node.db.journal.new").exists()


def test_a_store_from_before_the_journal_gets_one(tmp_path: Path) -> None:
    old = SqliteStore(tmp_path / "node.db")
    old.write([Write(table="log", key=1, value="old")])
    old.sync()
    old.close()
    store, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: "old"}}
    store.write([Write(table="log", key=2, value="new")])
    store.sync()
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"log": {1: "old", 2: "new"}}


@pytest.mark.parametrize("crash_at", ["before the commit", "after the commit"])
def test_a_crash_in_a_checkpoint_loses_nothing_and_replays_nothing_stale(
        tmp_path: Path, crash_at: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Journaled rows, then a batch too big for the journal that rewrites one of
    them: the checkpoint commits both (and the next generation) in one transaction."""
    store, _ = reopen(tmp_path / "node.db")
    for i in range(3):
        store.write([Write(table="log", key=i, value=i), Write(table="meta", key="top", value=i)])
        store.sync()
    big = b"\x02" * (2 * SMALL)
    store.write([Write(table="meta", key="top", value=99), Write(table="snap", key="s", value=big)])
    if crash_at == "before the commit":
        def stopped(*args: object) -> None:
            raise sqlite3.OperationalError("the machine stopped")

        monkeypatch.setattr(store, "_commit", stopped)
        with pytest.raises(StoreError):
            store.sync()
        expected = {"log": {0: 0, 1: 1, 2: 2}, "meta": {"top": 2}}
    else:
        store.sync()
        assert store.checkpoints == 1
        expected = {"log": {0: 0, 1: 1, 2: 2}, "meta": {"top": 99}, "snap": {"s": big}}
    crash(store)
    store, tables = reopen(tmp_path / "node.db")
    assert tables == expected
    store.write([Write(table="meta", key="top", value=100)])
    store.sync()
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {**expected, "meta": {"top": 100}}


def test_a_big_batch_with_nothing_journaled_is_a_plain_commit(tmp_path: Path) -> None:
    store, _ = reopen(tmp_path / "node.db")
    store.write([Write(table="snap", key="s", value=b"\x03" * (2 * SMALL))])
    store.sync()
    assert (store.checkpoints, store._generation, store._seq) == (0, 1, 0)
    store.write([Write(table="log", key=1, value=1)])
    store.sync()
    assert store._seq == 1
    crash(store)
    _, tables = reopen(tmp_path / "node.db")
    assert tables == {"snap": {"s": b"\x03" * (2 * SMALL)}, "log": {1: 1}}


values = st.none() | st.binary(max_size=600)
ops = st.lists(st.one_of(
    st.tuples(st.just("put"), st.integers(0, 7), values),  # a write, synced at once
    st.tuples(st.just("write"), st.integers(0, 7), values),
    st.tuples(st.just("sync")), st.tuples(st.just("crash")), st.tuples(st.just("close")),
    st.tuples(st.just("checkpoint"))), max_size=60)


@settings(max_examples=200, deadline=None)  # (100 missed a checkpoint that lost the generation)
@given(ops)
def test_whatever_happens_the_synced_state_is_what_loads(tmp_path_factory: pytest.TempPathFactory,
                                                          script: list[tuple[Any, ...]]) -> None:
    path = tmp_path_factory.mktemp("j") / "node.db"
    durable: dict[int, bytes] = {}
    staged: list[tuple[int, bytes | None]] = []
    store, _ = reopen(path, 4096 + journal._DATA_START, 1024)
    for op in script:
        if op[0] in ("write", "put"):
            store.write([Write(table="t", key=op[1], value=op[2])])
            staged.append((op[1], op[2]))
        if op[0] in ("sync", "put"):
            store.sync()
            for key, value in staged:
                if value is None:
                    durable.pop(key, None)
                else:
                    durable[key] = value
            staged = []
        elif op[0] == "checkpoint":
            store.checkpoint()
        elif op[0] in ("crash", "close"):
            crash(store) if op[0] == "crash" else store.close()
            staged = []
            store, tables = reopen(path, 4096 + journal._DATA_START, 1024)
            assert tables.get("t", {}) == durable
    crash(store)
    _, tables = reopen(path, 4096 + journal._DATA_START, 1024)
    assert tables.get("t", {}) == durable
