"""The wire codec: frozen attrs messages to CBOR frames and back.

Theory of operation
-------------------
Every message is a frozen attrs class registered with :func:`message` under a
numeric tag. Tags are append-only: once a tag has been used on the wire it is
never reused or renumbered (``tests/golden/wire_tags.txt`` pins them).

A frame is one CBOR array::

    [version, cluster_id, src, dst, <message>]

and a message, wherever it appears (top level, a field, inside a list or a
value typed ``Any``), is the CBOR tag ``MESSAGE_CBOR_TAG`` wrapping
``[tag, field1, field2, ...]`` in attrs field order. Sets are sent as sorted
arrays and maps ordered by key, so equal messages give equal bytes whatever
``PYTHONHASHSEED`` is.

Decoding trusts nothing. The frame's size is checked before it is parsed;
the version and cluster id must match; and every field is checked against its
annotation by a converter compiled once per class (ints are ints, a
``tuple[int, ...]`` is a list of ints, a nested message has the expected tag).
Each class's decoder and encoder is generated once as straight-line Python
(scalar fields checked inline, other fields through their converters), for
speed only: the checks, the results and the bytes are those of the generic
converters (tests/paxos/test_codec_fast_path.py compares them).
Whatever is wrong with a frame -- malformed, truncated, oversized, an unknown
tag, a field of the wrong type, another cluster -- :meth:`Codec.decode` raises
:class:`DecodeError` and nothing else, so a core only ever sees well-typed
messages. Semantic checks (is this ballot sane?) stay with the core.
"""

from __future__ import annotations

import io
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, NewType, TypeVar

import attrs
import cbor2

PROTOCOL_VERSION = 1
MESSAGE_CBOR_TAG = 27_001
DEFAULT_MAX_FRAME_BYTES = 8 * 1024 * 1024
MAX_NESTING = 64


class DecodeError(Exception):
    """A frame could not be decoded. The only exception :meth:`Codec.decode` raises."""


class EncodeError(ValueError):
    """The caller tried to send something the codec cannot or must not encode."""


T = TypeVar("T")
Converter = Callable[[Any, int], Any]

_TAG_TO_CLS: dict[int, type] = {}
_CLS_TO_TAG: dict[type, int] = {}
_DECODERS: dict[type, Callable[[list[Any], int], Any]] = {}


def message(tag: int) -> Callable[[type[T]], type[T]]:
    """Register a frozen attrs class as a wire message under ``tag``."""

    def register(cls: type[T]) -> type[T]:
        klass: type = cls
        if not attrs.has(klass):
            raise TypeError(f"{klass.__qualname__} is not an attrs class")
        if not isinstance(tag, int) or tag <= 0:
            raise ValueError(f"wire tag must be a positive int, got {tag!r}")
        if tag in _TAG_TO_CLS and _TAG_TO_CLS[tag] is not cls:
            other = _TAG_TO_CLS[tag].__qualname__
            raise ValueError(f"wire tag {tag} already used by {other}")
        _TAG_TO_CLS[tag] = klass
        _CLS_TO_TAG[klass] = tag
        return cls

    return register


def registered_tags() -> dict[int, str]:
    """Every registered tag with its class's qualified name (for the golden file)."""
    return {t: f"{c.__module__}.{c.__qualname__}" for t, c in sorted(_TAG_TO_CLS.items())}


def tag_of(cls: type) -> int:
    try:
        return _CLS_TO_TAG[cls]
    except KeyError:
        raise EncodeError(f"{cls.__qualname__} is not a registered message") from None


# ---------------------------------------------------------------------------
# Encoding
# ---------------------------------------------------------------------------


_SCALARS = frozenset({int, str, bytes, bool, float, type(None)})
_ENCODERS: dict[type, Callable[[Any], Any]] = {}


def _plain(value: Any) -> Any:
    """The value as plain CBOR data: messages become tagged arrays, sets sorted lists."""
    cls = type(value)
    if cls in _SCALARS:
        return value
    encoder = _ENCODERS.get(cls)
    if encoder is not None:
        return encoder(value)
    if cls is tuple or cls is list:
        return [_plain(v) for v in value]
    if cls is frozenset or cls is set:
        return sorted((_plain(v) for v in value), key=cbor2.dumps)
    if isinstance(value, Mapping):
        return {k: _plain(value[k]) for k in sorted(value, key=_map_key_order)}
    if cls in _CLS_TO_TAG:
        return _compile_encoder(cls)(value)
    raise EncodeError(f"cannot encode {cls.__qualname__}: not a registered message or plain data")


def _map_key_order(key: Any) -> tuple[str, Any]:
    if type(key) not in (int, str, bytes):
        raise EncodeError(f"map keys must be int, str or bytes, got {type(key).__qualname__}")
    return (type(key).__name__, key)


def _is_scalar_annotation(tp: Any) -> bool:
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:
        return _is_scalar_annotation(supertype)
    if tp in _SCALARS or tp is None:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return all(_is_scalar_annotation(a) for a in typing.get_args(tp))
    return False


def _compile_encoder(cls: type) -> Callable[[Any], Any]:
    """An encoder for one message class, generated as straight-line code: a field is
    taken as it is when it is a scalar, else made plain by :func:`_plain`."""
    items = [f"_f{i}" for i in range(len(attrs.fields(cls)))]
    lines = ["def encode(value):"]
    for i, f in enumerate(attrs.fields(cls)):
        lines.append(f"    _f{i} = value.{f.name}")
        lines.append(f"    if type(_f{i}) not in _SCALARS:")  # scalars are their own plain form
        lines.append(f"        _f{i} = _plain(_f{i})")
    lines.append(f"    return _Tag({MESSAGE_CBOR_TAG}, [{_CLS_TO_TAG[cls]}, {', '.join(items)}])")
    encode = _generate("encode", lines, {"_SCALARS": _SCALARS, "_plain": _plain,
                                         "_Tag": cbor2.CBORTag})
    _ENCODERS[cls] = encode
    return encode


def _generate(name: str, lines: list[str], namespace: dict[str, Any]) -> Callable[..., Any]:
    """Compile generated source (one function called ``name``) in ``namespace``."""
    scope = dict(namespace)
    exec(compile("\n".join(lines) + "\n", f"<codec {name}>", "exec"), scope)
    fn: Callable[..., Any] = scope[name]
    return fn


def to_cbor(value: Any) -> bytes:
    """Deterministic CBOR for any value built of messages and plain data.

    Sets are sorted and maps ordered by key before encoding, so equal values
    give equal bytes whatever the hash seed.
    """
    try:
        return cbor2.dumps(_plain(value))
    except EncodeError:
        raise
    except Exception as exc:  # cbor2 raises several types for unencodable values
        raise EncodeError(f"cannot encode {type(value).__qualname__}: {exc}") from exc


def from_cbor(data: bytes, expect: Any = Any) -> Any:
    """Decode bytes made by :func:`to_cbor`, checking them against ``expect``."""
    raw = _loads_exact(data)
    return _converter(expect)(raw, 0)


def _loads_exact(data: bytes) -> Any:
    try:
        stream = io.BytesIO(data)
        raw = cbor2.CBORDecoder(stream).decode()
    except RecursionError:
        raise DecodeError("nesting too deep") from None
    except Exception as exc:
        raise DecodeError(f"malformed CBOR: {exc}") from None
    if stream.tell() != len(data):
        raise DecodeError("trailing bytes after the frame")
    return raw


# ---------------------------------------------------------------------------
# Decoding: converters compiled from annotations
# ---------------------------------------------------------------------------


def _fail(expected: str, got: Any) -> DecodeError:
    return DecodeError(f"expected {expected}, got {type(got).__name__}")


def _check_depth(depth: int) -> None:
    if depth > MAX_NESTING:
        raise DecodeError("nesting too deep")


def _conv_int(v: Any, depth: int) -> int:
    if type(v) is not int:
        raise _fail("int", v)
    return v


def _conv_bool(v: Any, depth: int) -> bool:
    if type(v) is not bool:
        raise _fail("bool", v)
    return v


def _conv_float(v: Any, depth: int) -> float:
    if type(v) is float or type(v) is int:
        return float(v)
    raise _fail("float", v)


def _conv_str(v: Any, depth: int) -> str:
    if type(v) is not str:
        raise _fail("str", v)
    return v


def _conv_bytes(v: Any, depth: int) -> bytes:
    if type(v) is not bytes:
        raise _fail("bytes", v)
    return v


def _conv_none(v: Any, depth: int) -> None:
    if v is not None:
        raise _fail("null", v)
    return None


_PLAIN = (int, float, str, bytes, bool, type(None))
_CBOR_TAG = cbor2.CBORTag
_PLAIN_TYPES = frozenset(_PLAIN)


def _conv_any(v: Any, depth: int) -> Any:
    """Plain CBOR data, with messages decoded wherever they appear."""
    if depth > MAX_NESTING:
        raise DecodeError("nesting too deep")
    cls = type(v)
    if cls in _PLAIN_TYPES:
        return v
    if cls is list:
        return [_conv_any(x, depth + 1) for x in v]
    if cls is _CBOR_TAG and v.tag == MESSAGE_CBOR_TAG:  # (before the slower ABC checks)
        return _decode_message(v, depth + 1, None)
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (list, tuple)):
        return [_conv_any(x, depth + 1) for x in v]
    if isinstance(v, (set, frozenset)):
        return frozenset(_conv_any(x, depth + 1) for x in v)
    if isinstance(v, Mapping):
        out = {}
        for k, x in v.items():
            if not isinstance(k, (int, str, bytes)):
                raise _fail("int, str or bytes map key", k)
            out[k] = _conv_any(x, depth + 1)
        return out
    if isinstance(v, cbor2.CBORTag) and v.tag == MESSAGE_CBOR_TAG:
        return _decode_message(v, depth + 1, None)
    raise _fail("plain data", v)


def _decode_message(v: Any, depth: int, expect: type | None) -> Any:
    _check_depth(depth)
    if not isinstance(v, cbor2.CBORTag) or v.tag != MESSAGE_CBOR_TAG:
        raise _fail("message", v)
    body = v.value
    if type(body) not in (list, tuple) or not body or type(body[0]) is not int:
        raise DecodeError("message body must be [tag, fields...]")
    cls = _TAG_TO_CLS.get(body[0])
    if cls is None:
        raise DecodeError(f"unknown message tag {body[0]}")
    if expect is not None and not issubclass(cls, expect):
        raise DecodeError(f"expected {expect.__qualname__}, got {cls.__qualname__}")
    decoder = _DECODERS.get(cls) or _compile_message(cls)
    return decoder(body, depth)


# Checks of scalar fields, inlined in generated decoders ({v}: the value's variable).
_INLINE_CHECKS = {
    int: 'if type({v}) is not int: raise _fail("int", {v})',
    bool: 'if type({v}) is not bool: raise _fail("bool", {v})',
    str: 'if type({v}) is not str: raise _fail("str", {v})',
    bytes: 'if type({v}) is not bytes: raise _fail("bytes", {v})',
}


def _scalar_of(tp: Any) -> Any:
    """The scalar type behind ``tp`` (through NewType), or None if it is not one."""
    while getattr(tp, "__supertype__", None) is not None:
        tp = tp.__supertype__
    return tp if tp in _INLINE_CHECKS else None


def _compile_message(cls: type) -> Callable[[list[Any], int], Any]:
    """A decoder for one message class, generated as straight-line code: each field
    is checked inline when it is an int, bool, str or bytes (or NewType of one),
    else by its compiled converter; then the class is built (its validators run)."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    n = len(fields)
    namespace: dict[str, Any] = {"_fail": _fail, "DecodeError": DecodeError, "_cls": cls,
                                 "_name": cls.__qualname__}
    lines = ["def decode(body, depth):",
             f"    if len(body) != {n + 1}:",
             f"        raise DecodeError(f'{{_name}}: expected {n} fields, got {{len(body) - 1}}')",
             "    d = depth + 1"]
    for i, f in enumerate(fields):
        tp = hints.get(f.name, Any)
        lines.append(f"    _f{i} = body[{i + 1}]")
        scalar = _scalar_of(tp)
        if scalar is not None:
            lines.append("    " + _INLINE_CHECKS[scalar].format(v=f"_f{i}"))
        else:
            namespace[f"_c{i}"] = _converter(tp)
            lines.append(f"    _f{i} = _c{i}(_f{i}, d)")
    args = ", ".join(f"{f.name}=_f{i}" for i, f in enumerate(fields))
    lines += ["    try:",
              f"        return _cls({args})",
              "    except Exception as exc:  # an attrs validator refused a value",
              "        raise DecodeError(f'{_name}: {exc}') from None"]
    decode = _generate("decode", lines, namespace)
    _DECODERS[cls] = decode
    return decode


def _message_converter(cls: type) -> Converter:
    """A field typed ``cls``: the exact class's decoder straight away, anything else
    (a subclass's tag, a malformed value) through :func:`_decode_message`."""
    tag = _CLS_TO_TAG.get(cls)
    cbor_tag = cbor2.CBORTag

    def conv(v: Any, depth: int) -> Any:
        if type(v) is cbor_tag and v.tag == MESSAGE_CBOR_TAG and depth <= MAX_NESTING:
            body = v.value
            if type(body) is list and body and type(body[0]) is int and body[0] == tag:
                decoder = _DECODERS.get(cls) or _compile_message(cls)
                return decoder(body, depth)
        return _decode_message(v, depth, cls)

    return conv


def _converter(tp: Any) -> Converter:
    """Compile a converter that checks a decoded CBOR value against ``tp``."""
    simple = {int: _conv_int, bool: _conv_bool, float: _conv_float, str: _conv_str,
              bytes: _conv_bytes, type(None): _conv_none, None: _conv_none, Any: _conv_any,
              object: _conv_any}
    if tp in simple:
        return simple[tp]
    supertype = getattr(tp, "__supertype__", None)
    if supertype is not None:  # typing.NewType
        return _converter(supertype)
    if isinstance(tp, type) and attrs.has(tp):
        return _message_converter(tp)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return _union_converter(args)
    if origin is typing.Literal:
        return _literal_converter(args)
    if origin is tuple:
        return _tuple_converter(args)
    if origin in (list, frozenset, set):
        return _seq_converter(origin, args[0] if args else Any)
    if origin is dict:
        return _dict_converter(args[0] if args else Any, args[1] if args else Any)
    raise TypeError(f"the codec cannot decode annotations of type {tp!r}")


def _union_converter(args: tuple[Any, ...]) -> Converter:
    """The first member that accepts the value; with ``None`` among the members
    (``X | ... | None``) a None is decided at once, without trying the others."""
    none_ok = type(None) in args
    convs = [_converter(a) for a in args if not (none_ok and a is type(None))]

    def conv(v: Any, depth: int) -> Any:
        if none_ok and v is None:
            return None
        for c in convs:
            try:
                return c(v, depth)
            except DecodeError:
                continue
        raise DecodeError(f"value of type {type(v).__name__} matches no member of the union")

    return conv


def _literal_converter(args: tuple[Any, ...]) -> Converter:
    allowed = set(args)

    def conv(v: Any, depth: int) -> Any:
        if not isinstance(v, _PLAIN) or v not in allowed:
            raise DecodeError(f"value {v!r} not among {sorted(map(repr, allowed))}")
        return v

    return conv


def _tuple_converter(args: tuple[Any, ...]) -> Converter:
    if len(args) == 2 and args[1] is Ellipsis:
        item = _converter(args[0])

        def conv_var(v: Any, depth: int) -> tuple[Any, ...]:
            _check_depth(depth)
            if type(v) is not list and type(v) is not tuple:
                raise _fail("array", v)
            return tuple([item(x, depth + 1) for x in v])

        return conv_var
    items = [_converter(a) for a in args]

    def conv_fixed(v: Any, depth: int) -> tuple[Any, ...]:
        _check_depth(depth)
        if (type(v) is not list and type(v) is not tuple) or len(v) != len(items):
            raise DecodeError(f"expected an array of {len(items)}")
        return tuple([c(x, depth + 1) for c, x in zip(items, v, strict=True)])

    return conv_fixed


def _seq_converter(origin: Any, item_tp: Any) -> Converter:
    item = _converter(item_tp)
    build: Callable[[Any], Any] = frozenset if origin in (frozenset, set) else list

    def conv(v: Any, depth: int) -> Any:
        _check_depth(depth)
        if not isinstance(v, (list, tuple, set, frozenset)):
            raise _fail("array or set", v)
        try:
            return build(item(x, depth + 1) for x in v)
        except TypeError as exc:  # an unhashable member of a set
            raise DecodeError(str(exc)) from None

    return conv


def _dict_converter(key_tp: Any, val_tp: Any) -> Converter:
    key, val = _converter(key_tp), _converter(val_tp)

    def conv(v: Any, depth: int) -> dict[Any, Any]:
        _check_depth(depth)
        if not isinstance(v, Mapping):
            raise _fail("map", v)
        try:
            return {key(k, depth + 1): val(x, depth + 1) for k, x in v.items()}
        except TypeError as exc:
            raise DecodeError(str(exc)) from None

    return conv


# ---------------------------------------------------------------------------
# Frames
# ---------------------------------------------------------------------------

ClusterId = NewType("ClusterId", str)


@attrs.frozen(kw_only=True)
class Envelope:
    """A decoded frame: who sent it, to whom, and the message."""

    src: str
    dst: str
    msg: Any


class Codec:
    """Encodes and decodes the frames of one cluster.

    ``max_frame_bytes`` is a hard limit both ways: an oversized outgoing
    message is the caller's error (:class:`EncodeError`), an oversized incoming
    frame is the peer's (:class:`DecodeError`).
    """

    def __init__(
        self,
        cluster_id: str,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self.cluster_id = cluster_id
        self.max_frame_bytes = max_frame_bytes
        self.version = version
        self._frame_head = b"\x85" + to_cbor(version) + to_cbor(cluster_id)  # array of 5

    def encode(self, src: str, dst: str, msg: Any) -> bytes:
        return self.frame(src, dst, self.encode_message(msg), msg)

    def encode_message(self, msg: Any) -> bytes:
        """The message's own CBOR, to wrap in frames for one or more peers with
        :meth:`frame` (a message sent to several peers is encoded once)."""
        if type(msg) not in _CLS_TO_TAG:
            raise EncodeError(f"{type(msg).__qualname__} is not a registered message")
        return to_cbor(msg)

    def frame(self, src: str, dst: str, body: bytes, msg: Any = None) -> bytes:
        """The frame ``[version, cluster_id, src, dst, message]`` around an encoded
        message: a CBOR array of five is its header byte then its items' encodings,
        so the bytes are those of encoding the whole array at once."""
        frame = b"".join((self._frame_head, to_cbor(src), to_cbor(dst), body))
        if len(frame) > self.max_frame_bytes:
            raise EncodeError(
                f"{type(msg).__qualname__ if msg is not None else 'a message'} encodes to "
                f"{len(frame)} bytes, over the {self.max_frame_bytes}-byte frame limit"
            )
        return frame

    def decode(self, frame: bytes) -> Envelope:
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise DecodeError(f"a frame is bytes, got {type(frame).__name__}")
        if len(frame) > self.max_frame_bytes:
            raise DecodeError(f"frame of {len(frame)} bytes over the {self.max_frame_bytes}-byte limit")
        raw = _loads_exact(bytes(frame))
        if type(raw) is not list or len(raw) != 5:
            raise DecodeError("a frame is an array of 5: version, cluster, src, dst, message")
        version, cluster, src, dst, body = raw
        if version != self.version or type(version) is not int:
            raise DecodeError(f"protocol version {version!r}, this node speaks {self.version}")
        if cluster != self.cluster_id:
            raise DecodeError("frame from another cluster")
        if type(src) is not str or type(dst) is not str:
            raise DecodeError("src and dst must be strings")
        return Envelope(src=src, dst=dst, msg=_decode_message(body, 1, None))
