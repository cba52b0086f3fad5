"""The bootstrap, compiled once per runtime, so no cold start compiles it.

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
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
from pathlib import Path

from sandbox.runtimes import Runtime
from sandbox.spec import BOOTSTRAP_PATH

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


def compile_bootstrap(runtime: Runtime, source_file: Path, folder: Path) -> Path:
    """The runtime's compiled bootstrap under ``folder`` (built if missing).
    Blocking (a subprocess the first time): call it from a thread. Raises
    PrecompileError."""
    source = source_file.read_bytes()
    target = folder / bootstrap_pyc_name(runtime, source)
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        done = subprocess.run(
            [runtime.executable, "-I", "-S", "-c", COMPILE, str(source_file), str(partial), BOOTSTRAP_PATH],
            capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise PrecompileError(f"{runtime.executable} could not compile the bootstrap: "
                                  f"{done.stderr.strip()[-500:]}")
        os.chmod(partial, 0o644)
        os.replace(partial, target)
    except (OSError, subprocess.SubprocessError) as exc:
        raise PrecompileError(f"{runtime.executable} could not compile the bootstrap: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target
