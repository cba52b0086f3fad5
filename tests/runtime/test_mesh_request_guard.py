"""A client request that makes the node fail inside gets an Internal answer, and
the node keeps serving (the handler runs inline in the client socket's owner,
so an escaping exception would stop the node's client socket)."""

from __future__ import annotations

from typing import Any

import pytest

from meshfaas.core import client_proto as proto
from meshfaas.runtime.mesh import MeshProcess
from meshfaas.runtime.transport import ClientMessage


class _Clients:
    def __init__(self) -> None:
        self.replies: list[tuple[bytes, list[bytes]]] = []

    def reply(self, routing_id: bytes, parts: list[bytes]) -> bool:
        self.replies.append((routing_id, parts))
        return True


class _Driver:
    def __init__(self) -> None:
        self.calls = 0

    def hold(self) -> None:
        """A burst begins (the real driver defers its persisting to flush)."""

    def command(self, cmd: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug in the core")


def _node() -> Any:
    node: Any = MeshProcess.__new__(MeshProcess)
    node.clients, node.driver = _Clients(), _Driver()
    node._conns, node._next_conn, node._accepting = {}, 0, True
    node._in_hand = set()
    return node


def _request(request_id: str) -> ClientMessage:
    frame = proto.encode(proto.ClientRequest(request_id=request_id, api_key="k",
                                             body=proto.Ping()))
    return ClientMessage(b"client-1", (frame,))


def test_a_failing_request_gets_internal_and_the_next_one_is_served(
        caplog: pytest.LogCaptureFixture) -> None:
    node = _node()
    node._on_client(_request("r1"))  # the driver raises: answered, not propagated
    assert len(node.clients.replies) == 1
    routing_id, parts = node.clients.replies[0]
    answer = proto.decode_response(parts[0])
    assert routing_id == b"client-1" and answer.request_id == "r1" and not answer.ok
    assert answer.error is not None and answer.error.kind == "Internal"
    assert node._conns == {} and node._in_hand == set()  # nothing left waiting for a reply
    assert "failed inside the node" in caplog.text
    node._on_client(_request("r2"))  # the next request reaches the core as usual
    assert node.driver.calls == 2 and len(node.clients.replies) == 1 and len(node._conns) == 1
