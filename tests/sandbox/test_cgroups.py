"""Cgroup plan detection against fake cgroup trees."""

from __future__ import annotations

from pathlib import Path

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
