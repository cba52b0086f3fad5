"""The benchmark load generator (bench/_loadgen.py) against in-process fake targets.

The generator is a script helper, not a package module, so it is loaded by path.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

_PATH = Path(__file__).resolve().parents[2] / "bench" / "_loadgen.py"
_spec = importlib.util.spec_from_file_location("bench_loadgen", _PATH)
assert _spec is not None and _spec.loader is not None
loadgen: Any = importlib.util.module_from_spec(_spec)
sys.modules["bench_loadgen"] = loadgen
_spec.loader.exec_module(loadgen)


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0], 50, 1.0),
        ([1.0, 2.0], 50, 1.0),
        ([1.0, 2.0, 3.0, 4.0], 50, 2.0),
        ([1.0, 2.0, 3.0, 4.0], 99, 4.0),
        ([float(i) for i in range(1, 101)], 99, 99.0),
        ([float(i) for i in range(1, 101)], 100, 100.0),
    ],
)
def test_percentile_is_nearest_rank(values: list[float], q: float, expected: float) -> None:
    assert loadgen.percentile(values, q) == expected


class FakeConnection:
    def __init__(self, target: FakeTarget) -> None:
        self.target = target

    async def put(self, key: bytes, value: bytes) -> None:
        await trio.sleep(self.target.service_s)  # simulated service time, not a wait
        if self.target.fail:
            raise RuntimeError("refused")
        self.target.keys.add(key)

    async def aclose(self) -> None:
        self.target.closed += 1


class FakeTarget:
    name = "fake"

    def __init__(self, service_s: float, fail: bool = False) -> None:
        self.service_s = service_s
        self.fail = fail
        self.keys: set[bytes] = set()
        self.closed = 0

    async def connect(self, client_index: int) -> FakeConnection:
        return FakeConnection(self)

    def server_pids(self) -> Sequence[int]:
        return [os.getpid()]


async def test_run_load_counts_puts_in_the_window() -> None:
    target = FakeTarget(service_s=0.002)
    result = await loadgen.run_load(target, 4, warmup_s=0.05, measure_s=0.3)
    assert result.target == "fake" and result.clients == 4 and result.errors == 0
    assert result.committed > 20  # 4 clients x 0.3 s / 2 ms = 600 at most
    assert result.puts_per_s == result.committed / 0.3
    assert 2.0 <= result.p50_ms <= result.p99_ms <= result.max_ms
    assert result.server_cpu_us_per_put is not None
    assert target.closed == 4
    assert {k.split(b"/")[1] for k in target.keys} == {b"0", b"1", b"2", b"3"}


async def test_run_load_counts_a_failing_target_as_errors() -> None:
    target = FakeTarget(service_s=0.001, fail=True)
    result = await loadgen.run_load(target, 2, warmup_s=0.0, measure_s=0.1)
    assert result.committed == 0 and result.errors > 0
    assert result.puts_per_s == 0.0
