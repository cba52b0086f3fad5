"""The growth rule: within one PROTOCOL_VERSION a message only grows, by trailing fields
with defaults, so a decoder ignores trailing fields it does not know (a newer peer's)
and fills trailing fields a body lacks (an older peer's) with their defaults.

Two shapes of one message are two classes under two test tags; a frame of one shape is
turned into the other's by changing the tag number in its body (``retag``)."""

from __future__ import annotations

from typing import Any

import attrs
import cbor2
import pytest

from meshfaas import client
from meshfaas.core import client_proto as proto
from meshfaas.core import faas
from meshfaas.core.codec import MESSAGE_CBOR_TAG, Codec, DecodeError, from_cbor, message, to_cbor
from meshfaas.core.node import InvokeRequest
from paxos.messages import CatchupEntries, CatchupRequest


@message(30)
@attrs.frozen(kw_only=True)
class PingV1:
    n: int
    label: str = ""


@message(31)
@attrs.frozen(kw_only=True)
class PingV2:
    """PingV1 one release later: two fields appended, each with a default."""

    n: int
    label: str = ""
    seen: list[str] = attrs.field(factory=list)
    twice_n: int = attrs.field(default=attrs.Factory(lambda self: 2 * self.n, takes_self=True))


@message(32)
@attrs.frozen(kw_only=True)
class Holder:
    """Carries pings as a typed field, a tuple of them and an ``Any`` (nested decoding)."""

    ping: PingV1
    pings: tuple[PingV1, ...] = ()
    anything: Any = None


@message(33)
@attrs.frozen(kw_only=True)
class CheckedV2:
    """A class with a validator (built through ``__init__``, not by filling slots)."""

    n: int = attrs.field(default=0, validator=attrs.validators.ge(0))
    m: int = 0


CODEC = Codec("growth")
V1, V2 = 30, 31


def retag(value: Any, tag: int) -> Any:
    """The CBOR of a message (decoded by cbor2) with its body's tag number replaced."""
    return cbor2.CBORTag(MESSAGE_CBOR_TAG, [tag, *value.value[1:]])


def body_with(tag: int, *fields: Any) -> Any:
    return cbor2.CBORTag(MESSAGE_CBOR_TAG, [tag, *fields])


def decode_frame(msg_cbor: Any) -> Any:
    """A peer frame around a hand-made message, through :meth:`Codec.decode`."""
    frame = cbor2.dumps([CODEC.version, CODEC.cluster_id, "a", "b", msg_cbor])
    return CODEC.decode(frame).msg


def test_a_newer_peers_trailing_field_is_ignored() -> None:
    newer = cbor2.loads(to_cbor(PingV2(n=4, label="x", seen=["n1"], twice_n=9)))
    assert decode_frame(retag(newer, V1)) == PingV1(n=4, label="x")


def test_trailing_fields_are_not_decoded_so_a_newer_message_type_there_is_fine() -> None:
    unknown_message = body_with(99_999, "a message tag this node does not know")
    assert decode_frame(body_with(V1, 5, "y", unknown_message, 1.5)) == PingV1(n=5, label="y")


def test_an_older_peers_body_gets_the_defaults() -> None:
    older = cbor2.loads(to_cbor(PingV1(n=3, label="z")))
    assert decode_frame(retag(older, V2)) == PingV2(n=3, label="z", seen=[], twice_n=6)
    assert decode_frame(body_with(V2, 3)) == PingV2(n=3)  # both trailing defaults, and label's


def test_a_factory_default_is_a_fresh_value_each_time() -> None:
    older = cbor2.dumps(body_with(V2, 1, "a"))
    first, second = from_cbor(older), from_cbor(older)
    assert first.seen == [] and second.seen == []
    assert first.seen is not second.seen
    first.seen.append("x")  # (a frozen class, a mutable list: must not leak into the next)
    assert from_cbor(older).seen == []


def test_a_missing_field_without_a_default_is_still_refused() -> None:
    with pytest.raises(DecodeError, match="expected 2 fields, got 0"):
        decode_frame(body_with(V1))
    with pytest.raises(DecodeError, match="expected 4 fields, got 0"):
        decode_frame(body_with(V2))


def test_the_fields_a_shorter_body_has_are_still_checked() -> None:
    with pytest.raises(DecodeError):
        decode_frame(body_with(V2, "three", "z"))  # n is not an int
    with pytest.raises(DecodeError):
        decode_frame(body_with(V2, 3, 4))  # label is not a str


def test_nested_messages_follow_the_same_rule() -> None:
    newer = body_with(V1, 1, "new", ["extra"])
    older = body_with(V1, 2)
    holder = body_with(32, newer, [older, newer], [newer, {"k": older}])
    assert decode_frame(holder) == Holder(
        ping=PingV1(n=1, label="new"), pings=(PingV1(n=2), PingV1(n=1, label="new")),
        anything=[PingV1(n=1, label="new"), {"k": PingV1(n=2)}])
    with pytest.raises(DecodeError):
        decode_frame(body_with(32, body_with(V1)))  # a nested ping without its n


def test_classes_built_through_init_follow_the_rule_and_keep_their_validators() -> None:
    assert decode_frame(body_with(33)) == CheckedV2()
    assert decode_frame(body_with(33, 5)) == CheckedV2(n=5)
    assert decode_frame(body_with(33, 5, 6, "newer")) == CheckedV2(n=5, m=6)
    for bad in (body_with(33, -1), body_with(33, -1, 6, "newer")):
        with pytest.raises(DecodeError):
            decode_frame(bad)


def test_what_the_encoder_writes_is_unchanged_every_field_always() -> None:
    assert cbor2.loads(to_cbor(PingV2(n=1))).value == (V2, 1, "", (), 2)  # (arrays in a tag: tuples)
    assert cbor2.loads(to_cbor(PingV1(n=1))).value == (V1, 1, "")


# ---------------------------------------------------------------------------
# The real messages this session grows
# ---------------------------------------------------------------------------


def invoke_request() -> InvokeRequest:
    config = faas.FunctionConfig(handler="app.h")
    fields = {f.name: 7 for f in attrs.fields(InvokeRequest) if f.type in (int, "int")}
    return InvokeRequest(**{**fields, "invocation_id": "n1-00ff", "function": "kv", "version": "3",
                            "code": faas.CodeRef(sha256="ab" * 32, size_bytes=9),
                            "config": config, "payload": b"{}"})


def catchup_request() -> CatchupRequest:
    return CatchupRequest(**{f.name: 5 for f in attrs.fields(CatchupRequest)})


def catchup_entries() -> CatchupEntries:
    fields = {f.name: 5 for f in attrs.fields(CatchupEntries) if f.name != "entries"}
    return CatchupEntries(entries=(), **fields)


REAL = [invoke_request(), catchup_request(), catchup_entries()]


@pytest.mark.parametrize("msg", REAL, ids=lambda m: type(m).__name__)
def test_a_real_message_with_one_more_trailing_field_decodes(msg: Any) -> None:
    raw = cbor2.loads(to_cbor(msg))
    assert decode_frame(body_with(*raw.value, 12345)) == msg
    assert decode_frame(body_with(*raw.value, [1, "two"], {"three": b"4"})) == msg


@pytest.mark.parametrize("msg", REAL, ids=lambda m: type(m).__name__)
def test_a_real_message_without_its_last_field_takes_its_default(msg: Any) -> None:
    """The body an older release sends (its last field not there yet): decodes with the
    field's default when it has one (InvokeRequest's ``round``, this session's
    ``incarnation`` and ``nonce``), else is refused."""
    raw = cbor2.loads(to_cbor(msg))
    last = attrs.fields(type(msg))[-1]
    older = body_with(*raw.value[:-1])
    if last.default is attrs.NOTHING:
        with pytest.raises(DecodeError):
            decode_frame(older)
    else:
        assert getattr(msg, last.name) != last.default  # so the test sees the default filled
        assert decode_frame(older) == attrs.evolve(msg, **{last.name: last.default})


def test_invoke_request_from_before_round_decodes() -> None:
    """InvokeRequest's fields up to ``payload`` (the first release's shape): every later
    field is filled with its default."""
    msg = invoke_request()
    names = [f.name for f in attrs.fields(InvokeRequest)]
    first = names.index("payload") + 1
    raw = cbor2.loads(to_cbor(msg))
    decoded = decode_frame(body_with(*raw.value[: first + 1]))
    defaults = {f.name: f.default for f in attrs.fields(InvokeRequest)[first:]}
    assert decoded == attrs.evolve(msg, **defaults) and decoded.round == 0


# ---------------------------------------------------------------------------
# The client protocol (SDK <-> node) uses the same codec
# ---------------------------------------------------------------------------


def test_client_frames_follow_the_rule_both_ways() -> None:
    request = proto.ClientRequest(request_id="r1", api_key="k", body=proto.GetFunction(name="kv"),
                                  timeout_ms=9)
    raw = cbor2.loads(to_cbor(request))
    newer = cbor2.dumps([proto.CLIENT_PROTOCOL_VERSION, body_with(*raw.value, "new")])
    older = cbor2.dumps([proto.CLIENT_PROTOCOL_VERSION, body_with(*raw.value[:-1])])
    assert proto.decode_request(newer) == request
    assert proto.decode_request(older) == attrs.evolve(request, timeout_ms=0)
    reply = cbor2.loads(to_cbor(proto.ok("r1", 5)))
    newer_reply = cbor2.dumps([proto.CLIENT_PROTOCOL_VERSION, body_with(*reply.value, 0)])
    older_reply = cbor2.dumps([proto.CLIENT_PROTOCOL_VERSION, body_with(*reply.value[:-1])])
    assert client._decode_response(newer_reply) == proto.ok("r1", 5)  # as the SDK decodes
    assert client._decode_response(older_reply) == proto.ok("r1", 5)
