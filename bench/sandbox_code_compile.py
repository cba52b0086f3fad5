"""Cold start of a handler with a lot of its own code: compiled on the host or not.

    .venv/bin/python bench/sandbox_code_compile.py [--runs 15] [--trivial]

Two functions with the same code: a handler module importing copies of the
stdlib's argparse.py and gettext.py (about 3,500 lines) placed in its code
folder. One is served from the executor's compiled copy
(``Executor.compile_code``, sandbox/precompile.py), the other from its
folder as is (its compile is switched off), so each of its cold starts
compiles the modules inside the jail. Each run is a cold start that claims a
spare jail (the path a prepared function takes), alternating between the two.
``--trivial``: the imported module is one line instead (the handler is two
small modules).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec
from sandbox.runtimes import discover_runtimes


def code_folder(root: Path, name: str, trivial: bool) -> Path:
    code = root / name
    code.mkdir(mode=0o755)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    if trivial:
        (code / "big.py").write_text("X = 1\n")
    else:
        shutil.copy(stdlib / "argparse.py", code / "big.py")
        shutil.copy(stdlib / "gettext.py", code / "gettext.py")
    (code / "app.py").write_text("import big\n\n\ndef handler(event, context):\n    return event\n")
    for path in code.iterdir():
        path.chmod(0o644)
    return code


async def main(runs: int, trivial: bool) -> None:
    runtimes = discover_runtimes()
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)
        fns = {name: FunctionSpec(name=name, handler="app.handler", runtime="python3.11",
                                  code_dir=str(code_folder(Path(tmp), name, trivial)))
               for name in ("as is", "compiled")}
        config = ExecutorConfig(data_dir=f"{tmp}/data", uid_base=287_000, max_sandboxes=16)
        async with Executor(config, runtimes=runtimes) as ex:
            await ex.compile_code(fns["compiled"])
            want = ex._want_compiled
            ex._want_compiled = lambda fn: None if fn.name == "as is" else want(fn)  # type: ignore[method-assign]
            times: dict[str, list[float]] = {name: [] for name in fns}
            for i in range(runs):
                for name, fn in fns.items():
                    ex.prepare(fn)
                    await ex.wait_for_spares()
                    start = time.perf_counter()
                    res = await ex.invoke(fn, f"v{i}", b"1", f"r{i}")
                    times[name].append((time.perf_counter() - start) * 1000)
                    assert res.status == "ok" and res.cold_start, res
                    await ex.forget(fn)
    print(f"load average {os.getloadavg()[0]:.1f}; cold start (spare jail claimed), n={runs} each:")
    for name, values in times.items():
        ordered = sorted(values)
        print(f"  code {name}: p50 {statistics.median(values):.1f} ms, max {ordered[-1]:.1f} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--trivial", action="store_true")
    args = parser.parse_args()
    trio.run(main, args.runs, args.trivial)
