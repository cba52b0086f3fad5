"""Several cores behind one peer transport.

Theory of operation
-------------------
A node runs several cores (gossip, Paxos, ...) over one ``PeerTransport``: their
messages share the peer ROUTER and the DEALERs. Sending needs nothing special
(each core's :class:`~meshfaas.runtime.driver.Driver` encodes and sends its own
frames). Receiving does: :class:`Demux` owns the transport's inbound channel,
decodes each frame once with the cluster's codec, checks it is addressed to this
node (its id or an alias such as its own peer endpoint), and hands the message to
the driver registered for the message's package (``gossip``, ``paxos``, ...), by
the longest matching module prefix. A frame that does not decode, is addressed
elsewhere, or carries a message no core registered for is dropped and counted.

Frames are taken a burst at a time (see ``driver.drain_nowait``), so the sends a
burst causes leave together.
"""

from __future__ import annotations

from typing import Any

import trio

from meshfaas.core.codec import Codec, DecodeError
from meshfaas.core.types import NodeId
from meshfaas.runtime.driver import Driver, drain_nowait
from meshfaas.runtime.zsock import Counters


class Demux:
    """Routes decoded peer messages to the driver of the core they belong to."""

    def __init__(self, codec: Codec, node_id: NodeId, aliases: frozenset[str] = frozenset()):
        self.codec = codec
        self._addresses = frozenset({node_id}) | aliases
        self._routes: list[tuple[str, Driver]] = []
        self._by_type: dict[type, Driver | None] = {}
        self.stats = Counters()

    def route(self, module_prefix: str, driver: Driver) -> None:
        """Messages whose class lives in ``module_prefix`` (e.g. ``"paxos"``) go to ``driver``."""
        if any(prefix == module_prefix for prefix, _ in self._routes):
            raise ValueError(f"{module_prefix!r} is already routed")
        self._routes.append((module_prefix, driver))
        self._routes.sort(key=lambda r: -len(r[0]))
        self._by_type.clear()

    def driver_for(self, msg: Any) -> Driver | None:
        cls = type(msg)
        if cls not in self._by_type:
            module = cls.__module__
            self._by_type[cls] = next(
                (d for prefix, d in self._routes
                 if module == prefix or module.startswith(prefix + ".")), None)
        return self._by_type[cls]

    def deliver_frame(self, frame: bytes) -> None:
        try:
            env = self.codec.decode(frame)
        except DecodeError:
            self.stats.inc("decode_errors")
            return
        if env.dst not in self._addresses:
            self.stats.inc("dropped_misaddressed")
            return
        driver = self.driver_for(env.msg)
        if driver is None:
            self.stats.inc("dropped_no_core")
            return
        self.stats.inc("delivered")
        driver.deliver(NodeId(env.src), env.msg)

    def counters(self) -> dict[str, int]:
        return self.stats.snapshot()

    async def run(self, inbound: trio.MemoryReceiveChannel[bytes]) -> None:
        async for frame in inbound:
            self.deliver_frame(frame)
            for more in drain_nowait(inbound):
                self.deliver_frame(more)
