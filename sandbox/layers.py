"""Dependency layers: ``pip install --target`` once per node, shared, read-only.

A layer is named by its content address: sha256 over the normalized
requirements (one per line, stripped, comments and blank lines dropped,
deduplicated and sorted) and the runtime name. Every function asking for the
same set on the same runtime shares one folder ``<layers_root>/<layer_id>``,
mounted read-only at /opt/layer in its jails.

Installing runs the runtime's own pip, outside the jail, wheels only unless
the node allows source distributions (a build script would run on the host),
into a temporary
folder next to the final one, then renames it into place, so a reader never
sees half a layer. Two deploys racing for the same layer are serialized by an
``flock`` on ``<layer_id>.lock`` (across processes) and a trio lock (within
this one); the second finds the layer done. A failed install raises
:class:`LayerError` carrying pip's own message.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import trio

from sandbox.runtimes import Runtime

PIP_TIMEOUT_S = 600.0
MESSAGE_TAIL_CHARS = 4000


class LayerError(Exception):
    """A dependency layer could not be installed; the message carries pip's output."""


def normalize_requirements(requirements: str | Iterable[str]) -> list[str]:
    lines = requirements.splitlines() if isinstance(requirements, str) else list(requirements)
    cleaned = {line.split("#", 1)[0].strip() for line in lines}
    return sorted(line for line in cleaned if line)


_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?(?:\s*\[[A-Za-z0-9._,\s-]*\])?")
_SPECIFIER = re.compile(r"[\s<>=!~.,*+A-Za-z0-9]*")


def check_requirement(line: str) -> None:
    """Allow only name-based requirements: no pip options (``-r /etc/shadow``,
    ``--index-url``), no paths or URLs, no direct references (``name @ url``),
    as pip runs on the host and its messages go back to the deployer."""
    spec = line.split(";", 1)[0].strip()
    name = _NAME.match(spec)
    options = line.startswith("-") or " -" in line or "\t-" in line
    if options or name is None or not _SPECIFIER.fullmatch(spec[name.end():]):
        raise LayerError(f"requirement {line!r} is not allowed: use 'name[extras] <version spec>' "
                         "lines only (no pip options, paths, URLs or 'name @ url')")


def layer_id(requirements: str | Iterable[str], runtime_name: str) -> str:
    text = "\n".join(normalize_requirements(requirements)) + "\n--runtime " + runtime_name + "\n"
    return hashlib.sha256(text.encode()).hexdigest()


def _make_world_readable(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


def _pip_install(runtime: Runtime, requirements: list[str], target: Path, *,
                 allow_sdist: bool) -> None:
    req_file = target.with_suffix(".requirements.txt")
    req_file.write_text("\n".join(requirements) + "\n")
    # Bytecode is compiled here, by the runtime itself: the layer is read-only in the
    # jail, so without it every cold start would compile the dependencies again.
    argv = [runtime.executable, "-m", "pip", "install", "--target", str(target), "--no-input",
            "--disable-pip-version-check", "--no-warn-script-location", "-r", str(req_file)]
    if not allow_sdist:
        # pip runs as the node's user outside the jail: never run a package's build
        # scripts there. Wheels only; a package without one is a clear failure.
        argv.insert(4, "--only-binary=:all:")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, env=env)
    except subprocess.TimeoutExpired:
        raise LayerError(f"pip install timed out after {PIP_TIMEOUT_S:.0f} s") from None
    finally:
        req_file.unlink(missing_ok=True)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip())[-MESSAGE_TAIL_CHARS:]
        raise LayerError(f"pip install failed (exit {done.returncode}) for "
                         f"{', '.join(requirements)} on {runtime.name}: {output}")


def install_layer_blocking(root: Path, runtime: Runtime, requirements: list[str], lid: str,
                           allow_sdist: bool = False) -> Path:
    """Create the layer unless present; the caller holds no lock (this takes the flock)."""
    final = root / lid
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{lid}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".meshfaas-layer-ok").exists():
            return final
        staging = root / f"{lid}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            _pip_install(runtime, requirements, staging, allow_sdist=allow_sdist)
            (staging / ".meshfaas-layer-ok").write_text("\n".join(requirements) + "\n")
            _make_world_readable(staging)
            shutil.rmtree(final, ignore_errors=True)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return final


class LayerStore:
    """The node's layers folder: ``ensure`` returns the path of a ready layer."""

    def __init__(self, root: str | os.PathLike[str], *, allow_sdist: bool = False) -> None:
        self.root = Path(root)
        self.allow_sdist = allow_sdist
        self._locks: dict[str, trio.Lock] = {}

    def path_of(self, lid: str) -> Path | None:
        path = self.root / lid
        return path if (path / ".meshfaas-layer-ok").exists() else None

    async def ensure(self, requirements: str | Iterable[str], runtime: Runtime) -> tuple[str, Path]:
        reqs = normalize_requirements(requirements)
        for line in reqs:
            check_requirement(line)
        lid = layer_id(reqs, runtime.name)
        ready = self.path_of(lid)
        if ready is not None:
            return lid, ready
        lock = self._locks.setdefault(lid, trio.Lock())
        async with lock:
            path = await trio.to_thread.run_sync(install_layer_blocking, self.root, runtime, reqs,
                                                 lid, self.allow_sdist)
        return lid, path
