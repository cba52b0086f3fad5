"""The node's result store (DATA/results.db): records by id on disk, expiry by age,
a size bound, damage, and the SplitStore the driver writes through."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from meshfaas.core import client_proto as proto
from meshfaas.core.results import RESULTS_TABLE
from meshfaas.core.types import NS_PER_S, Write
from meshfaas.runtime.results import ResultStore, SplitStore, move_legacy_results
from meshfaas.runtime.store import SqliteStore

NOW_NS = 1_800_000_000 * NS_PER_S
Opener = Callable[..., ResultStore]


class WallClock:
    def __init__(self) -> None:
        self.now_ns = NOW_NS

    def __call__(self) -> int:
        return self.now_ns


def record(invocation_id: str, payload: bytes = b'{"ok":true}') -> proto.InvocationRecord:
    return proto.InvocationRecord(invocation_id=invocation_id, function="f", status="succeeded",
                                  node="n1", duration_ns=1_500_000, billed_duration_ms=2,
                                  memory_mb=128, max_memory_used_mb=40, cold_start=True,
                                  log_tail="START\nEND\n", payload=payload)


@pytest.fixture
def clock() -> WallClock:
    return WallClock()


@pytest.fixture
def open_store(tmp_path: Path, clock: WallClock) -> Iterator[Opener]:
    opened: list[ResultStore] = []

    def make(**kwargs: object) -> ResultStore:
        options: dict[str, object] = {"retention_s": 60.0, "max_bytes": 2**30,
                                      "batch_delay_s": 0.0, "expire_interval_s": 3600.0,
                                      "wall_ns": clock}
        options.update(kwargs)
        store = ResultStore(tmp_path / "results.db", **options)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        if store._thread.is_alive():
            store.close()


def test_a_record_is_read_back_by_id_staged_committed_and_after_a_reopen(open_store: Opener) -> None:
    store = open_store(batch_delay_s=3600.0)  # nothing commits on its own
    store.put_many([("n1~01", (NOW_NS, record("n1~01")))])
    assert store.get("n1~01") == (NOW_NS, record("n1~01"))  # staged rows are visible
    assert store.get("n1~02") is None
    store.close()  # commits what is staged
    again = open_store()
    assert again.get("n1~01") == (NOW_NS, record("n1~01"))


def test_a_record_is_read_after_twenty_thousand_newer_ones(open_store: Opener) -> None:
    store = open_store()
    store.put_many([("n1~first", (NOW_NS, record("n1~first")))])
    for batch in range(20):
        store.put_many((f"n1~{batch}-{i}", (NOW_NS + i, record(f"n1~{batch}-{i}")))
                       for i in range(1_000))
    assert store.flush()
    assert store.get("n1~first") == (NOW_NS, record("n1~first"))
    assert store.stats["committed"] == 20_001


def test_expiry_deletes_what_is_older_than_the_retention_in_batches(open_store: Opener,
                                                                    clock: WallClock) -> None:
    store = open_store(expire_batch=100)
    old = [(f"n1~old{i}", (NOW_NS - 61 * NS_PER_S, record(f"n1~old{i}"))) for i in range(250)]
    young = [(f"n1~young{i}", (NOW_NS - 59 * NS_PER_S, record(f"n1~young{i}"))) for i in range(5)]
    store.put_many(old + young)
    assert store.flush()
    store.close()  # expire() runs on the writer's connection: drive it here, alone
    store = open_store(expire_batch=100)
    assert store.expire() == 250
    assert all(store.get(k) is None for k, _ in old)
    assert all(store.get(k) == v for k, v in young)
    clock.now_ns += 2 * NS_PER_S
    assert store.expire() == 5


def test_the_size_bound_deletes_the_oldest_and_says_so(open_store: Opener,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(max_bytes=256 * 1024, expire_batch=20)
    rows = [(f"n1~{i:04d}", (NOW_NS - (500 - i) * 10**6, record(f"n1~{i:04d}", b"x" * 2000)))
            for i in range(500)]
    store.put_many(rows)
    assert store.flush()
    store.close()
    store = open_store(max_bytes=256 * 1024, expire_batch=20)
    assert store.used_bytes() > 256 * 1024
    with caplog.at_level(logging.WARNING, logger="meshfaas.results"):
        assert store.expire() == 0  # nothing is older than the retention
    assert store.used_bytes() <= 0.9 * 256 * 1024
    assert store.get(rows[0][0]) is None and store.get(rows[-1][0]) == rows[-1][1]
    assert store.stats["bounded"] > 0
    assert "over its size bound of 0.2 MB" in caplog.text and "--result-max-mb" in caplog.text


def test_a_damaged_file_is_set_aside_and_a_new_store_started(tmp_path: Path, open_store: Opener,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "results.db").write_bytes(b"this is not a database" * 1000)
    store = open_store()
    assert "is damaged" in caplog.text
    assert list(tmp_path.glob("results.db.damaged-*"))
    store.put_many([("n1~01", (NOW_NS, record("n1~01")))])
    assert store.flush() and store.get("n1~01") is not None


def test_a_row_that_fails_its_checksum_reads_as_absent(tmp_path: Path, open_store: Opener) -> None:
    store = open_store()
    store.put_many([("n1~01", (NOW_NS, record("n1~01"))), ("n1~02", (NOW_NS, record("n1~02")))])
    assert store.flush()
    conn = sqlite3.connect(tmp_path / "results.db")
    conn.execute("UPDATE results SET stored_wall_ns = stored_wall_ns + 1 WHERE id='n1~01'")
    conn.commit()
    conn.close()
    assert store.get("n1~01") is None
    assert store.get("n1~02") == (NOW_NS, record("n1~02"))


def test_the_split_store_sends_results_to_the_result_store_only(tmp_path: Path,
                                                                open_store: Opener) -> None:
    main = SqliteStore(tmp_path / "node.db")
    results = open_store()
    split = SplitStore(main, results)
    split.write([Write(table="m.meta", key="boots", value=1),
                 Write(table=RESULTS_TABLE, key="n1~01", value=(NOW_NS, record("n1~01")))])
    split.sync()
    assert results.flush()
    assert split.load() == {"m.meta": {"boots": 1}}
    assert results.get("n1~01") == (NOW_NS, record("n1~01"))
    split.write([Write(table=RESULTS_TABLE, key="n1~01", value=None)])  # a delete
    assert results.flush() and results.get("n1~01") is None
    main.close()


def test_records_an_older_version_kept_in_node_db_move_to_the_result_store(
        tmp_path: Path, open_store: Opener) -> None:
    main = SqliteStore(tmp_path / "node.db")
    main.write([Write(table=RESULTS_TABLE, key=f"n1~{i}", value=(NOW_NS, record(f"n1~{i}")))
                for i in range(3)] + [Write(table="m.meta", key="boots", value=4)])
    main.sync()
    tables = {t: dict(rows) for t, rows in main.load().items()}
    results = open_store()
    assert move_legacy_results(main, tables, results) == 3
    assert RESULTS_TABLE not in tables and tables["m.meta"] == {"boots": 4}
    assert RESULTS_TABLE not in main.load()  # gone from node.db for good
    assert results.get("n1~2") == (NOW_NS, record("n1~2"))
    assert move_legacy_results(main, tables, results) == 0
    main.close()


def test_close_and_flush_do_not_wait_out_the_batch_delay(open_store: Opener) -> None:
    store = open_store(batch_delay_s=3600.0)
    store.put_many([("n1~01", (NOW_NS, record("n1~01")))])
    assert store.flush(timeout_s=30)  # the writer commits at once for a flush
    store.put_many([("n1~02", (NOW_NS, record("n1~02")))])
    store.close()  # and for a close, even while it waits for company
    again = open_store()
    assert again.get("n1~02") == (NOW_NS, record("n1~02"))
    assert again.stats["committed"] == 0  # read from disk, not staged
