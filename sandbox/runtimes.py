"""Python runtimes: finding the interpreters this node can run functions on.

A runtime is named like AWS Lambda's (``python3.12``) and backed by one
interpreter on the host: its executable, its prefix (mounted read-only into
every jail at the same path) and its exact version. :func:`discover_runtimes`
probes, in order, the interpreters the node is configured with, the system
``/usr/bin/python3.N`` and pyenv's ``~/.pyenv/versions/3.N.*`` (the newest
patch release per minor); the first interpreter found for a name wins.
Asking for a runtime the node does not have raises :class:`RuntimeMissing`,
whose message lists the ones it has.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from collections.abc import Iterable

import attrs

PROBE = "import sys, json; print(json.dumps([list(sys.version_info[:3]), sys.base_prefix]))"
DEFAULT_MINORS = (11, 12, 13)


class RuntimeMissing(LookupError):
    """The requested runtime is not on this node."""


@attrs.frozen(kw_only=True)
class Runtime:
    name: str
    """Lambda-style name, e.g. "python3.12"."""
    version: str
    """Exact version, e.g. "3.12.1"."""
    executable: str
    prefix: str


def probe_interpreter(executable: str, timeout_s: float = 10.0) -> Runtime | None:
    """Run the interpreter once to learn its version and prefix; None if it does not run."""
    try:
        out = subprocess.run([executable, "-I", "-c", PROBE], capture_output=True,
                             timeout=timeout_s, check=True, text=True).stdout
        (major, minor, micro), prefix = json.loads(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return Runtime(name=f"python{major}.{minor}", version=f"{major}.{minor}.{micro}",
                   executable=os.path.realpath(executable), prefix=os.path.realpath(prefix))


def _version_key(path: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in os.path.basename(path).split("."))
    except ValueError:
        return (-1,)


def candidate_interpreters(minors: Iterable[int] = DEFAULT_MINORS, pyenv_root: str | None = None) -> list[str]:
    """System and pyenv interpreters for the given 3.N minors, system first."""
    root = pyenv_root or os.path.expanduser("~/.pyenv")
    found: list[str] = []
    for minor in minors:
        found.append(f"/usr/bin/python3.{minor}")
        versions = [v for v in glob.glob(f"{root}/versions/3.{minor}.*") if _version_key(v) != (-1,)]
        for folder in sorted(versions, key=_version_key, reverse=True):
            found.append(f"{folder}/bin/python3.{minor}")
    return [path for path in found if os.access(path, os.X_OK)]


def discover_runtimes(configured: Iterable[str] = (), *, search: bool = True,
                      pyenv_root: str | None = None) -> dict[str, Runtime]:
    """Name -> Runtime for every interpreter found; configured ones take precedence."""
    runtimes: dict[str, Runtime] = {}
    paths = list(configured) + (candidate_interpreters(pyenv_root=pyenv_root) if search else [])
    for path in paths:
        runtime = probe_interpreter(path)
        if runtime is not None and runtime.name not in runtimes:
            runtimes[runtime.name] = runtime
    return dict(sorted(runtimes.items()))


def pick(runtimes: dict[str, Runtime], name: str) -> Runtime:
    try:
        return runtimes[name]
    except KeyError:
        have = ", ".join(sorted(runtimes)) or "none"
        raise RuntimeMissing(f"runtime {name!r} is not available on this node (it has: {have})") from None
