"""The bootstrap compiled once per runtime by that runtime (sandbox/precompile.py)."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from sandbox.executor import BOOTSTRAP_FILE
from sandbox.precompile import PrecompileError, compile_bootstrap
from sandbox.runtimes import Runtime
from sandbox.spec import NO_CGROUPS, SandboxSpec, render_nsjail_argv


def test_each_runtime_compiles_its_own_and_reuses_it(runtimes: dict[str, Runtime], tmp_path: Path) -> None:
    paths = {name: compile_bootstrap(rt, Path(BOOTSTRAP_FILE), tmp_path) for name, rt in runtimes.items()}
    assert len(set(paths.values())) == len(runtimes)  # bytecode differs per version: one file each
    for name, path in paths.items():
        assert path.name.startswith(name + "-") and path.suffix == ".pyc"
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the jailed uid is "other"
        mtime = path.stat().st_mtime_ns
        assert compile_bootstrap(runtimes[name], Path(BOOTSTRAP_FILE), tmp_path) == path
        assert path.stat().st_mtime_ns == mtime  # not rebuilt
        done = subprocess.run([runtimes[name].executable, "-I", "-S", str(path)], capture_output=True, text=True)
        assert done.returncode == 2 and "usage: bootstrap.py" in done.stderr  # it runs as a script
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_a_changed_source_gets_a_new_file(runtimes: dict[str, Runtime], tmp_path: Path) -> None:
    runtime = next(iter(runtimes.values()))
    source = tmp_path / "bootstrap.py"
    source.write_text("print(1)\n")
    first = compile_bootstrap(runtime, source, tmp_path / "out")
    source.write_text("print(2)\n")
    assert compile_bootstrap(runtime, source, tmp_path / "out") != first


def test_a_source_that_does_not_compile_is_an_error(runtimes: dict[str, Runtime], tmp_path: Path) -> None:
    source = tmp_path / "bootstrap.py"
    source.write_text("def f(:\n")
    with pytest.raises(PrecompileError, match="could not compile"):
        compile_bootstrap(next(iter(runtimes.values())), source, tmp_path / "out")


def test_a_precompiled_bootstrap_is_mounted_and_run_as_pyc() -> None:
    spec = SandboxSpec(interpreter="/usr/bin/python3.11", interpreter_prefix="/usr", code_dir="/code",
                       bootstrap_file="/data/bootstrap/python3.11-abc.pyc")
    argv = render_nsjail_argv(spec, nsjail_path="/nsjail", cgroups=NO_CGROUPS,
                              ctl_fds=(3, 4))
    assert "/data/bootstrap/python3.11-abc.pyc:/opt/meshfaas/bootstrap.pyc" in argv
    assert argv[-3:] == ["/opt/meshfaas/bootstrap.pyc", "3", "4"]
