"""Hostile code: each test attacks from inside a sandbox, then checks that the
host (this test process) and another function's warm sandbox are unaffected,
and that no process of a killed sandbox is left behind.

Nothing here is ever aimed at a non-loopback address.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from sandbox_testlib import HANDLERS, processes_per_jail, sandbox_uid_processes, wait_until

from sandbox.executor import Executor, FunctionSpec

MakeFn = Callable[..., FunctionSpec]


@pytest.fixture
async def canary(executor: Executor, make_fn: MakeFn) -> FunctionSpec:
    """Another function, warm before the attack; it must still answer, warm, after it."""
    fn = make_fn("other_app.handler", folder="other", name="canary")
    assert await executor.prewarm(fn, "1") == 1
    return fn


async def assert_unaffected(executor: Executor, canary: FunctionSpec) -> None:
    res = await executor.invoke(canary, "1", b"{}", "canary-check")
    assert res.status == "ok", res.error
    assert json.loads(res.result or b"null") == "other-function-secret-code"
    assert not res.cold_start, "the other function's warm sandbox did not survive"
    # One process per live sandbox and nothing else: a killed sandbox leaves no stray process.
    assert await wait_until(lambda: len(sandbox_uid_processes()) == executor.stats()["live"]), (
        sandbox_uid_processes(), executor.stats())


async def run(executor: Executor, fn: FunctionSpec, event: Any) -> Any:
    return await executor.invoke(fn, "1", json.dumps(event).encode(), "attack")


def ok_json(res: Any) -> Any:
    assert res.status == "ok", (res.status, res.error, res.log_tail[-500:])
    return json.loads(res.result)


async def test_fork_bomb_is_capped_and_killed(executor: Executor, make_fn: MakeFn,
                                              canary: FunctionSpec) -> None:
    # 512 MB: 32 forked interpreters dirty their copy-on-write heaps, and at 128 MB the
    # memory cgroup sometimes killed the bomb before the timeout (an "oom" outcome).
    fn = make_fn("hostile.fork_bomb", folder="hostile", max_pids=32, timeout_ms=1500, memory_mb=512)
    peak = 0

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max([peak, *processes_per_jail().values()])
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        res = await run(executor, fn, {"seconds": 60})
        nursery.cancel_scope.cancel()
    assert res.status == "timeout"
    assert 2 < peak <= 32  # the bomb's processes, capped at max_pids
    await assert_unaffected(executor, canary)


async def test_memory_bomb_is_out_of_memory(executor: Executor, make_fn: MakeFn,
                                            canary: FunctionSpec) -> None:
    fn = make_fn("hostile.memory_bomb", folder="hostile", memory_mb=64)
    res = await run(executor, fn, {})
    assert res.status == "oom", (res.status, res.error)
    assert res.error is not None and res.error["errorType"] == "Runtime.OutOfMemory"
    assert "memory" in res.error["errorMessage"]
    assert executor.warm_functions() == {"canary:1": 1}  # the bombed sandbox is gone
    await assert_unaffected(executor, canary)


async def test_one_huge_allocation_is_out_of_memory(executor: Executor, make_fn: MakeFn,
                                                    canary: FunctionSpec) -> None:
    fn = make_fn("hostile.one_huge_allocation", folder="hostile", memory_mb=64)
    res = await run(executor, fn, {})
    assert res.status == "oom"
    assert res.error is not None and res.error["errorType"] == "Runtime.OutOfMemory"
    await assert_unaffected(executor, canary)


@pytest.mark.parametrize("handler", ["hostile.spin", "hostile.ignore_sigterm_and_hang"])
async def test_runaway_handler_is_killed_at_the_timeout(executor: Executor, make_fn: MakeFn,
                                                        canary: FunctionSpec, handler: str) -> None:
    fn = make_fn(handler, folder="hostile", timeout_ms=500)
    started = time.monotonic()
    res = await run(executor, fn, {})
    elapsed = time.monotonic() - started
    assert res.status == "timeout"
    assert res.error is not None and res.error["errorType"] == "Sandbox.Timedout"
    assert elapsed < 0.5 + 3.0
    await assert_unaffected(executor, canary)


async def test_filling_tmp_stops_at_its_size_and_tmp_is_private(executor: Executor, make_fn: MakeFn,
                                                                canary: FunctionSpec) -> None:
    fn = make_fn("hostile.fill_tmp", folder="hostile", tmp_size_mb=8)
    out = ok_json(await run(executor, fn, {}))
    assert out["errno"] in (errno.ENOSPC, errno.EFBIG)
    assert out["written"] <= 8 * 1024 * 1024
    assert not Path("/tmp/fill").exists()
    a = make_fn("hostile.tmp_marker", folder="hostile", name="marker-a")
    b = make_fn("hostile.tmp_marker", folder="hostile", name="marker-b")
    assert ok_json(await run(executor, a, {"tag": "a"})) == {"seen_before": False}
    assert ok_json(await run(executor, a, {"tag": "a"})) == {"seen_before": True}  # same warm sandbox
    assert ok_json(await run(executor, b, {"tag": "b"})) == {"seen_before": False}  # another function
    await assert_unaffected(executor, canary)


async def test_writing_outside_tmp_fails(executor: Executor, make_fn: MakeFn, canary: FunctionSpec,
                                         tmp_path: Path) -> None:
    host_file = tmp_path / "host-file"
    fn = make_fn("hostile.write_outside_tmp", folder="hostile")
    out = ok_json(await run(executor, fn, {"host_path": str(host_file)}))
    assert "written" not in out.values(), out
    assert not host_file.exists()
    assert not (HANDLERS / "hostile" / "evil.py").exists()
    await assert_unaffected(executor, canary)


async def test_network_is_only_its_own_loopback(executor: Executor, make_fn: MakeFn,
                                                canary: FunctionSpec) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        out = ok_json(await run(executor, make_fn("hostile.network", folder="hostile"), {"port": port}))
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody reached the host's listener
    assert out["connect"] == "ECONNREFUSED"
    assert out["interfaces"] == ["lo"]
    assert out["ipv4_routes"] == []
    assert out["ipv6_routes"] == []
    await assert_unaffected(executor, canary)


async def test_cannot_read_other_code_host_secrets_or_node_data(
        executor: Executor, make_fn: MakeFn, canary: FunctionSpec, config: Any) -> None:
    keys = Path(config.data_dir) / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    (keys / "node.key").write_text("node-private-key")
    paths = [str(HANDLERS / "other" / "other_app.py"), str(HANDLERS / "other"), "/etc/shadow",
             "/etc/passwd", "/root/.ssh", "/root/.bash_history", str(keys / "node.key"),
             config.data_dir, "/proc/1/root/etc/shadow", "/work", "/home", "/sys/fs/cgroup",
             "/var/task/../../etc/shadow"]
    out = ok_json(await run(executor, make_fn("hostile.read_files", folder="hostile"), {"paths": paths}))
    for path, outcome in out.items():
        assert outcome in ("ENOENT", "EACCES"), (path, outcome)
    listing = ok_json(await run(executor, make_fn("hostile.list_root", folder="hostile"), {}))
    allowed = {"bin", "dev", "lib", "lib64", "opt", "proc", "root", "tmp", "usr", "var"}
    assert set(listing["/"]) <= allowed, listing
    assert listing["/proc/1/root"] == listing["/"]  # pid 1 is the sandbox itself
    assert listing["/root"] in (None, [".pyenv"])  # at most the interpreter's mount point
    await assert_unaffected(executor, canary)


async def test_ptrace_mount_and_namespaces_are_denied(executor: Executor, make_fn: MakeFn,
                                                      canary: FunctionSpec) -> None:
    out = ok_json(await run(executor, make_fn("hostile.privileged", folder="hostile"), {}))
    for call, (ret, err) in out.items():
        assert ret == -1 and err in ("EPERM", "EACCES"), (call, ret, err)
    await assert_unaffected(executor, canary)


async def test_cannot_signal_processes_outside(executor: Executor, make_fn: MakeFn,
                                               canary: FunctionSpec) -> None:
    host_pids = [os.getpid(), os.getppid()]
    out = ok_json(await run(executor, make_fn("hostile.signal_outside", folder="hostile"),
                            {"pids": host_pids}))
    for pid in host_pids:
        assert out[str(pid)] == "ESRCH"
    await assert_unaffected(executor, canary)


async def test_printing_100_mb_costs_the_host_little(executor: Executor, make_fn: MakeFn,
                                                     canary: FunctionSpec) -> None:
    def rss_kb() -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    before = rss_kb()
    peak = before

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, rss_kb())
            await trio.sleep(0.01)

    fn = make_fn("hostile.flood", folder="hostile", timeout_ms=30_000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        res = await run(executor, fn, {"mb": 100})
        nursery.cancel_scope.cancel()
    assert ok_json(res) == "flooded"
    assert len(res.log_tail.encode()) <= 4096
    assert res.log_tail.rstrip().splitlines()[-1].startswith("REPORT RequestId: attack")
    assert peak - before < 32 * 1024, f"host RSS grew by {peak - before} kB"
    await assert_unaffected(executor, canary)


async def test_forged_result_frame_is_refused(executor: Executor, make_fn: MakeFn,
                                              canary: FunctionSpec) -> None:
    res = await run(executor, make_fn("hostile.forge_frame", folder="hostile", timeout_ms=5000), {})
    assert res.status == "crash"
    assert res.error is not None and "frame too large" in res.error["errorMessage"]
    await assert_unaffected(executor, canary)
