"""The request planner: authentication, permissions, and what each body becomes."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from meshfaas.core import client_proto as proto
from meshfaas.core import faas, faas_api
from meshfaas.core.faas import CodeRef, FaasStateMachine, FunctionConfig

CODE = CodeRef(sha256=hashlib.sha256(b"x").hexdigest(), size_bytes=3)


class World:
    def __init__(self) -> None:
        self.sm = FaasStateMachine()
        self.index = 0
        self.rng = random.Random(4)
        self.keys = {role: self.add_key(role) for role in ("admin", "developer", "invoker", "viewer")}

    def apply(self, command: Any) -> Any:
        self.index += 1
        return self.sm.apply(self.index, command)

    def add_key(self, role: str) -> str:
        put, token = faas_api.create_key_command(
            proto.CreateKey(name=role, role=role), 1, self.rng.randbytes)  # type: ignore[arg-type]
        self.apply(put)
        return token

    def plan(self, body: Any, role: str = "admin", key: str | None = None) -> Any:
        request = proto.ClientRequest(request_id="r", api_key=key or self.keys[role], body=body)
        return faas_api.plan(self.sm, request, node="n1", wall_ns=99, random_bytes=self.rng.randbytes)

    def run(self, body: Any, role: str = "admin") -> proto.ClientResponse:
        """Plan and, for a proposal, apply it at once (a one-node log)."""
        planned = self.plan(body, role)
        if isinstance(planned, faas_api.Propose):
            return faas_api.finish("r", self.apply(planned.command),
                                   new_key_token=planned.new_key_token)
        assert isinstance(planned, faas_api.Reply)
        return planned.response


@pytest.fixture
def world() -> World:
    return World()


def deploy_body(name: str = "f", **changes: Any) -> proto.Deploy:
    fields: dict[str, Any] = {"name": name, "code": CODE, "handler": "app.handler", **changes}
    return proto.Deploy(**fields)


def error_kind(planned: Any) -> str | None:
    response = planned.response if isinstance(planned, faas_api.Reply) else planned
    return response.error.kind if response.error else None


def test_unknown_or_revoked_keys_are_unauthorized(world: World) -> None:
    assert error_kind(world.plan(proto.Ping(), key="mf_garbage")) == "Unauthorized"
    key_id = world.keys["viewer"].split("_")[1]
    world.apply(faas.RevokeApiKey(key_id=key_id, wall_ns=5))
    assert error_kind(world.plan(proto.Ping(), "viewer")) == "Unauthorized"


@pytest.mark.parametrize(
    ("body", "role", "kind"),
    [(deploy_body(), "viewer", "Forbidden"), (deploy_body(), "invoker", "Forbidden"),
     (proto.CreateKey(name="x", role="admin"), "developer", "Forbidden"),
     (proto.Invoke(name="f", payload=b""), "viewer", "Forbidden"),
     (proto.ListFunctions(), "invoker", "Forbidden"),
     (proto.ListFunctions(), "viewer", None), (CODE, "admin", "BadRequest")],
)
def test_permissions_are_enforced(world: World, body: Any, role: str, kind: str | None) -> None:
    assert error_kind(world.plan(body, role)) == kind


def test_local_bodies_go_to_the_node(world: World) -> None:
    for body in (proto.Ping(), proto.HasBlob(sha256=CODE.sha256), proto.Members(), proto.Status(),
                 proto.GetResult(invocation_id="n1~x"), proto.RecentLogs(name="f")):
        planned = world.plan(body)
        assert isinstance(planned, faas_api.Local) and planned.body == body


def test_deploy_read_and_delete(world: World) -> None:
    deployed = world.run(deploy_body(memory_mb=256, publish=True))
    assert deployed.ok and deployed.value.created and deployed.value.version.version == 1
    assert deployed.value.function.config.memory_mb == 256
    listed = world.run(proto.ListFunctions(), "viewer")
    assert [f.name for f in listed.value] == ["f"]
    details = world.run(proto.GetFunction(name="f"), "viewer").value
    assert isinstance(details, proto.FunctionDetails) and len(details.versions) == 1
    assert error_kind(world.run(proto.GetFunction(name="g"))) == "NotFound"
    assert error_kind(world.run(proto.ListVersions(name="g"))) == "NotFound"
    assert world.run(proto.DeleteFunctionRequest(name="f")).ok
    assert error_kind(world.run(deploy_body(memory_mb=1))) == "BadRequest"


def test_alias_and_weighted_invoke(world: World) -> None:
    world.run(deploy_body(publish=True))
    world.run(deploy_body(memory_mb=512, publish=True))
    made = world.run(proto.PutAlias(name="f", alias="live", version="1", extra_version="2",
                                    extra_weight_bp=5000))
    assert made.ok and made.value.extra_weight_bp == 5000
    assert error_kind(world.run(proto.PutAlias(name="f", alias="live", version="1"))) == "Conflict"
    versions = set()
    for _ in range(40):
        planned = world.plan(proto.Invoke(name="f", payload=b"{}", qualifier="live"), "invoker")
        assert isinstance(planned, faas_api.Invoke) and planned.invocation_id.startswith("n1~")
        versions.add(planned.resolved.version)
    assert versions == {"1", "2"}
    assert error_kind(world.plan(proto.Invoke(name="nope", payload=b""), "invoker")) == "NotFound"


def test_async_invoke_is_proposed_with_an_idempotency_key(world: World) -> None:
    world.run(deploy_body())
    body = proto.Invoke(name="f", payload=b"{}", invocation_type="Event", idempotency_key="k")
    first = world.run(body, "invoker")
    again = world.run(body, "invoker")
    assert first.value == again.value and isinstance(first.value, proto.AsyncAccepted)
    unkeyed = world.plan(proto.Invoke(name="f", payload=b"", invocation_type="Event"), "invoker")
    assert unkeyed.command.idempotency_key == unkeyed.command.request_id
    too_big = proto.Invoke(name="f", payload=b"x" * (256 * 1024 + 1), invocation_type="Event")
    assert error_kind(world.plan(too_big, "invoker")) == "BadRequest"
    missing = proto.Invoke(name="g", payload=b"", invocation_type="Event")
    assert error_kind(world.plan(missing, "invoker")) == "NotFound"


def test_create_key_keeps_the_secret_out_of_the_log(world: World) -> None:
    planned = world.plan(proto.CreateKey(name="ci", role="viewer"))
    assert isinstance(planned, faas_api.Propose) and planned.new_key_token.startswith("mf_")
    secret = planned.new_key_token.split("_", 2)[2]
    assert secret.encode() not in repr(planned.command).encode()
    response = faas_api.finish("r", world.apply(planned.command),
                               new_key_token=planned.new_key_token)
    assert response.value.api_key == planned.new_key_token
    assert world.sm.authenticate(planned.new_key_token) is not None
    listed = world.run(proto.ListKeys()).value
    assert all(isinstance(k, proto.KeyInfo) for k in listed) and len(listed) == 5


def test_update_config_and_publish(world: World) -> None:
    world.run(deploy_body())
    updated = world.run(proto.UpdateConfig(name="f", patch=faas.ConfigPatch(timeout_s=60)))
    assert updated.value.config.timeout_s == 60
    published = world.run(proto.PublishVersionRequest(name="f", description="d"))
    assert published.value.version == 1 and published.value.config.timeout_s == 60
    assert isinstance(faas_api.config_of(deploy_body()), FunctionConfig)
