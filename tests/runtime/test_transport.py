"""The peer transport over real ZeroMQ sockets on 127.0.0.1, CURVE on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import zmq

from meshfaas.core.codec import Codec
from meshfaas.core.types import NodeId
from meshfaas.runtime.keys import ClusterKeys, InsecureModeWarning, Security
from meshfaas.runtime.messages import TransportProbe
from meshfaas.runtime.transport import (
    ClientRouter,
    EventPublisher,
    PeerTransport,
    open_network,
    open_peer_transport,
)

from .helpers import receive_within, send_unless_refused, wait_until

A, B = NodeId("a"), NodeId("b")


@pytest.fixture(scope="module")
def keys() -> ClusterKeys:
    return ClusterKeys.generate("test-cluster")


@asynccontextmanager
async def pair(keys: ClusterKeys, **kwargs: Any) -> AsyncIterator[tuple[PeerTransport, PeerTransport]]:
    codec = Codec(keys.cluster_id)
    sec = Security.curve(keys)
    async with open_network(sec) as na, open_network(sec) as nb, \
            open_peer_transport(na, A, codec=codec, **kwargs) as ta, \
            open_peer_transport(nb, B, codec=codec, **kwargs) as tb:
        ta.set_peer(B, tb.endpoint)
        tb.set_peer(A, ta.endpoint)
        yield ta, tb


async def send_until_received(src: PeerTransport, dst: NodeId, frame: bytes,
                              inbound: trio.MemoryReceiveChannel[bytes]) -> bytes:
    """The first frames to a fresh peer drop until its connection is up (IMMEDIATE)."""
    with trio.fail_after(5):
        while True:
            src.send(dst, frame)
            with trio.move_on_after(0.02):
                return await inbound.receive()


def raw_socket(kind: int, endpoint: str, *, server_key: bytes | None = None,
               keypair: tuple[bytes, bytes] | None = None) -> zmq.Socket[Any]:
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        assert keypair is not None
        sock.curve_serverkey = server_key
        sock.curve_publickey, sock.curve_secretkey = keypair
    sock.connect(endpoint)
    return sock


# ---------------------------------------------------------------------------


async def test_echo_over_curve(keys: ClusterKeys) -> None:
    async with pair(keys) as (ta, tb):
        assert ta.endpoint.startswith("tcp://127.0.0.1:") and not ta.endpoint.endswith(":*")
        codec = Codec(keys.cluster_id)
        ping = codec.encode(A, B, TransportProbe(nonce=7, payload=b"x" * 100))
        env = tb.decode(await send_until_received(ta, B, ping, tb.inbound))
        assert env is not None and env.msg == TransportProbe(nonce=7, payload=b"x" * 100)
        pong = codec.encode(B, A, TransportProbe(nonce=7, reply=True))
        assert tb.send(A, pong)
        back = ta.decode(await receive_within(ta.inbound))
        assert back is not None and back.src == B and back.msg.reply
        for t in (ta, tb):
            counts = t.counters()
            assert counts["handshake_succeeded"] >= 1 and counts["zap.allowed"] >= 1
            assert counts.get("zap.denied", 0) == 0
        assert tb.counters()["received"] >= 1 and ta.counters()["received"] == 1


async def test_unknown_peer_and_forget_are_counted_drops(keys: ClusterKeys) -> None:
    async with pair(keys) as (ta, _tb):
        assert not ta.send(NodeId("nobody"), b"frame")
        ta.forget_peer(B)
        assert not ta.send(B, b"frame")
        assert ta.counters()["dropped_unknown_peer"] == 2
        assert ta.peers() == {}


async def test_full_peer_queue_drops_and_never_blocks(keys: ClusterKeys) -> None:
    async with pair(keys, peer_queue=4) as (ta, _tb):
        # No checkpoint between the sends: the owner task cannot drain meanwhile.
        results = [ta.send(B, b"f%d" % i) for i in range(10)]
        assert results == [True] * 4 + [False] * 6
        assert ta.counters()["dropped_queue_full"] == 6
        assert ta.counters()["sent"] == 4


async def test_full_inbound_channel_drops_and_counts(keys: ClusterKeys) -> None:
    async with pair(keys, inbound_capacity=2) as (ta, tb):
        await send_until_received(ta, B, b"first", tb.inbound)
        # Let every retry of the connect loop land, then start from an empty channel.
        await wait_until(lambda: tb.counters()["router.received"] == ta.counters()["dealer.sent"],
                         what="nothing in flight")
        while True:
            try:
                tb.inbound.receive_nowait()
            except trio.WouldBlock:
                break
        before = tb.counters()
        for i in range(5):
            ta.send(B, b"more%d" % i)
        await wait_until(lambda: tb.counters()["router.received"] == before["router.received"] + 5,
                         what="5 more frames in")
        after = tb.counters()
        assert after["received"] - before["received"] == 2
        assert after["dropped_inbound_full"] - before["dropped_inbound_full"] == 3


async def test_bad_frames_are_counted_drops(keys: ClusterKeys) -> None:
    codec = Codec(keys.cluster_id)
    async with pair(keys, max_frame_bytes=1000) as (_ta, tb):
        peer = raw_socket(zmq.DEALER, tb.endpoint, server_key=keys.public_key,
                          keypair=(keys.public_key, keys.secret_key))
        try:
            peer.send_multipart([b"two", b"parts"])        # malformed: 3 parts at the ROUTER
            peer.send(b"x" * 1010)                          # over max_frame_bytes
            peer.send(b"\xff\x00garbage")                   # not CBOR
            other = Codec("another-cluster").encode(A, B, TransportProbe(nonce=1))
            peer.send(other)                                # another cluster
            peer.send(codec.encode(A, NodeId("c"), TransportProbe(nonce=2)))  # not for us
            peer.send(codec.encode(A, B, TransportProbe(nonce=3)))
            decoded = []
            with trio.fail_after(5):
                while len(decoded) < 1:
                    env = tb.decode(await tb.inbound.receive())
                    if env is not None:
                        decoded.append(env.msg)
            assert decoded == [TransportProbe(nonce=3)]
            counts = tb.counters()
            assert counts["dropped_malformed"] == 1 and counts["dropped_oversize"] == 1
            assert counts["decode_errors"] == 2 and counts["dropped_misaddressed"] == 1
        finally:
            peer.close(linger=0)


# ---------------------------------------------------------------------------
# CURVE: a process without the cluster's keys never reaches the application
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("intruder", ["no_curve", "wrong_client_key", "other_cluster"])
async def test_socket_without_the_keys_cannot_join(keys: ClusterKeys, intruder: str) -> None:
    other = ClusterKeys.generate("other")
    kwargs: dict[str, Any] = {
        "no_curve": {},
        "wrong_client_key": {"server_key": keys.public_key, "keypair": zmq.curve_keypair()},
        "other_cluster": {"server_key": other.public_key,
                          "keypair": (other.public_key, other.secret_key)},
    }[intruder]
    codec = Codec(keys.cluster_id)
    async with pair(keys) as (ta, tb):
        sock = raw_socket(zmq.DEALER, tb.endpoint, **kwargs)
        try:
            for i in range(20):
                send_unless_refused(sock, codec.encode(A, B, TransportProbe(nonce=i)))
            await wait_until(lambda: _rejections(tb.counters()) >= 1, what="a rejected handshake")
            # A keyed peer still gets through, and the intruder's frames never did.
            frame = codec.encode(A, B, TransportProbe(nonce=99))
            env = tb.decode(await send_until_received(ta, B, frame, tb.inbound))
            assert env is not None and env.msg == TransportProbe(nonce=99)
            counts = tb.counters()
            assert counts["received"] == counts["router.received"] >= 1
            assert counts.get("decode_errors", 0) == 0
            while True:  # whatever else arrived is the keyed peer's retries
                try:
                    more = tb.decode(tb.inbound.receive_nowait())
                except trio.WouldBlock:
                    break
                assert more is not None and more.msg.nonce == 99
            if intruder == "wrong_client_key":
                assert counts["zap.denied"] >= 1
        finally:
            sock.close(linger=0)


def _rejections(counts: dict[str, int]) -> int:
    return sum(v for k, v in counts.items() if k.startswith("handshake_failed") or k == "zap.denied")


async def test_subscriber_without_keys_reads_nothing(keys: ClusterKeys) -> None:
    async with open_network(Security.curve(keys)) as net, trio.open_nursery() as nursery:
        pub = EventPublisher(net)
        await nursery.start(pub.run)
        keyed = raw_socket(zmq.SUB, pub.endpoint, server_key=keys.public_key,
                           keypair=(keys.public_key, keys.secret_key))
        plain = raw_socket(zmq.SUB, pub.endpoint)
        try:
            for sub in (keyed, plain):
                sub.setsockopt(zmq.SUBSCRIBE, b"")
            with trio.fail_after(5):
                while True:  # a SUB gets nothing until its subscription arrived
                    pub.publish(b"ev", b"payload")
                    await trio.sleep(0.01)
                    if keyed.poll(0):
                        break
            assert keyed.recv_multipart() == [b"ev", b"payload"]
            assert plain.poll(0) == 0
            nursery.cancel_scope.cancel()
        finally:
            keyed.close(linger=0)
            plain.close(linger=0)


async def test_client_router_round_trip(keys: ClusterKeys) -> None:
    async with open_network(Security.curve(keys)) as net, trio.open_nursery() as nursery:
        router = ClientRouter(net)
        await nursery.start(router.run)
        client_keys = zmq.curve_keypair()
        assert net.zap is not None
        net.zap.allow(client_keys[0], "client:test")
        client = raw_socket(zmq.DEALER, router.endpoint, server_key=keys.public_key,
                            keypair=client_keys)
        try:
            client.send_multipart([b"req", b"1"])
            with trio.fail_after(5):
                msg = await router.inbound.receive()
            assert msg.parts == (b"req", b"1")
            assert router.reply(msg.routing_id, [b"rep", b"1"])
            await wait_until(lambda: bool(client.poll(0)), what="the reply")
            assert client.recv_multipart() == [b"rep", b"1"]
            assert router.reply(b"gone", [b"x"])
            await wait_until(lambda: router.counters().get("client.dropped_unroutable", 0) == 1)
            nursery.cancel_scope.cancel()
        finally:
            client.close(linger=0)


async def test_insecure_mode_warns_and_works() -> None:
    with pytest.warns(InsecureModeWarning):
        sec = Security.insecure()
    async with open_network(sec) as na, open_network(sec) as nb, \
            open_peer_transport(na, A) as ta, open_peer_transport(nb, B) as tb:
        ta.set_peer(B, tb.endpoint)
        assert await send_until_received(ta, B, b"plain", tb.inbound) == b"plain"


async def test_open_client_domain_admits_any_curve_key_but_the_peer_domain_does_not(
    keys: ClusterKeys,
) -> None:
    async with open_network(Security.curve(keys)) as net, trio.open_nursery() as nursery:
        router = ClientRouter(net, any_client_key=True)
        await nursery.start(router.run)
        with pytest.raises(ValueError):
            assert net.zap is not None
            net.zap.open_domain(b"peer")
        anyone = raw_socket(zmq.DEALER, router.endpoint, server_key=keys.public_key,
                            keypair=zmq.curve_keypair())
        plain = raw_socket(zmq.DEALER, router.endpoint)
        try:
            send_unless_refused(plain, b"plain")
            anyone.send(b"hello")
            with trio.fail_after(5):
                msg = await router.inbound.receive()
            assert msg.parts == (b"hello",)
            assert router.inbound.statistics().current_buffer_used == 0
            assert net.counters.get("zap.allowed") >= 1
            nursery.cancel_scope.cancel()
        finally:
            anyone.close(linger=0)
            plain.close(linger=0)


async def test_without_a_zap_handler_curve_servers_fail_closed(keys: ClusterKeys) -> None:
    """ZAP_ENFORCE_DOMAIN: with no handler bound, libzmq would otherwise admit any key."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    Security.curve(keys).server(router)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    monitor = router.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH
                                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
                                        | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL)
    stranger = raw_socket(zmq.DEALER, f"tcp://127.0.0.1:{port}", server_key=keys.public_key,
                          keypair=zmq.curve_keypair())
    try:
        send_unless_refused(stranger, b"let me in")
        await wait_until(lambda: bool(monitor.poll(0)), what="a failed handshake")
        assert router.poll(0) == 0
        monitor.close(linger=0)
    finally:
        stranger.close(linger=0)
        ctx.destroy(linger=0)


async def test_a_watched_peer_reports_failed_handshakes(keys: ClusterKeys) -> None:
    other = ClusterKeys.generate("other")
    events: list[tuple[str, str]] = []
    async with open_network(Security.curve(keys)) as ours, \
            open_network(Security.curve(other)) as theirs, \
            open_peer_transport(ours, A) as ta, open_peer_transport(theirs, B) as tb:
        ta.on_peer_event = lambda node, event: events.append((node, event))
        ta.set_peer(B, tb.endpoint, watch=True)
        await wait_until(lambda: any(e.startswith("handshake_failed") for _, e in events),
                         what="a failed handshake reported")
        assert events[0][0] == B
        assert any(k.startswith("dealer.handshake_failed") for k in ta.counters())
        assert tb.counters()["received"] == 0


async def test_inline_frames_come_in_bounded_bursts_and_a_handler_error_is_survived(
        keys: ClusterKeys) -> None:
    async with pair(keys, batch=4) as (ta, tb):
        got: list[bytes] = []
        events: list[str] = []

        def on_frame(frame: bytes) -> None:
            got.append(frame)
            events.append("f")
            if frame == b"boom":
                raise RuntimeError("a bug in the handler")

        await send_until_received(ta, B, b"hello", tb.inbound)  # through the channel
        assert ta.send(B, b"queued")
        await wait_until(lambda: tb.inbound.statistics().current_buffer_used > 0,
                         what="a frame queued before the handler")
        tb.handle_inline(on_frame, lambda: events.append("|"))
        assert b"queued" in got and events[-1] == "|"  # handed over at once
        for frame in [b"boom", *(b"f%d" % i for i in range(10))]:
            assert ta.send(B, frame)
        await wait_until(lambda: b"f9" in got, what="every frame after the failing one")
        assert got[-11:] == [b"boom", *(b"f%d" % i for i in range(10))]
        assert tb.counters()["handler_errors"] == 1
        assert tb.inbound.statistics().current_buffer_used == 0  # no channel in between
        bursts = "".join(events).split("|")
        assert events[-1] == "|" and max(len(b) for b in bursts) <= 4
