"""Nodes in one process (fast): join, status over the client port, bad frames, leave."""

from __future__ import annotations

from pathlib import Path

import trio
import zmq

from gossip import GossipConfig
from meshfaas.core.codec import Codec, from_cbor, to_cbor
from meshfaas.core.types import NS_PER_MS, NodeId
from meshfaas.runtime.keys import cluster_key_path, read_keys
from meshfaas.runtime.messages import NodeStatus, NodeStatusRequest, TransportProbe
from meshfaas.runtime.node import Node, NodeConfig

from .helpers import wait_until

FAST = GossipConfig(probe_interval_ns=100 * NS_PER_MS, probe_timeout_ns=30 * NS_PER_MS)


def state(node: Node, other: str) -> str | None:
    return node.gossip.state_of(NodeId(other))


async def test_two_nodes_join_answer_status_and_leave(tmp_path: Path) -> None:
    first = Node(NodeConfig(node_id=NodeId("a"), data_dir=tmp_path / "a", gossip=FAST,
                            leave_grace_s=0.2))
    second = Node(NodeConfig(node_id=NodeId("b"), data_dir=tmp_path / "b", gossip=FAST,
                             join=(first.peer.endpoint,),
                             keys=cluster_key_path(tmp_path / "a")))
    assert first.cluster_id == second.cluster_id and first.public_key
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        await nursery.start(second.run)
        await wait_until(lambda: state(first, "b") == "alive" and state(second, "a") == "alive",
                         what="both alive")
        # Any CURVE client key may talk to the client port (the SDK's ephemeral keys).
        client = zmq.Context.instance().socket(zmq.DEALER)
        client.setsockopt(zmq.LINGER, 0)
        client.curve_serverkey = first.public_key.encode()
        client.curve_publickey, client.curve_secretkey = zmq.curve_keypair()
        client.connect(first.clients.endpoint)
        try:
            client.send(to_cbor(NodeStatusRequest()))
            await wait_until(lambda: bool(client.poll(0)), what="the status reply")
            status = from_cbor(client.recv())
        finally:
            client.close(linger=0)
        assert isinstance(status, NodeStatus)
        assert [(m.node, m.state) for m in status.members] == [("a", "alive"), ("b", "alive")]
        assert dict(status.counters)["delivered"] >= 1
        await _bad_frames_are_counted_and_harmless(first, tmp_path)
        await second.stop()
        await wait_until(lambda: state(first, "b") == "left", what="b to have left")
        nursery.cancel_scope.cancel()


async def _bad_frames_are_counted_and_harmless(node: Node, tmp_path: Path) -> None:
    """A keyed peer sending junk: every frame is a counted drop; the node runs on."""
    keys = read_keys(cluster_key_path(tmp_path / "a"))
    codec = Codec(keys.cluster_id)
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_serverkey = keys.public_key
    sock.curve_publickey, sock.curve_secretkey = keys.public_key, keys.secret_key
    sock.connect(node.peer.endpoint)
    before = node.demux.counters()
    frames = [b"", b"\x9f" * 1000, codec.encode("b", "a", TransportProbe(nonce=1))[:-3],
              Codec("elsewhere").encode("b", "a", TransportProbe(nonce=1)),
              codec.encode("b", "a", TransportProbe(nonce=1))]  # no core for runtime messages
    try:
        for frame in frames:
            sock.send(frame)
        await wait_until(lambda: _drops(node) - _drops_in(before) == len(frames),
                         what="every bad frame counted")
    finally:
        sock.close(linger=0)
    counts = node.demux.counters()
    assert counts["decode_errors"] - before.get("decode_errors", 0) == 4
    assert counts["dropped_no_core"] - before.get("dropped_no_core", 0) == 1
    assert node.gossip.state_of(NodeId("b")) == "alive"


def _drops_in(counts: dict[str, int]) -> int:
    return counts.get("decode_errors", 0) + counts.get("dropped_no_core", 0)


def _drops(node: Node) -> int:
    return _drops_in(node.demux.counters())
