"""The bootstrap compiled once per runtime by that runtime (sandbox/precompile.py)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import attrs
import pytest

from sandbox.executor import BOOTSTRAP_FILE, Executor, FunctionSpec
from sandbox.precompile import PrecompileError, compile_bootstrap, link_tree
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


APP = '''import os


def where(event, context):
    return [__file__, __cached__, os.path.exists(__cached__)]


def fail(event, context):
    raise ValueError("from compiled code")
'''


def _code_tree(root: Path, secret_file: Path) -> Path:
    code = root / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "app.py").write_text(APP)
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "mod.py").write_text("VALUE = 1\n")
    (code / "private.py").write_text("KEY = 'not world-readable'\n")
    (code / "private.py").chmod(0o600)
    secret_file.write_text("SECRET = 'root only'\n")
    secret_file.chmod(0o600)
    (code / "leak.py").symlink_to(secret_file)
    for folder in (code, code / "pkg"):
        folder.chmod(0o755)
    for name in ("app.py", "pkg/__init__.py", "pkg/mod.py"):
        (code / name).chmod(0o644)
    return code


async def test_function_code_is_compiled_once_and_served_as_bytecode(
        executor: Executor, tmp_path: Path, default_runtime: str) -> None:
    code = _code_tree(tmp_path, tmp_path / "root-only.py")
    fn = FunctionSpec(name="compiled", handler="app.where", code_dir=str(code), runtime=default_runtime)
    compiled = await executor.compile_code(fn)
    assert compiled is not None and Path(compiled) != code
    pycs = sorted(str(p.relative_to(compiled)) for p in Path(compiled).rglob("*.pyc"))
    tag = pycs[0].split(".")[1]  # the runtime's cache tag, e.g. cpython-311
    # only regular world-readable files: never the private file, never through the symlink
    assert pycs == [f"__pycache__/app.{tag}.pyc", f"pkg/__pycache__/__init__.{tag}.pyc",
                    f"pkg/__pycache__/mod.{tag}.pyc"]
    assert await executor.compile_code(fn) == compiled  # built once
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "ok", res.error
    assert json.loads(res.result or b"") == ["/var/task/app.py", f"/var/task/__pycache__/app.{tag}.pyc", True]
    failing = attrs.evolve(fn, handler="app.fail")
    res = await executor.invoke(failing, "1", b"{}", "r2")
    assert res.error is not None
    frame = res.error["stackTrace"][-1]
    assert 'File "/var/task/app.py", line 9, in fail' in frame and 'raise ValueError' in frame


async def test_code_that_does_not_compile_still_runs_uncompiled_where_it_can(
        executor: Executor, tmp_path: Path, default_runtime: str) -> None:
    code = tmp_path / "code"
    code.mkdir(mode=0o755)
    (code / "app.py").write_text("def handler(event, context):\n    return 'ok'\n")
    (code / "broken.py").write_text("def f(:\n")
    for path in code.iterdir():
        path.chmod(0o644)
    fn = FunctionSpec(name="half", handler="app.handler", code_dir=str(code), runtime=default_runtime)
    compiled = await executor.compile_code(fn)
    assert compiled is not None and len(list(Path(compiled).rglob("*.pyc"))) == 1  # app.py only
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "ok" and res.result == b'"ok"'


async def test_a_pycache_symlink_in_the_code_cannot_redirect_the_compiler(
        executor: Executor, tmp_path: Path, default_runtime: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True, mode=0o755)
    code.chmod(0o755)
    (code / "app.py").write_text("def handler(event, context):\n    return 1\n")
    (code / "pkg" / "mod.py").write_text("X = 1\n")
    (code / "__pycache__").symlink_to(outside)  # the compiler must not write through this
    (code / "pkg" / "__pycache__").write_text("not a folder")
    for path in (code / "app.py", code / "pkg" / "mod.py"):
        path.chmod(0o644)
    fn = FunctionSpec(name="redirect", handler="app.handler", code_dir=str(code), runtime=default_runtime)
    compiled = await executor.compile_code(fn)
    assert compiled is not None
    assert list(outside.iterdir()) == []
    for folder in (Path(compiled), Path(compiled) / "pkg"):
        cache = folder / "__pycache__"
        assert cache.is_dir() and not cache.is_symlink() and len(list(cache.iterdir())) == 1
    assert (code / "__pycache__").is_symlink()  # the code itself is untouched
    assert (code / "pkg" / "__pycache__").read_text() == "not a folder"
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "ok" and res.result == b"1"


def test_link_tree_folders_are_traversable_whatever_the_umask(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "sub").mkdir(parents=True)
    (src / "pkg" / "sub" / "m.py").write_text("")
    old = os.umask(0o077)
    try:
        link_tree(src, tmp_path / "dst")
    finally:
        os.umask(old)
    for folder in ("", "pkg", "pkg/sub"):
        assert stat.S_IMODE((tmp_path / "dst" / folder).stat().st_mode) == 0o755
