"""Finding which cgroup controllers this host delegates, and preparing them.

nsjail puts each jail in a fresh child cgroup (``NSJAIL.<pid>``) under a parent
that must already exist. :func:`plan_cgroups` looks at the host once and
answers a :class:`~sandbox.spec.CgroupPlan`:

- cgroup v2 (``cgroup.controllers`` at the mount root): a ``meshfaas`` folder
  under the mount with ``memory pids cpu`` enabled in its own and its parent's
  ``cgroup.subtree_control``;
- cgroup v1 (``memory`` and ``pids`` hierarchies mounted read-write): a
  ``meshfaas`` parent under the cgroup this process already lives in, per
  controller (so jails stay accounted inside whatever contains the node);
- neither: rlimits only, and the plan's ``reason`` says what was missing; the
  executor logs it at start.

Everything here is best effort and never raises: a failure is a plan of
version "none" with the reason.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from sandbox.spec import CgroupPlan

PARENT_NAME = "meshfaas"
V2_CONTROLLERS = ("memory", "pids", "cpu")


def _own_v1_path(proc_cgroup_text: str, controller: str) -> str | None:
    for line in proc_cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and controller in parts[1].split(","):
            return parts[2]
    return None


def _v1_parent(root: Path, proc_text: str, controller: str) -> str | None:
    own = _own_v1_path(proc_text, controller)
    mount = root / controller
    if own is None or not (mount / "cgroup.procs").exists():
        return None
    rel = (own.strip("/") + "/" + PARENT_NAME).strip("/")
    try:
        (mount / rel).mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return rel if os.access(mount / rel, os.W_OK) else None


def _plan_v1(root: Path, proc_text: str) -> CgroupPlan:
    memory = _v1_parent(root, proc_text, "memory")
    pids = _v1_parent(root, proc_text, "pids")
    if memory is None or pids is None:
        return CgroupPlan(
            version="none",
            reason=f"cgroup v1 memory/pids not writable under {root} (memory={memory}, pids={pids})",
        )
    cpu = _v1_parent(root, proc_text, "cpu")
    return CgroupPlan(
        version="v1",
        v1_memory_parent=memory,
        v1_pids_parent=pids,
        v1_cpu_parent=cpu or "NSJAIL",
        v1_cpu_available=cpu is not None,
        v1_memsw_available=(root / "memory" / memory / "memory.memsw.limit_in_bytes").exists(),
        reason=f"cgroup v1 under {root} (memory parent {memory})",
    )


def _enable_v2(folder: Path) -> None:
    control = folder / "cgroup.subtree_control"
    have = set((folder / "cgroup.controllers").read_text().split())
    wanted = [c for c in V2_CONTROLLERS if c in have]
    control.write_text(" ".join("+" + c for c in wanted))


def _plan_v2(root: Path) -> CgroupPlan:
    parent = root / PARENT_NAME
    try:
        _enable_v2(root)
        parent.mkdir(exist_ok=True)
        _enable_v2(parent)
        enabled = {c.lstrip("+") for c in (parent / "cgroup.subtree_control").read_text().split()}
    except OSError as exc:
        return CgroupPlan(version="none", reason=f"cgroup v2 at {root} is not delegated: {exc}")
    missing = [c for c in ("memory", "pids") if c not in enabled]
    if missing:
        return CgroupPlan(version="none", reason=f"cgroup v2 controllers missing: {missing}")
    return CgroupPlan(version="v2", v2_mount=str(parent), reason=f"cgroup v2 at {parent}")


def plan_cgroups(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> CgroupPlan:
    """Look at the host and prepare the cgroup parents nsjail needs."""
    base = Path(root)
    try:
        proc_text = Path(proc_cgroup).read_text()
    except OSError as exc:
        return CgroupPlan(version="none", reason=f"cannot read {proc_cgroup}: {exc}")
    if (base / "cgroup.controllers").exists():
        return _plan_v2(base)
    if (base / "memory").is_dir():
        return _plan_v1(base, proc_text)
    return CgroupPlan(version="none", reason=f"no cgroup v1 or v2 hierarchy at {root}")


def _jail_cgroup_dirs(root: Path, plan: CgroupPlan) -> list[Path]:
    if plan.version == "v2":
        parents = [Path(plan.v2_mount)]
    elif plan.version == "v1":
        parents = [root / "memory" / plan.v1_memory_parent, root / "pids" / plan.v1_pids_parent]
        if plan.v1_cpu_available:
            parents.append(root / "cpu" / plan.v1_cpu_parent)
    else:
        return []
    found: list[Path] = []
    for parent in parents:
        with contextlib.suppress(OSError):
            found.extend(sorted(p for p in parent.iterdir() if p.name.startswith("NSJAIL.")))
    return found


def remove_stale_jail_cgroups(plan: CgroupPlan, root: str = "/sys/fs/cgroup",
                              proc: str = "/proc") -> int:
    """Remove the cgroups of jails whose process is gone (left when nsjail was SIGKILLed).

    nsjail names each one after its jail's pid; a cgroup still in use cannot be
    removed (EBUSY), so this never disturbs a live jail. Returns how many went.
    """
    removed = 0
    for folder in _jail_cgroup_dirs(Path(root), plan):
        pid = folder.name.split(".", 1)[1]
        if pid.isdigit() and not os.path.exists(f"{proc}/{pid}"):
            with contextlib.suppress(OSError):
                folder.rmdir()
                removed += 1
    return removed


def jail_cgroup_dirs(pid: int, root: str = "/sys/fs/cgroup", proc: str = "/proc") -> dict[str, Path]:
    """The cgroup folders a process is in: per v1 controller, or "unified" for v2."""
    out: dict[str, Path] = {}
    for line in Path(f"{proc}/{pid}/cgroup").read_text().splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        for controller in controllers.split(","):
            if controller in ("memory", "pids", "cpu"):
                out[controller] = Path(root) / controller / path.lstrip("/")
        if controllers == "" and path != "/":
            out["unified"] = Path(root) / path.lstrip("/")
    return out


def set_jail_limits(plan: CgroupPlan, pid: int, *, memory_bytes: int, pids_max: int,
                    root: str = "/sys/fs/cgroup", proc: str = "/proc") -> None:
    """Change a running jail's memory and pids limits (raises OSError if it cannot)."""
    dirs = jail_cgroup_dirs(pid, root, proc)
    if plan.version == "v2":
        unified = dirs["unified"]
        (unified / "memory.max").write_text(str(memory_bytes))
        (unified / "pids.max").write_text(str(pids_max))
        return
    if plan.version != "v1":
        return
    memory = dirs["memory"]
    files = ["memory.limit_in_bytes"]
    if plan.v1_memsw_available:
        files.append("memory.memsw.limit_in_bytes")
    current = int((memory / "memory.limit_in_bytes").read_text())
    # v1 wants memory <= memory+swap at every step: raise memsw first, lower it last.
    for name in (reversed(files) if memory_bytes > current else files):
        (memory / name).write_text(str(memory_bytes))
    (dirs["pids"] / "pids.max").write_text(str(pids_max))
