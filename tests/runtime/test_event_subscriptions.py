"""EventPublisher.wants: an event nobody subscribed to is not worth encoding."""

from __future__ import annotations

import trio
import zmq

from meshfaas.runtime.keys import ClusterKeys, Security
from meshfaas.runtime.transport import EventPublisher, open_network

from .helpers import wait_until


async def test_wants_follows_subscriptions_and_a_subscriber_still_gets_events() -> None:
    keys = ClusterKeys.generate("test-cluster")
    async with open_network(Security.curve(keys)) as net, trio.open_nursery() as nursery:
        pub = EventPublisher(net)
        await nursery.start(pub.run)
        assert not pub.wants(b"log\x00f")  # nobody connected: skip
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.curve_serverkey = keys.public_key
        sub.curve_publickey, sub.curve_secretkey = keys.public_key, keys.secret_key
        try:
            sub.connect(pub.endpoint)
            sub.setsockopt(zmq.SUBSCRIBE, b"log\x00f")
            await wait_until(lambda: pub.wants(b"log\x00f") and not pub.wants(b"inv\x00f"),
                             what="the subscription to reach the publisher")
            assert pub.wants(b"log\x00fn")  # a prefix match, as a SUB filters
            pub.publish(b"log\x00f", b"payload")
            with trio.fail_after(5):
                while not sub.poll(0):
                    await trio.sleep(0.01)
            assert sub.recv_multipart() == [b"log\x00f", b"payload"]
            sub.setsockopt(zmq.UNSUBSCRIBE, b"log\x00f")
            await wait_until(lambda: not pub.wants(b"log\x00f"), what="the unsubscription")
        finally:
            sub.close(linger=0)
            nursery.cancel_scope.cancel()
