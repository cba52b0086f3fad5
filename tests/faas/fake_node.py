"""A small fake node for SDK tests: a trio task with a zmq ROUTER and PUB on 127.0.0.1.

It runs the real pure application layer (``faas_api.plan`` on a real
``FaasStateMachine``), applies proposals at once (a one-node "log") and runs
invocations with plain Python callables in-process. No gossip, Paxos or sandbox.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, cast

import attrs
import trio
import zmq

from meshfaas.core import auth, faas, faas_api
from meshfaas.core import client_proto as proto
from meshfaas.core.codec import DecodeError


def _events(sock: zmq.Socket[Any]) -> int:
    return cast(int, sock.getsockopt(zmq.EVENTS))


class FakeNode:
    """One fake node. ``handlers`` maps a function name to ``f(event) -> result``."""

    def __init__(self, ctx: zmq.Context[Any], *, node: str = "n1",
                 curve_keys: tuple[bytes, bytes] | None = None, seed: int = 1) -> None:
        self.node = node
        self.ctx = ctx
        self.rng = random.Random(seed)
        self.sm = faas.FaasStateMachine()
        self.index = 0
        self.handlers: dict[str, Callable[[Any], Any]] = {}
        self.blobs: dict[str, bytes] = {}
        self.partial: dict[str, bytearray] = {}
        self.records: dict[str, proto.InvocationRecord] = {}
        self.logs: list[proto.LogEvent] = []
        self.advertise_events = True  # whether Members names the PUB endpoint
        self.hang = False  # when set, requests are received and never answered
        self.unavailable = False  # when set, every request answers Unavailable
        self.retryable = False  # ... marked retryable (nothing was done)
        self.received = 0
        self.killed = False
        self.after_reply: Callable[[proto.ClientRequest], None] | None = None  # a test hook
        self.got_request = trio.Event()  # set on every request; tests replace it to wait again
        self.router = self._bind(zmq.ROUTER, curve_keys)
        self.pub = self._bind(zmq.PUB, curve_keys)
        self.endpoint = self.router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.events_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.admin_key = self.add_key("admin", "admin")

    def _bind(self, kind: int, curve_keys: tuple[bytes, bytes] | None) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if curve_keys is not None:
            sock.curve_publickey, sock.curve_secretkey = curve_keys
            sock.curve_server = True
        sock.bind("tcp://127.0.0.1:*")
        return sock

    def random_bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def apply(self, command: Any) -> Any:
        self.index += 1
        return self.sm.apply(self.index, command)

    def add_key(self, name: str, role: str) -> str:
        put, token = faas_api.create_key_command(
            proto.CreateKey(name=name, role=role), 1, self.random_bytes)  # type: ignore[arg-type]
        self.apply(put)
        return token

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)

    # -- serving -------------------------------------------------------------

    def kill(self) -> None:
        """Close the ROUTER as a dying process would (its peers see the connection drop)."""
        self.killed = True
        trio.lowlevel.notify_closing(cast(int, self.router.getsockopt(zmq.FD)))
        self.router.close(linger=0)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            await self._serve()
        except (trio.ClosedResourceError, zmq.ZMQError):
            if not self.killed:
                raise

    async def _serve(self) -> None:
        while True:
            while not _events(self.router) & zmq.POLLIN:
                await trio.lowlevel.wait_readable(cast(int, self.router.getsockopt(zmq.FD)))
            while True:
                try:
                    parts = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._on_request(parts)

    def _on_request(self, parts: list[bytes]) -> None:
        self.received += 1
        self.got_request.set()
        if len(parts) != 2 or self.hang:
            return
        try:
            request = proto.decode_request(parts[1])
        except DecodeError:
            return
        response = self.respond(request)
        self.router.send_multipart([parts[0], proto.encode(response)], zmq.NOBLOCK)
        if self.after_reply is not None:
            self.after_reply(request)

    def respond(self, request: proto.ClientRequest) -> proto.ClientResponse:
        if self.unavailable:
            return proto.fail(request.request_id, "Unavailable", "no leader",
                              retryable=self.retryable)
        plan = faas_api.plan(self.sm, request, node=self.node, wall_ns=self.index + 1,
                             random_bytes=self.random_bytes)
        if isinstance(plan, faas_api.Reply):
            return plan.response
        if isinstance(plan, faas_api.Propose):
            return faas_api.finish(plan.request_id, self.apply(plan.command),
                                   new_key_token=plan.new_key_token)
        if isinstance(plan, faas_api.Invoke):
            return self._invoke(plan)
        return self._local(plan)

    def _invoke(self, plan: faas_api.Invoke) -> proto.ClientResponse:
        handler = self.handlers[plan.resolved.name]
        event = json.loads(plan.payload) if plan.payload else None
        self._log(plan, f"START RequestId: {plan.invocation_id}")
        try:
            result = handler(event)
        except Exception as exc:  # the handler's error becomes a FunctionError
            self._record(plan, "failed", error=exc)
            return proto.fail(plan.request_id, "FunctionError", str(exc),
                              error_type=type(exc).__name__, error_message=str(exc),
                              invocation_id=plan.invocation_id)
        payload = json.dumps(result).encode()
        self._record(plan, "succeeded", payload=payload)
        return proto.ok(plan.request_id, proto.InvokeResult(
            invocation_id=plan.invocation_id, payload=payload,
            executed_version=plan.resolved.version, node=self.node,
            log_tail=f"START RequestId: {plan.invocation_id}\n"))

    def _log(self, plan: faas_api.Invoke, text: str) -> None:
        event = proto.LogEvent(function=plan.resolved.name, invocation_id=plan.invocation_id,
                               node=self.node, wall_ns=self.index, text=text)
        self.logs.append(event)
        self.pub.send_multipart([proto.log_topic(event.function), proto.encode(event)], zmq.NOBLOCK)

    def _record(self, plan: faas_api.Invoke, status: str, *, payload: bytes | None = None,
                error: Exception | None = None) -> None:
        self.records[plan.invocation_id] = proto.InvocationRecord(
            invocation_id=plan.invocation_id, function=plan.resolved.name,
            status=status, version=plan.resolved.version, node=self.node,  # type: ignore[arg-type]
            payload=payload, error_type=type(error).__name__ if error else "",
            error_message=str(error) if error else "")

    def _local(self, plan: faas_api.Local) -> proto.ClientResponse:
        body, rid = plan.body, plan.request_id
        if isinstance(body, proto.Ping):
            return proto.ok(rid, proto.Pong(node=self.node))
        if isinstance(body, proto.HasBlob):
            return proto.ok(rid, body.sha256 in self.blobs)
        if isinstance(body, proto.UploadChunk):
            return self._chunk(rid, body)
        if isinstance(body, proto.GetResult):
            return self._result(rid, body.invocation_id)
        if isinstance(body, proto.Members):
            return proto.ok(rid, [proto.MemberInfo(
                node=self.node, state="alive", client_endpoint=self.endpoint,
                events_endpoint=self.events_endpoint if self.advertise_events else "", runtimes=("python3.11",), capacity=4)])
        if isinstance(body, proto.Status):
            return proto.ok(rid, proto.StatusInfo(
                node=self.node, leader=self.node, commit_index=self.index,
                applied_index=self.index, functions=len(self.sm.functions), load={self.node: 0}))
        if isinstance(body, proto.RecentLogs):
            return proto.ok(rid, [e for e in self.logs if e.function == body.name][-body.limit:])
        return proto.fail(rid, "BadRequest", "unknown")

    def _chunk(self, rid: str, body: proto.UploadChunk) -> proto.ClientResponse:
        buffer = self.partial.setdefault(body.sha256, bytearray())
        if body.offset != len(buffer):
            return proto.fail(rid, "BadRequest", "chunk out of order")
        buffer.extend(body.data)
        complete = len(buffer) == body.total_bytes
        if complete:
            self.blobs[body.sha256] = bytes(self.partial.pop(body.sha256))
        return proto.ok(rid, proto.BlobProgress(received_bytes=len(buffer), complete=complete))

    def _result(self, rid: str, invocation_id: str) -> proto.ClientResponse:
        record = self.records.get(invocation_id)
        if record is not None:
            return proto.ok(rid, record)
        accepted = self.sm.get_async(invocation_id)
        if accepted is None:
            return proto.fail(rid, "NotFound", f"no invocation {invocation_id}")
        return proto.ok(rid, proto.InvocationRecord(
            invocation_id=invocation_id, function=accepted.function, status=accepted.status,
            attempts=accepted.attempts))


def role_key(node: FakeNode, role: str) -> str:
    assert role in auth.ROLES
    return node.add_key(role, role)


def evolve(obj: Any, **changes: Any) -> Any:
    return attrs.evolve(obj, **changes)
