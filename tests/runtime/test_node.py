"""Nodes in one process (fast): join, status over the client port, leave."""

from __future__ import annotations

from pathlib import Path

import trio
import zmq

from gossip import GossipConfig
from meshfaas.core.codec import from_cbor, to_cbor
from meshfaas.core.types import NS_PER_MS, NodeId
from meshfaas.runtime.keys import cluster_key_path
from meshfaas.runtime.messages import NodeStatus, NodeStatusRequest
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
        await second.stop()
        await wait_until(lambda: state(first, "b") == "left", what="b to have left")
        nursery.cancel_scope.cancel()
