"""The codec's direct CBOR writer gives exactly the bytes of the generic encoder
(``cbor2.dumps`` of ``codec._plain``), and refuses what it refuses, for any value:
scalars at every head-length boundary, big ints, floats, nested lists, maps, sets,
and messages with fields of every kind, including values that do not match the
field's annotation (the writer's inline cases must fall back, not misencode)."""

from __future__ import annotations

from typing import Any

import attrs
import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshfaas.core import client_proto as proto
from meshfaas.core import codec, faas
from meshfaas.core.codec import EncodeError, message, to_cbor
from paxos.messages import Accept, Batch, Command


@message(20)
@attrs.frozen(kw_only=True)
class Every:
    """One field of each kind the writer inlines; the tests also put values of other
    types in them (attrs does not check annotations)."""

    text: str = ""
    count: int = 0
    flag: bool = False
    maybe_text: str | None = None
    maybe_count: int | None = None
    maybe_flag: bool | None = None
    pair: tuple[int, str] = (0, "")
    blob: bytes = b""
    anything: Any = None


def generic(value: Any) -> bytes:
    return cbor2.dumps(codec._plain(value))


BOUNDARIES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1, 2**64, 2**70]
INTS = st.sampled_from([b + d for b in BOUNDARIES for d in (-1, 0, 1)]
                       + [-b + d for b in BOUNDARIES for d in (-1, 0, 1)]) | st.integers()
SCALARS = (st.none() | st.booleans() | INTS | st.floats(allow_nan=False)
           | st.text(max_size=300) | st.binary(max_size=300))
KEYS = st.integers() | st.text(max_size=5) | st.binary(max_size=5)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return (st.lists(inner, max_size=30) | st.lists(inner, max_size=5).map(tuple)
            | st.dictionaries(KEYS, inner, max_size=5)
            | st.frozensets(SCALARS.filter(lambda v: v == v), max_size=5))


def _everys(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Every]:
    return st.builds(Every, text=st.text(max_size=30) | inner, count=INTS | inner,
                     flag=st.booleans() | inner, maybe_text=st.none() | st.text() | inner,
                     maybe_count=st.none() | INTS | inner, maybe_flag=st.none() | st.booleans(),
                     pair=st.tuples(INTS, st.text(max_size=3)) | inner,
                     blob=st.binary(max_size=300) | inner, anything=inner)


VALUES = st.recursive(SCALARS, lambda inner: _containers(inner) | _everys(inner), max_leaves=40)


@settings(max_examples=400)
@given(VALUES)
def test_the_writer_gives_the_generic_bytes(value: Any) -> None:
    assert to_cbor(value) == generic(value)


@pytest.mark.parametrize("n", [23, 24, 255, 256, 65535, 65536])
def test_long_strings_lists_and_maps(n: int) -> None:
    for value in ("x" * n, b"x" * n, list(range(n)), {i: i for i in range(n)},
                  frozenset(range(n)), Every(text="é" * n, blob=b"\x00" * n)):
        assert to_cbor(value) == generic(value)


def test_hot_messages_give_the_generic_bytes() -> None:
    patch = faas.ConfigPatch(description="d", memory_mb=256, env={"B": "2", "A": "1"},
                             requirements=("x==1",), clear_reserved_concurrency=True)
    cmd = Command(client_id="c1", seq=9, payload=faas.UpdateFunctionConfig(
        name="kv", patch=patch, wall_ns=10**18, expected_revision=3))
    batch = Batch(ballot=(7, "n1"), cmds=(cmd, cmd), voters=("n1", "n2"), reconfig_client=("c", 1))
    for value in (Accept(ballot=(7, "n1"), entries=((41, batch),), commit_upto=40),
                  [[7, "n1"], batch, True],
                  proto.ClientRequest(request_id="r", api_key="k", body=proto.UpdateConfig(
                      name="kv", patch=patch)),
                  proto.ok("r", faas.FunctionConfig(handler="h", env={"A": "1"}))):
        assert to_cbor(value) == generic(value)


@pytest.mark.parametrize("bad", [object(), {True: 1}, {(1, 2): 3}, [1, object()], "\ud800",
                                 Every(anything=object()), Every(count=1.5j)])
def test_what_the_generic_encoder_refuses_the_writer_refuses(bad: Any) -> None:
    with pytest.raises(EncodeError):
        to_cbor(bad)
    with pytest.raises(Exception):  # noqa: B017 (the generic path raises several types)
        generic(bad)
