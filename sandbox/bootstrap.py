"""The in-jail runtime: AWS Lambda's Python contract over two pipes.

Theory of operation
-------------------
Run as ``python -I -S bootstrap.py <read_fd> <write_fd>`` inside the jail (or,
for the unsafe backend, as a plain subprocess); the executor usually runs a
copy precompiled by the runtime itself (``bootstrap.pyc``, see
``sandbox/precompile.py``) so no cold start compiles this file. Standard
library only; works on Python 3.11, 3.12 and 3.13.

1. Init (once per sandbox, the cold start): put the task root (``/var/task``)
   and the dependency layer (``/opt/layer``, with its ``.pth`` files) first on
   ``sys.path`` (``-S``: the interpreter's own site-packages stay out), arrange
   for ``logging`` to go to stdout in Lambda's format, import the handler named
   by ``_HANDLER`` ("module.function") and time it. Import failures do not end
   the process: like Lambda, the handler is replaced by one that raises
   Runtime.ImportModuleError / Runtime.UserCodeSyntaxError /
   Runtime.HandlerNotFound / Runtime.MalformedHandlerName on every call, and
   those results are marked fatal so the host never keeps such a sandbox.
   Then one ``ready`` frame goes to the host.
   A *spare* sandbox (``MESHFAAS_SPARE=1``) is started before the host knows
   which function it will serve: it sends ``ready`` with ``spare: true`` at
   once, then waits for a ``load`` frame carrying the function's environment
   (the host has meanwhile linked the code into its /var/task) and does the
   init above, so a cold start skips the jail and interpreter start.
2. Serve: read an ``invoke`` frame, call ``handler(event, context)``, flush
   stdout and stderr, then answer one ``result`` frame carrying the figures of
   the REPORT line (duration, billed duration, max memory used, init duration
   on the first call). Repeat until an ``exit`` frame or EOF. The host writes
   the START / END / REPORT lines around the handler's output itself: as every
   byte the handler wrote went into the log pipe before the result frame, the
   host has it all once it has the result, with no marker in the stream.

Frames, both ways: ``>II`` (header length, body length), the header, then the
body bytes (the event, the result, or the error object as JSON). The header of
the two frames of every invocation is binary (:data:`INVOKE_HEAD`,
:data:`RESULT_HEAD`, told apart by their first byte); the rare ones (ready,
load, exit) are a UTF-8 JSON object (first byte ``{``). stdout and stderr are
the log pipe the host reads and caps; the result never travels through them.

Cold start cost is mostly imports, so this module imports only what is
compiled into the interpreter or tiny: no ``typing``, ``collections``,
``traceback`` (imported on the first error), no ``json`` (which pulls in
``re``, ``enum``, ``functools`` and ``collections``: the event and result go
through the same C accelerator json uses, see :func:`json_loads`), and no
``logging``: an import hook configures Lambda's log format the moment the
function (or a library it uses) imports ``logging``.
"""

from __future__ import annotations

import math
import os
import resource
import struct
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only; typing costs ~10 ms of a cold start
    from collections.abc import Callable
    from typing import Any

    Handler = Callable[[Any, Any], Any]
    Json = dict[str, Any]

FRAME = struct.Struct(">II")
INVOKE_HEAD = struct.Struct(">cII")
"""b"I", deadline in ms, request id length; then the request id and the ARN (UTF-8)."""
MAX_DEADLINE_MS = 2**32 - 1
RESULT_HEAD = struct.Struct(">c??dIId")
"""b"R", ok, fatal, duration ms, billed ms, max memory MB, init ms (NaN: none)."""
INVOKE_TAG = b"I"
RESULT_TAG = b"R"
MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 6_291_556
LOG_FORMAT = "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s\t%(message)s"


# ---------------------------------------------------------------------------
# JSON without importing json
# ---------------------------------------------------------------------------


class _ScanContext:
    """The attributes json's C scanner reads from a JSONDecoder (its defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": -math.inf, "Infinity": math.inf, "NaN": math.nan}.__getitem__


_SCAN: Any = None
_ENCODE_STR: Any = None
_MAKE_ENCODER: Any = None
try:
    import _json

    _SCAN = _json.make_scanner(_ScanContext())  # type: ignore[arg-type]
    _ENCODE_STR = _json.encode_basestring_ascii
    _MAKE_ENCODER = _json.make_encoder
except (ImportError, AttributeError, TypeError):  # no accelerator: json itself, always
    _SCAN = None
_WHITESPACE = " \t\n\r"


def _not_serializable(value: Any) -> Any:
    raise TypeError  # the fallback below re-encodes with json for its exact message


def json_loads(data: bytes) -> Any:
    """``json.loads(data)``: the same C scanner json uses; anything unusual
    (an error, a BOM, UTF-16/32) goes to json itself for its result or error."""
    if _SCAN is not None and data[:3] != b"\xef\xbb\xbf" and b"\x00" not in data[:4]:
        try:
            text = data.decode("utf-8", "surrogatepass")
            start = len(text) - len(text.lstrip(_WHITESPACE))
            value, end = _SCAN(text, start)
            if end == len(text) or not text[end:].strip(_WHITESPACE):
                return value
        except Exception:  # (its errors need json.decoder imported: json raises them)
            pass
    import json

    return json.loads(data)


def json_dumps(value: Any) -> bytes:
    """``json.dumps(value).encode()``: json's C encoder with json's defaults;
    on any error json itself runs again, so the exception is json's own."""
    if _MAKE_ENCODER is not None:
        if isinstance(value, str):
            text: str = _ENCODE_STR(value)
            return text.encode()
        try:
            encoder = _MAKE_ENCODER({}, _not_serializable, _ENCODE_STR, None, ": ", ", ",
                                    False, False, True)
            return "".join(encoder(value, 0)).encode()
        except Exception:
            pass
    import json

    return json.dumps(value).encode()


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


def encode_frame(header: Json, body: bytes = b"") -> bytes:
    """A frame with a JSON header (ready, load, exit)."""
    head = json_dumps(header)
    return FRAME.pack(len(head), len(body)) + head + body


def encode_invoke(request_id: str, deadline_ms: int, arn: str, body: bytes) -> bytes:
    rid = request_id.encode("utf-8", "surrogatepass")  # (any str: as json.dumps took them)
    head = (INVOKE_HEAD.pack(INVOKE_TAG, min(max(deadline_ms, 0), MAX_DEADLINE_MS), len(rid)) + rid
            + arn.encode("utf-8", "surrogatepass"))
    return FRAME.pack(len(head), len(body)) + head + body


def decode_invoke(head: bytes) -> tuple[str, int, str]:
    """(request id, deadline ms, ARN) from an invoke header; raises struct.error/ValueError."""
    _, deadline_ms, rid_len = INVOKE_HEAD.unpack_from(head)
    rid_end = INVOKE_HEAD.size + rid_len
    if rid_end > len(head):
        raise ValueError("invoke header too short")
    return (head[INVOKE_HEAD.size:rid_end].decode("utf-8", "surrogatepass"), deadline_ms,
            head[rid_end:].decode("utf-8", "surrogatepass"))


def encode_result(ok: bool, fatal: bool, duration_ms: float, billed_ms: int, max_memory_mb: int,
                  init_ms: float | None, body: bytes) -> bytes:
    head = RESULT_HEAD.pack(RESULT_TAG, ok, fatal, duration_ms, billed_ms, max_memory_mb,
                            math.nan if init_ms is None else init_ms)
    return FRAME.pack(len(head), len(body)) + head + body


class FrameReader:
    """Reads frames from a pipe, taking whatever the pipe holds per read (one
    syscall per frame in the usual case) and keeping the rest for the next."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _fill(self, size: int) -> bool:
        while len(self.buffer) < size:
            chunk = os.read(self.fd, max(1 << 16, size - len(self.buffer)))
            if not chunk:
                return False
            self.buffer += chunk
        return True

    def read_raw(self) -> tuple[bytes, bytes] | None:
        """(header bytes, body) of the next frame; None at EOF."""
        if not self._fill(FRAME.size):
            return None
        head_len, body_len = FRAME.unpack_from(self.buffer)
        if head_len + body_len > MAX_REQUEST_BYTES:
            raise ValueError("frame too large")
        end = FRAME.size + head_len + body_len
        if not self._fill(end):
            return None
        head = bytes(self.buffer[FRAME.size:FRAME.size + head_len])
        body = bytes(self.buffer[FRAME.size + head_len:end])
        del self.buffer[:end]
        return head, body

    def read(self) -> tuple[Json, bytes] | None:
        """The next frame with its JSON header decoded (not for invoke frames)."""
        frame = self.read_raw()
        if frame is None:
            return None
        return json_loads(frame[0] or b"{}"), frame[1]


def read_frame(fd: int) -> tuple[Json, bytes] | None:
    """One frame from ``fd`` with a throwaway reader (tests; it may read past the frame)."""
    return FrameReader(fd).read()


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# ---------------------------------------------------------------------------
# Errors and the context object (Lambda's shapes)
# ---------------------------------------------------------------------------


class FaultError(Exception):
    """A runtime fault with a Lambda error type (raised by a fault handler)."""

    def __init__(self, error_type: str, message: str, trace: list[str] | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.trace = trace or []


def _user_frames(tb: Any) -> list[str]:
    import traceback  # only on errors: it costs a cold start several ms

    here = _user_frames.__code__.co_filename  # this file, also when run from a .pyc
    frames = traceback.extract_tb(tb)
    for i, frame in enumerate(frames):
        if frame.filename != here:
            return traceback.format_list(frames[i:])
    return []


def error_object(exc: BaseException, request_id: str) -> Json:
    if isinstance(exc, FaultError):
        return {"errorMessage": exc.message, "errorType": exc.error_type,
                "requestId": request_id, "stackTrace": exc.trace}
    return {"errorMessage": str(exc), "errorType": type(exc).__name__,
            "requestId": request_id, "stackTrace": _user_frames(exc.__traceback__)}


def context_fields() -> dict[str, str]:
    """The context attributes that come from the environment (read once per sandbox)."""
    env = os.environ
    return {
        "function_name": env.get("AWS_LAMBDA_FUNCTION_NAME", ""),
        "function_version": env.get("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST"),
        "memory_limit_in_mb": env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128"),
        "log_group_name": env.get("AWS_LAMBDA_LOG_GROUP_NAME", ""),
        "log_stream_name": env.get("AWS_LAMBDA_LOG_STREAM_NAME", ""),
    }


class LambdaContext:
    """The ``context`` argument: the attributes AWS Lambda's Python runtime gives."""

    def __init__(self, request_id: str, deadline_mono_s: float, invoked_function_arn: str,
                 static: dict[str, str] | None = None) -> None:
        fields = static if static is not None else context_fields()
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        self.function_name = fields["function_name"]
        self.function_version = fields["function_version"]
        self.memory_limit_in_mb = fields["memory_limit_in_mb"]
        self.log_group_name = fields["log_group_name"]
        self.log_stream_name = fields["log_stream_name"]
        self.identity = None
        self.client_context = None
        self._deadline_mono_s = deadline_mono_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline_mono_s - time.monotonic()) * 1000))

    def log(self, msg: str) -> None:
        sys.stdout.write(msg)

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},"
                f"function_name={self.function_name},function_version={self.function_version}])")


# ---------------------------------------------------------------------------
# Init
# ---------------------------------------------------------------------------

_CURRENT_REQUEST_ID = ""


def _add_request_id(record: Any) -> bool:
    """A logging filter (any callable will do): stamps the current request id."""
    record.aws_request_id = _CURRENT_REQUEST_ID
    return True


class Unbuffered:
    """A text stream that flushes after every write, so stdout and stderr lines
    reach the log pipe in the order they were written (as on Lambda)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        self._stream.flush()
        return int(written)

    def writelines(self, lines: Any) -> None:
        self._stream.writelines(lines)
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def configure_logging(logging: Any) -> None:
    """Lambda's root logger: Lambda's format on stdout, at AWS_LAMBDA_LOG_LEVEL."""
    handler = logging.StreamHandler(sys.stdout)
    formatter = logging.Formatter(LOG_FORMAT, "%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    handler.addFilter(_add_request_id)
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(os.environ.get("AWS_LAMBDA_LOG_LEVEL", "WARNING").upper())


class _ConfigureAfterExec:
    """Wraps the loader of ``logging``: runs the module, then configures it (once)."""

    def __init__(self, loader: Any, hook: LoggingHook) -> None:
        self._loader = loader
        self._hook = hook

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self._loader.exec_module(module)
        if not self._hook.done:  # (a reload runs this again: one handler only)
            self._hook.done = True
            configure_logging(module)
        if self._hook in sys.meta_path:
            sys.meta_path.remove(self._hook)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... for linecache & co
        return getattr(self._loader, name)


class LoggingHook:
    """A meta path finder that configures ``logging`` when it is first imported
    (by the handler or a library), so sandboxes that never log never import it.
    It steps aside once ``logging`` has run (not at a mere ``find_spec``)."""

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "logging" or self.done:
            return None
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            if finder is self or find is None:
                continue
            spec = find(name, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ConfigureAfterExec(spec.loader, self)
                return spec
        return None


def _setup_streams_and_logging() -> None:
    sys.stdout = Unbuffered(sys.stdout)
    sys.stderr = Unbuffered(sys.stderr)
    if "logging" in sys.modules:  # imported already (never under -I -S): configure now
        configure_logging(sys.modules["logging"])
    else:
        sys.meta_path.insert(0, LoggingHook())


def _setup_path() -> None:
    task_root = os.environ.get("LAMBDA_TASK_ROOT", "/var/task")
    layer = os.environ.get("MESHFAAS_LAYER_DIR", "")
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if p and os.path.abspath(p) != here]
    sys.path.insert(0, task_root)
    if layer:
        # addsitedir also honours the layer's .pth files (python runs with -S,
        # so the interpreter's own site-packages are not on the path).
        import site

        site.addsitedir(layer)
        sys.path.remove(layer)
        sys.path.insert(1, layer)
    os.chdir(task_root)


def _fault_handler(fault: FaultError) -> Handler:
    def handler(event: Any, context: Any) -> Any:
        raise fault
    handler.fatal = True  # type: ignore[attr-defined]
    return handler


def load_handler(spec: str) -> Handler:
    """Import "module.function"; a failure becomes a handler raising Lambda's fault."""
    try:
        modname, fname = spec.rsplit(".", 1)
    except ValueError as exc:
        return _fault_handler(FaultError("Runtime.MalformedHandlerName", f"Bad handler '{spec}': {exc}"))
    if modname.split(".")[0] in sys.builtin_module_names:
        return _fault_handler(FaultError(
            "Runtime.BuiltInModuleConflict", f"Cannot use built-in module {modname} as a handler module"))
    try:
        __import__(modname)  # (cheaper to start than importlib.import_module)
        module = sys.modules[modname]
    except ImportError as exc:
        return _fault_handler(FaultError(
            "Runtime.ImportModuleError", f"Unable to import module '{modname}': {exc}"))
    except SyntaxError as exc:
        trace = [f'  File "{exc.filename}" Line {exc.lineno}\n    {exc.text}']
        return _fault_handler(FaultError(
            "Runtime.UserCodeSyntaxError", f"Syntax error in module '{modname}': {exc}", trace))
    except Exception as exc:
        return _fault_handler(FaultError(
            "Runtime.ImportModuleError", f"Unable to import module '{modname}': {exc!r}",
            _user_frames(exc.__traceback__)))
    handler: Handler | None = getattr(module, fname, None)
    if handler is None:
        return _fault_handler(FaultError(
            "Runtime.HandlerNotFound", f"Handler '{fname}' missing on module '{modname}'"))
    return handler


# ---------------------------------------------------------------------------
# One invocation
# ---------------------------------------------------------------------------


def max_memory_used_mb() -> int:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return math.ceil(max(own, children) / 1024)


def _log_error(error: Json) -> None:
    lines = [f"[ERROR] {error['errorType']}: {error['errorMessage']}"]
    if error["stackTrace"]:
        lines.append("Traceback (most recent call last):")
        lines.extend(line.rstrip("\n") for line in error["stackTrace"])
    sys.stdout.write("\n".join(lines) + "\n")


def _call(handler: Handler, body: bytes, context: LambdaContext, max_response: int) -> bytes:
    try:
        event = json_loads(body) if body else None
    except ValueError as exc:
        raise FaultError("Runtime.UnmarshalError", f"Unable to unmarshal input: {exc}") from None
    result = handler(event, context)
    try:
        out = json_dumps(result)
    except (TypeError, ValueError) as exc:
        raise FaultError("Runtime.MarshalError", f"Unable to marshal response: {exc}") from None
    if len(out) > max_response:
        raise FaultError("Function.ResponseSizeTooLarge",
                         f"Response payload size exceeded maximum allowed payload size ({max_response} bytes).")
    return out


def invoke(handler: Handler, header: Json, body: bytes, state: Json) -> tuple[Json, bytes]:
    """Run one invocation (header: request_id, deadline_ms, arn); returns the
    result header and body (tests; :func:`serve` uses :func:`invoke_frame`)."""
    frame = invoke_frame(handler, str(header.get("request_id", "")),
                         int(header.get("deadline_ms", 3000)), str(header.get("arn", "")), body, state)
    head_len = FRAME.unpack_from(frame)[0]
    _, ok, fatal, duration_ms, billed_ms, memory_mb, init_ms = RESULT_HEAD.unpack_from(frame, FRAME.size)
    result = {"op": "result", "ok": ok, "fatal": fatal, "duration_ms": duration_ms,
              "billed_ms": billed_ms, "max_memory_mb": memory_mb,
              "init_ms": None if init_ms != init_ms else init_ms}
    return result, frame[FRAME.size + head_len:]


def invoke_frame(handler: Handler, request_id: str, deadline_ms: int, arn: str, body: bytes,
                 state: Json) -> bytes:
    """Run one invocation; returns the whole result frame."""
    global _CURRENT_REQUEST_ID
    _CURRENT_REQUEST_ID = request_id
    start = time.monotonic()
    context = LambdaContext(request_id, start + deadline_ms / 1000, arn, state["context"])
    fatal = bool(getattr(handler, "fatal", False))
    try:
        ok, out = True, _call(handler, body, context, state["max_response"])
    except MemoryError:
        ok, fatal = False, True
        out = _error_json("Runtime.OutOfMemory", "Runtime exited with error: out of memory", request_id)
    except (SystemExit, KeyboardInterrupt) as exc:
        ok, fatal = False, True
        out = _error_json("Runtime.ExitError", f"Runtime exited with error: {exc!r}", request_id)
    except Exception as exc:
        ok, error = False, error_object(exc, request_id)
        _log_error(error)
        out = json_dumps(error)
    duration_ms = (time.monotonic() - start) * 1000
    sys.stdout.flush()
    sys.stderr.flush()
    return encode_result(ok, fatal, duration_ms, max(1, math.ceil(duration_ms)), max_memory_used_mb(),
                         state.pop("init_ms", None), out)


def _error_json(error_type: str, message: str, request_id: str) -> bytes:
    error = {"errorMessage": message, "errorType": error_type, "requestId": request_id, "stackTrace": []}
    _log_error(error)
    return json_dumps(error)


# ---------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------


def _wait_for_load(reader: FrameReader, write_fd: int) -> bool:
    """Spare mode: announce readiness, then take the function's environment from a load frame."""
    write_all(write_fd, encode_frame({"op": "ready", "spare": True}))
    frame = reader.read()
    if frame is None or frame[0].get("op") != "load":
        return False
    os.environ.pop("MESHFAAS_SPARE", None)
    env = frame[0].get("env") or {}
    os.environ.update({str(k): str(v) for k, v in env.items()})
    return True


def serve(read_fd: int, write_fd: int) -> int:
    init_start = time.monotonic()
    reader = FrameReader(read_fd)
    _setup_streams_and_logging()
    if os.environ.get("MESHFAAS_SPARE") == "1":
        if not _wait_for_load(reader, write_fd):
            return 0
        init_start = time.monotonic()
    _setup_path()
    version = ".".join(map(str, sys.version_info[:3]))
    sys.stdout.write(f"INIT_START Runtime Version: python:{version}\n")
    handler = load_handler(os.environ.get("_HANDLER", "lambda_function.lambda_handler"))
    init_ms = (time.monotonic() - init_start) * 1000
    state = {"init_ms": init_ms, "context": context_fields(),
             "max_response": int(os.environ.get("MESHFAAS_MAX_RESPONSE_BYTES", DEFAULT_MAX_RESPONSE_BYTES))}
    write_all(write_fd, encode_frame({"op": "ready", "init_ms": init_ms, "python": version}))
    return _serve_invocations(reader, write_fd, handler, state)


def _serve_invocations(reader: FrameReader, write_fd: int, handler: Handler, state: Json) -> int:
    while True:
        frame = reader.read_raw()
        if frame is None:
            return 0
        head, body = frame
        if head[:1] != INVOKE_TAG:  # a JSON frame: exit (or anything else: end as well)
            return 0
        request_id, deadline_ms, arn = decode_invoke(head)
        write_all(write_fd, invoke_frame(handler, request_id, deadline_ms, arn, body, state))


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        sys.stderr.write("usage: bootstrap.py READ_FD WRITE_FD\n")
        return 2
    return serve(int(argv[1]), int(argv[2]))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
