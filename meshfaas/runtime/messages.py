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
