"""Bytecode compiled once on the host, so no cold start compiles Python source.

The bootstrap
-------------

Python never caches the bytecode of the script named on its command line:
running ``bootstrap.py`` made every cold start compile the file first (8 to
15 ms on the 2-core test machine). The executor runs a ``.pyc`` instead,
which Python executes directly when named on the command line. The bytecode
format differs between 3.11, 3.12 and 3.13, so each runtime's own interpreter
compiles it, once per node: ``<folder>/<runtime>-<hash>.pyc``, the hash
covering the source, the interpreter path and its version (a changed
bootstrap or interpreter gets a new file; nothing is ever invalidated in
place). The file is written under a temporary name and renamed, so a
concurrent executor sees it whole or not at all; it is world-readable, as the
jailed uid is "other".

The code objects carry the in-jail source path
(``/opt/meshfaas/bootstrap.py``) as their file name, the one the bootstrap
compares traceback frames with to hide its own. If compiling fails (an odd
interpreter), the caller runs the source as before.

The function's code
-------------------
The jail's /var/task is read-only, so Python compiled the handler's modules on
every cold start and could not cache them (a 2,600-line module: 26 ms to
compile, 0.3 ms to load as bytecode, here). :func:`compile_code_tree` builds,
once per code folder and runtime, ``<folder>/<runtime>-<hash of the code
path>/``: a hard-linked copy of the code (:func:`link_tree`: regular files
only, symlinks recreated, never followed) with ``__pycache__/*.pyc`` compiled
by the runtime's interpreter as unchecked-hash pycs (the code folder is
immutable: content-addressed) whose file names are the in-jail paths
(``/var/task/...``), so tracebacks read as before. Only regular, world-readable
``.py`` files are compiled -- exactly what the jailed uid ("other") can read
itself -- so a pyc never carries the constants of a file the function could
not read (a symlink to a root-only file is not followed). The executor mounts
(or, for a spare, links) that copy instead of the code folder once it exists;
until then, or if compiling fails, the code folder is used as before.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

from sandbox.runtimes import Runtime
from sandbox.spec import BOOTSTRAP_PATH, TASK_ROOT

COMPILE = (
    "import py_compile, sys; "
    "py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile=sys.argv[3], doraise=True)"
)
COMPILE_TIMEOUT_S = 60


class PrecompileError(Exception):
    pass


def bootstrap_pyc_name(runtime: Runtime, source: bytes) -> str:
    digest = hashlib.sha256(b"\0".join([source, runtime.executable.encode(),
                                         runtime.version.encode()])).hexdigest()[:20]
    return f"{runtime.name}-{digest}.pyc"


def _partial(folder: Path, target: Path) -> Path:
    """A private name beside ``target`` to build it under before the atomic move."""
    return folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _run_compiler(runtime: Runtime, script_and_args: list[str], what: str) -> None:
    """Run ``python -I -S -c SCRIPT ARGS...`` of ``runtime``; PrecompileError if it fails
    (a failure to start or a timeout raises subprocess's own errors to the caller)."""
    done = subprocess.run([runtime.executable, "-I", "-S", "-c", *script_and_args],
                          capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise PrecompileError(f"{runtime.executable} could not compile {what}: "
                              f"{done.stderr.strip()[-500:]}")


def compile_bootstrap(runtime: Runtime, source_file: Path, folder: Path) -> Path:
    """The runtime's compiled bootstrap under ``folder`` (built if missing).
    Blocking (a subprocess the first time): call it from a thread. Raises
    PrecompileError."""
    source = source_file.read_bytes()
    target = folder / bootstrap_pyc_name(runtime, source)
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = _partial(folder, target)
    try:
        _run_compiler(runtime, [COMPILE, str(source_file), str(partial), BOOTSTRAP_PATH],
                      "the bootstrap")
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PrecompileError(f"{runtime.executable} could not compile the bootstrap: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


COMPILE_TREE = """
import importlib.util, os, py_compile, stat, sys
root, shown = sys.argv[1], sys.argv[2]
os.umask(0o022)
for folder, dirs, files in os.walk(root):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    for name in sorted(files):
        path = os.path.join(folder, name)
        mode = os.lstat(path).st_mode
        if not name.endswith(".py") or not stat.S_ISREG(mode) or not mode & stat.S_IROTH:
            continue
        try:
            py_compile.compile(path, cfile=importlib.util.cache_from_source(path),
                               dfile=os.path.join(shown, os.path.relpath(path, root)), doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        except Exception as exc:
            print(f"{path}: {exc!r}", file=sys.stderr)
"""


def link_tree(src: Path, dst: Path) -> None:
    """Hard-link (or copy) a code tree; symlinks are recreated, never followed.
    Folders are 0755 whatever the umask (the jailed uid is "other")."""
    for folder, dirs, files in os.walk(src):
        target = dst / os.path.relpath(folder, src)
        target.mkdir(mode=0o755, exist_ok=True)
        os.chmod(target, 0o755)
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            source, dest = os.path.join(folder, name), target / name
            if os.path.islink(source):
                os.symlink(os.readlink(source), dest)
            elif not stat.S_ISREG(os.lstat(source).st_mode):
                continue  # FIFOs, sockets, devices: never part of a function's code
            else:
                try:
                    os.link(source, dest, follow_symlinks=False)
                except OSError:
                    shutil.copy2(source, dest, follow_symlinks=False)


def _drop_pycaches(root: Path) -> None:
    """Remove every ``__pycache__`` entry the code brought from our copy of it,
    before compiling as root: one that is a symlink would make the compiler
    write its pycs wherever it points. (Only our copy's links go, never the
    code's files.)"""
    for folder, dirs, files in os.walk(root):
        for name in [n for n in dirs + files if n == "__pycache__"]:
            path = Path(folder) / name
            if path.is_symlink() or not path.is_dir():
                path.unlink()
            else:
                shutil.rmtree(path)
        dirs[:] = [d for d in dirs if d != "__pycache__"]


def compiled_code_name(runtime: Runtime, code_dir: Path) -> str:
    return f"{runtime.name}-{hashlib.sha256(str(code_dir).encode()).hexdigest()[:24]}"


def compile_code_tree(runtime: Runtime, code_dir: Path, folder: Path) -> Path:
    """The compiled copy of ``code_dir`` for ``runtime`` under ``folder`` (built
    if missing). Blocking: call it from a thread. Raises PrecompileError."""
    target = folder / compiled_code_name(runtime, code_dir)
    if target.is_dir():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = _partial(folder, target)
    try:
        link_tree(code_dir, partial)
        _drop_pycaches(partial)
        _run_compiler(runtime, [COMPILE_TREE, str(partial), TASK_ROOT], str(code_dir))
        os.chmod(partial, 0o755)
        os.rename(partial, target)
    except FileExistsError:  # (or OSError ENOTEMPTY) another executor finished first: use its copy
        pass
    except OSError as exc:
        if not target.is_dir():
            raise PrecompileError(f"could not build the compiled copy of {code_dir}: {exc}") from exc
    except subprocess.SubprocessError as exc:
        raise PrecompileError(f"{runtime.executable} could not compile {code_dir}: {exc}") from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target
