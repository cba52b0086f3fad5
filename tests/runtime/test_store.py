"""The SQLite durable store and the blob store."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfaas.core.types import Write
from meshfaas.runtime.messages import TransportProbe
from meshfaas.runtime.store import BlobStore, SqliteStore, checksum, decode_key, encode_key

atoms = st.one_of(st.integers(), st.text(max_size=8), st.binary(max_size=8))
keys = st.recursive(atoms, lambda inner: st.tuples(inner, inner) | st.tuples(inner), max_leaves=6)


@given(keys)
def test_keys_round_trip_canonically(key: object) -> None:
    raw = encode_key(key)  # type: ignore[arg-type]
    assert decode_key(raw) == key
    assert encode_key(decode_key(raw)) == raw


@pytest.mark.parametrize("bad", [1.5, True, None, [1], frozenset({1}), (1, [2])])
def test_bad_keys_are_the_callers_error(tmp_path: Path, bad: object) -> None:
    store = SqliteStore(tmp_path / "db")
    with pytest.raises(TypeError):
        store.write([Write(table="t", key=bad, value=1)])  # type: ignore[arg-type]


def test_only_synced_writes_survive_a_reopen(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    probe = TransportProbe(nonce=1, payload=b"p")
    store.write([Write(table="acceptor", key=("slot", 7), value=probe),
                 Write(table="acceptor", key="promised", value={"ballot": [3, "n1"]}),
                 Write(table="meta", key=b"\x00", value=[1, 2])])
    store.write([Write(table="meta", key=b"\x00", value=None)])
    store.sync()
    store.write([Write(table="acceptor", key="lost", value=1)])  # never synced
    assert store.syncs == 1
    store.close()
    reopened = SqliteStore(tmp_path / "db")
    result = reopened.load_checked()
    assert result.ok
    assert result.tables == {"acceptor": {("slot", 7): probe, "promised": {"ballot": [3, "n1"]}}}
    assert reopened.load() == result.tables


def test_one_sync_commits_many_writes(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    for i in range(100):
        store.write([Write(table="log", key=i, value=i * i)])
    store.sync()
    store.sync()  # nothing staged: no transaction
    assert store.syncs == 1 and len(store.load()["log"]) == 100


def test_corrupted_record_is_an_explicit_result(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.write([Write(table="acceptor", key=k, value=f"v{k}") for k in range(3)])
    store.sync()
    store.close()
    raw = sqlite3.connect(tmp_path / "db")
    raw.execute("UPDATE records SET value=? WHERE key=?", (b"\x62v9", encode_key(1)))
    raw.commit()
    raw.close()
    store = SqliteStore(tmp_path / "db")
    result = store.load_checked()
    assert not result.ok
    assert [(c.table, decode_key(c.key), c.reason) for c in result.corrupt] == [
        ("acceptor", 1, "checksum mismatch")]
    assert result.tables == {"acceptor": {0: "v0", 2: "v2"}}
    store.load()
    assert store.last_load is not None and not store.last_load.ok


def test_unreadable_database_is_an_explicit_result(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
    store.write([Write(table="t", key=1, value=1)])
    store.sync()
    store._conn.execute("DROP TABLE records")
    result = store.load_checked()
    assert not result.ok and "cannot read" in result.error


def test_blobs_are_content_addressed_and_verified(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    digest = blobs.put(b"code")
    assert blobs.put(b"code") == digest and blobs.has(digest)
    assert blobs.get(digest) == b"code"
    assert list((tmp_path / "blobs" / "tmp").iterdir()) == []
    blobs.path(digest).write_bytes(b"tampered")
    assert blobs.get(digest) is None and not blobs.has(digest)
    with pytest.raises(ValueError):
        blobs.path("../../etc/passwd")


def _checksum_part_by_part(table: str, key: bytes, value: bytes) -> bytes:
    """The row checksum as first defined (rows on disk carry it): each part's
    8-byte big-endian length then the part, fed to BLAKE2b-128 one by one."""
    h = hashlib.blake2b(digest_size=16)
    for part in (table.encode(), key, value):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


@given(st.text(max_size=40), st.binary(max_size=300), st.binary(max_size=3000))
def test_the_row_checksum_is_the_part_by_part_digest(table: str, key: bytes, value: bytes) -> None:
    assert checksum(table, key, value) == _checksum_part_by_part(table, key, value)
