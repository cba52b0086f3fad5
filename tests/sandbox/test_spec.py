"""Golden tests for the pure rendering of a SandboxSpec to nsjail arguments."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.spec import (
    BOOTSTRAP_PATH,
    LAYER_ROOT,
    TASK_ROOT,
    CgroupPlan,
    SandboxSpec,
    render_nsjail_argv,
    seccomp_policy,
    unsafe_argv,
    unsafe_rlimits,
)

GOLDEN = Path(__file__).parent / "golden"

SPEC = SandboxSpec(
    interpreter="/opt/py/bin/python3.12",
    interpreter_prefix="/opt/py",
    code_dir="/data/code/abc",
    bootstrap_file="/src/sandbox/bootstrap.py",
    layer_dir="/data/layers/0123",
    memory_mb=256,
    timeout_ms=3000,
    cpu_time_s=900,
    max_pids=32,
    max_open_files=128,
    max_file_size_mb=16,
    tmp_size_mb=32,
    env={"B": "2", "A": "1"},
    outside_uid=200_007,
    outside_gid=200_007,
)
PLANS = {
    "v1": CgroupPlan(version="v1", v1_memory_parent="node/meshfaas", v1_pids_parent="meshfaas",
                     v1_cpu_parent="meshfaas", v1_memsw_available=True),
    "v2": CgroupPlan(version="v2", v2_mount="/sys/fs/cgroup/meshfaas"),
    "none": CgroupPlan(version="none"),
}


def render(plan: str) -> list[str]:
    return render_nsjail_argv(SPEC, nsjail_path="/bin/nsjail", cgroups=PLANS[plan],
                              ctl_fds=(7, 9), log_fd=11)


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_argv_matches_golden(plan: str) -> None:
    golden = GOLDEN / f"nsjail_argv_{plan}.txt"
    text = "\n".join(render(plan)) + "\n"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()


def test_rendering_is_pure_and_deterministic() -> None:
    assert render("v1") == render("v1")
    assert SandboxSpec(**{**_fields(SPEC), "env": {"A": "1", "B": "2"}}) == SPEC


def _fields(spec: SandboxSpec) -> dict[str, object]:
    return {a.name: getattr(spec, a.name) for a in spec.__attrs_attrs__}


def pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == flag]


def test_isolation_flags() -> None:
    argv = render("v1")
    assert "--disable_clone_newnet" not in " ".join(argv)
    assert not any(a.startswith("--disable_clone") for a in argv)
    assert pairs(argv, "--user") == ["65534:200007:1", "0:0:1"]
    assert pairs(argv, "--group") == ["65534:200007:1", "0:0:1"]
    assert f"/data/code/abc:{TASK_ROOT}" in pairs(argv, "-R")
    assert f"/data/layers/0123:{LAYER_ROOT}" in pairs(argv, "-R")
    assert f"/src/sandbox/bootstrap.py:{BOOTSTRAP_PATH}" in pairs(argv, "-R")
    assert pairs(argv, "-B") == ["/dev/null", "/dev/zero"]  # the only writable binds
    assert pairs(argv, "-m") == [f"none:/tmp:tmpfs:size={32 * 1024 * 1024},mode=1777"]
    assert pairs(argv, "--rlimit_nproc") == ["32"]
    assert pairs(argv, "--cgroup_mem_max") == [str(256 * 1024 * 1024)]
    assert argv[-3:] == [BOOTSTRAP_PATH, "7", "9"]


def test_rlimits_always_cgroups_only_when_planned() -> None:
    none = render("none")
    assert not any(a.startswith("--cgroup") or a == "--use_cgroupv2" for a in none)
    for argv in (none, render("v1"), render("v2")):
        for flag in ("--rlimit_as", "--rlimit_cpu", "--rlimit_fsize", "--rlimit_nofile", "--rlimit_nproc"):
            assert flag in argv
    assert "--use_cgroupv2" in render("v2")


def test_interpreter_under_usr_is_not_mounted_twice() -> None:
    spec = SandboxSpec(interpreter="/usr/bin/python3.11", interpreter_prefix="/usr",
                       code_dir="/c", bootstrap_file="/b.py")
    argv = render_nsjail_argv(spec, nsjail_path="/n", cgroups=PLANS["none"], ctl_fds=(3, 4))
    assert pairs(argv, "-R").count("/usr") == 1


def test_seccomp_denies_the_dangerous_syscalls() -> None:
    policy = seccomp_policy()
    for name in ("ptrace", "mount", "umount", "kexec_load", "kexec_file_load", "bpf", "keyctl",
                 "add_key", "request_key", "init_module", "finit_module", "delete_module",
                 "pivot_root", "swapon", "swapoff", "reboot", "perf_event_open", "unshare", "setns"):
        assert f" {name}," in policy or f" {name} " in policy
    assert policy.endswith("DEFAULT ALLOW")
    assert "clone3" in policy


@pytest.mark.parametrize("field", ["memory_mb", "max_pids", "tmp_size_mb", "timeout_ms"])
def test_spec_rejects_nonpositive_limits(field: str) -> None:
    with pytest.raises(ValueError):
        SandboxSpec(interpreter="/p", interpreter_prefix="/", code_dir="/c", bootstrap_file="/b",
                    **{field: 0})


def test_spec_rejects_bad_env_names() -> None:
    with pytest.raises(ValueError):
        SandboxSpec(interpreter="/p", interpreter_prefix="/", code_dir="/c", bootstrap_file="/b",
                    env={"A=B": "x"})


def test_unsafe_backend_rendering() -> None:
    assert unsafe_argv(SPEC, ctl_fds=(5, 6)) == [
        "/opt/py/bin/python3.12", "-I", "-S", "/src/sandbox/bootstrap.py", "5", "6"]
    limits = dict(unsafe_rlimits(SPEC))
    assert limits["RLIMIT_FSIZE"] == 16 * 1024 * 1024
    assert limits["RLIMIT_NOFILE"] == 128


@pytest.mark.parametrize("code_dir", ["relative/code", "/code:/etc", "/code\0x"])
def test_spec_rejects_paths_nsjail_would_misread(code_dir: str) -> None:
    with pytest.raises(ValueError):
        SandboxSpec(interpreter="/p", interpreter_prefix="/", code_dir=code_dir, bootstrap_file="/b")


def test_function_env_is_checked_by_the_caller() -> None:
    from sandbox.executor import FunctionSpec

    with pytest.raises(ValueError):
        FunctionSpec(name="f", handler="a.b", code_dir="/c", env={"A": "x\0y"})
    with pytest.raises(ValueError):
        FunctionSpec(name="f", handler="a.b", code_dir="/c", env={"A=B": "x"})
