"""The generated decoders and encoders of meshfaas/core/codec.py behave exactly as the
generic ones did: same bytes out, and for any frame (valid, or mutated at random) the
same message back or a DecodeError from both (tests/paxos/codec_reference.py keeps
the generic decoders)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Mapping
from typing import Any

import attrs
import cbor2
import pytest

from meshfaas.core import client_proto as proto
from meshfaas.core import codec, faas
from meshfaas.core.codec import (
    MESSAGE_CBOR_TAG,
    Codec,
    DecodeError,
    _loads_exact,
    from_cbor,
    to_cbor,
)
from paxos.messages import (
    Accept,
    Accepted,
    AcceptedEntry,
    Batch,
    CatchupEntries,
    CatchupRequest,
    Command,
    Forward,
    Heartbeat,
    HeartbeatAck,
    Prepare,
    Promise,
    RecoverInfo,
    RecoverQuery,
    SnapshotChunk,
)
from tests.paxos import codec_reference as ref

B = (7, "n1")
CODEC = Codec("diff")


def update(i: int) -> Command:
    patch = faas.ConfigPatch(description=f"d{i}", memory_mb=128 + i, env={"A": "1", "B": str(i)},
                             requirements=("x==1",), clear_reserved_concurrency=bool(i % 2))
    return Command(client_id=f"c{i}", seq=i,
                   payload=faas.UpdateFunctionConfig(name="kv", patch=patch, wall_ns=10**18 + i,
                                                     expected_revision=i if i % 2 else None))


def messages() -> list[Any]:
    batch = Batch(ballot=B, cmds=(update(1), update(2)))
    return [
        Prepare(ballot=B, from_slot=3),
        Promise(ballot=B, ok=True, promised=B, truncated_upto=1, chosen_upto=2,
                entries=(AcceptedEntry(slot=3, ballot=B, value=batch, chosen=False),)),
        Accept(ballot=B, entries=((3, batch), (4, Batch(ballot=B))), commit_upto=2),
        Accepted(ballot=B, slots=(3, 4), ok=True, promised=B, chosen_upto=2),
        Heartbeat(ballot=B, commit_upto=4, hb_id=0),
        HeartbeatAck(ballot=B, hb_id=9, ok=False, promised=(8, "n2"), chosen_upto=4),
        Forward(cmds=(update(3),), voters=("n1", "n2"), reconfig_client=("c", 4)),
        CatchupRequest(from_slot=5, snap_index=0, offset=0),
        CatchupEntries(entries=((5, batch),), chosen_upto=5),
        SnapshotChunk(index=5, offset=0, total=3, data=b"abc"),
        RecoverQuery(nonce=2),
        RecoverInfo(nonce=2, max_round=7, max_slot=9, recovering=False),
        proto.ClientRequest(request_id="r1", api_key="k", timeout_ms=5,
                            body=proto.UpdateConfig(name="kv", patch=update(4).payload.patch)),
    ]


POOL: list[Any] = [
    None, 0, -1, 2**70, True, False, 1.5, "", "x", b"", b"x", [], [1], [None], {}, {"a": 1},
    {1: [2]}, (1, "n1"), cbor2.CBORTag(MESSAGE_CBOR_TAG, []),
    cbor2.CBORTag(MESSAGE_CBOR_TAG, [205]), cbor2.CBORTag(MESSAGE_CBOR_TAG, [True, 1]),
    cbor2.CBORTag(MESSAGE_CBOR_TAG, [207, [1, "a"], 0, 0]),
    cbor2.CBORTag(MESSAGE_CBOR_TAG, [200, "c", 1, None]), cbor2.CBORTag(4000, 1), cbor2.CBORTag(1, 0),
    [[[[[[[[[[1]]]]]]]]]],
]


def _paths(raw: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every position in a decoded value (arrays inside a tag come back as tuples,
    maps as frozendicts)."""
    found = [here]
    inner = raw.value if isinstance(raw, cbor2.CBORTag) else raw
    if isinstance(inner, (list, tuple)):
        for i, x in enumerate(inner):
            found += _paths(x, (*here, i))
    elif isinstance(inner, Mapping):
        for k, x in inner.items():
            found += _paths(x, (*here, k))
    return found


def _replace(raw: Any, path: tuple[Any, ...], value: Any) -> Any:
    """``raw`` with the item at ``path`` replaced (unchanged if an earlier mutation
    removed that position)."""
    if not path:
        return value
    if isinstance(raw, cbor2.CBORTag):
        return cbor2.CBORTag(raw.tag, _replace(raw.value, path, value))
    if isinstance(raw, (list, tuple)) and type(path[0]) is int and path[0] < len(raw):
        copy: Any = list(raw)
    elif isinstance(raw, Mapping) and path[0] in raw:
        copy = dict(raw)
    else:
        return raw
    copy[path[0]] = _replace(copy[path[0]], path[1:], value)
    return copy


def _outcome(decode: Any, raw: Any) -> Any:
    try:
        return ("ok", decode(raw))
    except DecodeError:
        return ("DecodeError",)


def test_encoding_is_byte_for_byte_what_the_generic_encoder_gave() -> None:
    frames = b"".join(CODEC.encode("a", "b", msg) for msg in messages())
    # The digest the generic encoder (commit 1dba947) gave for these very frames,
    # recomputed with it (``cbor2.dumps(codec._plain(msg))`` in each frame) when
    # CatchupRequest and CatchupEntries gained ``nonce`` (session 5).
    assert hashlib.sha256(frames).hexdigest() == (
        "72a52b371ab63a155aec77a99290f06ec4e0c300651929b687b551860ed5597f")


@pytest.mark.parametrize("index", range(len(messages())))
def test_valid_messages_decode_alike(index: int) -> None:
    msg = messages()[index]
    raw = cbor2.loads(to_cbor(msg))
    assert from_cbor(to_cbor(msg)) == msg
    assert ref._decode_message(raw, 1, None) == msg


def client_messages() -> list[Any]:
    """Client protocol frames: a reply carrying a record, an error, a request."""
    config = faas.FunctionConfig(handler="app.h", env={"A": "1"}, reserved_concurrency=2,
                                 requirements=("x==1",), description="d")
    record = faas.FunctionRecord(name="kv", config=config, code=faas.CodeRef(sha256="ab" * 32,
                                 size_bytes=9), revision=3, created_wall_ns=10**18,
                                 modified_wall_ns=10**18 + 1, last_version=0)
    return [
        [proto.CLIENT_PROTOCOL_VERSION, proto.ok("r1", record)],
        [proto.CLIENT_PROTOCOL_VERSION, proto.fail("r2", "Throttled", "busy", retry_after_ms=5)],
        [proto.CLIENT_PROTOCOL_VERSION, proto.ClientRequest(
            request_id="r3", api_key="k", body=proto.UpdateConfig(
                name="kv", patch=faas.ConfigPatch(memory_mb=256, env={"B": "2"})))],
    ]


def _compare_mutations(msgs: list[Any], seed: int) -> tuple[int, int]:
    rng = random.Random(seed)
    compared = refused = 0
    for msg in msgs:
        raw = cbor2.loads(to_cbor(msg))
        paths = _paths(raw)
        for _ in range(150):
            mutated = raw
            for _ in range(rng.choice((1, 1, 2))):
                mutated = _replace(mutated, rng.choice(paths), rng.choice(POOL))
            data = cbor2.dumps(mutated)
            fast = _outcome(from_cbor, data)
            slow = _outcome(lambda d: ref._conv_any(_loads_exact(d), 0), data)
            assert fast == slow, (msg, mutated)
            compared += 1
            refused += fast[0] == "DecodeError"
    return compared, refused


def test_mutated_frames_decode_alike_or_fail_alike() -> None:
    compared, refused = _compare_mutations(messages(), 4)
    assert refused > compared // 10 and compared - refused > compared // 10  # both kinds seen


def test_mutated_client_frames_decode_alike_or_fail_alike() -> None:
    compared, refused = _compare_mutations(client_messages(), 5)
    assert refused > compared // 10 and compared - refused > compared // 10


def _at(raw: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        raw = (raw.value if isinstance(raw, cbor2.CBORTag) else raw)[key]
    return raw


def _resized_bodies(raw: Any) -> list[Any]:
    """``raw`` with one message body in it (any, top level or nested) one or two fields
    shorter, or with one or two extra trailing items (from the pool)."""
    variants = []
    for path in _paths(raw):
        node = _at(raw, path)
        if not (isinstance(node, cbor2.CBORTag) and node.tag == MESSAGE_CBOR_TAG
                and isinstance(node.value, (list, tuple)) and len(node.value) > 1):
            continue
        body = list(node.value)
        resized = [body[:-1], body[:-2], *([*body, x] for x in POOL), [*body, 0, POOL[-1]]]
        variants += [_replace(raw, path, cbor2.CBORTag(MESSAGE_CBOR_TAG, b)) for b in resized]
    return variants


def test_bodies_of_other_lengths_decode_alike_or_fail_alike() -> None:
    """The growth rule (extra trailing fields ignored, missing trailing fields defaulted)
    is the same on the generated decoders and the reference, at every nesting level."""
    compared = refused = 0
    for msg in messages() + client_messages():
        for mutated in _resized_bodies(cbor2.loads(to_cbor(msg))):
            data = cbor2.dumps(mutated)
            fast = _outcome(from_cbor, data)
            assert fast == _outcome(lambda d: ref._conv_any(_loads_exact(d), 0), data), mutated
            compared += 1
            refused += fast[0] == "DecodeError"
    assert refused > 20 and compared - refused > compared // 2  # both kinds seen


def test_decoders_fill_slots_only_where_init_only_stores() -> None:
    """A decoder may skip ``__init__`` only for a class whose ``__init__`` just stores its
    arguments: validators, converters and hooks still run, and an extra slot (attrs'
    cached hash) is still initialised."""

    @attrs.frozen(kw_only=True)
    class Checked:
        n: int = attrs.field(validator=attrs.validators.ge(0))

    @attrs.frozen(kw_only=True, cache_hash=True)
    class Hashed:
        n: int

    @attrs.frozen(kw_only=True)
    class Hooked:
        n: int

        def __attrs_post_init__(self) -> None:
            pass

    @attrs.frozen(kw_only=True, init=False)
    class HandWritten:
        n: int

        def __init__(self, *, n: int) -> None:
            object.__setattr__(self, "n", abs(n))

    assert codec._plain_init(Command) and codec._plain_init(faas.ConfigPatch)
    assert not any(codec._plain_init(cls) for cls in (Checked, Hashed, Hooked, HandWritten))
    decoded = from_cbor(to_cbor(update(5)))  # built without __init__: equal all the same
    assert decoded == update(5) and decoded.payload.patch.env == {"A": "1", "B": "5"}
    assert hash(from_cbor(to_cbor(Heartbeat(ballot=B, commit_upto=4, hb_id=1)))) == hash(
        Heartbeat(ballot=B, commit_upto=4, hb_id=1))
