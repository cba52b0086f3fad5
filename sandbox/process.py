"""One sandbox seen from the host: a jailed bootstrap process and its three pipes.

Theory of operation
-------------------
:meth:`SandboxProcess.start` opens three pipes (requests to the jail, results
from the jail, and the log pipe that is the jail's stdout and stderr; nsjail's
own messages get a fourth), spawns nsjail (or, for the unsafe backend, the
bootstrap itself with rlimits) and waits for the bootstrap's ``ready`` frame:
that is the cold start.

:meth:`SandboxProcess.invoke` sends one ``invoke`` frame and, concurrently,
reads the result frame and drains the log pipe; once the result is in, one
last read without waiting (when ``poll`` says there is anything) collects the
rest of the handler's output (it was all written before the result). The log
is never stored whole: a :class:`LogTail` keeps the last ``tail_bytes`` and
counts the rest, so a handler printing 100 MB costs the host a few kilobytes.
A result frame larger than ``max_result_bytes`` is a protocol error.

The warm path is the hot one (docs/sandbox.md, "Performance"): the request is
one ``os.write`` and the result is read straight off its non-blocking pipe, so
a call costs one trip through trio's run loop; if the result is already there
when the write returns (the jail often runs at once on a busy machine), no
cancel scope is entered either. nsjail is spawned with ``subprocess.Popen`` on
the event loop's thread and waited on through a pidfd (:class:`_Child`), not
through trio's worker thread.

Whatever goes wrong -- the deadline passes, the process dies (an OOM kill by
the memory cgroup shows up as SIGKILL), a frame is malformed -- the outcome is
a value (:class:`Outcome`) and the sandbox is marked ``dead`` and killed:
SIGTERM to nsjail (which SIGKILLs the whole jail and removes its cgroups; a
handler ignoring SIGTERM cannot delay that), then SIGKILL after a grace. The
unsafe backend runs in its own session and is killed by process group.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import resource
import select
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import attrs
import trio

from sandbox.bootstrap import FRAME, RESULT_HEAD, RESULT_TAG, encode_frame, encode_invoke
from sandbox.cgroups import set_jail_limits
from sandbox.spec import (
    MB,
    CgroupPlan,
    SandboxSpec,
    render_nsjail_argv,
    unsafe_argv,
    unsafe_rlimits,
)

log = logging.getLogger("sandbox")

KILL_GRACE_S = 2.0
MAX_HEADER_BYTES = 64 * 1024
SIGKILL_EXIT = 128 + signal.SIGKILL
SIGXCPU_EXIT = 128 + signal.SIGXCPU
Status = Literal["ok", "error", "timeout", "oom", "crash"]


class SandboxStartError(Exception):
    """The sandbox could not start; the message says why and how to fix it."""


@attrs.frozen(kw_only=True)
class Backend:
    """How sandboxes are started: nsjail (with its binary and cgroup plan) or unsafe."""

    kind: Literal["nsjail", "unsafe"]
    nsjail_path: str = ""
    cgroups: CgroupPlan = attrs.field(factory=lambda: CgroupPlan(version="none"))


@attrs.frozen(kw_only=True)
class Outcome:
    """What one invocation produced, before the executor dresses it up."""

    status: Status
    body: bytes = b""
    """The result JSON when ok; the Lambda error object as JSON otherwise."""
    duration_ms: float = 0.0
    billed_ms: int = 0
    max_memory_mb: int = 0
    init_ms: float | None = None
    log: bytes = b""
    """What the handler wrote to stdout/stderr (the last ``tail_bytes``)."""
    init_log: bytes = b""
    """What init wrote (a cold start's first invocation only)."""
    reusable: bool = False

    def error(self) -> dict[str, Any] | None:
        if self.status == "ok":
            return None
        try:
            value = json.loads(self.body)
        except ValueError:
            return {"errorMessage": self.body.decode(errors="replace"), "errorType": "Runtime.Unknown"}
        return value if isinstance(value, dict) else {"errorMessage": str(value), "errorType": "Runtime.Unknown"}


def error_body(error_type: str, message: str, request_id: str) -> bytes:
    return json.dumps({"errorMessage": message, "errorType": error_type,
                       "requestId": request_id, "stackTrace": []}).encode()


# ---------------------------------------------------------------------------
# The capped log
# ---------------------------------------------------------------------------


class LogTail:
    """Keeps the last ``limit`` bytes of a byte stream and counts what it dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    def add(self, chunk: bytes) -> None:
        self.data += chunk
        excess = len(self.data) - self.limit
        if excess > 0:
            del self.data[:excess]
            self.dropped += excess

    def take(self) -> bytes:
        out = bytes(self.data)
        if self.dropped:
            out = b"[... %d bytes of log dropped ...]\n" % self.dropped + out
        self.data = bytearray()
        self.dropped = 0
        return out


class _LogReader:
    """Drains the log pipe into a LogTail: concurrently while the jail works
    (so a chatty handler never blocks on a full pipe), then once more without
    waiting when the result frame is in (everything written before it is in the
    pipe by then)."""

    def __init__(self, stream: trio.lowlevel.FdStream, tail_bytes: int) -> None:
        self.stream = stream
        self.tail = LogTail(tail_bytes)
        self.eof = False
        self._poll = select.poll()  # "anything there?" without a failing read (most calls print nothing)
        self._poll.register(stream.fileno(), select.POLLIN)

    async def pump(self) -> None:
        try:
            while not self.eof:
                chunk = await self.stream.receive_some(1 << 16)
                if not chunk:
                    self.eof = True
                    return
                self.tail.add(chunk)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.eof = True

    def drain_now(self) -> None:
        """Read whatever is in the pipe without waiting (no other task may be reading)."""
        if self.eof or not self._poll.poll(0):  # (data, EOF and a closed fd all show up)
            return
        fd = self.stream.fileno()
        while not self.eof:
            try:
                chunk = os.read(fd, 1 << 16)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.eof = True
                return
            if not chunk:
                self.eof = True
                return
            self.tail.add(chunk)

    def take(self) -> bytes:
        return self.tail.take()


# ---------------------------------------------------------------------------
# Frames from the jail
# ---------------------------------------------------------------------------


class ProtocolError(Exception):
    pass


class _FrameReader:
    """Reads frames from the jail's result pipe straight off its (non-blocking)
    descriptor: one ``os.read`` per frame in the usual case, and a wait for the
    pipe only when it is empty (the stream's own ``receive_some`` would add two
    scheduling rounds per frame). Only this reader reads that pipe."""

    def __init__(self, stream: trio.lowlevel.FdStream, max_body: int) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.max_body = max_body

    def _parse(self) -> tuple[bytes, bytes] | None:
        buffer = self.buffer
        if len(buffer) < FRAME.size:
            return None
        head_len, body_len = FRAME.unpack_from(buffer)
        if head_len > MAX_HEADER_BYTES or body_len > self.max_body:
            raise ProtocolError(f"frame too large: header {head_len} B, body {body_len} B")
        total = FRAME.size + head_len + body_len
        if len(buffer) < total:
            return None
        head = bytes(buffer[FRAME.size: FRAME.size + head_len])
        body = bytes(buffer[FRAME.size + head_len: total])
        del buffer[:total]
        return head, body

    def read_now(self) -> tuple[bytes, bytes] | None:
        """A frame, if one is complete after at most one read that does not wait."""
        frame = self._parse()
        if frame is None:
            try:
                chunk = os.read(self.stream.fileno(), 1 << 16)
            except BlockingIOError:
                return None
            self.buffer += chunk  # (at EOF, nothing: read_raw will see the EOF again)
            frame = self._parse()
        return frame

    async def read_raw(self) -> tuple[bytes, bytes] | None:
        """(header bytes, body) of the next frame, or None at EOF. Always a
        checkpoint; raises ProtocolError, OSError, trio.ClosedResourceError."""
        waited = False
        while (frame := self._parse()) is None:
            try:
                chunk = os.read(self.stream.fileno(), 1 << 16)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.stream.fileno())
                waited = True
                continue
            if not chunk:
                break
            self.buffer += chunk
        if not waited:
            await trio.lowlevel.checkpoint()
        return frame

    async def read(self) -> tuple[dict[str, Any], bytes] | None:
        """The next frame with a JSON header (ready frames)."""
        frame = await self.read_raw()
        if frame is None:
            return None
        try:
            header = json.loads(frame[0] or b"{}")
        except ValueError as exc:
            raise ProtocolError(f"bad frame header: {exc}") from None
        if not isinstance(header, dict):
            raise ProtocolError("frame header is not an object")
        return header, frame[1]


# ---------------------------------------------------------------------------
# Spawning
# ---------------------------------------------------------------------------


def _unsafe_preexec(limits: tuple[tuple[str, int], ...]) -> Callable[[], None]:
    def apply() -> None:
        for name, value in limits:
            resource.setrlimit(getattr(resource, name), (value, value))
    return apply


START_FIXES = (
    ("newuser", "user namespaces are unavailable: run the node as root or enable them "
     "(sysctl kernel.unprivileged_userns_clone=1, user.max_user_namespaces > 0)"),
    ("clone(", "nsjail could not create namespaces: run as root or enable user namespaces "
     "(sysctl kernel.unprivileged_userns_clone=1); in a container, allow CLONE_NEWUSER "
     "(e.g. --privileged or a seccomp profile permitting unshare/clone)"),
    ("mount", "a mount failed: check that the interpreter prefix, the code and layer "
     "folders exist on the host"),
    ("cgroup", "nsjail could not use cgroups: create the parent cgroup or set "
     "cgroups='off' in the executor config"),
    ("seccomp", "the seccomp policy did not compile with this nsjail build"),
)


def explain_start_failure(nsjail_log: str, returncode: int | None, jail_log: str) -> str:
    """A message saying why nsjail could not start the jail and how to fix it."""
    lowered = nsjail_log.lower()
    fixes = [fix for key, fix in START_FIXES if key in lowered]
    lines = [f"the sandbox did not start (exit status {returncode})."]
    errors = [ln for ln in nsjail_log.splitlines() if ln.startswith(("[E]", "[F]"))]
    if errors:
        lines.append("nsjail said: " + " | ".join(errors[-4:]))
    if jail_log.strip():
        lines.append("the jailed process said: " + jail_log.strip()[-1000:])
    if fixes:
        lines.append("how to fix: " + "; ".join(fixes))
    else:
        lines.append("how to fix: run `nsjail` by hand with the logged argv and -v to see the "
                     "failing step, or configure the unsafe backend only if this host cannot run nsjail.")
    return " ".join(lines)


class _Child:
    """A child process started on the event loop's thread, for the part of
    ``trio.Process`` a sandbox uses (pid, returncode, wait, send_signal, kill).

    ``trio.lowlevel.open_process`` runs ``subprocess.Popen`` in a worker thread;
    the hop to the thread and back cost ~2.5 ms per jail start on the 2-core
    test machine, against ~0.3 ms for Popen itself (vfork + exec of nsjail,
    which never runs a preexec_fn). Waiting is on a pidfd, as trio does; where
    there is none (old kernels), on a worker thread.
    """

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid
        self._wait_lock = trio.Lock()
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(popen.pid)

    @classmethod
    async def start(cls, argv: list[str], options: dict[str, Any]) -> _Child:
        await trio.lowlevel.checkpoint()
        return cls(subprocess.Popen(argv, **options))

    @property
    def returncode(self) -> int | None:
        code = self._popen.poll()
        if code is not None:
            self._close_pidfd()
        return code

    async def wait(self) -> int:
        async with self._wait_lock:
            if self.returncode is None:
                if self._pidfd is not None:
                    with contextlib.suppress(trio.ClosedResourceError):
                        await trio.lowlevel.wait_readable(self._pidfd)
                    self._popen.wait()  # (readable: it has exited; this reaps it)
                else:
                    await trio.to_thread.run_sync(self._popen.wait, abandon_on_cancel=True)
                self._close_pidfd()
        code = self._popen.returncode
        assert code is not None
        return code

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def kill(self) -> None:
        self._popen.kill()

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            with contextlib.suppress(RuntimeError):  # (outside trio: nobody can be waiting)
                trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


class SandboxProcess:
    """A started sandbox. Use :meth:`start`; then :meth:`invoke` repeatedly; then :meth:`kill`."""

    def __init__(self, spec: SandboxSpec, backend: Backend, *, tail_bytes: int,
                 max_result_bytes: int) -> None:
        self.spec = spec
        self.backend = backend
        self.tail_bytes = tail_bytes
        self.max_result_bytes = max_result_bytes
        self.process: trio.Process | _Child | None = None
        self.state: Literal["new", "spare", "idle", "busy", "dead"] = "new"
        self.init_ms: float | None = None
        self.init_log = b""
        self._pumping = False
        self.killed_by_us = False
        self._to_jail: trio.lowlevel.FdStream | None = None
        self._frames: _FrameReader | None = None
        self._logs: _LogReader | None = None
        self._nsjail_log_fd: int | None = None
        self._begun: tuple[str, bytes, int, str] | None = None  # see begin_invoke

    # -- start ------------------------------------------------------------

    def _argv(self, ctl: tuple[int, int], log_fd: int) -> list[str]:
        if self.backend.kind == "unsafe":
            return unsafe_argv(self.spec, ctl_fds=ctl)
        return render_nsjail_argv(self.spec, nsjail_path=self.backend.nsjail_path,
                                  cgroups=self.backend.cgroups, ctl_fds=ctl, log_fd=log_fd)

    async def _spawn(self) -> None:
        req_r, req_w = os.pipe()
        res_r, res_w = os.pipe()
        log_r, log_w = os.pipe()
        ns_r, ns_w = os.pipe()
        child_fds = (req_r, res_w, ns_w)
        try:
            argv = self._argv((req_r, res_w), ns_w)
            options: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": log_w,
                                       "stderr": log_w, "pass_fds": child_fds}
            if self.backend.kind == "unsafe":
                options.update(env=dict(self.spec.env), start_new_session=True,
                               preexec_fn=_unsafe_preexec(unsafe_rlimits(self.spec)))
                self.process = await trio.lowlevel.open_process(argv, **options)
            else:
                options.update(env={"PATH": "/usr/bin:/bin"})
                self.process = await _Child.start(argv, options)
        except BaseException:
            for fd in (req_w, res_r, log_r, ns_r):
                os.close(fd)
            raise
        finally:
            for fd in (*child_fds, log_w):
                os.close(fd)
        self._to_jail = trio.lowlevel.FdStream(req_w)
        self._frames = _FrameReader(trio.lowlevel.FdStream(res_r), self.max_result_bytes + 4096)
        self._logs = _LogReader(trio.lowlevel.FdStream(log_r), self.tail_bytes)
        os.set_blocking(ns_r, False)
        self._nsjail_log_fd = ns_r

    async def _await_frame(self, request: bytes, timeout_s: float, *, raw: bool = False,
                           sent: int = 0, problem: str = "") -> tuple[Any, bool, str]:
        """Send ``request`` (if any; its first ``sent`` bytes went already, or
        ``problem`` broke that) and read one frame while draining the log pipe.

        Returns (frame or None, whether the deadline passed, what broke); the
        frame is (header bytes, body) when ``raw``, else (header dict, body).
        """
        assert self._logs is not None
        if self._pumping:  # a long-lived task drains the log pipe already
            result = await self._send_and_read(request, timeout_s, raw, sent, problem)
        else:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._logs.pump)
                result = await self._send_and_read(request, timeout_s, raw, sent, problem)
                nursery.cancel_scope.cancel()
        self._logs.drain_now()
        return result

    async def _send_and_read(self, request: bytes, timeout_s: float, raw: bool,
                             sent: int = 0, problem: str = "") -> tuple[Any, bool, str]:
        assert self._frames is not None and self._to_jail is not None
        deadline = trio.current_time() + timeout_s
        frame: Any = None
        if problem:  # the write that began it broke
            await trio.lowlevel.checkpoint()
            return None, False, problem
        if raw:  # fast path: on a busy machine the answer is often in by the time the write returns
            try:
                if not sent:
                    sent = self._write_now(request)
                frame = self._frames.read_now() if sent == len(request) else None
            except OSError as exc:
                problem = f"pipe to sandbox broke: {exc}"
            except ProtocolError as exc:
                problem = str(exc)
            if frame is not None or problem:
                await trio.lowlevel.checkpoint()
                return frame, False, problem
        with trio.move_on_at(deadline) as scope:
            try:
                if sent < len(request):
                    sent += self._write_now(memoryview(request)[sent:])
                if sent < len(request):
                    await self._to_jail.send_all(memoryview(request)[sent:])
                frame = await (self._frames.read_raw() if raw else self._frames.read())
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                problem = f"pipe to sandbox broke: {exc}"
            except ProtocolError as exc:
                problem = str(exc)
        return frame, scope.cancelled_caught, problem

    def _write_now(self, data: bytes | memoryview) -> int:
        """Write what the pipe takes without waiting (all of a small frame: one
        syscall, no scheduling round); returns how many bytes went."""
        assert self._to_jail is not None
        try:
            return os.write(self._to_jail.fileno(), data)
        except BlockingIOError:
            return 0

    async def start(self, init_timeout_s: float, nursery: trio.Nursery | None = None) -> None:
        """Spawn and wait for the bootstrap's ready frame (the handler is imported by then).

        With a ``nursery``, one task drains the log pipe for the sandbox's whole
        life (cheaper per invocation); without, each exchange drains it itself.
        """
        await self._spawn()
        if nursery is not None and self._logs is not None:
            nursery.start_soon(self._logs.pump)
            self._pumping = True
        assert self._logs is not None
        ready, timed_out, _ = await self._await_frame(b"", init_timeout_s)
        if ready is None or ready[0].get("op") != "ready":
            await self._fail_start(init_timeout_s if timed_out else 0.0)
        assert ready is not None
        if ready[0].get("spare"):
            self.state = "spare"
            return
        self.init_ms = float(ready[0].get("init_ms") or 0.0)
        self.init_log = self._logs.take()
        self.state = "idle"

    async def load(self, env: dict[str, str], init_timeout_s: float) -> None:
        """Turn a spare into a function's sandbox: send its environment, wait for init."""
        if self.state != "spare" or self._logs is None:
            raise RuntimeError(f"load on a sandbox in state {self.state}")
        self._logs.take()  # anything a spare wrote before it was claimed is not this function's
        request = encode_frame({"op": "load", "env": env})
        ready, timed_out, _ = await self._await_frame(request, init_timeout_s)
        if ready is None or ready[0].get("op") != "ready":
            await self._fail_start(init_timeout_s if timed_out else 0.0)
        assert ready is not None
        self.init_ms = float(ready[0].get("init_ms") or 0.0)
        self.init_log = self._logs.take()
        self.state = "idle"

    async def _fail_start(self, timed_out: float) -> None:
        alive = self.process is not None and self.process.returncode is None
        if alive and not timed_out and self.process is not None:
            with trio.move_on_after(KILL_GRACE_S):
                await self.process.wait()
            alive = self.process.returncode is None
        nsjail_log = self._read_nsjail_log()
        await self.kill()
        assert self._logs is not None
        self._logs.drain_now()
        jail_log = self._logs.take().decode(errors="replace")
        rc = self.process.returncode if self.process else None
        if alive and timed_out:
            raise SandboxStartError(f"the sandbox did not become ready within {timed_out:.1f} s "
                                    f"(init timeout). Log: {jail_log[-1000:]}")
        raise SandboxStartError(explain_start_failure(nsjail_log, rc, jail_log))

    def _read_nsjail_log(self) -> str:
        if self._nsjail_log_fd is None:
            return ""
        chunks = []
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(self._nsjail_log_fd, 65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def jail_pid(self) -> int:
        """Host pid of the jailed interpreter (nsjail's child; the process itself when unsafe)."""
        assert self.process is not None
        if self.backend.kind == "unsafe":
            return self.process.pid
        pid = self.process.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not children:
            raise OSError(f"nsjail {pid} has no jailed process")
        return int(children[0])

    def retarget(self, spec: SandboxSpec) -> None:
        """Apply ``spec``'s memory and process limits to this running (spare) jail:
        its cgroups and the interpreter's RLIMIT_AS / RLIMIT_NPROC. Raises OSError."""
        if spec == self.spec:
            return
        pid = self.jail_pid()
        set_jail_limits(self.backend.cgroups, pid, memory_bytes=spec.memory_mb * MB,
                        pids_max=spec.max_pids)
        as_bytes = spec.rlimit_as_mb * MB
        resource.prlimit(pid, resource.RLIMIT_AS, (as_bytes, as_bytes))
        resource.prlimit(pid, resource.RLIMIT_NPROC, (spec.rlimit_nproc, spec.rlimit_nproc))
        self.spec = spec

    # -- invoke -----------------------------------------------------------

    def begin_invoke(self, *, request_id: str, payload: bytes, timeout_s: float,
                     arn: str = "") -> None:
        """Send an invocation's request now, without waiting (what the pipe takes at
        once: all of a small one); :meth:`invoke` with the same ``request_id``
        finishes it. Lets a caller start the sandbox before its own task switch."""
        if self.state != "idle":
            raise RuntimeError(f"invoke on a sandbox in state {self.state}")
        self.state = "busy"
        request = encode_invoke(request_id, int(timeout_s * 1000), arn, payload)
        try:
            sent, problem = self._write_now(request), ""
        except OSError as exc:
            sent, problem = 0, f"pipe to sandbox broke: {exc}"
        self._begun = (request_id, request, sent, problem)

    async def invoke(self, *, request_id: str, payload: bytes, timeout_s: float,
                     arn: str = "") -> Outcome:
        """Run one invocation with a wall-clock budget of ``timeout_s`` (or finish
        the one :meth:`begin_invoke` started)."""
        begun, self._begun = self._begun, None
        if begun is not None and begun[0] == request_id:
            _, request, sent, problem = begun
        else:
            if self.state != "idle":
                raise RuntimeError(f"invoke on a sandbox in state {self.state}")
            self.state = "busy"
            request = encode_invoke(request_id, int(timeout_s * 1000), arn, payload)
            sent, problem = 0, ""
        frame, timed_out, problem = await self._await_frame(
            request, timeout_s, raw=True, sent=sent, problem=problem)
        if timed_out:
            outcome = await self._timed_out(request_id, timeout_s)
        elif frame is None:
            outcome = await self._died(request_id, problem)
        elif frame[0][:1] != RESULT_TAG or len(frame[0]) != RESULT_HEAD.size:
            outcome = await self._died(request_id, "frame is not a result")
        else:
            outcome = self._completed(frame)
        if outcome.reusable:
            self.state = "idle"
        else:
            await self.kill()
        return outcome

    def _completed(self, result: tuple[bytes, bytes]) -> Outcome:
        head, body = result
        assert self._logs is not None
        _, ok, fatal, duration_ms, billed_ms, max_memory_mb, init_ms = RESULT_HEAD.unpack(head)
        status: Status = "ok" if ok else "error"
        if not ok and b'"Runtime.OutOfMemory"' in body[:200]:
            status = "oom"
        return Outcome(
            status=status, body=body, duration_ms=duration_ms, billed_ms=billed_ms,
            max_memory_mb=max_memory_mb, init_ms=None if math.isnan(init_ms) else init_ms,
            log=self._logs.take(),
            init_log=self._take_init_log(),
            reusable=not fatal,
        )

    def _take_init_log(self) -> bytes:
        out, self.init_log = self.init_log, b""
        return out

    async def _timed_out(self, request_id: str, timeout_s: float) -> Outcome:
        await self.kill()
        assert self._logs is not None
        self._logs.drain_now()
        message = f"Task timed out after {timeout_s:.2f} seconds"
        return Outcome(status="timeout", body=error_body("Sandbox.Timedout", message, request_id),
                       duration_ms=timeout_s * 1000, billed_ms=math.ceil(timeout_s * 1000),
                       log=self._logs.take() + f"{message}\n".encode(),
                       init_log=self._take_init_log())

    async def _died(self, request_id: str, problem: str) -> Outcome:
        assert self.process is not None and self._logs is not None
        if not problem.startswith("frame"):  # the jail is exiting (not lying to us): learn how
            with trio.move_on_after(KILL_GRACE_S):
                await self.process.wait()
        rc = self.process.returncode
        await self.kill()
        self._logs.drain_now()
        status, error_type, message = self._classify_exit(rc, problem)
        return Outcome(status=status, body=error_body(error_type, message, request_id),
                       log=self._logs.take() + f"{message}\n".encode(),
                       init_log=self._take_init_log())

    def _classify_exit(self, rc: int | None, problem: str) -> tuple[Status, str, str]:
        memory_limited = self.backend.kind == "nsjail" and self.backend.cgroups.limits_memory
        if rc in (SIGKILL_EXIT, -signal.SIGKILL) and memory_limited:
            return ("oom", "Runtime.OutOfMemory",
                    f"Runtime exited with error: signal: killed (the sandbox ran out of memory: "
                    f"its limit is {self.spec.memory_mb} MB)")
        if rc in (SIGXCPU_EXIT, -signal.SIGXCPU):
            return ("crash", "Runtime.ExitError",
                    f"Runtime exited with error: CPU time limit ({self.spec.cpu_time_s} s) exceeded")
        detail = f"exit status {rc}" if rc is not None and rc >= 0 else f"signal {rc}"
        if problem:
            detail += f"; {problem}"
        return "crash", "Runtime.ExitError", f"Runtime exited with error: {detail}"

    # -- stop -------------------------------------------------------------

    async def kill(self) -> None:
        """End the sandbox (idempotent). Never raises."""
        self.state = "dead"
        proc = self.process
        if proc is not None and proc.returncode is None:
            self.killed_by_us = True
            self._signal(proc, first=True)
            with trio.move_on_after(KILL_GRACE_S) as scope:
                scope.shield = True
                await proc.wait()
            if proc.returncode is None:
                self._signal(proc, first=False)
                with trio.CancelScope(shield=True):
                    await proc.wait()
        await self._close_pipes()

    def _signal(self, proc: trio.Process | _Child, *, first: bool) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.backend.kind == "unsafe":
                os.killpg(proc.pid, signal.SIGKILL)
            elif first:
                proc.send_signal(signal.SIGTERM)
            else:
                proc.kill()

    async def _close_pipes(self) -> None:
        with trio.CancelScope(shield=True):
            for stream in (self._to_jail,):
                if stream is not None:
                    await stream.aclose()
        if self._nsjail_log_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._nsjail_log_fd)
            self._nsjail_log_fd = None

    async def close_all(self) -> None:
        """Kill and release every descriptor (the executor calls this when it drops the sandbox)."""
        await self.kill()
        with trio.CancelScope(shield=True):
            for reader in (self._frames, self._logs):
                if reader is not None:
                    await reader.stream.aclose()

    async def exit_gracefully(self) -> None:
        """Ask the bootstrap to exit (idle expiry), then make sure it is gone."""
        if self.state == "idle" and self._to_jail is not None:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._to_jail.send_all(encode_frame({"op": "exit"}))
            if self.process is not None:
                with trio.move_on_after(0.5):
                    await self.process.wait()
        await self.close_all()
