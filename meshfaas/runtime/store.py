"""Durable storage on one node: SQLite records and a content-addressed blob folder.

Theory of operation
-------------------
:class:`SqliteStore` implements the core's ``DurableStore`` port. Records are
``(table, key) -> value`` rows of one SQLite table, in WAL mode with
``synchronous=FULL`` so that a commit returns only once its WAL frames are
fsynced. ``write`` only stages records in memory; ``sync`` applies everything
staged so far in one transaction, so many writes cost one fsync (group commit:
the driver stages every batch that arrives while a sync runs and syncs them
together next). Records staged after a ``sync`` started wait for the next one.

Values are CBOR (:func:`meshfaas.core.codec.to_cbor`, so registered messages
round-trip; CBOR has one array type, so a tuple inside a *value* comes back as a
list). Keys are ints, strings, bytes or tuples of those, encoded as canonical
CBOR so equal keys give equal bytes; they come back as the same Python values.

Each row carries a BLAKE2b checksum of (table, key, value). :meth:`load_checked`
verifies every row and returns a :class:`LoadResult` listing corrupted rows and
any SQLite error instead of raising: a damaged disk is the environment's failure,
and the caller decides (Paxos rejoins as a non-voting learner). The plain
``load`` of the port returns the good rows and leaves the verdict in
:attr:`SqliteStore.last_load`.

:class:`BlobStore` keeps code and dependency blobs under their SHA-256: written
to a temporary file, fsynced, renamed into place, and the directory fsynced, so a
blob is either absent or complete; reads verify the hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from meshfaas.core.codec import DecodeError, from_cbor, to_cbor
from meshfaas.core.types import Write

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    tbl TEXT NOT NULL,
    key BLOB NOT NULL,
    value BLOB NOT NULL,
    checksum BLOB NOT NULL,
    PRIMARY KEY (tbl, key)
) WITHOUT ROWID
"""


class StoreError(Exception):
    """The disk refused a sync: nothing staged since the last sync is durable."""


# ---------------------------------------------------------------------------
# Keys and checksums
# ---------------------------------------------------------------------------


def _check_key(key: Any) -> None:
    if type(key) in (int, str, bytes):
        return
    if type(key) is tuple:
        for part in key:
            _check_key(part)
        return
    raise TypeError(f"a store key is an int, str, bytes or a tuple of those, not {key!r}")


def encode_key(key: Hashable) -> bytes:
    """Canonical bytes for a key (equal keys, equal bytes)."""
    _check_key(key)
    return to_cbor(key)


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


def decode_key(raw: bytes) -> Hashable:
    key = _tuplify(from_cbor(raw))
    _check_key(key)
    return key  # type: ignore[no-any-return]


_LENGTH = struct.Struct(">Q").pack


def checksum(table: str, key: bytes, value: bytes) -> bytes:
    """BLAKE2b-128 of each part's 8-byte big-endian length then the part, for
    (table, key, value): hashed in one call (the same digest as part by part)."""
    name = table.encode()
    return hashlib.blake2b(b"".join((_LENGTH(len(name)), name, _LENGTH(len(key)), key,
                                     _LENGTH(len(value)), value)), digest_size=16).digest()


# ---------------------------------------------------------------------------
# The SQLite store
# ---------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class CorruptRecord:
    table: str
    key: bytes
    reason: str


@attrs.frozen(kw_only=True)
class LoadResult:
    """What :meth:`SqliteStore.load_checked` found. ``ok`` only if nothing is damaged."""

    tables: dict[str, dict[Hashable, Any]]
    corrupt: tuple[CorruptRecord, ...] = ()
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.corrupt and not self.error


def set_aside(path: Path) -> str:
    """Rename a damaged SQLite file (with its ``-wal``, ``-shm`` and the journal
    ``.journal`` of :class:`meshfaas.runtime.journal.JournaledStore`) to
    ``<name>.damaged-<time>``, out of the way of a new one; returns the time stamp."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    for suffix in ("", "-wal", "-shm", ".journal"):
        old = path.with_name(path.name + suffix)
        if old.exists():
            old.rename(path.with_name(f"{path.name}{suffix}.damaged-{stamp}"))
    return stamp


class SqliteStore:
    """The ``DurableStore`` port on SQLite; see the module docstring."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the connection
        self._staging = threading.Lock()  # only the staged list: never held during IO
        self._staged: list[Write] = []
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute(SCHEMA)
        self.syncs = 0
        self.last_load: LoadResult | None = None

    def write(self, writes: Sequence[Write]) -> None:
        """Stage ``writes``; they become durable at the next :meth:`sync`."""
        rows = [self._row(w) for w in writes]  # encode now: a bad key is the caller's error
        with self._staging:
            self._staged.extend(rows)

    @staticmethod
    def _row(w: Write) -> Any:
        key = encode_key(w.key)
        if w.value is None:
            return (w.table, key, None, None)
        value = to_cbor(w.value)
        return (w.table, key, value, checksum(w.table, key, value))

    def has_staged(self) -> bool:
        """Whether anything waits for :meth:`sync`."""
        with self._staging:
            return bool(self._staged)

    def sync(self) -> None:
        """Commit everything staged in one transaction (one fsync). Thread-safe."""
        with self._lock:  # taken first, so concurrent syncs commit in staging order
            with self._staging:
                rows, self._staged = self._staged, []
            if not rows:
                return
            try:
                self._commit(rows)
            except sqlite3.Error as exc:
                raise StoreError(f"sync of {len(rows)} records to {self.path} failed: {exc}") from exc
            self.syncs += 1

    def _commit(self, rows: Sequence[Any], *then: tuple[str, tuple[Any, ...]]) -> None:
        """One transaction: the rows in order, then the statements ``then``."""
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for table, key, value, check in rows:
                if value is None:
                    cur.execute("DELETE FROM records WHERE tbl=? AND key=?", (table, key))
                else:
                    cur.execute("INSERT OR REPLACE INTO records VALUES (?, ?, ?, ?)",
                                (table, key, value, check))
            for statement, params in then:
                cur.execute(statement, params)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def load(self) -> Mapping[str, Mapping[Hashable, Any]]:
        """The durable records that verify; see :attr:`last_load` for damage."""
        self.last_load = self.load_checked()
        return self.last_load.tables

    def load_checked(self) -> LoadResult:
        tables: dict[str, dict[Hashable, Any]] = {}
        corrupt: list[CorruptRecord] = []
        with self._lock:
            try:
                rows = self._conn.execute("SELECT tbl, key, value, checksum FROM records").fetchall()
            except sqlite3.Error as exc:
                return LoadResult(tables={}, error=f"cannot read {self.path}: {exc}")
        for table, key, value, check in rows:
            reason = self._verify(table, key, value, check, tables)
            if reason:
                corrupt.append(CorruptRecord(table=str(table), key=bytes(key), reason=reason))
        return LoadResult(tables=tables, corrupt=tuple(corrupt))

    @staticmethod
    def _verify(table: Any, key: Any, value: Any, check: Any,
                tables: dict[str, dict[Hashable, Any]]) -> str:
        if not all(isinstance(x, bytes) for x in (key, value, check)) or not isinstance(table, str):
            return "column of the wrong type"
        if checksum(table, key, value) != check:
            return "checksum mismatch"
        try:
            tables.setdefault(table, {})[decode_key(key)] = from_cbor(value)
        except (DecodeError, TypeError) as exc:
            return f"undecodable: {exc}"
        return ""

    def close(self) -> None:
        with self._lock:
            self._conn.close()


# ---------------------------------------------------------------------------
# Content-addressed blobs
# ---------------------------------------------------------------------------

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (a file created or renamed in it) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobStore:
    """Blobs under ``root/<2 hex>/<64 hex>``, named by their SHA-256 (blocking IO:
    call it from ``trio.to_thread.run_sync``)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if not _DIGEST.match(digest):
            raise ValueError(f"not a sha256 hex digest: {digest!r}")
        return self.root / digest[:2] / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def put(self, data: bytes) -> str:
        """Store ``data`` durably; returns its sha256 hex digest."""
        digest = hashlib.sha256(data).hexdigest()
        final = self.path(digest)
        if final.exists():
            return digest
        final.parent.mkdir(exist_ok=True)
        tmp = self._tmp / f"{digest}.{os.getpid()}.{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        fsync_dir(final.parent)
        return digest

    def get(self, digest: str) -> bytes | None:
        """The blob, or None if absent or damaged (a damaged file is removed)."""
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != digest:
            path.unlink(missing_ok=True)
            return None
        return data

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
