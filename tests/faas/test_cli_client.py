"""The client CLI, run by click's CliRunner (in a thread) against the fake node."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click
import pytest
import trio
import zmq
from click.testing import CliRunner, Result

from meshfaas.cli import cli
from meshfaas.cli_client import resolve_target

from .fake_node import FakeNode
from .test_client import HELLO, hello


@pytest.fixture
async def node() -> AsyncIterator[FakeNode]:
    ctx: zmq.Context[Any] = zmq.Context()
    fake = FakeNode(ctx)
    fake.handlers["hello"] = hello
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()
    fake.close()
    ctx.destroy(linger=0)


async def run(node: FakeNode, *args: str) -> Result:
    env = {"MESHFAAS_ENDPOINT": node.endpoint, "MESHFAAS_API_KEY": node.admin_key,
           "MESHFAAS_DATA_DIR": "/nonexistent"}
    runner = CliRunner()
    return await trio.to_thread.run_sync(lambda: runner.invoke(cli, list(args), env=env))


async def test_deploy_invoke_ls_get(node: FakeNode) -> None:
    out = await run(node, "deploy", "hello", str(HELLO), "--handler", "app.handler",
                    "--memory", "256", "--env", "A=1", "--publish")
    assert out.exit_code == 0, out.output
    assert "created hello" in out.output and "published version 1" in out.output
    out = await run(node, "invoke", "hello", '{"name": "cli"}')
    assert out.exit_code == 0 and json.loads(out.output) == {"greeting": "Hello, cli!"}
    out = await run(node, "invoke", "hello", "{}", "--log")
    assert out.exit_code == 0 and "START RequestId: n1~" in out.output
    out = await run(node, "invoke", "hello", '{"fail": true}')
    assert out.exit_code == 1 and "ValueError: asked to fail" in out.output
    out = await run(node, "invoke", "hello", "not json")
    assert out.exit_code == 2
    out = await run(node, "ls", "--json")
    listed = json.loads(out.output)
    assert [f["name"] for f in listed] == ["hello"] and listed[0]["config"]["memory_mb"] == 256
    out = await run(node, "ls")
    assert "hello" in out.output and "256 MB" in out.output
    out = await run(node, "get", "hello")
    assert out.exit_code == 0 and "app.handler" in out.output
    out = await run(node, "get", "nope")
    assert out.exit_code == 1 and "NotFound" in out.output


async def test_versions_alias_rm(node: FakeNode) -> None:
    await run(node, "deploy", "hello", str(HELLO), "--handler", "app.handler")
    assert (await run(node, "versions", "hello", "--publish")).exit_code == 0
    await run(node, "deploy", "hello", str(HELLO), "--handler", "app.handler", "--memory", "512")
    out = await run(node, "versions", "hello", "--publish", "--json")
    assert [v["version"] for v in json.loads(out.output.split("\n", 1)[1])] == [1, 2]
    out = await run(node, "alias", "hello", "live", "1", "--weight", "2=0.1")
    assert out.exit_code == 0 and "live->1 (90%) + 2 (10%)" in out.output
    out = await run(node, "alias", "hello")
    assert "live" in out.output and "10%" in out.output
    assert (await run(node, "alias", "hello", "live", "--delete")).exit_code == 0
    assert (await run(node, "rm", "hello", "-y")).exit_code == 0
    assert (await run(node, "ls", "--json")).output.strip() == "[]"


async def test_async_result_logs_members_status(node: FakeNode) -> None:
    await run(node, "deploy", "hello", str(HELLO), "--handler", "app.handler")
    out = await run(node, "invoke", "hello", "{}", "--async", "--idempotency-key", "k1")
    invocation_id = out.output.strip()
    assert out.exit_code == 0 and invocation_id.startswith("n1~")
    out = await run(node, "result", invocation_id, "--json")
    assert json.loads(out.output)["status"] == "pending"
    await run(node, "invoke", "hello", "{}")
    out = await run(node, "logs", "hello")
    assert out.exit_code == 0 and "START RequestId" in out.output
    out = await run(node, "members")
    assert "n1" in out.output and "alive" in out.output
    out = await run(node, "status", "--json")
    assert json.loads(out.output)["leader"] == "n1"


async def test_keys(node: FakeNode) -> None:
    out = await run(node, "key", "create", "ci", "--role", "invoker")
    assert out.exit_code == 0
    token = out.output.strip().splitlines()[-1]
    assert token.startswith("mf_")
    out = await run(node, "key", "ls", "--json")
    keys = json.loads(out.output)
    assert {k["role"] for k in keys} == {"admin", "invoker"}
    assert all("secret_hash" not in k for k in keys)
    ci = next(k for k in keys if k["name"] == "ci")
    assert (await run(node, "key", "revoke", ci["key_id"])).exit_code == 0


def test_resolve_target_precedence(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps(
        {"endpoints": ["tcp://creds:1"], "api_key": "mf_creds"}))
    env = {"MESHFAAS_DATA_DIR": str(tmp_path)}
    assert resolve_target((), None, None, env).endpoints == ("tcp://creds:1",)
    env["MESHFAAS_ENDPOINT"] = "tcp://env:1,tcp://env:2"
    env["MESHFAAS_API_KEY"] = "mf_env"
    target = resolve_target((), None, None, env)
    assert target.endpoints == ("tcp://env:1", "tcp://env:2") and target.api_key == "mf_env"
    target = resolve_target(("tcp://flag:1",), "mf_flag", None, env)
    assert target.endpoints == ("tcp://flag:1",) and target.api_key == "mf_flag"
    with pytest.raises(click.UsageError):
        resolve_target((), None, str(tmp_path / "empty"), {})
