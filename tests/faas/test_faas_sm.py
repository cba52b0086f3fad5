"""The FaaS state machine: commands, validation, async life cycle, snapshots."""

from __future__ import annotations

import hashlib
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshfaas.core import faas
from meshfaas.core.auth import make_api_key
from meshfaas.core.codec import DecodeError, from_cbor, to_cbor
from meshfaas.core.faas import (
    AcceptAsyncInvocation,
    CodeRef,
    ConfigPatch,
    CreateAlias,
    CreateFunction,
    DeleteAlias,
    DeleteFunction,
    FaasError,
    FaasStateMachine,
    FunctionConfig,
    Noop,
    PruneAsyncRecords,
    PublishVersion,
    PutApiKey,
    RecordAsyncAttempt,
    RevokeApiKey,
    StartAsyncAttempt,
    UpdateAlias,
    UpdateFunctionCode,
    UpdateFunctionConfig,
)

CODE_A = CodeRef(sha256=hashlib.sha256(b"a").hexdigest(), size_bytes=10)
CODE_B = CodeRef(sha256=hashlib.sha256(b"b").hexdigest(), size_bytes=20)
CONFIG = FunctionConfig(handler="app.handler")


class Driver:
    """Applies commands with increasing indices, like the Paxos learner."""

    def __init__(self) -> None:
        self.sm = FaasStateMachine()
        self.index = 0

    def __call__(self, cmd: Any) -> Any:
        self.index += 1
        return self.sm.apply(self.index, cmd)


def create(name: str = "f", config: FunctionConfig = CONFIG, code: CodeRef = CODE_A) -> Any:
    return CreateFunction(name=name, config=config, code=code, wall_ns=1)


@pytest.fixture
def apply() -> Driver:
    return Driver()


def kind(result: Any) -> str:
    return result.kind if isinstance(result, FaasError) else "ok"


# ---------------------------------------------------------------------------
# Validation tables
# ---------------------------------------------------------------------------

CONFIG_CASES = [
    ({}, None),
    ({"handler": "app"}, "handler"),
    ({"handler": "pkg.mod.fn"}, None),
    ({"handler": "app.1fn"}, "handler"),
    ({"runtime": "python3.13"}, None),
    ({"runtime": "node18"}, "runtime"),
    ({"memory_mb": 127}, "memory_mb"),
    ({"memory_mb": 128}, None),
    ({"memory_mb": 10_240}, None),
    ({"memory_mb": 10_241}, "memory_mb"),
    ({"timeout_s": 0}, "timeout_s"),
    ({"timeout_s": 1}, None),
    ({"timeout_s": 900}, None),
    ({"timeout_s": 901}, "timeout_s"),
    ({"env": {"GOOD_1": "x"}}, None),
    ({"env": {"1BAD": "x"}}, "environment variable name"),
    ({"env": {"AWS_REGION": "x"}}, "reserved"),
    ({"env": {"MESHFAAS_X": "x"}}, "reserved"),
    ({"env": {"BIG": "x" * 4096}}, "environment is"),
    ({"env": {"OK": "x" * 4000}}, None),
    ({"reserved_concurrency": -1}, "reserved_concurrency"),
    ({"reserved_concurrency": 0}, None),
    ({"reserved_concurrency": 100_001}, "reserved_concurrency"),
    ({"requirements": ("requests==2.31",)}, None),
    ({"requirements": ("",)}, "requirement"),
    ({"requirements": ("a\nb",)}, "requirement"),
    ({"requirements": tuple(f"p{i}" for i in range(101))}, "at most"),
    ({"description": "d" * 257}, "description"),
]


@pytest.mark.parametrize(("changes", "problem"), CONFIG_CASES)
def test_check_config_table(changes: dict[str, Any], problem: str | None) -> None:
    result = faas.check_config(attrs.evolve(CONFIG, **changes))
    if problem is None:
        assert result is None
    else:
        assert result is not None and problem in result


def _check_config_as_list(config: FunctionConfig) -> str | None:
    """check_config as it was written before it became a straight sequence of tests."""
    checks = [
        None if faas._HANDLER_RE.fullmatch(config.handler)
        else f"handler {config.handler!r} must look like module.function",
        None if faas._RUNTIME_RE.fullmatch(config.runtime)
        else f"runtime {config.runtime!r} must look like python3.11",
        faas._check_range("memory_mb", config.memory_mb, faas.MEMORY_MB_MIN, faas.MEMORY_MB_MAX),
        faas._check_range("timeout_s", config.timeout_s, faas.TIMEOUT_S_MIN, faas.TIMEOUT_S_MAX),
        faas.check_env(config.env),
        None if config.reserved_concurrency is None else faas._check_range(
            "reserved_concurrency", config.reserved_concurrency, 0, faas.RESERVED_CONCURRENCY_MAX),
        faas.check_requirements(config.requirements),
        None if len(config.description) <= faas.DESCRIPTION_MAX_CHARS
        else f"description over {faas.DESCRIPTION_MAX_CHARS} characters",
    ]
    return next((c for c in checks if c is not None), None)


def _patched_by_evolve(config: FunctionConfig, patch: ConfigPatch) -> FunctionConfig:
    """apply_patch through attrs.evolve, over every field of ConfigPatch."""
    changes: dict[str, Any] = {}
    for field in attrs.fields(ConfigPatch):
        value = getattr(patch, field.name)
        if field.name == "clear_reserved_concurrency":
            continue
        if field.name == "reserved_concurrency" and patch.clear_reserved_concurrency:
            changes["reserved_concurrency"] = None
        elif value is not None:
            changes[field.name] = value
    return attrs.evolve(config, **changes)


_texts = st.sampled_from(["", "app.handler", "pkg.mod.fn", "app", "python3.11", "node18",
                          "d" * 257, "x"])
_ints = st.sampled_from([-1, 0, 1, 3, 127, 128, 900, 901, 10_240, 10_241, 100_001])
configs = st.builds(
    FunctionConfig, handler=_texts, runtime=_texts, memory_mb=_ints, timeout_s=_ints,
    env=st.sampled_from([{}, {"GOOD": "x"}, {"1BAD": "x"}, {"AWS_X": "y"}, {"BIG": "x" * 4096}]),
    reserved_concurrency=st.none() | _ints,
    requirements=st.sampled_from([(), ("requests==2.31",), ("",), tuple(f"p{i}" for i in range(101))]),
    description=_texts)
patches = st.builds(
    ConfigPatch, handler=st.none() | _texts, runtime=st.none() | _texts,
    memory_mb=st.none() | _ints, timeout_s=st.none() | _ints,
    env=st.none() | st.sampled_from([{}, {"A": "b"}]), reserved_concurrency=st.none() | _ints,
    clear_reserved_concurrency=st.booleans(),
    requirements=st.none() | st.sampled_from([(), ("x",)]), description=st.none() | _texts)


@given(configs, patches)
def test_apply_patch_and_check_config_match_their_generic_forms(
        config: FunctionConfig, patch: ConfigPatch) -> None:
    """apply_patch and check_config are written out field by field for speed; they
    must answer what the generic forms (attrs.evolve, a list of checks) answer."""
    assert faas.check_config(config) == _check_config_as_list(config)
    patched = faas.apply_patch(config, patch)
    assert patched == _patched_by_evolve(config, patch)
    assert faas.check_config(patched) == _check_config_as_list(patched)


def test_apply_patch_knows_every_field() -> None:
    """A field added to FunctionConfig or ConfigPatch needs its line in apply_patch."""
    config = FunctionConfig(handler="a.b", runtime="python3.12", memory_mb=256, timeout_s=9,
                            env={"A": "1"}, reserved_concurrency=4, requirements=("r",),
                            description="d")
    assert {f.name for f in attrs.fields(FunctionConfig)} == {
        f.name for f in attrs.fields(ConfigPatch)} - {"clear_reserved_concurrency"}
    for field in attrs.fields(ConfigPatch):
        if field.name == "clear_reserved_concurrency":
            continue
        value = {"handler": "c.d", "runtime": "python3.13", "memory_mb": 512, "timeout_s": 10,
                 "env": {"B": "2"}, "reserved_concurrency": 5, "requirements": ("s",),
                 "description": "e"}[field.name]
        patched = faas.apply_patch(config, ConfigPatch(**{field.name: value}))
        assert patched == attrs.evolve(config, **{field.name: value})


def test_a_changed_record_keeps_every_other_field() -> None:
    """_changed builds the next revision directly: it must equal the evolve form."""
    sm = FaasStateMachine()
    record = faas.FunctionRecord(name="f", config=CONFIG, code=CODE_A, revision=4,
                                 created_wall_ns=10, modified_wall_ns=20, last_version=3)
    other = attrs.evolve(CONFIG, memory_mb=256)
    for changes in ({"config": other}, {"code": CODE_B}, {"config": other, "code": CODE_B}):
        updated = sm._changed(record, 30, **changes)
        assert updated == attrs.evolve(record, revision=5, modified_wall_ns=30, **changes)
        assert sm.functions["f"] is updated


@pytest.mark.parametrize(
    ("name", "ok"),
    [("f", True), ("my-func_2", True), ("x" * 64, True), ("x" * 65, False), ("", False), ("f\n", False),
     ("a b", False), ("a/b", False), ("é", False)],
)
def test_function_names(name: str, ok: bool) -> None:
    assert (faas.check_function_name(name) is None) is ok


@pytest.mark.parametrize(
    ("alias", "ok"),
    [("live", True), ("v2-beta", True), ("123", False), ("$LATEST", False), ("", False),
     ("a" * 129, False)],
)
def test_alias_names(alias: str, ok: bool) -> None:
    assert (faas.check_alias_name(alias) is None) is ok


@pytest.mark.parametrize(
    ("code", "ok"),
    [(CODE_A, True), (CodeRef(sha256="A" * 64, size_bytes=1), False),
     (CodeRef(sha256="a" * 63, size_bytes=1), False), (attrs.evolve(CODE_A, size_bytes=0), False),
     (attrs.evolve(CODE_A, size_bytes=50 * 1024 * 1024), True),
     (attrs.evolve(CODE_A, size_bytes=50 * 1024 * 1024 + 1), False)],
)
def test_check_code(code: CodeRef, ok: bool) -> None:
    assert (faas.check_code(code) is None) is ok


@pytest.mark.parametrize(
    ("version", "number"),
    [("1", 1), ("42", 42), ("0", None), ("01", None), ("$LATEST", None), ("²", None),
     ("1234567890", None), ("-1", None)],
)
def test_version_number(version: str, number: int | None) -> None:
    assert faas.version_number(version) == number


# ---------------------------------------------------------------------------
# Functions, versions, aliases
# ---------------------------------------------------------------------------


def test_create_get_list_delete(apply: Driver) -> None:
    record = apply(create("b"))
    assert isinstance(record, faas.FunctionRecord) and record.revision == 1
    apply(create("a"))
    assert [f.name for f in apply.sm.list_functions()] == ["a", "b"]
    assert kind(apply(create("a"))) == "Conflict"
    assert isinstance(apply(DeleteFunction(name="a", wall_ns=2)), faas.Deleted)
    assert kind(apply(DeleteFunction(name="a", wall_ns=2))) == "NotFound"
    assert apply.sm.get_function("a") is None


def test_bad_create_leaves_state_unchanged(apply: Driver) -> None:
    before = apply.sm.snapshot()
    result = apply(create(config=attrs.evolve(CONFIG, memory_mb=1)))
    assert kind(result) == "BadRequest" and "memory_mb" in result.message
    after = from_cbor(apply.sm.snapshot())
    assert after == attrs.evolve(from_cbor(before), last_index=1)


def test_update_code_and_config(apply: Driver) -> None:
    apply(create())
    updated = apply(UpdateFunctionCode(name="f", code=CODE_B, wall_ns=5))
    assert updated.code == CODE_B and updated.revision == 2 and updated.modified_wall_ns == 5
    patch = ConfigPatch(memory_mb=512, env={"K": "v"}, reserved_concurrency=3)
    updated = apply(UpdateFunctionConfig(name="f", patch=patch, wall_ns=6))
    assert updated.config.memory_mb == 512 and updated.config.env == {"K": "v"}
    assert updated.config.reserved_concurrency == 3 and updated.config.handler == "app.handler"
    cleared = apply(UpdateFunctionConfig(
        name="f", patch=ConfigPatch(clear_reserved_concurrency=True), wall_ns=7))
    assert cleared.config.reserved_concurrency is None and cleared.revision == 4


def test_update_refusals(apply: Driver) -> None:
    apply(create())
    bad_patch = UpdateFunctionConfig(name="f", patch=ConfigPatch(timeout_s=901), wall_ns=2)
    assert kind(apply(bad_patch)) == "BadRequest"
    stale = UpdateFunctionCode(name="f", code=CODE_B, wall_ns=2, expected_revision=7)
    assert kind(apply(stale)) == "Conflict"
    missing = UpdateFunctionCode(name="g", code=CODE_B, wall_ns=2)
    assert kind(apply(missing)) == "NotFound"
    assert apply.sm.functions["f"].revision == 1


def test_publish_versions(apply: Driver) -> None:
    apply(create())
    v1 = apply(PublishVersion(name="f", wall_ns=2))
    assert v1.version == 1 and v1.code == CODE_A
    assert apply(PublishVersion(name="f", wall_ns=3)) == v1  # unchanged: same version
    apply(UpdateFunctionCode(name="f", code=CODE_B, wall_ns=4))
    v2 = apply(PublishVersion(name="f", wall_ns=5, description="second"))
    assert v2.version == 2 and v2.code == CODE_B
    assert [v.version for v in apply.sm.list_versions("f")] == [1, 2]
    assert kind(apply(PublishVersion(name="nope", wall_ns=6))) == "NotFound"


def two_versions(apply: Driver) -> None:
    apply(create())
    apply(PublishVersion(name="f", wall_ns=2))
    apply(UpdateFunctionCode(name="f", code=CODE_B, wall_ns=3))
    apply(PublishVersion(name="f", wall_ns=4))


ALIAS_CASES = [
    ({"version": "1"}, "ok"),
    ({"version": "$LATEST"}, "ok"),
    ({"version": "3"}, "NotFound"),
    ({"version": "1", "extra_version": "2", "extra_weight_bp": 2500}, "ok"),
    ({"version": "1", "extra_version": "1", "extra_weight_bp": 2500}, "BadRequest"),
    ({"version": "$LATEST", "extra_version": "2", "extra_weight_bp": 10}, "BadRequest"),
    ({"version": "1", "extra_version": "9", "extra_weight_bp": 10}, "NotFound"),
    ({"version": "1", "extra_version": "2", "extra_weight_bp": 10_001}, "BadRequest"),
    ({"version": "1", "extra_weight_bp": 5}, "BadRequest"),
    ({"version": "1", "alias": "12"}, "BadRequest"),
    ({"version": "1", "name": "g"}, "NotFound"),
]


@pytest.mark.parametrize(("fields", "expected"), ALIAS_CASES)
def test_create_alias_table(apply: Driver, fields: dict[str, Any], expected: str) -> None:
    two_versions(apply)
    args: dict[str, Any] = {"name": "f", "alias": "live", "wall_ns": 9, **fields}
    assert kind(apply(CreateAlias(**args))) == expected


def test_alias_lifecycle_and_resolve(apply: Driver) -> None:
    two_versions(apply)
    apply(CreateAlias(name="f", alias="live", version="1", extra_version="2",
                      extra_weight_bp=2500, wall_ns=5))
    assert kind(apply(CreateAlias(name="f", alias="live", version="1", wall_ns=5))) == "Conflict"
    assert apply.sm.resolve("f", "live", draw_bp=2499).version == "2"
    assert apply.sm.resolve("f", "live", draw_bp=2500).version == "1"
    assert apply.sm.resolve("f", "1").code == CODE_A
    assert apply.sm.resolve("f", None).version == "$LATEST"
    assert kind(apply.sm.resolve("f", "9")) == "NotFound"
    assert kind(apply.sm.resolve("f", "nope")) == "NotFound"
    apply(UpdateAlias(name="f", alias="live", version="2", wall_ns=6))
    assert apply.sm.resolve("f", "live", draw_bp=0).version == "2"
    assert kind(apply(UpdateAlias(name="f", alias="other", version="2", wall_ns=6))) == "NotFound"
    assert isinstance(apply(DeleteAlias(name="f", alias="live", wall_ns=7)), faas.Deleted)
    assert apply.sm.list_aliases("f") == []


def test_delete_function_drops_versions_and_aliases(apply: Driver) -> None:
    two_versions(apply)
    apply(CreateAlias(name="f", alias="live", version="1", wall_ns=5))
    apply(DeleteFunction(name="f", wall_ns=6))
    apply(create())
    assert apply.sm.list_versions("f") == [] and apply.sm.list_aliases("f") == []


# ---------------------------------------------------------------------------
# API keys
# ---------------------------------------------------------------------------


def put_key(role: str = "admin", seed: int = 1) -> tuple[PutApiKey, str]:
    key = make_api_key(bytes([seed]) * 56)
    cmd = PutApiKey(key_id=key.key_id, name="k", role=role, salt=key.salt,
                    secret_hash=key.secret_hash, wall_ns=1)
    return cmd, key.token


def test_keys_put_authenticate_revoke(apply: Driver) -> None:
    cmd, token = put_key()
    record = apply(cmd)
    assert record.role == "admin" and record.active
    assert token not in repr(apply.sm.snapshot())
    assert apply.sm.authenticate(token) == record
    assert apply.sm.authenticate(token) == record  # again: from the cache of proven tokens
    assert apply.sm.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert apply.sm.authenticate("garbage") is None
    assert kind(apply(cmd)) == "Conflict"
    revoked = apply(RevokeApiKey(key_id=cmd.key_id, wall_ns=9))
    assert not revoked.active and apply.sm.authenticate(token) is None
    assert kind(apply(RevokeApiKey(key_id="0" * 16, wall_ns=9))) == "NotFound"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [({"role": "root"}, "BadRequest"), ({"key_id": "XYZ"}, "BadRequest"),
     ({"salt": b"short"}, "BadRequest"), ({"secret_hash": b"x"}, "BadRequest")],
)
def test_put_key_refusals(apply: Driver, changes: dict[str, Any], expected: str) -> None:
    cmd, _ = put_key()
    assert kind(apply(attrs.evolve(cmd, **changes))) == expected


# ---------------------------------------------------------------------------
# Async invocations
# ---------------------------------------------------------------------------


def accept(rid: str = "r1", key: str = "k1", at: int = 100) -> AcceptAsyncInvocation:
    return AcceptAsyncInvocation(request_id=rid, idempotency_key=key, function="f",
                                 qualifier="", payload=b"{}", wall_ns=at,
                                 next_attempt_at_wall_ns=at)


def start(n: int, rid: str = "r1") -> StartAsyncAttempt:
    return StartAsyncAttempt(request_id=rid, attempt=n, node="n1", wall_ns=100 * n,
                             lease_until_wall_ns=100 * n + 50)


def fail(n: int, rid: str = "r1") -> RecordAsyncAttempt:
    return RecordAsyncAttempt(request_id=rid, attempt=n, ok=False, wall_ns=100 * n + 10,
                              error_type="ValueError", error_message="boom",
                              retry_at_wall_ns=100 * n + 60)


def test_async_idempotency_key_answers_first_request(apply: Driver) -> None:
    first = apply(accept("r1", "k1"))
    again = apply(accept("r2", "k1"))
    assert again == first and apply.sm.get_async("r2") is None
    assert kind(apply(accept("r1", "other"))) == "Conflict"


def test_async_success_after_one_retry(apply: Driver) -> None:
    apply(accept())
    assert [r.request_id for r in apply.sm.due_async(100)] == ["r1"]
    assert apply(start(1)).status == "running"
    assert apply.sm.due_async(10**9) == []
    retry = apply(fail(1))
    assert retry.status == "pending" and retry.next_attempt_at_wall_ns == 160
    assert apply.sm.due_async(159) == [] and len(apply.sm.due_async(160)) == 1
    apply(start(2))
    done = apply(RecordAsyncAttempt(request_id="r1", attempt=2, ok=True, wall_ns=300, node="n2"))
    assert done.status == "succeeded" and done.attempts == 2 and done.node == "n2"
    assert kind(apply(start(3))) == "Conflict"


def test_async_dead_letter_after_three_failures(apply: Driver) -> None:
    apply(accept())
    for n in (1, 2, 3):
        apply(start(n))
        record = apply(fail(n))
    assert record.status == "dead_letter" and record.attempts == 3
    assert record.error_type == "ValueError" and record.payload == b"{}"


def test_async_stale_and_repeated_attempts_change_nothing(apply: Driver) -> None:
    apply(accept())
    assert kind(apply(start(2))) == "Conflict"
    apply(start(1))
    assert kind(apply(start(1))) == "Conflict"
    assert kind(apply(fail(2))) == "Conflict"
    apply(RecordAsyncAttempt(request_id="r1", attempt=1, ok=True, wall_ns=5))
    assert kind(apply(RecordAsyncAttempt(request_id="r1", attempt=1, ok=True, wall_ns=6))) == "Conflict"
    assert apply.sm.get_async("r1").finished_wall_ns == 5


def test_expired_attempts(apply: Driver) -> None:
    apply(accept())
    apply(start(1))
    assert apply.sm.expired_attempts(150) == []
    assert [r.request_id for r in apply.sm.expired_attempts(151)] == ["r1"]


def test_prune_forgets_finished_and_their_keys(apply: Driver) -> None:
    apply(accept("r1", "k1"))
    apply(accept("r2", "k2"))
    apply(start(1, "r1"))
    apply(RecordAsyncAttempt(request_id="r1", attempt=1, ok=True, wall_ns=500))
    assert apply(PruneAsyncRecords(before_wall_ns=500, wall_ns=1)) == 0
    assert apply(PruneAsyncRecords(before_wall_ns=501, wall_ns=1)) == 1
    assert apply.sm.get_async("r1") is None and apply.sm.get_async("r2") is not None
    assert apply(accept("r3", "k1")).request_id == "r3"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [({"request_id": "has space"}, "BadRequest"), ({"idempotency_key": ""}, "BadRequest"),
     ({"function": "bad/name"}, "BadRequest"), ({"payload": b"x" * (256 * 1024 + 1)}, "BadRequest")],
)
def test_accept_refusals(apply: Driver, changes: dict[str, Any], expected: str) -> None:
    assert kind(apply(attrs.evolve(accept(), **changes))) == expected


def test_retry_delays() -> None:
    assert faas.async_retry_delay_ns(1) == 60 * 10**9
    assert faas.async_retry_delay_ns(2) == 120 * 10**9
    with pytest.raises(ValueError):
        faas.async_retry_delay_ns(3)


# ---------------------------------------------------------------------------
# The StateMachine contract
# ---------------------------------------------------------------------------


def test_apply_out_of_order_is_misuse(apply: Driver) -> None:
    apply(Noop())
    apply(Noop())
    with pytest.raises(ValueError):
        apply.sm.apply(1, Noop())


def test_several_commands_may_share_an_index() -> None:
    sm = FaasStateMachine()
    assert isinstance(sm.apply(7, create("a")), faas.FunctionRecord)
    assert isinstance(sm.apply(7, create("b")), faas.FunctionRecord)
    assert sm.last_index == 7 and len(sm.list_functions()) == 2


def test_unknown_command_is_an_error_value(apply: Driver) -> None:
    assert kind(apply("not a command")) == "BadRequest"
    assert kind(apply(CODE_A)) == "BadRequest"


def test_restore_refuses_bad_bytes() -> None:
    with pytest.raises(DecodeError):
        FaasStateMachine().restore(b"\xff\x00")
    with pytest.raises(DecodeError):
        FaasStateMachine().restore(to_cbor(CODE_A))


names = st.sampled_from(["f", "g", "h"])
versions = st.sampled_from(["$LATEST", "1", "2", "3"])
codes = st.sampled_from([CODE_A, CODE_B])
walls = st.integers(0, 1000)
commands = st.one_of(
    st.builds(CreateFunction, name=names, code=codes, wall_ns=walls, config=st.builds(
        FunctionConfig, handler=st.just("app.h"), memory_mb=st.sampled_from([64, 128, 256]))),
    st.builds(UpdateFunctionCode, name=names, code=codes, wall_ns=walls),
    st.builds(faas.DeployFunction, name=names, code=codes, wall_ns=walls, publish=st.booleans(),
              config=st.builds(FunctionConfig, handler=st.just("app.h"),
                               timeout_s=st.sampled_from([0, 3, 5]))),
    st.builds(UpdateFunctionConfig, name=names, wall_ns=walls, patch=st.builds(
        ConfigPatch, timeout_s=st.none() | st.integers(0, 1000),
        env=st.none() | st.dictionaries(st.sampled_from(["A", "B", "z9"]), st.text(max_size=3)))),
    st.builds(DeleteFunction, name=names, wall_ns=walls),
    st.builds(PublishVersion, name=names, wall_ns=walls),
    st.builds(CreateAlias, name=names, alias=st.sampled_from(["live", "beta"]), version=versions,
              extra_version=st.none() | versions, extra_weight_bp=st.integers(0, 10_000),
              wall_ns=walls),
    st.builds(UpdateAlias, name=names, alias=st.sampled_from(["live", "beta"]), version=versions,
              wall_ns=walls),
    st.builds(DeleteAlias, name=names, alias=st.sampled_from(["live", "beta"]), wall_ns=walls),
    st.builds(accept, rid=st.sampled_from(["r1", "r2"]), key=st.sampled_from(["k1", "k2"])),
    st.builds(start, n=st.integers(1, 4), rid=st.sampled_from(["r1", "r2"])),
    st.builds(fail, n=st.integers(1, 4), rid=st.sampled_from(["r1", "r2"])),
    st.builds(PruneAsyncRecords, before_wall_ns=walls, wall_ns=walls),
    st.builds(lambda seed, role: put_key(role, seed)[0], st.integers(1, 3),
              st.sampled_from(["admin", "viewer", "boss"])),
)


@given(st.lists(commands, max_size=40))
def test_replicas_agree_and_snapshots_round_trip(cmds: list[Any]) -> None:
    a, b = Driver(), Driver()
    for cmd in cmds:
        # never raises; the same command gives the same result on every replica
        assert a(cmd) == b(from_cbor(to_cbor(cmd)))
    snap = a.sm.snapshot()
    assert snap == b.sm.snapshot()
    restored = FaasStateMachine()
    restored.restore(snap)
    assert restored.snapshot() == snap
    assert restored.idempotency == a.sm.idempotency
    assert restored.async_payload_bytes == a.sm.async_payload_bytes == sum(
        len(r.payload) for r in a.sm.asyncs.values())
    for cmd in [accept("r1", "k1"), create("f"), start(1, "r2")]:
        a.index += 1
        assert restored.apply(a.index, cmd) == a.sm.apply(a.index, cmd)


def test_deploy_creates_then_updates_and_publishes(apply: Driver) -> None:
    first = apply(faas.DeployFunction(name="f", config=CONFIG, code=CODE_A, wall_ns=1))
    assert first.created and first.version is None and first.function.revision == 1
    same = apply(faas.DeployFunction(name="f", config=CONFIG, code=CODE_A, wall_ns=2))
    assert not same.created and same.function.revision == 1
    bigger = attrs.evolve(CONFIG, memory_mb=256)
    published = apply(faas.DeployFunction(name="f", config=bigger, code=CODE_B, wall_ns=3,
                                           publish=True, description="v1"))
    assert published.function.revision == 2 and published.version.version == 1
    assert published.version.code == CODE_B and published.function.last_version == 1
    bad = apply(faas.DeployFunction(name="f", config=CONFIG, code=CODE_A, wall_ns=4,
                                    publish=True, description="d" * 300))
    assert kind(bad) == "BadRequest" and apply.sm.functions["f"].revision == 2


def test_async_backlog_is_bounded_until_pruned(
        apply: Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faas, "ASYNC_BACKLOG_MAX_BYTES", 5)
    apply(accept("r1", "k1"))
    apply(accept("r2", "k2"))
    assert apply.sm.async_payload_bytes == 4
    assert kind(apply(accept("r3", "k3"))) == "Throttled"
    apply(start(1, "r1"))
    apply(RecordAsyncAttempt(request_id="r1", attempt=1, ok=True, wall_ns=5))
    assert kind(apply(accept("r3", "k3"))) == "Throttled"
    assert apply(PruneAsyncRecords(before_wall_ns=6, wall_ns=6)) == 1
    assert apply.sm.async_payload_bytes == 2
    assert apply(accept("r3", "k3")).request_id == "r3"
