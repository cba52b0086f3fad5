"""The sandbox spec and its pure rendering to an nsjail command line.

Theory of operation
-------------------
A :class:`SandboxSpec` says everything about one sandbox that does not change
while it lives: its limits (memory, processes, open files, file size, /tmp,
CPU), its environment, the interpreter and the host folders it sees. It holds
no handles and reads nothing from the host, so it is hashable and the same spec
always renders to the same argv (golden tests pin that).

:func:`render_nsjail_argv` turns a spec plus two facts about the host that the
spec cannot know -- where the nsjail binary is and which cgroup controllers are
delegated (a :class:`CgroupPlan`, see ``sandbox/cgroups.py``) -- and the two
pipe descriptors the bootstrap talks over, into the argv of an nsjail process.

What the jail looks like from inside:

- new user, pid, mount, network, ipc, uts and cgroup namespaces; the process
  runs as uid/gid 65534 ("nobody") inside, mapped to ``outside_uid`` outside
  (a distinct host uid per sandbox, so RLIMIT_NPROC is per sandbox), with no
  capabilities and no_new_privs set;
- read-only: the system library folders (``/usr``, ``/lib``, ``/lib64``), the
  interpreter prefix at its own path, the bootstrap at
  ``/opt/meshfaas/bootstrap.py`` (or ``.pyc``, precompiled), the function code at ``/var/task``, its
  dependency layer at ``/opt/layer``; ``/dev/null``, ``/dev/zero``,
  ``/dev/urandom``; a private read-only ``/proc`` of its own pid namespace;
- read-write: only a tmpfs at ``/tmp`` of ``tmp_size_mb``;
- network: only its own loopback (a new network namespace), no route;
- rlimits always; cgroup limits (memory, pids, CPU) when the plan has them;
- a seccomp policy (kafel) that answers EPERM to ptrace, mount, kexec, bpf,
  keyctl, module loading, namespace creation and their kin, and ENOSYS to
  clone3 (so libc falls back to clone, whose flags the filter can inspect).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

import attrs

TASK_ROOT = "/var/task"
"""Where the function's code is mounted inside the jail (as on AWS Lambda)."""
LAYER_ROOT = "/opt/layer"
"""Where the dependency layer (a ``pip install --target`` folder) is mounted."""
BOOTSTRAP_PATH = "/opt/meshfaas/bootstrap.py"
"""Where the in-jail runtime is mounted (``bootstrap.pyc`` when precompiled)."""
JAIL_UID = 65534
JAIL_GID = 65534
HOSTNAME = "sandbox"
MB = 1024 * 1024
AS_HEADROOM_MB = 512
"""RLIMIT_AS is ``2 * memory_mb + AS_HEADROOM_MB``: address space is not memory
(thread stacks and arenas reserve far more than they touch), so the cgroup is
the real memory limit and RLIMIT_AS only stops a single huge allocation."""

SYSTEM_RO_MOUNTS: tuple[str, ...] = ("/usr", "/lib", "/lib64")
DEVICE_MOUNTS: tuple[tuple[str, bool], ...] = (
    ("/dev/null", True),
    ("/dev/zero", True),
    ("/dev/urandom", False),
    ("/dev/random", False),
)

# Syscalls no handler needs; each answers EPERM. Kafel names x86_64 umount2 "umount".
DENIED_SYSCALLS: tuple[str, ...] = (
    "ptrace", "process_vm_readv", "process_vm_writev",
    "mount", "umount", "pivot_root", "mount_setattr",
    "fsopen", "fsmount", "fsconfig", "fspick", "move_mount", "open_tree",
    "unshare", "setns",
    "kexec_load", "kexec_file_load", "reboot",
    "init_module", "finit_module", "delete_module",
    "bpf", "perf_event_open", "userfaultfd",
    "keyctl", "add_key", "request_key",
    "swapon", "swapoff", "acct", "quotactl",
    "settimeofday", "clock_settime", "syslog",
    "iopl", "ioperm", "vhangup", "lookup_dcookie",
    "open_by_handle_at", "name_to_handle_at",
)
CLONE_NAMESPACE_FLAGS = 0x7E020000
"""CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET."""
ENOSYS = 38
EPERM = 1


def seccomp_policy() -> str:
    """The kafel policy: deny the dangerous syscalls, allow everything else."""
    denied = ", ".join(DENIED_SYSCALLS)
    clone_rule = f"clone {{ (clone_flags & {CLONE_NAMESPACE_FLAGS:#x}) != 0 }}"
    return (
        "POLICY meshfaas { "
        f"ERRNO({EPERM}) {{ {denied}, {clone_rule} }}, "
        f"ERRNO({ENOSYS}) {{ clone3 }} "
        "} USE meshfaas DEFAULT ALLOW"
    )


def _env_pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    pairs = tuple(sorted((str(k), str(v)) for k, v in items))
    for key, text in pairs:
        if not key or "=" in key or "\0" in key:
            raise ValueError(f"bad environment variable name {key!r}")
        if "\0" in text:
            raise ValueError(f"environment variable {key} contains a NUL byte")
    return pairs


@attrs.frozen(kw_only=True)
class SandboxSpec:
    """Everything fixed about one sandbox. Units are in the names."""

    interpreter: str
    """Host path of the Python executable; it is run at the same path inside."""
    interpreter_prefix: str
    """Host folder holding the interpreter and its stdlib; mounted read-only at the same path."""
    code_dir: str
    """Host folder with the function's code, mounted read-only at /var/task."""
    bootstrap_file: str
    """Host path of sandbox/bootstrap.py, or of its precompiled .pyc (sandbox/precompile.py)."""
    layer_dir: str | None = None
    """Host folder of the dependency layer, mounted read-only at /opt/layer."""
    memory_mb: int = 128
    timeout_ms: int = 3000
    """Per invocation, wall clock; enforced by the host, which kills the sandbox."""
    cpu_time_s: int = 900
    """RLIMIT_CPU over the sandbox's whole life (a warm sandbox serves many calls)."""
    cpu_ms_per_sec: int = 1000
    """cgroup CPU quota: milliseconds of CPU per second of wall time."""
    max_pids: int = 64
    max_open_files: int = 256
    max_file_size_mb: int = 64
    tmp_size_mb: int = 64
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_env_pairs)
    outside_uid: int = JAIL_UID
    """Host uid the jail's uid 65534 maps to; the executor gives each sandbox its own."""
    outside_gid: int = JAIL_GID
    nice_level: int = 0
    rlimit_as_ceiling_mb: int | None = None
    """For a spare jail: RLIMIT_AS to start with, lowered to the function's on claim
    (a hard limit can only be lowered from outside)."""
    rlimit_nproc_ceiling: int | None = None
    """For a spare jail: RLIMIT_NPROC to start with, lowered on claim."""
    python_flags: tuple[str, ...] = ("-I", "-S")
    """-I: isolated (no PYTHON* variables, no user site); -S: stdlib only, no site-packages."""
    system_ro_mounts: tuple[str, ...] = SYSTEM_RO_MOUNTS

    def __attrs_post_init__(self) -> None:
        for name in ("interpreter", "interpreter_prefix", "code_dir", "bootstrap_file", "layer_dir"):
            path = getattr(self, name)
            if path is not None and (not path.startswith("/") or ":" in path or "\0" in path):
                raise ValueError(f"SandboxSpec.{name} must be an absolute path without ':' ({path!r})")
        for name in ("memory_mb", "timeout_ms", "cpu_time_s", "cpu_ms_per_sec", "max_pids",
                     "max_open_files", "max_file_size_mb", "tmp_size_mb"):
            if getattr(self, name) <= 0:
                raise ValueError(f"SandboxSpec.{name} must be positive")

    @property
    def rlimit_as_mb(self) -> int:
        return self.rlimit_as_ceiling_mb or 2 * self.memory_mb + AS_HEADROOM_MB

    @property
    def rlimit_nproc(self) -> int:
        return self.rlimit_nproc_ceiling or self.max_pids


@attrs.frozen(kw_only=True)
class CgroupPlan:
    """Which cgroup limits the host can enforce, and where (from sandbox/cgroups.py)."""

    version: Literal["v1", "v2", "none"]
    v1_memory_parent: str = "NSJAIL"
    v1_pids_parent: str = "NSJAIL"
    v1_cpu_parent: str = "NSJAIL"
    v1_cpu_available: bool = True
    v1_memsw_available: bool = False
    """memory.memsw.* exists (swap accounting): cap memory+swap too, so a jail cannot swap."""
    v2_mount: str = "/sys/fs/cgroup"
    reason: str = ""
    """Why this plan (shown in logs; says what is missing when version is "none")."""

    @property
    def limits_memory(self) -> bool:
        return self.version != "none"


NO_CGROUPS = CgroupPlan(version="none", reason="cgroups not configured")


def _covered(path: str, mounts: tuple[str, ...]) -> bool:
    return any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounts)


def bootstrap_in_jail(spec: SandboxSpec) -> str:
    """The bootstrap's path inside the jail: a precompiled one keeps its suffix
    (Python runs a .pyc named on its command line as bytecode)."""
    return BOOTSTRAP_PATH + "c" if spec.bootstrap_file.endswith(".pyc") else BOOTSTRAP_PATH


def _mount_args(spec: SandboxSpec) -> list[str]:
    args: list[str] = []
    for path in spec.system_ro_mounts:
        args += ["-R", path]
    if not _covered(spec.interpreter_prefix, spec.system_ro_mounts):
        args += ["-R", spec.interpreter_prefix]
    for dev, writable in DEVICE_MOUNTS:
        args += ["-B" if writable else "-R", dev]
    args += ["-R", f"{spec.bootstrap_file}:{bootstrap_in_jail(spec)}"]
    args += ["-R", f"{spec.code_dir}:{TASK_ROOT}"]
    if spec.layer_dir is not None:
        args += ["-R", f"{spec.layer_dir}:{LAYER_ROOT}"]
    args += ["-m", f"none:/tmp:tmpfs:size={spec.tmp_size_mb * MB},mode=1777"]
    args += ["-s", "/usr/bin:/bin"]
    return args


def _rlimit_args(spec: SandboxSpec) -> list[str]:
    return [
        "--rlimit_as", str(spec.rlimit_as_mb),
        "--rlimit_cpu", str(spec.cpu_time_s),
        "--rlimit_fsize", str(spec.max_file_size_mb),
        "--rlimit_nofile", str(spec.max_open_files),
        "--rlimit_nproc", str(spec.rlimit_nproc),
        "--rlimit_core", "0",
    ]


def _cgroup_args(spec: SandboxSpec, plan: CgroupPlan) -> list[str]:
    limits = [
        "--cgroup_mem_max", str(spec.memory_mb * MB),
        "--cgroup_pids_max", str(spec.max_pids),
    ]
    cpu = ["--cgroup_cpu_ms_per_sec", str(spec.cpu_ms_per_sec)]
    if plan.version == "v2":
        return ["--use_cgroupv2", "--cgroupv2_mount", plan.v2_mount, *limits, *cpu]
    if plan.version == "v1":
        args = [*limits, "--cgroup_mem_parent", plan.v1_memory_parent,
                "--cgroup_pids_parent", plan.v1_pids_parent]
        if plan.v1_memsw_available:
            args += ["--cgroup_mem_memsw_max", str(spec.memory_mb * MB)]
        if plan.v1_cpu_available:
            args += [*cpu, "--cgroup_cpu_parent", plan.v1_cpu_parent]
        return args
    return []


def _identity_args(spec: SandboxSpec) -> list[str]:
    # The second mapping (0 -> 0) lets nsjail, as root of the new user namespace,
    # reach mount sources under root-only folders; the jailed process itself runs
    # as 65534 with no capabilities and no_new_privs, so it never holds uid 0.
    return [
        "--user", f"{JAIL_UID}:{spec.outside_uid}:1", "--user", "0:0:1",
        "--group", f"{JAIL_GID}:{spec.outside_gid}:1", "--group", "0:0:1",
    ]


def render_nsjail_argv(
    spec: SandboxSpec,
    *,
    nsjail_path: str,
    cgroups: CgroupPlan,
    ctl_fds: tuple[int, int],
    log_fd: int | None = None,
) -> list[str]:
    """The argv of an nsjail process running the bootstrap for ``spec``.

    ``ctl_fds`` are (the jail's read end, the jail's write end) of the control
    pipes, as numbered in the nsjail process; ``log_fd`` receives nsjail's own
    messages (warnings and the reason it could not start).
    """
    read_fd, write_fd = ctl_fds
    argv = [nsjail_path, "--mode", "o", "--quiet", "--time_limit", "0"]
    if log_fd is not None:
        argv += ["--log_fd", str(log_fd)]
    argv += ["--hostname", HOSTNAME, "--cwd", TASK_ROOT, "--nice_level", str(spec.nice_level)]
    argv += _identity_args(spec)
    argv += _mount_args(spec)
    argv += _rlimit_args(spec)
    argv += _cgroup_args(spec, cgroups)
    argv += ["--seccomp_string", seccomp_policy()]
    argv += ["--pass_fd", str(read_fd), "--pass_fd", str(write_fd)]
    for key, value in spec.env:
        argv += ["--env", f"{key}={value}"]
    argv += ["--", spec.interpreter, *spec.python_flags, bootstrap_in_jail(spec), str(read_fd), str(write_fd)]
    return argv


def unsafe_argv(spec: SandboxSpec, *, ctl_fds: tuple[int, int]) -> list[str]:
    """The argv of the unsafe backend: the bootstrap as a plain subprocess."""
    read_fd, write_fd = ctl_fds
    return [spec.interpreter, *spec.python_flags, spec.bootstrap_file, str(read_fd), str(write_fd)]


def unsafe_rlimits(spec: SandboxSpec) -> tuple[tuple[str, int], ...]:
    """(resource name, limit) pairs the unsafe backend sets in the child."""
    return (
        ("RLIMIT_AS", spec.rlimit_as_mb * MB),
        ("RLIMIT_CPU", spec.cpu_time_s),
        ("RLIMIT_FSIZE", spec.max_file_size_mb * MB),
        ("RLIMIT_NOFILE", spec.max_open_files),
        ("RLIMIT_CORE", 0),
    )
