"""Sandbox benchmarks: cold start, warm invocation overhead, idle RSS.

    .venv/bin/python bench/sandbox_bench.py [--runtime python3.11] [--cold 60] [--warm 3000]

Prints a Markdown block for docs/benchmarks.md (section "Sandbox"). Every
figure comes from this run on this machine:

- bare: ``python3 -I -c pass`` spawned and waited for, the reference;
- cold (fresh jail): a new nsjail sandbox started, its handler imported and
  the first invocation answered (trivial handler), then killed outside the
  timing;
- cold (spare): the same through the executor when a pre-started spare jail
  of the same shape is waiting (the code is linked in and the handler
  imported on claim) -- what a node sees after its first cold start of a
  shape;
- warm: the host's call to a warm sandbox's trivial handler and back
  (``Executor.invoke``), p50 and p99, and the CPU each call costs the host
  process (all of it: trio included) and the jailed interpreter;
- RSS and PSS of an idle warm sandbox (the jailed interpreter, and nsjail's
  supervisor process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec
from sandbox.process import SandboxProcess
from sandbox.runtimes import discover_runtimes, pick

HANDLER = "def handler(event, context):\n    return event\n"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bare_starts(python: str, count: int) -> list[float]:
    out = []
    for _ in range(count):
        start = time.perf_counter()
        subprocess.run([python, "-I", "-c", "pass"], check=True)
        out.append((time.perf_counter() - start) * 1000)
    return out


async def fresh_cold_starts(ex: Executor, fn: FunctionSpec, count: int) -> list[float]:
    runtime = pick(ex.runtime_info(), fn.runtime)
    if hasattr(ex, "ensure_bootstrap"):  # (the precompiled bootstrap, as the executor uses)
        await ex.ensure_bootstrap(runtime)
    out = []
    for i in range(count):
        spec = ex._spec(fn, "1", runtime, ex.config.uid_base + ex.config.max_sandboxes - 1)
        sandbox = SandboxProcess(spec, ex.backend, tail_bytes=4096, max_result_bytes=1 << 20)
        start = time.perf_counter()
        await sandbox.start(10.0)
        outcome = await sandbox.invoke(request_id=f"c{i}", payload=b"1", timeout_s=5.0)
        out.append((time.perf_counter() - start) * 1000)
        assert outcome.status == "ok", outcome
        await sandbox.close_all()
    return out


async def spare_cold_starts(ex: Executor, fn: FunctionSpec, count: int) -> list[float]:
    out = []
    ex.prepare(fn)  # so the first claim finds a spare too
    for i in range(count):
        await ex.wait_for_spares()
        start = time.perf_counter()
        res = await ex.invoke(fn, f"v{i}", b"1", f"s{i}")
        out.append((time.perf_counter() - start) * 1000)
        assert res.status == "ok" and res.cold_start, res
        await ex.forget(fn, f"v{i}")
    return out


def cpu_ns(pid: int) -> int:
    """CPU time a process (its main thread) has used, from the scheduler's accounting."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


async def warm_calls(ex: Executor, fn: FunctionSpec, count: int) -> tuple[list[float], dict[str, float]]:
    """Round trips in us, and CPU per call in us: the host process, the jailed interpreter."""
    await ex.invoke(fn, "warm", b"1", "w")
    sandbox = ex._pool._idle[(fn.name, "warm", fn)][0].sandbox.sandbox
    jail_pid = sandbox.jail_pid()
    out = []
    host0, jail0 = time.process_time_ns(), cpu_ns(jail_pid)
    for i in range(count):
        start = time.perf_counter()
        res = await ex.invoke(fn, "warm", b"1", f"w{i}")
        out.append((time.perf_counter() - start) * 1e6)
        assert res.status == "ok" and not res.cold_start
    host1, jail1 = time.process_time_ns(), cpu_ns(jail_pid)
    return out, {"warm_host_cpu_us": (host1 - host0) / count / 1e3,
                 "warm_jail_cpu_us": (jail1 - jail0) / count / 1e3}


ECHO_CHILD = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
while True:
    data = os.read(r, 65536)
    if not data:
        break
    os.write(w, data)
"""


async def echo_floor(python: str, count: int) -> list[float]:
    """The floor under a warm call: an echo to a child interpreter over two pipes."""
    to_r, to_w = os.pipe()
    from_r, from_w = os.pipe()
    child = subprocess.Popen(
        [python, "-I", "-S", "-c", ECHO_CHILD, str(to_r), str(from_w)], pass_fds=(to_r, from_w)
    )
    os.close(to_r)
    os.close(from_w)
    out, back = trio.lowlevel.FdStream(to_w), trio.lowlevel.FdStream(from_r)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        await out.send_all(b"x" * 64)
        await back.receive_some(65536)
        times.append((time.perf_counter() - start) * 1e6)
    await out.aclose()
    await back.aclose()
    child.wait()
    return times


def memory_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
    return rss, pss


async def idle_memory(ex: Executor, fn: FunctionSpec, count: int) -> dict[str, float]:
    await ex.prewarm(fn, "mem", count=count)
    jailed, nsjail = [], []
    for slot in ex._pool._idle[(fn.name, "mem", fn)]:
        proc = (
            slot.sandbox.sandbox.process
            if hasattr(slot.sandbox, "sandbox")
            else slot.sandbox.process
        )
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        nsjail.append(memory_kb(proc.pid))
        jailed.append(memory_kb(int(children[0])))
    return {
        "jailed_rss_mb": statistics.mean(r for r, _ in jailed) / 1024,
        "jailed_pss_mb": statistics.mean(p for _, p in jailed) / 1024,
        "nsjail_rss_mb": statistics.mean(r for r, _ in nsjail) / 1024,
        "nsjail_pss_mb": statistics.mean(p for _, p in nsjail) / 1024,
        "count": count,
    }


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB, Linux {platform.release()}, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )


async def main(args: argparse.Namespace) -> dict[str, object]:
    runtimes = discover_runtimes()
    runtime = pick(runtimes, args.runtime)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "code"
        code.mkdir()
        (code / "app.py").write_text(HANDLER)
        os.chmod(code, 0o755)
        fn = FunctionSpec(
            name="bench", handler="app.handler", code_dir=str(code), runtime=runtime.name
        )
        config = ExecutorConfig(
            data_dir=str(Path(tmp) / "data"),
            max_sandboxes=32,
            max_per_function=16,
            uid_base=280_000,
            spares_per_shape=1,
        )
        async with Executor(config, runtimes=runtimes) as ex:
            bare = bare_starts(runtime.executable, args.cold)
            fresh = await fresh_cold_starts(ex, fn, args.cold)
            spare = await spare_cold_starts(ex, fn, args.cold)
            bare_after = bare_starts(runtime.executable, args.cold)
            warm, warm_cpu = await warm_calls(ex, fn, args.warm)
            echo = await echo_floor(runtime.executable, args.warm)
            memory = await idle_memory(ex, fn, 8)
    bare_all = bare + bare_after
    return {
        "machine": machine(),
        "runtime": f"{runtime.name} ({runtime.version}, {runtime.executable})",
        "bare_p50_ms": pct(bare_all, 0.5),
        "bare_p99_ms": pct(bare_all, 0.99),
        "fresh_p50_ms": pct(fresh, 0.5),
        "fresh_p99_ms": pct(fresh, 0.99),
        "spare_p50_ms": pct(spare, 0.5),
        "spare_p99_ms": pct(spare, 0.99),
        "warm_p50_us": pct(warm, 0.5),
        "warm_p99_us": pct(warm, 0.99),
        "echo_p50_us": pct(echo, 0.5),
        "echo_p99_us": pct(echo, 0.99),
        **warm_cpu,
        "cold_n": args.cold,
        "warm_n": args.warm,
        **memory,
    }


def markdown(r: dict[str, object]) -> str:
    f = {k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()}
    ratio_fresh = float(r["fresh_p50_ms"]) / float(r["bare_p50_ms"])  # type: ignore[arg-type]
    ratio_spare = float(r["spare_p50_ms"]) / float(r["bare_p50_ms"])  # type: ignore[arg-type]
    return "\n".join(
        [
            f"Machine: {f['machine']}. Runtime {f['runtime']}.",
            "",
            "| measure | p50 | p99 | vs bare p50 |",
            "|---|---|---|---|",
            f"| bare `python3 -I -c pass` (n={2 * int(r['cold_n'])}) | {f['bare_p50_ms']} ms | {f['bare_p99_ms']} ms | 1.00x |",  # type: ignore[call-overload]
            f"| cold start, fresh jail (n={f['cold_n']}) | {f['fresh_p50_ms']} ms | {f['fresh_p99_ms']} ms | {ratio_fresh:.2f}x |",
            f"| cold start, spare jail claimed (n={f['cold_n']}) | {f['spare_p50_ms']} ms | {f['spare_p99_ms']} ms | {ratio_spare:.2f}x |",
            f"| warm invocation, host round trip (n={f['warm_n']}) | {f['warm_p50_us']} us | {f['warm_p99_us']} us | |",
            f"| floor: pipe echo to a child interpreter (n={f['warm_n']}) | {f['echo_p50_us']} us | {f['echo_p99_us']} us | |",
            "",
            f"CPU per warm invocation (mean): host process {f['warm_host_cpu_us']} us, jailed interpreter {f['warm_jail_cpu_us']} us.",
            "",
            f"Idle warm sandbox memory (mean of {f['count']}): jailed interpreter RSS {f['jailed_rss_mb']} MB "
            f"(PSS {f['jailed_pss_mb']} MB); nsjail supervisor RSS {f['nsjail_rss_mb']} MB (PSS {f['nsjail_pss_mb']} MB).",
        ]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runtime", default="python3.11")
    parser.add_argument("--cold", type=int, default=60)
    parser.add_argument("--warm", type=int, default=3000)
    parser.add_argument("--json", action="store_true")
    result = trio.run(main, parser.parse_args())
    print(json.dumps(result, indent=1) if parser.parse_args().json else markdown(result))
