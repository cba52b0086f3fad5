"""The SDK against a fake node (a trio task with a zmq ROUTER on 127.0.0.1)."""

from __future__ import annotations

import json
import random
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

import meshfaas
from meshfaas import client as sdk
from meshfaas.core import client_proto as proto
from meshfaas.core.faas_package import PackageError
from tests.ports import free_endpoint  # reserved for this process: nobody listens

from .fake_node import FakeNode, role_key

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"


def hello(event: Any) -> Any:
    if event and event.get("fail"):
        raise ValueError("asked to fail")
    return {"greeting": f"Hello, {(event or {}).get('name', 'world')}!"}


@pytest.fixture
def ctx() -> Any:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
async def node(ctx: zmq.Context[Any]) -> AsyncIterator[FakeNode]:
    fake = FakeNode(ctx)
    fake.handlers["hello"] = hello
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        yield fake
        nursery.cancel_scope.cancel()
    fake.close()




def make_client(node: FakeNode, ctx: zmq.Context[Any], **kwargs: Any) -> sdk.AsyncClient:
    kwargs.setdefault("api_key", node.admin_key)
    kwargs.setdefault("endpoints", node.endpoint)
    return sdk.AsyncClient(context=ctx, connect_timeout_s=2.0, timeout_s=5.0, **kwargs)


async def test_lazy_exports() -> None:
    assert meshfaas.Client is sdk.Client and meshfaas.AsyncClient is sdk.AsyncClient


async def test_deploy_invoke_and_errors(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        seen: list[tuple[int, int]] = []
        deployed = await c.deploy("hello", HELLO, handler="app.handler", memory_mb=256,
                                  env={"GREETING": "hi"}, progress=lambda a, b: seen.append((a, b)))
        assert deployed.created and deployed.function.config.memory_mb == 256
        assert seen and seen[-1][0] == seen[-1][1] == deployed.function.code.size_bytes
        assert deployed.function.code.sha256 in node.blobs
        again = await c.deploy("hello", HELLO, handler="app.handler", memory_mb=256,
                               env={"GREETING": "hi"})
        assert not again.created and again.function.revision == 1  # nothing changed, no upload
        assert await c.invoke("hello", {"name": "mesh"}) == {"greeting": "Hello, mesh!"}
        detailed = await c.invoke_detailed("hello", {"name": "d"})
        assert sdk.decode_payload(detailed.payload) == {"greeting": "Hello, d!"}
        assert detailed.node == "n1" and detailed.executed_version == "$LATEST"
        assert detailed.log_tail.startswith(f"START RequestId: {detailed.invocation_id}")
        with pytest.raises(sdk.FunctionError) as info:
            await c.invoke("hello", {"fail": True})
        assert info.value.errorType == "ValueError"
        assert info.value.errorMessage == "asked to fail"
        assert info.value.invocation_id.startswith("n1~")
        with pytest.raises(sdk.NotFound):
            await c.invoke("nope", {})
        with pytest.raises(sdk.BadRequest):
            await c.deploy("hello", HELLO, handler="app.handler", memory_mb=1)


async def test_versions_aliases_and_listing(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        await c.deploy("hello", HELLO, handler="app.handler")
        v1 = await c.publish_version("hello")
        await c.update_config("hello", timeout_s=10)
        v2 = await c.publish_version("hello", "ten seconds")
        assert (v1.version, v2.version) == (1, 2)
        alias = await c.create_alias("hello", "live", 1, weights={2: 0.25})
        assert (alias.extra_version, alias.extra_weight_bp) == ("2", 2500)
        assert [a.alias for a in await c.list_aliases("hello")] == ["live"]
        assert [v.version for v in await c.list_versions("hello")] == [1, 2]
        details = await c.get_function("hello")
        assert details.function.config.timeout_s == 10 and len(details.versions) == 2
        assert [f.name for f in await c.list_functions()] == ["hello"]
        assert await c.invoke("hello", {}, qualifier="live") == {"greeting": "Hello, world!"}
        with pytest.raises(ValueError):
            await c.create_alias("hello", "bad", 1, weights={2: 1.5})
        await c.delete("hello")
        with pytest.raises(sdk.NotFound):
            await c.get_function("hello")


async def test_async_invocation_and_result(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        await c.deploy("hello", HELLO, handler="app.handler")
        first = await c.invoke_async("hello", {"n": 1}, idempotency_key="once")
        assert await c.invoke_async("hello", {"n": 1}, idempotency_key="once") == first
        record = await c.result(first)
        assert record.status == "pending" and record.function == "hello"
        with pytest.raises(sdk.NotFound):
            await c.result("n1~nothing")


async def test_keys_roles_and_auth(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as admin:
        created = await admin.create_key("ci", "viewer")
        assert created.api_key.startswith("mf_") and created.role == "viewer"
        listed = await admin.list_keys()
        assert {k.name for k in listed} == {"admin", "ci"}
        assert all(not hasattr(k, "secret_hash") for k in listed)
        async with make_client(node, ctx, api_key=created.api_key) as viewer:
            assert await viewer.list_functions() == []
            with pytest.raises(sdk.Forbidden):
                await viewer.deploy("hello", HELLO, handler="app.handler")
            await admin.revoke_key(created.key_id)
            with pytest.raises(sdk.Unauthorized):
                await viewer.list_functions()
    async with make_client(node, ctx, api_key="mf_nonsense") as stranger:
        with pytest.raises(sdk.Unauthorized):
            await stranger.status()
    async with make_client(node, ctx, api_key=role_key(node, "invoker")) as invoker:
        with pytest.raises(sdk.Forbidden):
            await invoker.create_key("x", "admin")


async def test_members_status_and_ping(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        assert await c.ping() == "n1"
        members = await c.members()
        assert [m.node for m in members] == ["n1"] and members[0].events_endpoint
        status = await c.status()
        assert status.leader == "n1" and status.commit_index == node.index


async def test_failover_to_a_live_endpoint(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    dead = free_endpoint()
    async with make_client(node, ctx, endpoints=[dead, node.endpoint]) as c:
        c.connect_timeout_s = 0.3
        assert await c.ping() == "n1"
        assert c.endpoint == node.endpoint


async def test_node_unavailable_answer_fails_over(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    other = FakeNode(ctx, node="n2")
    other.unavailable = True
    async with trio.open_nursery() as nursery:
        await nursery.start(other.serve)
        async with make_client(node, ctx, endpoints=[other.endpoint, node.endpoint]) as c:
            assert await c.ping() == "n1"
        async with make_client(other, ctx, api_key=node.admin_key) as c:
            with pytest.raises(sdk.Unavailable, match="no leader"):
                await c.ping()
        nursery.cancel_scope.cancel()
    other.close()


async def test_unavailable_invoke_is_resent_only_when_retryable(
        node: FakeNode, ctx: zmq.Context[Any]) -> None:
    other = FakeNode(ctx, node="n2")
    other.unavailable = True
    async with trio.open_nursery() as nursery:
        await nursery.start(other.serve)
        async with make_client(node, ctx) as c:
            await c.deploy("hello", HELLO, handler="app.handler")
        before = node.received
        async with make_client(node, ctx, endpoints=[other.endpoint, node.endpoint]) as c:
            with pytest.raises(sdk.Unavailable, match="no leader"):
                await c.invoke("hello", {})  # it may have run: not resent
            assert node.received == before
            other.retryable = True
            c.close()
            c._ep.current = 0  # start again from the unavailable node
            asked = other.received
            assert await c.invoke("hello", {"name": "again"}) == {"greeting": "Hello, again!"}
            assert other.received == asked + 1
            other.retryable = False
            c.close()
            c._ep.current = 0
            deployed = await c.deploy("hello", HELLO, handler="app.handler")  # idempotent
            assert not deployed.created and other.received > asked + 1
        nursery.cancel_scope.cancel()
    other.close()


async def test_all_endpoints_down_is_unavailable(ctx: zmq.Context[Any]) -> None:
    c = sdk.AsyncClient([free_endpoint(), free_endpoint()], api_key="mf_x", context=ctx,
                        connect_timeout_s=0.2)
    with pytest.raises(sdk.Unavailable):
        await c.list_functions()
    c.close()


async def test_timeout_for_an_invocation(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        await c.deploy("hello", HELLO, handler="app.handler")
        node.hang = True
        with pytest.raises(sdk.Timeout):
            await c.invoke("hello", {}, timeout_s=0.3)


async def test_connection_lost_mid_request_is_unavailable(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        await c.deploy("hello", HELLO, handler="app.handler")
        node.hang = True
        node.got_request = trio.Event()

        async def kill_when_received() -> None:
            with trio.fail_after(5):
                await node.got_request.wait()
            node.kill()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(kill_when_received)
            with trio.fail_after(4), pytest.raises(sdk.Unavailable, match="lost"):
                await c.invoke("hello", {}, timeout_s=30)


async def test_sync_client_in_a_thread(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    def work() -> tuple[Any, ...]:
        with sdk.Client([free_endpoint(), node.endpoint], api_key=node.admin_key, context=ctx,
                        connect_timeout_s=0.3) as c:
            c.deploy("hello", HELLO, handler="app.handler")
            out = c.invoke("hello", {"name": "sync"})
            try:
                c.invoke("hello", {"fail": True})
            except sdk.FunctionError as exc:
                error = (exc.errorType, exc.errorMessage)
            names = [f.name for f in c.list_functions()]
            logs = [e.text for e in c.logs("hello")]
            return out, error, names, logs

    out, error, names, logs = await trio.to_thread.run_sync(work)
    assert out == {"greeting": "Hello, sync!"}
    assert error == ("ValueError", "asked to fail")
    assert names == ["hello"] and len(logs) == 2


async def test_curve_encryption(ctx: zmq.Context[Any]) -> None:
    server_public, server_secret = zmq.curve_keypair()
    fake = FakeNode(ctx, curve_keys=(server_public, server_secret))
    async with trio.open_nursery() as nursery:
        await nursery.start(fake.serve)
        async with sdk.AsyncClient(fake.endpoint, api_key=fake.admin_key, context=ctx,
                                   server_public_key=server_public) as c:
            assert await c.ping() == "n1"
        wrong_public, _ = zmq.curve_keypair()
        async with sdk.AsyncClient(fake.endpoint, api_key=fake.admin_key, context=ctx,
                                   server_public_key=wrong_public, connect_timeout_s=0.3) as c:
            with pytest.raises(sdk.Unavailable):
                await c.ping()
        nursery.cancel_scope.cancel()
    fake.close()


async def test_logs_follow_from_the_pub_stream(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c, make_client(node, ctx) as invoker:
        await c.deploy("hello", HELLO, handler="app.handler")
        await invoker.invoke("hello", {})
        seen: list[str] = []

        async def follow() -> None:
            async for event in c.logs("hello", follow=True, idle_timeout_s=10):
                seen.append(event.invocation_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            with trio.fail_after(5):
                # a SUB joins late: invoke until one published event has arrived
                while len(seen) < 2:
                    await invoker.invoke("hello", {})
            nursery.cancel_scope.cancel()
        assert seen[0] == node.logs[0].invocation_id  # the recent one first


def test_package_code_from_dir_zip_path_and_bytes(tmp_path: Path) -> None:
    from_dir = sdk.package_code(HELLO)
    zip_path = tmp_path / "code.zip"
    zip_path.write_bytes(from_dir.zip_bytes)
    assert sdk.package_code(zip_path) == from_dir
    assert sdk.package_code(from_dir.zip_bytes) == from_dir
    with zipfile.ZipFile(zip_path) as archive:
        assert "app.py" in archive.namelist()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "app.py").write_text("x = 1\n")
    (tmp_path / "src" / "__pycache__").mkdir()
    (tmp_path / "src" / "__pycache__" / "app.pyc").write_bytes(b"junk")
    assert sdk.package_code(tmp_path / "src").sha256 == sdk.package_code(tmp_path / "src").sha256
    (tmp_path / "src" / "link").symlink_to("/etc/passwd")
    with pytest.raises(PackageError, match="symbolic"):
        sdk.package_code(tmp_path / "src")
    with pytest.raises(PackageError):
        sdk.package_code(tmp_path / "missing")


def test_load_credentials(tmp_path: Path) -> None:
    (tmp_path / "credentials.json").write_text(json.dumps(
        {"endpoints": ["tcp://127.0.0.1:7101"], "api_key": "mf_k"}))
    creds = sdk.load_credentials(tmp_path)
    assert creds.endpoints == ("tcp://127.0.0.1:7101",) and creds.server_public_key is None
    public, secret = zmq.curve_keypair()
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "cluster.json").write_text(json.dumps(
        {"cluster_id": "c", "public_key": public.decode(), "secret_key": secret.decode()}))
    creds = sdk.load_credentials(tmp_path)
    assert creds.server_public_key == public and creds.client_secret_key == secret


def test_api_key_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESHFAAS_API_KEY", raising=False)
    with pytest.raises(ValueError):
        sdk.Client("tcp://127.0.0.1:1")
    monkeypatch.setenv("MESHFAAS_API_KEY", "mf_env")
    assert sdk.Client("tcp://127.0.0.1:1")._ep.api_key == "mf_env"


async def test_logs_follow_needs_an_events_endpoint(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    node.advertise_events = False
    async with make_client(node, ctx) as c:
        with pytest.raises(sdk.Unavailable, match="events endpoint"):
            async for _ in c.logs("hello", follow=True):
                pass
    async with make_client(node, ctx, events_endpoints=[node.events_endpoint]) as c, \
            make_client(node, ctx) as invoker:
        await invoker.deploy("hello", HELLO, handler="app.handler")
        seen: list[str] = []

        async def follow() -> None:
            async for event in c.logs("hello", follow=True, idle_timeout_s=10):
                seen.append(event.invocation_id)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            with trio.fail_after(5):
                while not seen:
                    await invoker.invoke("hello", {})
            nursery.cancel_scope.cancel()
        assert seen[0].startswith("n1~")


async def test_sync_client_sees_a_dropped_connection(node: FakeNode, ctx: zmq.Context[Any]) -> None:
    async with make_client(node, ctx) as c:
        await c.deploy("hello", HELLO, handler="app.handler")
    node.hang = True
    node.got_request = trio.Event()

    def call() -> BaseException | None:
        with sdk.Client(node.endpoint, api_key=node.admin_key, context=ctx) as sync:
            try:
                sync.invoke("hello", {}, timeout_s=30)
            except sdk.MeshfaasError as exc:
                return exc
        return None

    async with trio.open_nursery() as nursery:
        outcome: list[BaseException | None] = []

        async def run_call() -> None:
            outcome.append(await trio.to_thread.run_sync(call))

        nursery.start_soon(run_call)
        with trio.fail_after(5):
            await node.got_request.wait()
        node.kill()
    assert isinstance(outcome[0], sdk.Unavailable) and "lost" in str(outcome[0])


@pytest.mark.parametrize(
    ("kind", "cls"),
    [("NotFound", sdk.NotFound), ("Unauthorized", sdk.Unauthorized), ("Forbidden", sdk.Forbidden),
     ("Throttled", sdk.Throttled), ("Timeout", sdk.Timeout), ("Unavailable", sdk.Unavailable),
     ("BadRequest", sdk.BadRequest), ("Conflict", sdk.Conflict), ("Internal", sdk.InternalError),
     ("FunctionError", sdk.FunctionError)],
)
def test_error_kinds_map_to_typed_exceptions(kind: str, cls: type[sdk.MeshfaasError]) -> None:
    error = sdk.error_for(proto.ClientError(kind=kind, message="m", error_type="E",  # type: ignore[arg-type]
                                            error_message="em"))
    assert type(error) is cls and error.kind == kind


@pytest.mark.parametrize(
    ("version", "weights", "expected"),
    [("1", None, (None, 0)), ("1", {2: 0.1}, ("2", 1000)), (1, {"2": 0.25, 1: 0.75}, ("2", 2500)),
     ("1", {2: 0.0001}, ("2", 1))],
)
def test_alias_weights(version: Any, weights: Any, expected: tuple[str | None, int]) -> None:
    assert sdk._weights(version, weights) == expected


@pytest.mark.parametrize("weights", [{2: 1.5}, {2: -0.1}, {2: 0.1, 3: 0.1}, {1: 0.5}])
def test_bad_alias_weights(weights: Any) -> None:
    with pytest.raises(ValueError):
        sdk._weights("1", weights)


async def test_deploy_restarts_its_upload_after_failover(
        node: FakeNode, ctx: zmq.Context[Any], tmp_path: Path) -> None:
    """The first node dies after one chunk; the upload starts over on the second."""
    first = FakeNode(ctx, node="n0")
    first.sm = node.sm  # one replicated state, two nodes
    (tmp_path / "app.py").write_text("def handler(e, c):\n    return 1\n")
    (tmp_path / "blob.bin").write_bytes(random.Random(3).randbytes(6 * 1024 * 1024))

    def die_after_first_chunk(request: Any) -> None:
        if isinstance(request.body, proto.UploadChunk):
            first.kill()

    first.after_reply = die_after_first_chunk
    async with trio.open_nursery() as nursery:
        await nursery.start(first.serve)
        async with make_client(node, ctx, endpoints=[first.endpoint, node.endpoint]) as c:
            c.connect_timeout_s = 0.5
            deployed = await c.deploy("big", tmp_path, handler="app.handler")
        nursery.cancel_scope.cancel()
    first.close()
    assert deployed.created and deployed.function.code.sha256 in node.blobs
    assert first.killed and deployed.function.code.sha256 not in first.blobs
