"""The SDK's fast paths give what the generic ones give.

* :class:`proto.RequestEncoder` writes exactly the bytes of
  ``proto.encode(ClientRequest(...))`` for any request id, key, body and timeout.
* :func:`proto.decode_response` and :func:`proto.decode_request` (the envelope
  checked by hand, the message decoded straight as its class) agree with the
  generic ``proto._decode``: the same value for a good frame, a DecodeError for a
  bad one, and nothing else, whatever the bytes (frames cut, bytes flipped,
  fields of the wrong type, other messages).
* The trio client's wait reads a wake at once and skips what is not its reply:
  stale replies, garbage and pongs arriving before the real reply.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
import pytest
import trio
import zmq
from hypothesis import given
from hypothesis import strategies as st

from meshfaas import client as sdk
from meshfaas.core import client_proto as proto
from meshfaas.core.codec import DecodeError, EncodeError, to_cbor
from meshfaas.core.faas import CodeRef, ConfigPatch, FunctionConfig, FunctionRecord

TEXT = st.text(max_size=40)
INTS = st.integers(min_value=-(2**64), max_value=2**64 - 1)
PATCHES = st.builds(ConfigPatch, description=st.none() | TEXT, memory_mb=st.none() | INTS,
                    env=st.none() | st.dictionaries(TEXT, TEXT, max_size=3))
BODIES = (st.builds(proto.UpdateConfig, name=TEXT, patch=PATCHES)
          | st.builds(proto.Ping, awaiting=TEXT)
          | st.builds(proto.Invoke, name=TEXT, payload=st.binary(max_size=300))
          | st.builds(proto.ListFunctions) | st.none() | INTS | TEXT)
RECORDS = st.builds(
    FunctionRecord, name=TEXT,
    config=st.builds(FunctionConfig, handler=TEXT, description=TEXT,
                     env=st.dictionaries(TEXT, TEXT, max_size=3),
                     reserved_concurrency=st.none() | INTS,
                     requirements=st.lists(TEXT, max_size=3).map(tuple)),
    code=st.builds(CodeRef, sha256=TEXT, size_bytes=INTS), revision=INTS,
    created_wall_ns=INTS, modified_wall_ns=INTS, last_version=INTS)
ERRORS = st.builds(proto.ClientError, kind=st.sampled_from(["NotFound", "Unavailable"]),
                   message=TEXT, retryable=st.booleans())
VALUES = RECORDS | st.builds(proto.Pong, node=TEXT) | st.none() | INTS | TEXT | st.lists(RECORDS,
                                                                                         max_size=2)
RESPONSES = st.builds(proto.ClientResponse, request_id=TEXT, ok=st.booleans(), value=VALUES,
                      error=st.none() | ERRORS)


@given(request_id=TEXT, api_key=TEXT, body=BODIES, timeout_ms=INTS)
def test_the_request_encoder_writes_the_bytes_of_encode(request_id: str, api_key: str,
                                                        body: Any, timeout_ms: int) -> None:
    expected = proto.encode(proto.ClientRequest(request_id=request_id, api_key=api_key,
                                                body=body, timeout_ms=timeout_ms))
    assert proto.RequestEncoder(api_key).encode(request_id, body, timeout_ms) == expected
    assert proto.decode_request(expected).body == body


def test_the_request_encoder_refuses_an_oversized_frame() -> None:
    body = proto.Invoke(name="f", payload=b"x" * proto.MAX_FRAME_BYTES)
    with pytest.raises(EncodeError):
        proto.RequestEncoder("k").encode("r1", body)


def generic(frame: bytes, cls: type = proto.ClientResponse) -> Any:
    """The generic decode, or the DecodeError it raises (as a value to compare)."""
    try:
        return proto._decode(frame, cls)
    except DecodeError:
        return DecodeError


def fast(frame: bytes, decode: Any = proto.decode_response) -> Any:
    try:
        return decode(frame)
    except DecodeError:
        return DecodeError


def damage(frame: bytes, data: st.DataObject) -> bytes:
    """``frame`` with one to three bytes changed, and perhaps cut short."""
    damaged = bytearray(frame)
    for _ in range(data.draw(st.integers(1, 3))):
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        return bytes(damaged[:data.draw(st.integers(0, len(damaged)))])
    return bytes(damaged)


@given(RESPONSES)
def test_a_good_response_decodes_as_the_generic_decoder_does(response: proto.ClientResponse
                                                             ) -> None:
    frame = proto.encode(response)
    assert proto.decode_response(frame) == generic(frame) == response
    assert sdk._decode_response(frame) == response


@given(RESPONSES, st.data())
def test_a_damaged_response_is_what_the_generic_decoder_makes_of_it(
        response: proto.ClientResponse, data: st.DataObject) -> None:
    damaged = damage(proto.encode(response), data)
    assert fast(damaged) == generic(damaged)


REQUESTS = st.builds(proto.ClientRequest, request_id=TEXT, api_key=TEXT, body=BODIES,
                     timeout_ms=INTS)


@given(REQUESTS, st.data())
def test_a_request_good_or_damaged_decodes_as_the_generic_decoder_does(
        request: proto.ClientRequest, data: st.DataObject) -> None:
    frame = proto.encode(request)
    assert proto.decode_request(frame) == generic(frame, proto.ClientRequest) == request
    damaged = damage(frame, data)
    assert fast(damaged, proto.decode_request) == generic(damaged, proto.ClientRequest)


WRONG_ENVELOPES = [
    to_cbor(proto.ok("r", 1)),  # no envelope
    to_cbor([proto.CLIENT_PROTOCOL_VERSION]),
    to_cbor([proto.CLIENT_PROTOCOL_VERSION, proto.ok("r", 1), 3]),
    to_cbor([2, proto.ok("r", 1)]),  # another version
    to_cbor([True, proto.ok("r", 1)]),
    to_cbor(["1", proto.ok("r", 1)]),
    to_cbor([1, proto.Pong(node="n1")]),  # another message
    to_cbor([1, proto.ClientRequest(request_id="r", api_key="k", body=None)]),
    to_cbor([1, [401, "r", True, None, None]]),  # a body without its tag
    to_cbor([1, proto.ok("r", 1)]) + b"\x00",  # trailing bytes
    to_cbor({1: proto.ok("r", 1)}),
    b"",
    b"\xff",
]


@pytest.mark.parametrize("frame", WRONG_ENVELOPES)
def test_a_wrong_envelope_is_a_decode_error(frame: bytes) -> None:
    with pytest.raises(DecodeError):
        proto.decode_response(frame)
    assert generic(frame) is DecodeError
    request_frame = frame.replace(to_cbor(proto.ok("r", 1)), to_cbor(
        proto.ClientRequest(request_id="r", api_key="k", body=1)))
    assert fast(request_frame, proto.decode_request) == generic(request_frame, proto.ClientRequest)
    if request_frame != frame:  # the same wrong envelope around a request
        assert fast(request_frame, proto.decode_request) is DecodeError


def test_a_wrongly_typed_field_deep_inside_is_a_decode_error() -> None:
    record = FunctionRecord(name="f", config=FunctionConfig(handler="h"),
                            code=CodeRef(sha256="s", size_bytes=1), revision=1,
                            created_wall_ns=0, modified_wall_ns=0, last_version=0)
    for bad in (attrs.evolve(record, revision="1"),
                attrs.evolve(record, code=CodeRef(sha256=b"s", size_bytes=1)),
                attrs.evolve(record, config=FunctionConfig(handler="h", env={"a": 1}))):
        with pytest.raises(DecodeError):
            proto.decode_response(proto.encode(proto.ok("r", bad)))


def test_an_oversized_frame_is_refused_before_it_is_parsed() -> None:
    with pytest.raises(DecodeError, match="limit"):
        proto.decode_response(b"\x00" * (proto.MAX_FRAME_BYTES + 1))


# ---------------------------------------------------------------------------
# The wait: what comes before the reply is read and skipped
# ---------------------------------------------------------------------------


async def serve_with_noise(router: zmq.Socket[Any], requests: int) -> None:
    """Answer each request with garbage, a stale reply and a pong first, the reply
    itself a little later (so the client has waited and woken on the noise)."""
    for _ in range(requests):
        while True:
            try:
                identity, frame = router.recv_multipart(zmq.NOBLOCK)
                break
            except zmq.Again:
                await trio.sleep(0.001)
        request = proto.decode_request(frame)
        await trio.sleep(0.01)
        for noise in (b"\x00garbage", proto.encode(proto.ok("stale", 0)),
                      proto.encode(proto.ok(request.request_id + "x", 1)),
                      proto.encode(proto.ok("ping", proto.Pong(node="n1", awaiting="other")))):
            router.send_multipart([identity, noise])
        await trio.sleep(0.01)
        router.send_multipart([identity, proto.encode(proto.ok(request.request_id,
                                                                proto.Pong(node="real")))])


async def test_the_reply_after_noise_is_the_one_returned() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_with_noise, router, 5)
            with trio.fail_after(5):  # a wait on a taken edge would hang
                async with sdk.AsyncClient(endpoint, api_key="k", context=ctx,  # no watch tick
                                           liveness_interval_s=30, liveness_timeout_s=90) as c:
                    assert [await c.ping() for _ in range(5)] == ["real"] * 5
    finally:
        router.close(linger=0)
        ctx.destroy(linger=0)


# ---------------------------------------------------------------------------
# One operation at a time per AsyncClient
# ---------------------------------------------------------------------------


class CountingServer:
    """Answers each request after ``delay_s``; records the most requests it ever held at once."""

    def __init__(self, ctx: zmq.Context[Any], delay_s: float) -> None:
        self.router = ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.bind("tcp://127.0.0.1:*")
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.delay_s = delay_s
        self.held = self.most_held = self.answered = 0

    async def serve(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    identity, frame = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    await trio.sleep(0.001)
                    continue
                self.held += 1
                self.most_held = max(self.most_held, self.held)
                nursery.start_soon(self.answer, identity, proto.decode_request(frame))

    async def answer(self, identity: bytes, request: proto.ClientRequest) -> None:
        await trio.sleep(self.delay_s)
        self.held -= 1
        self.answered += 1
        reply = proto.ok(request.request_id, proto.Pong(node="n1"))
        self.router.send_multipart([identity, proto.encode(reply)])


async def test_callers_sharing_a_client_take_turns_and_a_cancelled_one_leaves_the_line() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = CountingServer(ctx, delay_s=0.02)
    results: list[str] = []
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            with trio.fail_after(10):
                async with sdk.AsyncClient(server.endpoint, api_key="k", context=ctx) as c:

                    async def call(patience_s: float = 10.0) -> None:
                        with trio.move_on_after(patience_s):
                            results.append(await c.ping())

                    async with trio.open_nursery() as callers:
                        for _ in range(5):
                            callers.start_soon(call)
                        while not server.held:  # one holds the client, four wait in line
                            await trio.sleep(0.001)
                        callers.start_soon(call, 0.03)  # last in line, out of patience first
                    assert await c.ping() == "n1"  # usable afterwards
            nursery.cancel_scope.cancel()
    finally:
        server.router.close(linger=0)
        ctx.destroy(linger=0)
    assert server.most_held == 1  # never two requests of one client at once
    assert results == ["n1"] * 5  # the caller out of patience gave up its place
    assert server.answered == 6


# ---------------------------------------------------------------------------
# Alarms: a waiting call's time limit without a cancel scope
# ---------------------------------------------------------------------------


async def wait_for_alarm(fd: int, limit_s: float, woken: list[tuple[int, float]]) -> None:
    """Wait on ``fd`` (never readable here) until an alarm rings or ``limit_s`` passes."""
    start = trio.current_time()
    with trio.move_on_after(limit_s):
        try:
            await trio.lowlevel.wait_readable(fd)
        except trio.ClosedResourceError:
            woken.append((fd, trio.current_time() - start))


async def test_an_alarm_wakes_its_waiter_at_its_deadline_and_a_cleared_one_nobody() -> None:
    pairs = [socket.socketpair() for _ in range(3)]
    fds = [a.fileno() for a, _ in pairs]
    woken: list[tuple[int, float]] = []
    try:
        async with trio.open_nursery() as nursery:
            for fd, limit_s in zip(fds, (5.0, 0.4, 5.0), strict=True):
                nursery.start_soon(wait_for_alarm, fd, limit_s, woken)
            now = trio.current_time()
            alarms = sdk._alarms()
            later = alarms.set(now + 0.2, fds[0])
            cleared = alarms.set(now + 0.05, fds[1])
            alarms.set(now + 0.1, fds[2])  # set after an earlier one, rings before `later`
            cleared.active = False
        assert [fd for fd, _ in woken] == [fds[2], fds[0]]
        assert woken[0][1] >= 0.1 and woken[1][1] >= 0.2  # not before their deadlines
        assert not later.active  # rung alarms are done
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_client_serves_successive_trio_runs_each_with_its_own_alarms() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = CountingServer(ctx, delay_s=0.01)  # (a reply after a wait: an alarm each call)
    c = sdk.AsyncClient(server.endpoint, api_key="k", context=ctx)

    async def run() -> list[str]:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            answers = [await c.ping() for _ in range(3)]
            nursery.cancel_scope.cancel()
        return answers

    try:
        assert trio.run(run) == ["n1"] * 3
        assert trio.run(run) == ["n1"] * 3
    finally:
        c.close()
        server.router.close(linger=0)
        ctx.destroy(linger=0)


async def test_a_call_given_up_by_its_caller_clears_its_alarm() -> None:
    ctx: zmq.Context[Any] = zmq.Context()
    server = CountingServer(ctx, delay_s=0.3)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.serve)
            async with sdk.AsyncClient(server.endpoint, api_key="k", context=ctx) as c:
                with trio.move_on_after(0.05):
                    await c.ping()
                assert not c._alarm.active
                assert not [a for _, _, a in sdk._alarms().heap if a.active]
            nursery.cancel_scope.cancel()
    finally:
        server.router.close(linger=0)
        ctx.destroy(linger=0)
