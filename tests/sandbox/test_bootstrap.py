"""The in-jail runtime's pieces, tested in-process (no jail): framing, handler
loading faults, error objects and the context object."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sandbox_testlib import HANDLERS

from sandbox import bootstrap


def test_frames_round_trip_over_a_pipe() -> None:
    r, w = os.pipe()
    try:
        bootstrap.write_all(w, bootstrap.encode_frame({"op": "x", "n": 1}, b"\x00body"))
        assert bootstrap.read_frame(r) == ({"op": "x", "n": 1}, b"\x00body")
        os.close(w)
        w = -1
        assert bootstrap.read_frame(r) is None  # EOF
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


@pytest.fixture
def on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HANDLERS / "basic"))
    for name in ("app", "app_import_error"):
        monkeypatch.delitem(sys.modules, name, raising=False)


@pytest.mark.parametrize(
    ("spec", "error_type"),
    [
        ("nodot", "Runtime.MalformedHandlerName"),
        ("sys.exit", "Runtime.BuiltInModuleConflict"),
        ("app_import_error.handler", "Runtime.ImportModuleError"),
        ("app.missing", "Runtime.HandlerNotFound"),
        ("no_such_module_xyz.handler", "Runtime.ImportModuleError"),
    ],
)
def test_load_handler_faults(on_path: None, spec: str, error_type: str) -> None:
    handler = bootstrap.load_handler(spec)
    assert getattr(handler, "fatal", False)
    with pytest.raises(bootstrap.FaultError) as info:
        handler({}, None)
    assert info.value.error_type == error_type


def test_load_handler_syntax_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_syntax_mod.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    handler = bootstrap.load_handler("broken_syntax_mod.f")
    with pytest.raises(bootstrap.FaultError) as info:
        handler({}, None)
    assert info.value.error_type == "Runtime.UserCodeSyntaxError"
    assert "broken_syntax_mod.py" in info.value.trace[0]


def test_error_object_has_lambda_shape_and_skips_bootstrap_frames() -> None:
    def user_code() -> None:
        raise KeyError("k")

    try:
        user_code()
    except KeyError as exc:
        error = bootstrap.error_object(exc, "rid")
    assert set(error) == {"errorMessage", "errorType", "requestId", "stackTrace"}
    assert error["errorType"] == "KeyError" and error["requestId"] == "rid"
    assert any("user_code" in frame for frame in error["stackTrace"])


def test_context_remaining_time_counts_down(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "fn")
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
    ctx = bootstrap.LambdaContext("rid", time.monotonic() + 2.0, "arn:x")
    assert 1000 < ctx.get_remaining_time_in_millis() <= 2000
    assert (ctx.function_name, ctx.memory_limit_in_mb, ctx.aws_request_id) == ("fn", "256", "rid")
    expired = bootstrap.LambdaContext("rid", time.monotonic() - 5, "arn:x")
    assert expired.get_remaining_time_in_millis() == 0


@pytest.mark.parametrize(
    ("nsjail_log", "hint"),
    [
        ("[E][2026][1] initNs():1 clone(flags=CLONE_NEWUSER|CLONE_NEWNS) failed: Operation not permitted",
         "enable user namespaces"),
        ("[E][2026][1] buildMountTree():328 Failed to mount mandatory point: '/var/task'",
         "check that the interpreter prefix"),
        ("[E][2026][1] initCgroup():1 Could not create cgroup '/sys/fs/cgroup/memory/x'",
         "cgroups='off'"),
        ("[F][2026][1] main():359 Couldn't prepare sandboxing policy", "run `nsjail` by hand"),
    ],
)
def test_start_failure_explains_why_and_how_to_fix(nsjail_log: str, hint: str) -> None:
    from sandbox.process import explain_start_failure

    message = explain_start_failure(nsjail_log, 255, "")
    assert "did not start (exit status 255)" in message
    assert "nsjail said: " + nsjail_log in message
    assert hint in message


def _circular() -> list[object]:
    value: list[object] = []
    value.append(value)
    return value


@pytest.mark.parametrize("value", [
    {"a": [1, 2.5, -0.0, 1e300, True, False, None], "é": "😀 \"q\" \\ \n", 3: "int key"},
    "plain", "", 0, 10**40, float("nan"), float("inf"), [], {}, (1, 2), [[[[]]]],
])
def test_json_dumps_is_jsons(value: object) -> None:
    assert bootstrap.json_dumps(value) == json.dumps(value).encode()


@pytest.mark.parametrize("value", [{1, 2}, {"k": object()}, {(1, 2): 3}, _circular()])
def test_json_dumps_errors_are_jsons(value: object) -> None:
    with pytest.raises((TypeError, ValueError)) as expected:
        json.dumps(value)
    with pytest.raises(type(expected.value)) as got:
        bootstrap.json_dumps(value)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("data", [b'{"a": [1, 2.5, null]}', b" 1 ", b"\n\t[]\r", b'"\\ud800"',
                                  b'\xef\xbb\xbf{"bom": 1}', "[1]".encode("utf-32")])
def test_json_loads_is_jsons(data: bytes) -> None:
    assert bootstrap.json_loads(data) == json.loads(data)


@pytest.mark.parametrize("data", [b"", b"{x", b"[1,", b"[1] 2", b"\xff", b"nul"])
def test_json_loads_errors_are_jsons(data: bytes) -> None:
    with pytest.raises(ValueError) as expected:
        json.loads(data)
    with pytest.raises(ValueError) as got:
        bootstrap.json_loads(data)
    assert str(got.value) == str(expected.value)


def test_invoke_and_result_frames() -> None:
    frame = bootstrap.encode_invoke("rid-é", 2500, "arn:aws:lambda:x", b'{"e": 1}')
    head_len, body_len = bootstrap.FRAME.unpack_from(frame)
    head = frame[bootstrap.FRAME.size:bootstrap.FRAME.size + head_len]
    assert bootstrap.decode_invoke(head) == ("rid-é", 2500, "arn:aws:lambda:x")
    assert frame[bootstrap.FRAME.size + head_len:] == b'{"e": 1}' and body_len == 8
    with pytest.raises(ValueError):
        bootstrap.decode_invoke(head[:bootstrap.INVOKE_HEAD.size + 2])
    long_id, huge_ms = "r" * 70_000, 10**12  # any request id; a deadline beyond 49 days is clamped
    frame = bootstrap.encode_invoke(long_id, huge_ms, "", b"")
    assert bootstrap.decode_invoke(frame[bootstrap.FRAME.size:]) == (long_id, 2**32 - 1, "")
    frame = bootstrap.encode_invoke("\ud800", 1, "arn\udfff", b"")  # lone surrogates pass through
    assert bootstrap.decode_invoke(frame[bootstrap.FRAME.size:]) == ("\ud800", 1, "arn\udfff")
    state = {"context": bootstrap.context_fields(), "max_response": 1000, "init_ms": 12.5}
    header, body = bootstrap.invoke(lambda event, context: [event, context.aws_request_id],
                                    {"request_id": "r1", "deadline_ms": 1000}, b"7", state)
    assert body == b'[7, "r1"]'
    assert header["ok"] and not header["fatal"] and header["init_ms"] == 12.5
    assert header["billed_ms"] >= 1 and header["max_memory_mb"] > 0
    header, _ = bootstrap.invoke(lambda event, context: None, {"request_id": "r2"}, b"", state)
    assert header["init_ms"] is None  # only the first invocation reports init


HOOK_SCRIPT = """
import importlib, importlib.util, sys
sys.path.insert(0, sys.argv[1])
import bootstrap
bootstrap._setup_streams_and_logging()
assert "logging" not in sys.modules
assert importlib.util.find_spec("logging") is not None  # a mere probe does not disarm the hook
import logging.handlers
root = logging.getLogger()
print(len(root.handlers), root.level, root.handlers[0].filters == [bootstrap._add_request_id],
      bootstrap.LoggingHook not in map(type, sys.meta_path))
"""


def test_logging_hook_configures_once_on_first_import() -> None:
    done = subprocess.run([sys.executable, "-I", "-S", "-c", HOOK_SCRIPT, str(Path(bootstrap.__file__).parent)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    # one handler, at WARNING, with the request-id filter; the hook has stepped aside
    assert done.stdout.split() == ["1", "30", "True", "True"]
