"""The Lambda contract and the executor's lifecycle, through real nsjail sandboxes."""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from sandbox_testlib import HANDLERS, nsjail_problem, sandbox_uid_processes, wait_until

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec
from sandbox.runtimes import Runtime

MakeFn = Callable[..., FunctionSpec]


def result(res: Any) -> Any:
    assert res.status == "ok", (res.status, res.error, res.log_tail)
    return json.loads(res.result)


async def test_cold_then_warm_module_code_runs_once(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.handler")
    first = await executor.invoke(fn, "1", b'{"n": 1}', "req-1")
    second = await executor.invoke(fn, "1", b'{"n": 2}', "req-2")
    assert result(first) == {"event": {"n": 1}, "calls": 1, "init_count": 1}
    assert result(second) == {"event": {"n": 2}, "calls": 2, "init_count": 1}
    assert first.cold_start and not second.cold_start
    assert first.init_ms is not None and second.init_ms is None
    assert executor.warm_functions() == {"app-handler:1": 1}


async def test_begin_starts_a_warm_run_that_invoke_finishes(executor: Executor,
                                                             make_fn: MakeFn) -> None:
    """begin() writes the request to an idle warm sandbox at once (no await); invoke()
    with the same request id collects that run's answer and leaves the sandbox warm.
    Without an idle warm sandbox begin() does nothing and invoke() runs it cold."""
    fn = make_fn("app.handler")
    assert not executor.begin(fn, "1", b'{"n": 1}', "req-1")  # nothing warm yet
    cold = await executor.invoke(fn, "1", b'{"n": 1}', "req-1")
    assert cold.cold_start
    assert executor.begin(fn, "1", b'{"n": 2}', "req-2")
    assert not executor.begin(fn, "1", b'{"n": 3}', "req-3")  # its only sandbox is busy now
    warm = await executor.invoke(fn, "1", b'{"n": 2}', "req-2")
    assert result(warm) == {"event": {"n": 2}, "calls": 2, "init_count": 1}
    assert not warm.cold_start and warm.request_id == "req-2"
    assert executor.warm_functions() == {"app-handler:1": 1}
    again = await executor.invoke(fn, "1", b'{"n": 3}', "req-3")  # plain invoke still works
    assert result(again)["calls"] == 3


async def test_context_object_and_identity(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.context_info", memory_mb=192, timeout_ms=4000, env={"GREETING": "hi"})
    info = result(await executor.invoke(fn, "7", b"{}", "abc-123"))
    assert info["function_name"] == "app-context_info"
    assert info["function_version"] == "7"
    assert info["invoked_function_arn"] == "arn:aws:lambda:local:000000000000:function:app-context_info:7"
    assert info["memory_limit_in_mb"] == "192"  # a string, as on AWS Lambda
    assert info["aws_request_id"] == "abc-123"
    assert info["log_group_name"] == "/aws/lambda/app-context_info"
    assert re.fullmatch(r"\d{4}/\d\d/\d\d/\[7\][0-9a-f]{32}", info["log_stream_name"])
    assert 3000 < info["remaining_ms"] <= 4000
    assert (info["uid"], info["gid"], info["pid"]) == (65534, 65534, 1)
    assert info["cwd"] == "/var/task"
    assert info["env_greeting"] == "hi"
    assert info["handler_env"] == "app.context_info"


async def test_logs_are_captured_per_invocation_with_lambda_lines(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.logs")
    cold = await executor.invoke(fn, "1", b"{}", "r1")
    warm = await executor.invoke(fn, "1", b"{}", "r2")
    assert result(cold) == "logged"
    lines = warm.log_tail.splitlines()
    assert lines[0] == "START RequestId: r2 Version: 1"
    assert lines.index("to stdout") < lines.index("to stderr") < 3  # written in order, unbuffered
    assert any(re.fullmatch(r"\[WARNING\]\t\S+Z\tr2\ta warning", ln) for ln in lines)
    assert not any("an info" in ln for ln in lines)
    assert lines[-2] == "END RequestId: r2"
    report = lines[-1]
    assert re.fullmatch(r"REPORT RequestId: r2\tDuration: \d+\.\d\d ms\tBilled Duration: \d+ ms\t"
                        r"Memory Size: 128 MB\tMax Memory Used: \d+ MB", report)
    assert "r1" not in warm.log_tail  # the previous invocation's log is not repeated
    assert "Init Duration: " in cold.log_tail.splitlines()[-1]
    cold_lines = cold.log_tail.splitlines()
    assert cold_lines.index("module init ran") < cold_lines.index("START RequestId: r1 Version: 1")
    assert cold_lines[0].startswith("INIT_START Runtime Version: python:3.")
    assert warm.billed_ms >= 1 and warm.billed_ms >= warm.duration_ms
    assert warm.billed_ms - warm.duration_ms < 1
    assert warm.max_memory_mb > 0


async def test_unhandled_exception_is_lambda_error_and_sandbox_stays_warm(
        executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.fail")
    res = await executor.invoke(fn, "1", b'"boom"', "req-x")
    assert res.status == "error"
    assert res.error is not None
    assert res.error["errorType"] == "ValueError"
    assert res.error["errorMessage"] == "something bad: boom"
    assert res.error["requestId"] == "req-x"
    assert any('app.py", line' in frame and "in fail" in frame for frame in res.error["stackTrace"])
    assert not any("bootstrap.py" in frame for frame in res.error["stackTrace"])
    assert "[ERROR] ValueError: something bad: boom" in res.log_tail
    again = await executor.invoke(fn, "1", b'"x"', "req-y")
    assert not again.cold_start


@pytest.mark.parametrize(
    ("handler", "folder", "error_type", "message"),
    [
        ("app_import_error.handler", "basic", "Runtime.ImportModuleError",
         "Unable to import module 'app_import_error': No module named 'module_that_does_not_exist'"),
        ("app.no_such_handler", "basic", "Runtime.HandlerNotFound",
         "Handler 'no_such_handler' missing on module 'app'"),
        ("nodots", "basic", "Runtime.MalformedHandlerName", "Bad handler 'nodots'"),
        ("app.handler", "broken", "Runtime.ImportModuleError", "Unable to import module 'app'"),
    ],
)
async def test_init_faults(executor: Executor, make_fn: MakeFn, handler: str, folder: str,
                           error_type: str, message: str) -> None:
    fn = make_fn(handler, folder=folder)
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "error"
    assert res.error is not None
    assert res.error["errorType"] == error_type
    assert res.error["errorMessage"].startswith(message)
    assert executor.warm_functions() == {}  # a sandbox whose init failed is not kept


async def test_syntax_error(executor: Executor, make_fn: MakeFn, tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    (code / "bad.py").write_text("def handler(event, context)\n    return 1\n")
    fn = FunctionSpec(name="bad", handler="bad.handler", code_dir=str(code),
                      runtime=make_fn("x.y").runtime)
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.error is not None
    assert res.error["errorType"] == "Runtime.UserCodeSyntaxError"
    assert res.error["errorMessage"].startswith("Syntax error in module 'bad'")
    assert "bad.py" in res.error["stackTrace"][0]


async def test_marshal_errors(executor: Executor, make_fn: MakeFn) -> None:
    res = await executor.invoke(make_fn("app.not_json"), "1", b"{}", "r")
    assert res.error is not None and res.error["errorType"] == "Runtime.MarshalError"
    assert res.error["errorMessage"] == "Unable to marshal response: Object of type set is not JSON serializable"
    res = await executor.invoke(make_fn("app.echo"), "1", b"{not json", "r")
    assert res.error is not None and res.error["errorType"] == "Runtime.UnmarshalError"


async def test_timeout_kills_and_replaces(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.sleep", timeout_ms=400)
    res = await executor.invoke(fn, "1", b'{"seconds": 30}', "r-timeout")
    assert res.status == "timeout"
    assert res.error is not None
    assert res.error["errorType"] == "Sandbox.Timedout"
    assert res.error["errorMessage"] == "Task timed out after 0.40 seconds"
    assert "Task timed out after 0.40 seconds" in res.log_tail
    assert res.log_tail.rstrip().splitlines()[-1].endswith("\tStatus: timeout")
    assert executor.warm_functions() == {}
    ok = await executor.invoke(fn, "1", b'{"seconds": 0}', "r-after")
    assert result(ok) == "slept" and ok.cold_start


async def test_crash_is_a_clear_error_and_not_reused(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.exit_now")
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "crash"
    assert res.error is not None
    assert res.error["errorType"] == "Runtime.ExitError"
    assert "exit status 3" in res.error["errorMessage"]
    assert res.log_tail.rstrip().endswith("\tStatus: error\tError Type: Runtime.ExitError")
    assert executor.warm_functions() == {}


async def test_response_too_large(executor: Executor, make_fn: MakeFn) -> None:
    res = await executor.invoke(make_fn("app.echo"), "1", json.dumps("x" * 7_000_000).encode(), "r")
    assert res.error is not None and res.error["errorType"] == "Function.ResponseSizeTooLarge"


async def test_prewarm_and_idle_expiry_down_to_zero(runtimes: dict[str, Runtime], make_fn: MakeFn,
                                                    tmp_path: Path) -> None:
    from sandbox_testlib import require_nsjail

    require_nsjail()
    config = ExecutorConfig(data_dir=str(tmp_path), idle_expiry_ms=3000, uid_base=240_000, max_sandboxes=8)
    async with Executor(config, runtimes=runtimes) as ex:
        fn = make_fn("app.handler")
        assert await ex.prewarm(fn, "3", count=2) == 2
        assert ex.warm_functions() == {"app-handler:3": 2}
        res = await ex.invoke(fn, "3", b"{}", "r")
        assert not res.cold_start
        assert await wait_until(lambda: ex.stats()["live"] == 0, timeout_s=10)
    assert await wait_until(lambda: not sandbox_uid_processes(240_000, 12))


async def test_max_per_function_throttles(runtimes: dict[str, Runtime], make_fn: MakeFn,
                                          tmp_path: Path) -> None:
    from sandbox_testlib import require_nsjail

    require_nsjail()
    config = ExecutorConfig(data_dir=str(tmp_path), max_per_function=1, uid_base=250_000, max_sandboxes=4)
    async with Executor(config, runtimes=runtimes) as ex:
        fn = make_fn("app.sleep")
        results = []

        async def call(seconds: float) -> None:
            results.append(await ex.invoke(fn, "1", json.dumps({"seconds": seconds}).encode(), "r"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, 1.0)
            await wait_until(lambda: ex.stats()["busy"] == 1)
            nursery.start_soon(call, 0)
        statuses = sorted(r.status for r in results)
    assert statuses == ["ok", "throttled"]


async def test_each_runtime_runs_handlers(executor: Executor, make_fn: MakeFn,
                                          runtimes: dict[str, Runtime]) -> None:
    assert {"python3.11", "python3.12", "python3.13"} <= set(executor.runtimes())
    for name in ("python3.11", "python3.12", "python3.13"):
        info = result(await executor.invoke(make_fn("app.context_info", runtime=name), "1", b"{}", "r"))
        assert "python{}.{}".format(*info["python"][:2]) == name
        nasty = rb'{"\u00e9": [1.5, -0.0, 1e300, null, "\ud83d\ude00"], "n": NaN}'
        res = await executor.invoke(make_fn("lean.roundtrip", runtime=name), "1", nasty, "r")
        assert res.result == json.dumps(json.loads(nasty)).encode()  # json's C accelerator, any version
        res = await executor.invoke(make_fn("lean.roundtrip", runtime=name), "1", b"[1,", "r")
        assert res.error is not None and res.error["errorType"] == "Runtime.UnmarshalError"
        res = await executor.invoke(make_fn("lean.log_late", runtime=name), "1", b'"y"', "r3")
        assert any(re.fullmatch(r"\[WARNING\]\t\S+Z\tr3\tlate warning y", ln)  # the logging hook, any version
                   for ln in res.log_tail.splitlines()), res.log_tail


async def test_missing_runtime_is_a_clear_error(executor: Executor, make_fn: MakeFn) -> None:
    res = await executor.invoke(make_fn("app.handler", runtime="python2.7"), "1", b"{}", "r")
    assert res.status == "unavailable"
    assert res.error is not None
    assert "runtime 'python2.7' is not available" in res.error["errorMessage"]
    assert "python3.11" in res.error["errorMessage"]


async def test_nsjail_start_failure_says_why_and_how(runtimes: dict[str, Runtime], make_fn: MakeFn,
                                                      tmp_path: Path) -> None:
    from sandbox_testlib import require_nsjail

    require_nsjail()
    config = ExecutorConfig(data_dir=str(tmp_path), uid_base=260_000, max_sandboxes=2)
    async with Executor(config, runtimes=runtimes) as ex:
        fn = make_fn("app.handler", folder="does-not-exist")
        res = await ex.invoke(fn, "1", b"{}", "r")
    assert res.status == "unavailable"
    assert res.error is not None
    assert res.error["errorType"] == "Sandbox.StartError"
    message = res.error["errorMessage"]
    assert "did not start" in message and "nsjail said" in message and "how to fix" in message


async def test_unsafe_backend_only_by_configuration_and_warns(
        runtimes: dict[str, Runtime], make_fn: MakeFn, tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config = ExecutorConfig(data_dir=str(tmp_path), backend="unsafe")
    with pytest.warns(RuntimeWarning, match="unsafe"):
        ex = Executor(config, runtimes=runtimes)
    caplog.clear()
    async with ex:
        fn = make_fn("app.handler", folder="basic")
        assert result(await ex.invoke(fn, "1", b"{}", "r"))["calls"] == 1
        res = await ex.invoke(make_fn("app.sleep", timeout_ms=300), "1", b'{"seconds": 30}', "r")
        assert res.status == "timeout"
    starts = [r for r in caplog.records if r.levelname == "WARNING" and "'unsafe'" in r.getMessage()]
    assert len(starts) == 2  # one warning per sandbox start
    assert ExecutorConfig(data_dir="x").backend == "nsjail"


async def test_bootstrap_file_is_the_one_mounted() -> None:
    # The jail runs sandbox/bootstrap.py from the package; keep the test handlers honest too.
    assert (HANDLERS / "basic" / "app.py").exists()
    assert nsjail_problem() is None or isinstance(nsjail_problem(), str)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Path(__file__).exists()


async def test_spare_jail_serves_the_next_cold_start_of_its_shape(
        executor: Executor, make_fn: MakeFn, tmp_path: Path) -> None:
    first = make_fn("app.handler", name="first")
    executor.prepare(first)
    await executor.wait_for_spares()
    assert executor.stats()["spares"] == 1
    assert result(await executor.invoke(first, "1", b"{}", "r1"))["calls"] == 1
    await executor.wait_for_spares()
    assert executor.stats()["spares"] == 1
    code = tmp_path / "second-code"
    (code / "pkg").mkdir(parents=True)
    (code / "pkg" / "__init__.py").write_text("")
    (code / "pkg" / "mod.py").write_text(
        "import os\n"
        "def handler(event, context):\n"
        "    try:\n"
        "        leaked = open('/var/task/host_link').read()\n"
        "    except OSError as exc:\n"
        "        leaked = type(exc).__name__\n"
        "    return [context.function_name, os.environ.get('ONLY_SECOND'), leaked]\n")
    (code / "host_link").symlink_to("/etc/hostname")  # must not be followed on the host
    second = FunctionSpec(name="second", handler="pkg.mod.handler", code_dir=str(code),
                          runtime=first.runtime, env={"ONLY_SECOND": "yes"})
    res = await executor.invoke(second, "1", b"{}", "r2")
    assert result(res) == ["second", "yes", "FileNotFoundError"]
    assert res.cold_start and res.init_ms is not None
    assert "Init Duration" in res.log_tail
    slot = executor._pool.take(("second", "1", second))
    assert slot is not None and slot.task_dir is not None  # it was the spare, code linked in
    executor._pool.put(("second", "1", second), slot, trio.current_time())
    await executor.wait_for_spares()
    assert executor.stats()["spares"] == 1  # replenished


def test_cli_invoke_runs_a_handler(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from sandbox_testlib import require_nsjail

    from meshfaas.cli import cli

    require_nsjail()
    runner = CliRunner()
    out = runner.invoke(cli, ["sandbox", "invoke", str(HANDLERS / "basic"), "app.echo",
                              "--event", '{"k": [1, 2]}', "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    assert '{"k": [1, 2]}' in out.output
    bad = runner.invoke(cli, ["sandbox", "invoke", str(HANDLERS / "basic"), "app.fail",
                              "--data-dir", str(tmp_path)])
    assert bad.exit_code == 1 and '"errorType": "ValueError"' in bad.output


async def test_cancelled_callers_leak_nothing(executor: Executor, make_fn: MakeFn) -> None:
    fn = make_fn("app.sleep", timeout_ms=10_000)
    with trio.move_on_after(0.01):  # cancelled during the cold start
        await executor.invoke(fn, "1", b'{"seconds": 5}', "r")
    with trio.move_on_after(1.0):  # cancelled mid-invocation (once the start is done)
        await executor.invoke(fn, "2", b'{"seconds": 5}', "r")
    await executor.wait_for_spares()
    assert executor.stats()["live"] == executor.stats()["spares"]
    assert await wait_until(lambda: len(sandbox_uid_processes()) == executor.stats()["live"])
    assert result(await executor.invoke(fn, "1", b'{"seconds": 0}', "r")) == "slept"


async def test_executor_without_its_own_task(runtimes: dict[str, Runtime], make_fn: MakeFn,
                                             tmp_path: Path) -> None:
    from sandbox_testlib import require_nsjail

    require_nsjail()
    config = ExecutorConfig(data_dir=str(tmp_path), uid_base=270_000, max_sandboxes=4)
    ex = Executor(config, runtimes=runtimes)  # no `async with`, no run(): no spares, no reaper
    fn = make_fn("app.logs")
    first = await ex.invoke(fn, "1", b"{}", "a")
    second = await ex.invoke(fn, "1", b"{}", "b")
    assert result(first) == result(second) == "logged"
    assert "to stderr" in second.log_tail and not second.cold_start
    assert ex.stats()["spares"] == 0
    await ex.aclose()
    assert ex.stats()["live"] == 0
    assert await wait_until(lambda: not sandbox_uid_processes(270_000, 8))
    closed = await ex.invoke(fn, "1", b"{}", "c")
    assert closed.status == "unavailable" and closed.error is not None
    assert closed.error["errorType"] == "Sandbox.Closed"


async def test_unusable_code_path_is_a_value_not_a_crash(executor: Executor, make_fn: MakeFn) -> None:
    fn = FunctionSpec(name="colon", handler="app.handler", code_dir="/tmp/a:b",
                      runtime=make_fn("x.y").runtime)
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "unavailable"
    assert res.error is not None and "absolute path without ':'" in res.error["errorMessage"]


@pytest.mark.parametrize(("spare_mb", "function_mb", "allocate_mb", "status"),
                         [(128, 64, 100, "oom"), (64, 256, 150, "ok")])
async def test_spare_takes_the_claiming_functions_memory_limit(
        executor: Executor, make_fn: MakeFn, monkeypatch: pytest.MonkeyPatch,
        spare_mb: int, function_mb: int, allocate_mb: int, status: str) -> None:
    if status == "oom" and not executor.backend.cgroups.limits_memory:
        pytest.skip("without a memory cgroup only RLIMIT_AS (2 x memory + 512 MB) limits memory")
    executor.prepare(make_fn("app.handler", memory_mb=spare_mb))
    await executor.wait_for_spares()
    assert executor.stats()["spares"] == 1

    async def no_fresh_start(*args: Any) -> Any:
        raise AssertionError("the spare should have been claimed")

    monkeypatch.setattr(executor, "_spawn", no_fresh_start)
    fn = make_fn("app.allocate", memory_mb=function_mb)
    res = await executor.invoke(fn, "1", json.dumps({"mb": allocate_mb}).encode(), "r")
    assert res.status == status, (res.error, res.log_tail[-300:])
    if status == "oom":
        assert res.error is not None and f"its limit is {function_mb} MB" in res.error["errorMessage"]
    else:
        assert result(res) == allocate_mb and res.max_memory_mb >= allocate_mb


async def test_lean_cold_start_imports_and_late_logging(executor: Executor, make_fn: MakeFn) -> None:
    # The runtime itself imports none of the heavy modules (they cost a cold start ms each)...
    assert result(await executor.invoke(make_fn("lean.modules"), "1", b"{}", "r1")) == []
    # ...and logging, imported late by the handler, is still configured as on Lambda.
    res = await executor.invoke(make_fn("lean.log_late"), "1", b'"x"', "r2")
    assert result(res) == 30  # WARNING
    assert any(re.fullmatch(r"\[WARNING\]\t\S+Z\tr2\tlate warning x", ln) for ln in res.log_tail.splitlines())


@pytest.mark.parametrize("payload", [
    b'{"a": [1, 2.5, -3e300, true, false, null], "\\u00e9": "\\ud83d\\ude00 \\"q\\""}',
    b"  [1, {}]  \n", b'"just a string"', b"NaN", b"-Infinity", b'\xef\xbb\xbf{"bom": 1}',
    "[1, 2]".encode("utf-16"), b'{"big": 123456789012345678901234567890}',
])
async def test_events_and_results_round_trip_as_json_does(executor: Executor, make_fn: MakeFn,
                                                           payload: bytes) -> None:
    res = await executor.invoke(make_fn("lean.roundtrip"), "1", payload, "r")
    assert res.status == "ok", res.error
    assert res.result == json.dumps(json.loads(payload)).encode()


@pytest.mark.parametrize("payload", [b"{not json", b"[1,", b"[1] x", b'"\xff"', b"\x00\x01"])
async def test_bad_events_are_unmarshal_errors_with_jsons_message(executor: Executor, make_fn: MakeFn,
                                                                  payload: bytes) -> None:
    res = await executor.invoke(make_fn("lean.roundtrip"), "1", payload, "r")
    assert res.error is not None and res.error["errorType"] == "Runtime.UnmarshalError"
    with pytest.raises(ValueError) as info:
        json.loads(payload)
    assert res.error["errorMessage"] == f"Unable to unmarshal input: {info.value}"


async def test_jails_run_the_bootstrap_precompiled_by_their_runtime(
        executor: Executor, make_fn: MakeFn, config: ExecutorConfig) -> None:
    for name in ("python3.11", "python3.13"):
        assert result(await executor.invoke(make_fn("lean.argv0", runtime=name), "1", b"{}", "r")) \
            == "/opt/meshfaas/bootstrap.pyc"
    compiled = sorted(p.name for p in (Path(config.data_dir) / "bootstrap").iterdir())
    assert [n.split("-")[0] for n in compiled] == ["python3.11", "python3.13"]


async def test_code_compiled_once_it_exists_even_if_asked_before(
        executor: Executor, make_fn: MakeFn, tmp_path: Path) -> None:
    """A node prepares a function on deploy, before it has unpacked the code: that
    early attempt must not stop the compiled copy from being built later."""
    code = tmp_path / "code"
    fn = attrs.evolve(make_fn("app.handler"), code_dir=str(code))
    assert await executor.compile_code(fn) is None  # nothing to compile yet
    code.mkdir()
    (code / "app.py").write_text("def handler(event, context):\n    return event\n")
    compiled = await executor.compile_code(fn)
    assert compiled is not None and (Path(compiled) / "app.py").is_file()
