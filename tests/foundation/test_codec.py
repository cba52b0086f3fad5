"""The codec: round trips, and every kind of bad frame raises DecodeError and nothing else."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil
from pathlib import Path

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfaas.core.codec import (
    MESSAGE_CBOR_TAG,
    Codec,
    DecodeError,
    EncodeError,
    from_cbor,
    message,
    registered_tags,
    to_cbor,
)


@message(1)
@attrs.frozen(kw_only=True)
class Inner:
    n: int
    label: str = ""


@message(2)
@attrs.frozen(kw_only=True)
class Sample:
    ballot: tuple[int, str]
    values: tuple[int, ...] = ()
    names: frozenset[str] = frozenset()
    table: dict[str, int] = attrs.field(factory=dict)
    inner: Inner | None = None
    blob: bytes = b""
    ratio: float = 0.0
    flag: bool = False
    anything: object = None


@message(3)
@attrs.frozen(kw_only=True)
class Positive:
    n: int = attrs.field(validator=attrs.validators.ge(0))


CODEC = Codec("cluster-a", max_frame_bytes=4096)
SAMPLE = Sample(
    ballot=(3, "n1"), values=(1, 2, 3), names=frozenset({"x", "y"}), table={"a": 1},
    inner=Inner(n=7, label="in"), blob=b"\x00\xff", ratio=0.5, flag=True,
    anything={"k": [1, Inner(n=1)]},
)


def test_round_trip_keeps_every_field():
    env = CODEC.decode(CODEC.encode("n1", "n2", SAMPLE))
    assert (env.src, env.dst) == ("n1", "n2")
    assert env.msg == Sample(**{**attrs.asdict(SAMPLE, recurse=False),
                                "anything": {"k": [1, Inner(n=1)]}})


def test_encoding_is_canonical_whatever_the_set_order():
    a = Sample(ballot=(1, "a"), names=frozenset(["b", "a", "c"]))
    b = Sample(ballot=(1, "a"), names=frozenset(["c", "a", "b"]))
    assert CODEC.encode("s", "d", a) == CODEC.encode("s", "d", b)


def test_to_cbor_from_cbor_round_trip_with_expected_type():
    assert from_cbor(to_cbor(Inner(n=3)), Inner) == Inner(n=3)
    with pytest.raises(DecodeError):
        from_cbor(to_cbor(Inner(n=3)), Sample)


def test_unregistered_message_is_the_callers_error():
    @attrs.frozen
    class NotRegistered:
        x: int

    with pytest.raises(EncodeError):
        CODEC.encode("a", "b", NotRegistered(1))


def test_oversized_outgoing_message_is_the_callers_error():
    with pytest.raises(EncodeError, match="frame limit"):
        CODEC.encode("a", "b", Sample(ballot=(1, "a"), blob=b"x" * 5000))


def _frame(*parts):
    return cbor2.dumps(list(parts))


def _msg(tag, *fields):
    return cbor2.CBORTag(MESSAGE_CBOR_TAG, [tag, *fields])


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"", "empty"),
        (b"\xff\xff", "malformed"),
        (CODEC.encode("a", "b", SAMPLE)[:-3], "truncated"),
        (CODEC.encode("a", "b", SAMPLE) + b"\x00", "trailing"),
        (b"\x00" * 5000, "oversized"),
        (_frame(1, "cluster-b", "a", "b", _msg(1, 1, "")), "other cluster"),
        (_frame(9, "cluster-a", "a", "b", _msg(1, 1, "")), "other version"),
        (_frame(1, "cluster-a", "a", "b", _msg(9999, 1)), "unknown tag"),
        (_frame(1, "cluster-a", "a", "b", _msg(1, "one", "")), "wrong field type"),
        (_frame(1, "cluster-a", "a", "b", _msg(1)), "missing field without a default"),
        (_frame(1, "cluster-a", "a", "b", _msg(1, True, "")), "bool is not int"),
        (_frame(1, "cluster-a", "a", "b", _msg(3, -1)), "validator refuses"),
        (_frame(1, "cluster-a", 5, "b", _msg(1, 1, "")), "src not a string"),
        (_frame(1, "cluster-a", "a", "b", [1, 1, ""]), "message not tagged"),
        (_frame(1, "cluster-a", "a", "b"), "short envelope"),
        (cbor2.dumps({"a": 1}), "not an array"),
        (_frame(1, "cluster-a", "a", "b", _msg(2, [1, "n"], [1, "x"], [], {}, None, b"", 0.0,
                                               False, None)), "tuple[int, ...] with a string"),
        (_frame(1, "cluster-a", "a", "b", _msg(2, [1], [], [], {}, None, b"", 0.0, False, None)),
         "fixed tuple of wrong length"),
        (_frame(1, "cluster-a", "a", "b", _msg(2, [1, "n"], [], [], {1: 1}, None, b"", 0.0,
                                               False, None)), "dict key of wrong type"),
        (b"\x9f" * 3000, "deep nesting"),
        (_frame(1, "cluster-a", "a", "b", _msg(2, [1, "n"], [], [], {}, None, b"", 0.0, False,
                                               cbor2.CBORTag(1, 5))), "tagged value in Any"),
    ],
)
def test_bad_frames_raise_decode_error(frame, why):
    with pytest.raises(DecodeError):
        CODEC.decode(frame)


def _only_decode_error(frame: bytes) -> None:
    """Decoding either succeeds or raises DecodeError; anything else fails the test."""
    with contextlib.suppress(DecodeError):
        CODEC.decode(frame)


@settings(max_examples=5_000)
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_decode_error(frame):
    _only_decode_error(frame)


VALID_FRAMES = [
    CODEC.encode("n1", "n2", SAMPLE),
    CODEC.encode("n1", "n2", Inner(n=1, label="x")),
    CODEC.encode("n3", "n1", Sample(ballot=(0, ""))),
]


@st.composite
def mutated_frames(draw):
    frame = bytearray(draw(st.sampled_from(VALID_FRAMES)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del frame[pos:]
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=9))
        elif op == "delete" and frame:
            del frame[pos]
    return bytes(frame)


@settings(max_examples=5_000)
@given(mutated_frames())
def test_mutated_valid_frames_raise_only_decode_error(frame):
    _only_decode_error(frame)


@settings(max_examples=300)
@given(st.integers(), st.text(max_size=20), st.lists(st.integers(0, 2**63), max_size=5),
       st.frozensets(st.text(max_size=5), max_size=5), st.binary(max_size=50))
def test_round_trip_property(n, label, values, names, blob):
    msg = Sample(ballot=(n, label), values=tuple(values), names=names, blob=blob,
                 inner=Inner(n=n, label=label))
    assert CODEC.decode(CODEC.encode(label, "d", msg)).msg == msg
    # a frame built around a once-encoded message is the whole array's encoding
    body = CODEC.encode_message(msg)
    whole = to_cbor([CODEC.version, CODEC.cluster_id, label, "d", msg])
    assert CODEC.frame(label, "d", body) == CODEC.encode(label, "d", msg) == whole


def _import_everything():
    """Import every module of the project so that every message registers."""
    root = Path(__file__).resolve().parents[2]
    for package in ("meshfaas", "gossip", "paxos", "sandbox", "simulator"):
        pkg = importlib.import_module(package)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{package}."):
            if info.name.endswith(("__main__", "bootstrap")):
                continue
            importlib.import_module(info.name)
    return root


def test_wire_tags_are_append_only():
    """Registered tags must equal tests/golden/wire_tags.txt: a tag, once used, never moves."""
    root = _import_everything()
    golden_path = root / "tests" / "golden" / "wire_tags.txt"
    golden = {}
    for line in golden_path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            tag, name = line.split()
            golden[int(tag)] = name
    project = {t: n for t, n in registered_tags().items() if not n.startswith("test_") and t >= 100}
    assert project == golden, "a wire tag was added, removed or renumbered; update the golden file only by appending"
