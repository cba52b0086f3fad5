"""Cgroup plan detection against fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from sandbox.cgroups import plan_cgroups


def write(path: Path, text: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v1_parents_are_created_under_our_own_cgroup(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    for controller in ("memory", "pids", "cpu"):
        write(root / controller / "cgroup.procs")
    proc = tmp_path / "proc-cgroup"
    write(proc, "8:pids:/\n4:memory:/outer/inner\n1:cpu,cpuacct:/\n0::/\n")
    plan = plan_cgroups(str(root), str(proc))
    assert plan.version == "v1"
    assert plan.v1_memory_parent == "outer/inner/meshfaas"
    assert plan.v1_pids_parent == "meshfaas"
    assert plan.v1_cpu_available
    assert (root / "memory" / "outer" / "inner" / "meshfaas").is_dir()


def test_v1_without_pids_falls_back_to_rlimits_and_says_why(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root / "memory" / "cgroup.procs")
    proc = tmp_path / "proc-cgroup"
    write(proc, "4:memory:/\n")
    plan = plan_cgroups(str(root), str(proc))
    assert plan.version == "none"
    assert "pids" in plan.reason


def test_v2_enables_controllers_in_a_meshfaas_parent(tmp_path: Path) -> None:
    root = tmp_path / "cg"
    write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    write(root / "cgroup.subtree_control")
    # A real cgroupfs creates these files itself; emulate that for the child.
    write(root / "meshfaas" / "cgroup.controllers", "cpu memory pids\n")
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/\n")
    plan = plan_cgroups(str(root), str(proc))
    assert plan.version == "v2", plan.reason
    assert plan.v2_mount == str(root / "meshfaas")
    assert (root / "meshfaas" / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"


def test_no_cgroups_at_all(tmp_path: Path) -> None:
    proc = tmp_path / "proc-cgroup"
    write(proc, "0::/\n")
    plan = plan_cgroups(str(tmp_path / "nothing"), str(proc))
    assert plan.version == "none" and "no cgroup" in plan.reason


def test_stale_jail_cgroups_are_removed_live_ones_kept(tmp_path: Path) -> None:
    from sandbox.cgroups import remove_stale_jail_cgroups

    root = tmp_path / "cg"
    for controller in ("memory", "pids", "cpu"):
        write(root / controller / "cgroup.procs")
    proc_cgroup = tmp_path / "proc-cgroup"
    write(proc_cgroup, "4:memory:/\n8:pids:/\n1:cpu:/\n")
    plan = plan_cgroups(str(root), str(proc_cgroup))
    fake_proc = tmp_path / "proc"
    (fake_proc / "123").mkdir(parents=True)
    stale = root / "memory" / "meshfaas" / "NSJAIL.999"
    live = root / "pids" / "meshfaas" / "NSJAIL.123"
    busy = root / "cpu" / "meshfaas" / "NSJAIL.998"
    for folder in (stale, live, busy):
        folder.mkdir(parents=True)
    write(busy / "cgroup.procs", "998\n")  # not empty: rmdir fails, as on a real cgroupfs in use
    assert remove_stale_jail_cgroups(plan, str(root), str(fake_proc)) == 1
    assert not stale.exists() and live.exists() and busy.exists()


def _fake_jail(tmp_path: Path, cgroup_lines: str) -> tuple[Path, Path]:
    root, proc = tmp_path / "cg", tmp_path / "proc"
    write(proc / "77" / "cgroup", cgroup_lines)
    return root, proc


@pytest.mark.parametrize(("before", "after"), [(128, 64), (64, 256)])
def test_set_jail_limits_v1_keeps_memory_below_memsw(tmp_path: Path, before: int, after: int) -> None:
    from sandbox.cgroups import set_jail_limits
    from sandbox.spec import MB, CgroupPlan

    root, proc = _fake_jail(tmp_path, "4:memory:/n/meshfaas/NSJAIL.77\n8:pids:/meshfaas/NSJAIL.77\n")
    memory = root / "memory" / "n" / "meshfaas" / "NSJAIL.77"
    write(memory / "memory.limit_in_bytes", str(before * MB))
    write(memory / "memory.memsw.limit_in_bytes", str(before * MB))
    write(root / "pids" / "meshfaas" / "NSJAIL.77" / "pids.max", "64")
    order: list[str] = []
    real_write = Path.write_text

    def spy(self: Path, text: str, *args: object, **kwargs: object) -> int:
        order.append(self.name)
        return real_write(self, text)

    plan = CgroupPlan(version="v1", v1_memsw_available=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Path, "write_text", spy)
        set_jail_limits(plan, 77, memory_bytes=after * MB, pids_max=16, root=str(root), proc=str(proc))
    expected = (["memory.memsw.limit_in_bytes", "memory.limit_in_bytes"] if after > before
                else ["memory.limit_in_bytes", "memory.memsw.limit_in_bytes"])
    assert order == [*expected, "pids.max"]
    assert (memory / "memory.limit_in_bytes").read_text() == str(after * MB)
    assert (root / "pids" / "meshfaas" / "NSJAIL.77" / "pids.max").read_text() == "16"


def test_set_jail_limits_v2(tmp_path: Path) -> None:
    from sandbox.cgroups import set_jail_limits
    from sandbox.spec import CgroupPlan

    root, proc = _fake_jail(tmp_path, "0::/meshfaas/NSJAIL.77\n")
    unified = root / "meshfaas" / "NSJAIL.77"
    unified.mkdir(parents=True)
    set_jail_limits(CgroupPlan(version="v2"), 77, memory_bytes=1000, pids_max=9, root=str(root),
                    proc=str(proc))
    assert (unified / "memory.max").read_text() == "1000"
    assert (unified / "pids.max").read_text() == "9"
