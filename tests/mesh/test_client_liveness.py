"""The SDK's liveness watch (meshfaas.client._Watch) against fake nodes on 127.0.0.1.

A request that waits pings its node on the same connection; a node that answers
pings is waited for however long the call takes, a node that answers nothing is
given up after ``liveness_timeout_s``: Unavailable for what may have run, a
resend elsewhere for what is safe to resend. Short intervals keep these fast.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

from meshfaas import client as sdk
from meshfaas.core import client_proto as proto
from tests.faas.fake_node import FakeNode

HELLO = Path(__file__).resolve().parents[2] / "examples" / "hello"
INTERVAL_S = 0.1
SILENCE_S = 0.5


class SlowNode(FakeNode):
    """Answers everything at once except invocations, which wait until ``release()``."""

    def __init__(self, ctx: zmq.Context[Any], **kwargs: Any) -> None:
        super().__init__(ctx, **kwargs)
        self.held: list[tuple[bytes, proto.ClientRequest]] = []
        self.pings = 0

    def _on_request(self, parts: list[bytes]) -> None:
        request = proto.decode_request(parts[1])
        if isinstance(request.body, proto.Ping):
            self.pings += 1
        if isinstance(request.body, proto.Invoke) and request.body.invocation_type != "Event":
            self.held.append((parts[0], request))
            return
        super()._on_request(parts)

    def release(self) -> None:
        for identity, request in self.held:
            self.router.send_multipart([identity, proto.encode(self.respond(request))])
        self.held.clear()


@pytest.fixture
def ctx() -> Any:
    context: zmq.Context[Any] = zmq.Context()
    yield context
    context.destroy(linger=0)


@pytest.fixture
async def nodes(ctx: zmq.Context[Any]) -> AsyncIterator[tuple[SlowNode, FakeNode]]:
    """A slow-but-live node and a silent one (receives, never answers, not even pings)."""
    slow, silent = SlowNode(ctx, node="n1"), FakeNode(ctx, node="n2")
    silent.sm = slow.sm  # one replicated state
    slow.handlers["hello"] = silent.handlers["hello"] = lambda event: {"hi": event}
    async with trio.open_nursery() as nursery:
        await nursery.start(slow.serve)
        await nursery.start(silent.serve)
        async with client(slow, [slow.endpoint]) as c:
            await c.deploy("hello", HELLO, handler="app.handler")
        silent.hang = True
        yield slow, silent
        nursery.cancel_scope.cancel()
    slow.close()
    silent.close()


def client(node: FakeNode, endpoints: list[str], **kwargs: Any) -> sdk.AsyncClient:
    return sdk.AsyncClient(endpoints, api_key=node.admin_key, context=node.ctx,
                           liveness_interval_s=INTERVAL_S, liveness_timeout_s=SILENCE_S,
                           connect_timeout_s=1.0, **kwargs)


async def test_a_long_invocation_on_a_live_node_is_waited_for(
        nodes: tuple[SlowNode, FakeNode]) -> None:
    slow, _ = nodes
    async with client(slow, [slow.endpoint]) as c, trio.open_nursery() as nursery:
        result: list[Any] = []

        async def call() -> None:
            result.append(await c.invoke("hello", {"n": 1}, timeout_s=30))

        nursery.start_soon(call)
        with trio.fail_after(10):
            while slow.pings < 3 * SILENCE_S / INTERVAL_S:  # well past the silence limit
                await trio.sleep(INTERVAL_S)
        assert not result  # still waiting: the node answers pings
        slow.release()
    assert result == [{"hi": {"n": 1}}]


async def test_the_sync_client_waits_for_a_live_node_too(
        nodes: tuple[SlowNode, FakeNode]) -> None:
    slow, _ = nodes

    def call() -> Any:
        with sdk.Client(slow.endpoint, api_key=slow.admin_key, context=slow.ctx,
                        liveness_interval_s=INTERVAL_S, liveness_timeout_s=SILENCE_S) as c:
            return c.invoke("hello", {"n": 2}, timeout_s=30)

    async with trio.open_nursery() as nursery:
        result: list[Any] = []

        async def run_call() -> None:
            result.append(await trio.to_thread.run_sync(call))

        nursery.start_soon(run_call)
        with trio.fail_after(10):
            while slow.pings < 3 * SILENCE_S / INTERVAL_S:
                await trio.sleep(INTERVAL_S)
        assert not result
        slow.release()
    assert result == [{"hi": {"n": 2}}]


async def test_a_silent_node_fails_a_sync_invoke_with_unavailable(
        nodes: tuple[SlowNode, FakeNode]) -> None:
    _, silent = nodes
    async with client(silent, [silent.endpoint]) as c:
        start = trio.current_time()
        with pytest.raises(sdk.Unavailable, match="may or may not have run") as info:
            await c.invoke("hello", {}, timeout_s=30)
        waited_s = trio.current_time() - start
    assert "no answer" in str(info.value)
    assert SILENCE_S <= waited_s < SILENCE_S + 2, waited_s
    assert silent.received >= 3  # the invocation, then pings


async def test_the_sync_client_gives_up_on_a_silent_node_too(
        nodes: tuple[SlowNode, FakeNode]) -> None:
    _, silent = nodes

    def call() -> BaseException | None:
        with sdk.Client(silent.endpoint, api_key=silent.admin_key, context=silent.ctx,
                        liveness_interval_s=INTERVAL_S, liveness_timeout_s=SILENCE_S) as c:
            try:
                c.invoke("hello", {}, timeout_s=30)
            except sdk.MeshfaasError as exc:
                return exc
        return None

    with trio.fail_after(10):
        outcome = await trio.to_thread.run_sync(call)
    assert isinstance(outcome, sdk.Unavailable) and "no answer" in str(outcome), outcome


async def test_reads_and_event_invocations_move_on_from_a_silent_node(
        nodes: tuple[SlowNode, FakeNode]) -> None:
    slow, silent = nodes
    async with client(slow, [silent.endpoint, slow.endpoint]) as c:
        with trio.fail_after(10):
            assert [f.name for f in await c.list_functions()] == ["hello"]
        assert c.endpoint == slow.endpoint
        c.close()
        c._ep.current = 0  # start again from the silent node
        with trio.fail_after(10):
            first = await c.invoke_async("hello", {}, idempotency_key="k1")
        assert first and slow.sm.get_async(first) is not None


class RestartedNode(SlowNode):
    """Holds invocations like SlowNode; ``restart()`` forgets them as a node process
    restarted under a connection that reconnected (within one watch tick) would,
    and it answers a watch ping naming a request by whether it holds it."""

    def _on_request(self, parts: list[bytes]) -> None:
        request = proto.decode_request(parts[1])
        body = request.body
        if isinstance(body, proto.Ping) and body.awaiting:
            self.pings += 1
            known = any(r.request_id == body.awaiting for _, r in self.held)
            pong = proto.Pong(node=self.node, awaiting=body.awaiting, known=known)
            self.router.send_multipart([parts[0], proto.encode(proto.ok(request.request_id,
                                                                         pong))])
            return
        super()._on_request(parts)

    def restart(self) -> None:
        self.held.clear()


async def test_a_node_that_restarted_under_the_connection_fails_the_call_at_once(
        ctx: zmq.Context[Any]) -> None:
    """The connection survived (it reconnected before the watch looked), but the node
    no longer has the request: the next ping says so and the call fails with
    Unavailable then, not at its timeout; a live node holding it is waited for."""
    node = RestartedNode(ctx, node="n1")
    node.handlers["hello"] = lambda event: {"hi": event}
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with client(node, [node.endpoint]) as c:
            await c.deploy("hello", HELLO, handler="app.handler")

            async def call() -> None:
                with pytest.raises(sdk.Unavailable, match="no longer has the request"):
                    await c.invoke("hello", {}, timeout_s=60)

            with trio.fail_after(10):
                async with trio.open_nursery() as calls:
                    calls.start_soon(call)
                    while node.pings < 3:  # pings answered "known": the call waits
                        await trio.sleep(INTERVAL_S)
                    node.restart()
        nursery.cancel_scope.cancel()
    node.close()


@pytest.mark.parametrize(
    ("heard_at", "now", "writable", "verdict", "why"),
    [(0.0, 0.25, True, "wait", ""),  # checks every quarter interval, pings every interval
     (0.0, 1.0, True, "ping", ""),
     (0.0, 2.9, True, "ping", ""),
     (0.0, 3.0, True, "gone", "no answer"),  # 3 s of silence: gone
     (2.5, 3.5, True, "ping", ""),  # something came 1 s ago
     (2.5, 3.5, False, "gone", "dropped"),  # cannot send: the connection dropped
     (0.0, 0.25, False, "gone", "dropped")],
)
def test_watch_table(heard_at: float, now: float, writable: bool, verdict: str,
                     why: str) -> None:
    clock = [0.0]
    watch = sdk._Watch(lambda: clock[0], interval_s=1.0, silence_s=3.0)
    assert (watch.next_tick, watch.next_ping) == (0.25, 1.0)
    clock[0] = heard_at
    watch.heard()
    assert watch.tick(now, writable) == verdict
    assert why in watch.why and (verdict != "gone" or watch.why)
    if verdict != "gone":
        assert watch.next_tick == now + 0.25
    assert watch.next_ping == (now + 1.0 if verdict == "ping" else 1.0)


def test_pings_are_sent_once_per_interval() -> None:
    clock = [0.0]
    watch = sdk._Watch(lambda: clock[0], interval_s=1.0, silence_s=3.0)
    verdicts = []
    while watch.next_tick <= 3.0:  # ticks at 0.25, 0.5, ... 3.0
        clock[0] = watch.next_tick
        watch.heard()  # the node answers everything
        verdicts.append(watch.tick(clock[0], True))
    assert verdicts.count("ping") == 3 and verdicts.count("wait") == 9 and "gone" not in verdicts


def test_liveness_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        sdk.Client("tcp://127.0.0.1:1", api_key="k", liveness_interval_s=3, liveness_timeout_s=3)
    with pytest.raises(ValueError):
        sdk.AsyncClient("tcp://127.0.0.1:1", api_key="k", liveness_interval_s=0)
