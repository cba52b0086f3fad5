"""Wire messages of the runtime itself (tags 500-599)."""

from __future__ import annotations

import attrs

from meshfaas.core.codec import message


@message(500)
@attrs.frozen(kw_only=True)
class TransportProbe:
    """An echo request between two transports (tests, benchmarks, health checks)."""

    nonce: int
    payload: bytes = b""
    reply: bool = False


@message(501)
@attrs.frozen(kw_only=True)
class NodeStatusRequest:
    """A client asks a node for its membership view (answered with :class:`NodeStatus`)."""


@message(502)
@attrs.frozen(kw_only=True)
class MemberRow:
    """One member as a node sees it."""

    node: str
    state: str
    incarnation: int
    peer_addr: str


@message(503)
@attrs.frozen(kw_only=True)
class NodeStatus:
    """A node's membership view (itself included, sorted by id) and transport counters."""

    node: str
    members: tuple[MemberRow, ...]
    counters: tuple[tuple[str, int], ...] = ()
