"""The result store of a node process: invocation records in a SQLite file of their own.

Theory of operation
-------------------
The node core writes every finished invocation's record as a durable write to
table ``m.results`` and keeps only its newest records in memory
(:mod:`meshfaas.core.results`). :class:`SplitStore` is the ``DurableStore``
the driver sees: it hands ``m.results`` writes to the :class:`ResultStore`
and everything else (gossip, Paxos, the node's own tables) to the node's
:class:`~meshfaas.runtime.store.SqliteStore`. So the records never load at
start, never share a transaction with Paxos, and the core's lookups
(``result_lookup`` effects) are answered by :meth:`ResultStore.get`.

:class:`ResultStore` keeps ``DATA/results.db``: one row per invocation id
(the CBOR record, the wall time it was stored, a BLAKE2b checksum), a unique
index on the id and an index on the time. ``put_many`` only stages rows (a
dict append on the event loop thread); the store's own *writer thread*
commits whatever is staged in one transaction every ``batch_delay_s``, on its
own connection. ``get`` reads on a second connection (WAL lets it read while
the writer writes) and sees staged rows that are not committed yet.

*Sync level.* The file is in WAL mode with ``synchronous=NORMAL``: a commit
reaches the OS at once (it survives the node process being killed) but is
fsynced only at WAL checkpoints, so a power loss or kernel crash can lose the
last commits. That loses nothing acknowledged: a synchronous caller already
has its answer (the reply leaves before the record is written), and an
asynchronous invocation's outcome (status, attempts, last error, the node
that ran it) is in its replicated ``AsyncRecord``, chosen on a Paxos majority
with ``synchronous=FULL``; ``GetResult`` falls back to it when no store has
the record. What such a crash can lose is the detail (payload, durations, log
tail) of the invocations of the last moments. The Paxos commit path pays no
fsync for results at all.

*Expiry.* Every ``expire_interval_s`` the writer deletes the rows stored
longer ago than the retention, ``expire_batch`` rows per transaction, so
writes wait at most one batch. Then it bounds the file: when the pages in use
exceed ``max_bytes`` it deletes the oldest rows until they are under 90% of it
and logs a warning naming how young the dropped records were (records the
retention would still have kept are being lost: raise ``--result-max-mb`` or
shorten ``--result-retention``). Freed pages are reused; the file does not
shrink. The core applies the retention to every read anyway, so a row the
writer has not deleted yet is not served.

*Damage.* A ``results.db`` SQLite cannot open is set aside
(``results.db.damaged-<time>``) and a new one started; a row failing its
checksum reads as absent. Results are not worth stopping a node for: a failed
commit is logged and its rows dropped.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from meshfaas.core import client_proto as proto
from meshfaas.core.codec import DecodeError, from_cbor, to_cbor
from meshfaas.core.results import RESULTS_TABLE, StoredResult, stored_result
from meshfaas.core.types import NS_PER_S, Write
from meshfaas.runtime.store import SqliteStore, set_aside

log = logging.getLogger("meshfaas.results")

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS results (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        stored_wall_ns INTEGER NOT NULL,
        record BLOB NOT NULL,
        checksum BLOB NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS results_by_age ON results (stored_wall_ns)",
)
BOUND_TARGET = 0.9  # the size bound deletes down to this share of max_bytes

Row = tuple[str, StoredResult | None]  # (invocation id, record or None: delete)
# A staged row: (stored wall ns, record, its CBOR, the row checksum), or None: delete
_Staged = tuple[int, proto.InvocationRecord, bytes, bytes] | None


def row_checksum(invocation_id: str, stored_wall_ns: int, record: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (invocation_id.encode(), stored_wall_ns.to_bytes(8, "big", signed=True), record):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=5000")
    return conn


def _open_or_set_aside(path: Path) -> sqlite3.Connection:
    """The writer's connection with the schema in place; a file SQLite cannot use
    is renamed aside and a new one started (records are not worth a stopped node)."""
    try:
        return _with_schema(_connect(path))
    except sqlite3.DatabaseError as exc:
        stamp = set_aside(path)
        log.error("the result store %s is damaged (%s): set aside as %s.damaged-%s; "
                  "the records in it are no longer readable", path, exc, path.name, stamp)
        return _with_schema(_connect(path))


def _with_schema(conn: sqlite3.Connection) -> sqlite3.Connection:
    for statement in SCHEMA:
        conn.execute(statement)
    return conn


class ResultStore:
    """Invocation records on disk, by id, for the retention; see the module docstring."""

    def __init__(self, path: Path | str, *, retention_s: float, max_bytes: int,
                 batch_delay_s: float = 0.02, expire_interval_s: float = 10.0,
                 expire_batch: int = 5_000,
                 wall_ns: Callable[[], int] = time.time_ns) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retention_ns = int(retention_s * NS_PER_S)
        self.max_bytes = max_bytes
        self.batch_delay_s = batch_delay_s
        self.expire_interval_s = expire_interval_s
        self.expire_batch = expire_batch
        self._wall_ns = wall_ns
        self._conn = _open_or_set_aside(self.path)  # the writer thread's
        self._reader = _connect(self.path)
        self._read_lock = threading.Lock()
        self._cond = threading.Condition()  # guards the fields below
        self._staged: dict[str, _Staged] = {}
        self._committing: dict[str, _Staged] = {}
        self._put_seq = 0  # rows put so far
        self._done_seq = 0  # rows committed (or dropped by a failed commit)
        self._stopping = False
        self._expire_now = False
        self._hurry = False  # flush() waits: commit without the batch delay
        self.stats = {"committed": 0, "commits": 0, "commit_failures": 0, "expired": 0,
                      "bounded": 0}
        self._thread = threading.Thread(target=self._run, name=f"results:{self.path.parent.name}",
                                         daemon=True)
        self._thread.start()

    # -- the event loop's side -----------------------------------------------

    def put_many(self, rows: Iterable[Row]) -> None:
        """Stage rows (a record, or None to delete); the writer commits them soon.

        The records are encoded here, on the caller's thread: the writer thread
        then runs only SQLite, which lets go of the GIL. Encoding there, in
        Python, held the GIL in bursts that the event loop thread waited out
        (up to the interpreter's 5 ms switch interval: its p99 wake-up latency
        went from 0.27 to 4 ms in a test of the pattern)."""
        staged: list[tuple[str, _Staged]] = []
        for invocation_id, value in rows:
            if value is None:
                staged.append((invocation_id, None))
                continue
            wall_ns, record = value
            blob = to_cbor(record)
            staged.append((invocation_id,
                           (wall_ns, record, blob, row_checksum(invocation_id, wall_ns, blob))))
        with self._cond:
            for invocation_id, row in staged:
                self._staged[invocation_id] = row
                self._put_seq += 1
            self._cond.notify()

    def put_writes(self, writes: Sequence[Write]) -> None:
        """``m.results`` writes of the core, as rows (a malformed value is skipped)."""
        rows: list[Row] = []
        for w in writes:
            value = None if w.value is None else stored_result(w.value)
            if isinstance(w.key, str) and (w.value is None or value is not None):
                rows.append((w.key, value))
        self.put_many(rows)

    def get(self, invocation_id: str) -> StoredResult | None:
        """The stored record of ``invocation_id`` (blocking: call it in a worker thread)."""
        with self._cond:
            for pending in (self._staged, self._committing):
                if invocation_id in pending:
                    row = pending[invocation_id]
                    return None if row is None else (row[0], row[1])
        with self._read_lock:
            row = self._reader.execute(
                "SELECT stored_wall_ns, record, checksum FROM results WHERE id=?",
                (invocation_id,)).fetchone()
        return None if row is None else self._decode(invocation_id, *row)

    def _decode(self, invocation_id: str, wall_ns: Any, blob: Any, check: Any) -> StoredResult | None:
        if not isinstance(blob, bytes) or row_checksum(invocation_id, wall_ns, blob) != check:
            log.warning("result record %s fails its checksum: treated as absent", invocation_id)
            return None
        try:
            record = from_cbor(blob)
        except DecodeError:
            return None
        return (wall_ns, record) if isinstance(record, proto.InvocationRecord) else None

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until every row put so far is committed; False on timeout."""
        with self._cond:
            target = self._put_seq
            self._hurry = True
            self._cond.notify()
            return self._cond.wait_for(lambda: self._done_seq >= target, timeout_s)

    def expire_now(self) -> None:
        """Ask the writer for an expiry pass at once (tests, operators)."""
        with self._cond:
            self._expire_now = True
            self._cond.notify()

    def close(self) -> None:
        """Commit what is staged, stop the writer, close both connections."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()
        with self._read_lock:
            self._reader.close()
        self._conn.close()

    # -- the writer thread ------------------------------------------------------

    def _run(self) -> None:
        next_expiry = time.monotonic() + self.expire_interval_s
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._staged or self._stopping or self._expire_now,
                                    max(0.0, next_expiry - time.monotonic()))
                if self._staged and self.batch_delay_s:  # let more rows join this commit
                    self._cond.wait_for(lambda: self._stopping or self._hurry, self.batch_delay_s)
                self._hurry = False
                stopping = self._stopping
            self._commit_staged()
            if stopping:
                return
            if self._expire_now or time.monotonic() >= next_expiry:
                self._expire_now = False
                self.expire()
                next_expiry = time.monotonic() + self.expire_interval_s

    def _commit_staged(self) -> None:
        with self._cond:
            self._committing, self._staged = self._staged, {}
            count = self._put_seq - self._done_seq
        try:
            if self._committing:
                self._commit(self._committing)
                self.stats["committed"] += len(self._committing)
                self.stats["commits"] += 1
        except sqlite3.Error as exc:
            self.stats["commit_failures"] += 1
            log.error("the result store %s could not commit %d records (%s): they are lost",
                      self.path, len(self._committing), exc)
        finally:
            with self._cond:
                self._committing = {}
                self._done_seq += count
                self._cond.notify_all()

    def _commit(self, rows: Mapping[str, _Staged]) -> None:
        inserts, deletes = [], []
        for invocation_id, row in rows.items():
            if row is None:
                deletes.append((invocation_id,))
            else:
                inserts.append((invocation_id, row[0], row[2], row[3]))
        cur = self._conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.executemany("DELETE FROM results WHERE id=?", deletes)
            cur.executemany("INSERT OR REPLACE INTO results (id, stored_wall_ns, record, checksum) "
                            "VALUES (?, ?, ?, ?)", inserts)
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # -- expiry and the size bound ----------------------------------------------

    def expire(self) -> int:
        """Delete what is older than the retention, then enforce the size bound."""
        try:
            expired = self._delete_older_than(self._wall_ns() - self.retention_ns)
            self.stats["expired"] += expired
            self._bound_size()
        except sqlite3.Error as exc:
            log.error("result store %s: expiry failed (%s); the next pass retries", self.path, exc)
            return 0
        return expired

    def _delete_batch(self, where: str, args: tuple[Any, ...]) -> int:
        cur = self._conn.execute(
            f"DELETE FROM results WHERE seq IN (SELECT seq FROM results {where} "
            f"ORDER BY stored_wall_ns LIMIT ?)", (*args, self.expire_batch))
        return cur.rowcount

    def _delete_older_than(self, horizon_ns: int) -> int:
        total = 0
        while True:
            deleted = self._delete_batch("WHERE stored_wall_ns < ?", (horizon_ns,))
            total += deleted
            if deleted < self.expire_batch or self._stopping:
                return total
            self._commit_staged()  # writes wait one batch at most

    def used_bytes(self) -> int:
        """Bytes of the file's pages in use (free pages excluded)."""
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _bound_size(self) -> None:
        used = self.used_bytes()
        if used <= self.max_bytes:
            return
        dropped, newest_ns = 0, 0
        while used > self.max_bytes * BOUND_TARGET and not self._stopping:
            row = self._conn.execute(
                "SELECT max(stored_wall_ns) FROM (SELECT stored_wall_ns FROM results "
                "ORDER BY stored_wall_ns LIMIT ?)", (self.expire_batch,)).fetchone()
            deleted = self._delete_batch("", ())
            if not deleted:
                break
            dropped += deleted
            newest_ns = max(newest_ns, int(row[0] or 0))
            used = self.used_bytes()
            self._commit_staged()
        self.stats["bounded"] += dropped
        age_s = (self._wall_ns() - newest_ns) / NS_PER_S
        log.warning("result store %s is over its size bound of %.1f MB: deleted the %d oldest "
                    "records, the youngest of them stored %.0f s ago (retention %.0f s); records "
                    "the retention would keep are being lost: raise --result-max-mb or shorten "
                    "--result-retention", self.path, self.max_bytes / 2**20, dropped, age_s,
                    self.retention_ns / NS_PER_S)


# ---------------------------------------------------------------------------
# The DurableStore the driver sees
# ---------------------------------------------------------------------------


class SplitStore:
    """``m.results`` writes to the :class:`ResultStore`, every other table to ``main``.

    ``sync`` syncs ``main`` only: result rows have the result store's own
    schedule and sync level (see the module docstring), and ``load`` returns
    ``main``'s records, so the results are never loaded at start.
    """

    def __init__(self, main: SqliteStore, results: ResultStore) -> None:
        self.main = main
        self.results = results

    def write(self, writes: Sequence[Write]) -> None:
        ours = [w for w in writes if w.table == RESULTS_TABLE]
        if ours:
            self.results.put_writes(ours)
            writes = [w for w in writes if w.table != RESULTS_TABLE]
        if writes:
            self.main.write(writes)

    def has_staged(self) -> bool:
        """Whether ``main`` has anything to sync (result rows never need the driver's)."""
        return self.main.has_staged()

    def sync(self) -> None:
        self.main.sync()

    def load(self) -> Mapping[str, Mapping[Hashable, Any]]:
        tables = self.main.load()
        return {t: rows for t, rows in tables.items() if t != RESULTS_TABLE}


def move_legacy_results(main: SqliteStore, tables: dict[str, dict[Any, Any]],
                        results: ResultStore) -> int:
    """Records an older version kept in node.db's ``m.results``: moved to the result
    store (once: they are deleted from node.db) and taken out of ``tables``."""
    legacy = tables.pop(RESULTS_TABLE, {})
    if not legacy:
        return 0
    rows = [(k, stored_result(v)) for k, v in legacy.items() if isinstance(k, str)]
    results.put_many((k, v) for k, v in rows if v is not None)
    results.flush()
    main.write([Write(table=RESULTS_TABLE, key=k, value=None) for k in legacy])
    main.sync()
    log.info("moved %d result records from node.db to %s", len(legacy), results.path)
    return len(legacy)
