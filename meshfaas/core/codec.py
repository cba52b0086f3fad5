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

Within one ``PROTOCOL_VERSION`` a message may only grow: a new field is
appended at the end, with a default. So peers (and an SDK) one release apart
understand each other: a decoder ignores trailing fields its class does not
have (a newer peer's additions: cbor2 has parsed them, under the frame's size
and nesting limits, but they are not checked or decoded), and fills each
trailing field a body lacks (an older peer's) with the field's attrs default
or a fresh value of its factory. A missing field without a default is a
DecodeError. Removing, reordering, retyping or changing the meaning of a
field takes a new ``PROTOCOL_VERSION`` or a new tag. Encoders always write
every field.

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
Body = list[Any] | tuple[Any, ...]  # a message's [tag, fields...] as cbor2 gives it
_DECODERS: dict[type, Callable[[Body, int], Any]] = {}


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


# ---------------------------------------------------------------------------
# Writing CBOR directly
# ---------------------------------------------------------------------------
#
# ``to_cbor`` writes the bytes itself, into a list of chunks joined once, with
# one writer per type: each message class gets a generated writer (its constant
# head -- the CBOR tag, the array length and the wire tag -- then each field,
# with the common scalar cases inline). The bytes are those of
# ``cbor2.dumps(_plain(value))``: the same shortest heads, definite lengths, sets
# sorted by their items' encodings and maps by key; anything rare (floats, big
# ints, mappings that are not dicts) is handed to exactly that.
# tests/foundation/test_codec_writer.py compares the two on random values.

Writer = Callable[[Any, list[bytes]], None]


def _head(major: int, n: int) -> bytes:
    """The shortest CBOR head of major type ``major`` with argument ``n`` (< 2**64)."""
    mt = major << 5
    if n < 24:
        return bytes((mt | n,))
    if n < 0x100:
        return bytes((mt | 24, n))
    if n < 0x10000:
        return bytes((mt | 25,)) + n.to_bytes(2, "big")
    if n < 0x100000000:
        return bytes((mt | 26,)) + n.to_bytes(4, "big")
    return bytes((mt | 27,)) + n.to_bytes(8, "big")


_UINT = tuple(_head(0, n) for n in range(256))  # 0 .. 255
_NINT = tuple(_head(1, n) for n in range(256))  # -1 .. -256
_BYTES_HEAD = tuple(_head(2, n) for n in range(256))
_TEXT_HEAD = tuple(_head(3, n) for n in range(256))
_ARRAY_HEAD = tuple(_head(4, n) for n in range(256))
_TRUE, _FALSE, _NULL = b"\xf5", b"\xf4", b"\xf6"


def _w_int(v: int, out: list[bytes]) -> None:
    if 0 <= v < 0x100:
        out.append(_UINT[v])
    elif 0 <= v < 0x1_0000_0000_0000_0000:
        out.append(_head(0, v))
    elif -0x1_0000_0000_0000_0000 <= v < 0:
        out.append(_head(1, -1 - v))
    else:
        out.append(cbor2.dumps(v))  # a bignum tag


def _w_str(v: str, out: list[bytes]) -> None:
    b = v.encode()
    n = len(b)
    out.append(_TEXT_HEAD[n] if n < 0x100 else _head(3, n))
    out.append(b)


def _w_bytes(v: bytes, out: list[bytes]) -> None:
    n = len(v)
    out.append(_BYTES_HEAD[n] if n < 0x100 else _head(2, n))
    out.append(v)


def _w_bool(v: bool, out: list[bytes]) -> None:
    out.append(_TRUE if v else _FALSE)


def _w_none(v: None, out: list[bytes]) -> None:
    out.append(_NULL)


def _w_seq(v: list[Any] | tuple[Any, ...], out: list[bytes]) -> None:
    n = len(v)
    out.append(_ARRAY_HEAD[n] if n < 0x100 else _head(4, n))
    for x in v:
        (_WRITERS.get(type(x)) or _writer_for(type(x)))(x, out)


def _w_set(v: frozenset[Any] | set[Any], out: list[bytes]) -> None:
    items = sorted(_write_one(x) for x in v)
    out.append(_head(4, len(items)))
    out.extend(items)


def _w_dict(v: dict[Any, Any], out: list[bytes]) -> None:
    out.append(_head(5, len(v)))
    for k in sorted(v, key=_map_key_order):
        _write(k, out)
        _write(v[k], out)


def _w_plain(v: Any, out: list[bytes]) -> None:
    """Anything rare: exactly what cbor2 makes of its plain form."""
    out.append(cbor2.dumps(_plain(v)))


_WRITERS: dict[type, Writer] = {
    int: _w_int, str: _w_str, bytes: _w_bytes, bool: _w_bool, type(None): _w_none,
    list: _w_seq, tuple: _w_seq, frozenset: _w_set, set: _w_set, dict: _w_dict,
    float: _w_plain,
}


def _write(v: Any, out: list[bytes]) -> None:
    (_WRITERS.get(type(v)) or _writer_for(type(v)))(v, out)


def _write_one(v: Any) -> bytes:
    out: list[bytes] = []
    _write(v, out)
    return b"".join(out)


def _writer_for(cls: type) -> Writer:
    """The writer of a type not seen yet: generated for a message, else the plain one."""
    if cls in _CLS_TO_TAG:
        return _compile_writer(cls)
    return _w_plain  # (a Mapping, or something _plain refuses with EncodeError)


# Field writers by annotation, inlined in generated writers ({f}: the field's variable).
_INLINE_WRITES = {
    str: ("if type({f}) is str:\n"
          "    _b = {f}.encode()\n"
          "    _n = len(_b)\n"
          "    out.append(_TEXT_HEAD[_n] if _n < 256 else _head(3, _n))\n"
          "    out.append(_b)"),
    int: ("if type({f}) is int and 0 <= {f} < 256:\n"
          "    out.append(_UINT[{f}])\n"
          "elif type({f}) is int and 0 <= {f} < 0x10000000000000000:\n"
          "    out.append(_head(0, {f}))"),
    bool: "if {f} is True:\n    out.append(_TRUE)\nelif {f} is False:\n    out.append(_FALSE)",
}
_GENERIC_WRITE = "(_WRITERS.get(type({f})) or _writer_for(type({f})))({f}, out)"


def _field_write(tp: Any, var: str) -> list[str]:
    """Lines writing the field in ``var`` (annotated ``tp``): the likely case inline
    (a scalar, a scalar or None, a fixed tuple of those), any other value through
    its type's writer."""
    generic = ["else:", "    " + _GENERIC_WRITE.format(f=var)]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        members = [a for a in args if a is not type(None)]
        inner = (_field_write(members[0], var) if len(members) == 1
                 else [_GENERIC_WRITE.format(f=var)])
        if inner[0].startswith("if "):
            return [f"if {var} is None:", "    out.append(_NULL)", "el" + inner[0], *inner[1:]]
        return [f"if {var} is None:", "    out.append(_NULL)", "else:",
                *["    " + line for line in inner]]
    scalar = _scalar_of(tp)
    if scalar in _INLINE_WRITES:
        return [*_INLINE_WRITES[scalar].format(f=var).split("\n"), *generic]
    if typing.get_origin(tp) is tuple and args and Ellipsis not in args \
            and all(_scalar_of(a) in _INLINE_WRITES for a in args):
        return _tuple_write(args, var) + generic
    return [_GENERIC_WRITE.format(f=var)]


def _tuple_write(args: tuple[Any, ...], var: str) -> list[str]:
    """A fixed tuple of scalars (a ballot): its head, then each item inline."""
    lines = [f"if type({var}) is tuple and len({var}) == {len(args)}:",
             f"    out.append({_head(4, len(args))!r})"]
    for k, item in enumerate(args):
        lines.append(f"    {var}_{k} = {var}[{k}]")
        lines += ["    " + line for line in _field_write(item, f"{var}_{k}")]
    return lines


def _compile_writer(cls: type) -> Writer:
    """A writer for one message class, generated as straight-line code."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    head = (_head(6, MESSAGE_CBOR_TAG) + _head(4, len(fields) + 1)
            + _write_one(_CLS_TO_TAG[cls]))
    lines = ["def write(value, out):", "    out.append(_HEAD)"]
    for f in fields:
        lines.append(f"    _f = value.{f.name}")
        lines += ["    " + line for line in _field_write(hints.get(f.name, Any), "_f")]
    write = _generate("write", lines, {
        "_HEAD": head, "_WRITERS": _WRITERS, "_writer_for": _writer_for, "_head": _head,
        "_UINT": _UINT, "_TEXT_HEAD": _TEXT_HEAD, "_TRUE": _TRUE, "_FALSE": _FALSE,
        "_NULL": _NULL})
    _WRITERS[cls] = write
    return write


def to_cbor(value: Any) -> bytes:
    """Deterministic CBOR for any value built of messages and plain data.

    Sets are sorted and maps ordered by key before encoding, so equal values
    give equal bytes whatever the hash seed.
    """
    out: list[bytes] = []
    try:
        _write(value, out)
    except EncodeError:
        raise
    except Exception as exc:  # cbor2 raises several types for unencodable values
        raise EncodeError(f"cannot encode {type(value).__qualname__}: {exc}") from exc
    return b"".join(out)


def from_cbor(data: bytes, expect: Any = Any) -> Any:
    """Decode bytes made by :func:`to_cbor`, checking them against ``expect``."""
    raw = _loads_exact(data)
    if expect is Any:
        return _conv_any(raw, 0)
    return _converter(expect)(raw, 0)


def parse_cbor(data: bytes) -> Any:
    """``data`` as plain CBOR values, not yet checked: exactly one item (no trailing
    bytes), else a DecodeError. For a wrapper that checks its own shape and hands
    each message inside to :func:`message_decoder`."""
    return _loads_exact(data)


def message_decoder(cls: type[T]) -> Callable[[Any, int], T]:
    """The typed decoder of a message of class ``cls`` in a value from :func:`parse_cbor`
    (at nesting ``depth``): what :func:`from_cbor` checks, compiled once; anything
    else (another class, a malformed body, a field of the wrong type) is a DecodeError."""
    return _converter(cls)


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
_FROZENDICT: type = type(cbor2.loads(b"\xd9\x69\x79\xa0").value)  # a map inside a tag


def _conv_any(v: Any, depth: int) -> Any:
    """Plain CBOR data, with messages decoded wherever they appear."""
    if depth > MAX_NESTING:
        raise DecodeError("nesting too deep")
    cls = type(v)
    if cls in _PLAIN_TYPES:
        return v
    # The exact types cbor2 gives first (before the slower ABC checks): arrays inside
    # a tag come as tuples, maps as frozendicts.
    if cls is _CBOR_TAG and v.tag == MESSAGE_CBOR_TAG:
        return _decode_message(v, depth + 1, None)
    if cls is list or cls is tuple:
        return [_conv_any(x, depth + 1) for x in v]
    if cls is dict or cls is _FROZENDICT:
        return _conv_any_map(v, depth)
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (list, tuple)):
        return [_conv_any(x, depth + 1) for x in v]
    if isinstance(v, (set, frozenset)):
        return frozenset(_conv_any(x, depth + 1) for x in v)
    if isinstance(v, Mapping):
        return _conv_any_map(v, depth)
    if isinstance(v, cbor2.CBORTag) and v.tag == MESSAGE_CBOR_TAG:
        return _decode_message(v, depth + 1, None)
    raise _fail("plain data", v)


def _conv_any_map(v: Mapping[Any, Any], depth: int) -> dict[Any, Any]:
    out = {}
    for k, x in v.items():
        if not isinstance(k, (int, str, bytes)):
            raise _fail("int, str or bytes map key", k)
        out[k] = _conv_any(x, depth + 1)
    return out


def _decode_message(v: Any, depth: int, expect: type | None) -> Any:
    if depth > MAX_NESTING:
        raise DecodeError("nesting too deep")
    if (type(v) is not _CBOR_TAG and not isinstance(v, _CBOR_TAG)) or v.tag != MESSAGE_CBOR_TAG:
        raise _fail("message", v)
    body = v.value
    if (type(body) is not tuple and type(body) is not list) or not body \
            or type(body[0]) is not int:
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


def _compile_message(cls: type) -> Callable[[Body, int], Any]:
    """A decoder for one message class, generated as straight-line code: each field
    is checked inline when it is an int, bool, str or bytes (or NewType of one), or
    such a scalar or None, or a fixed tuple of scalars, else by its compiled
    converter; then the class is built (its validators run). Only a body of
    another length leaves the straight line: a longer one is cut to the class's
    fields, a shorter one goes to :func:`_other_shape_decoder`."""
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    n = len(fields)
    namespace: dict[str, Any] = {"_fail": _fail, "DecodeError": DecodeError, "_cls": cls,
                                 "_name": cls.__qualname__, "_MAX": MAX_NESTING}
    namespace["_other_shape"] = _other_shape_decoder(cls, hints)
    lines = ["def decode(body, depth):",
             f"    if len(body) != {n + 1}:",  # another version's shape: the slow branch
             f"        if len(body) < {n + 1}:",
             "            return _other_shape(body, depth)",
             f"        body = body[:{n + 1}]",  # a newer peer's trailing fields, ignored
             "    d = depth + 1"]
    for i, f in enumerate(fields):
        lines.append(f"    _f{i} = body[{i + 1}]")
        lines += ["    " + line for line in _field_check(hints.get(f.name, Any), i, namespace)]
    lines += _build_lines(cls, fields, namespace)
    decode = _generate("decode", lines, namespace)
    _DECODERS[cls] = decode
    return decode


def _other_shape_decoder(cls: type, hints: dict[str, Any]) -> Callable[[Body, int], Any]:
    """The decoder of a body with fewer fields than ``cls`` has (an older peer's):
    the fields it has are checked by their converters, and each missing trailing
    field takes its attrs default (a factory gives a fresh value) through
    ``__init__``. A missing field without a default is a DecodeError."""
    fields = attrs.fields(cls)
    n = len(fields)
    keys = [f.alias or f.name for f in fields]
    convs = [_converter(hints.get(f.name, Any)) for f in fields]
    shortest = n  # the fewest fields a body may have: every field after them has a default
    while shortest > 0 and fields[shortest - 1].default is not attrs.NOTHING:
        shortest -= 1
    name = cls.__qualname__

    def decode(body: Body, depth: int) -> Any:
        m = len(body) - 1
        if m < shortest:
            raise DecodeError(f"{name}: expected {n} fields, got {m}")
        kwargs = {keys[i]: convs[i](body[i + 1], depth + 1) for i in range(m)}
        try:
            return cls(**kwargs)
        except Exception as exc:  # an attrs validator refused a value
            raise DecodeError(f"{name}: {exc}") from None

    return decode


def _plain_init(cls: type) -> bool:
    """Whether ``cls.__init__`` only stores its arguments: a slotted attrs class with
    no validators, converters or init hooks (a decoder then fills the slots itself)."""
    hooks = ("__attrs_pre_init__", "__attrs_post_init__")
    fields = attrs.fields(cls)
    slots = set(cls.__dict__.get("__slots__", ("?",))) - {"__weakref__"}
    code = getattr(cls.__dict__.get("__init__"), "__code__", None)  # attrs' own, not hand-written
    generated = code is not None and code.co_filename.startswith("<attrs generated")
    return (generated and slots == {f.name for f in fields}
            and not any(hasattr(cls, h) for h in hooks)
            and all(f.init and f.validator is None and f.converter is None and f.alias == f.name
                    for f in fields))


def _build_lines(cls: type, fields: Any, namespace: dict[str, Any]) -> list[str]:
    """The end of a generated decoder: the instance, through ``__init__`` (validators
    run, a refusal is a DecodeError), or with its slots filled directly when
    :func:`_plain_init` (the same object, without parsing keyword arguments)."""
    if _plain_init(cls):
        namespace.update(_new=object.__new__, _set=object.__setattr__)
        return ["    _o = _new(_cls)",
                *[f"    _set(_o, {f.name!r}, _f{i})" for i, f in enumerate(fields)],
                "    return _o"]
    args = ", ".join(f"{f.name}=_f{i}" for i, f in enumerate(fields))
    return ["    try:",
            f"        return _cls({args})",
            "    except Exception as exc:  # an attrs validator refused a value",
            "        raise DecodeError(f'{_name}: {exc}') from None"]


def _field_check(tp: Any, i: int, namespace: dict[str, Any]) -> list[str]:
    """Lines checking field ``_f{i}`` (annotated ``tp``) of a generated decoder.

    Inline: a scalar; a scalar or None; a fixed tuple of scalars already a tuple
    (as cbor2 gives arrays inside a tag), kept as it is. Anything else, and any
    value the inline check does not accept as it is, goes to the field's
    converter, which gives the result or the DecodeError of the generic path."""
    v = f"_f{i}"
    scalar = _scalar_of(tp)
    if scalar is not None:
        return [_INLINE_CHECKS[scalar].format(v=v)]
    namespace[f"_c{i}"] = _converter(tp)
    generic = f"    {v} = _c{i}({v}, d)"
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 2 \
            and type(None) in args:
        inner = _scalar_of(args[0] if args[1] is type(None) else args[1])
        if inner is not None:
            return [f"if {v} is not None and type({v}) is not {inner.__name__}:", generic]
        return [f"if {v} is not None:", generic]  # the union decides None first too
    if typing.get_origin(tp) is tuple and len(args) == 2 and args[1] is Ellipsis \
            and _scalar_of(args[0]) is not None:
        return [f"if type({v}) is tuple and d <= _MAX:",
                f"    for _x in {v}:",
                f"        if type(_x) is not {_scalar_of(args[0]).__name__}:",
                "        " + generic,  # (raises)
                "            break",
                "else:", generic]
    if typing.get_origin(tp) is tuple and args and Ellipsis not in args:
        items = [_scalar_of(a) for a in args]
        if all(t is not None for t in items):
            checks = " and ".join(f"type({v}[{k}]) is {t.__name__}" for k, t in enumerate(items))
            return [f"if not (type({v}) is tuple and len({v}) == {len(items)} and d <= _MAX",
                    f"        and {checks}):", generic]
    return [generic.strip()]


def _message_converter(cls: type) -> Converter:
    """A field typed ``cls``: the exact class's decoder straight away, anything else
    (a subclass's tag, a malformed value) through :func:`_decode_message`."""
    tag = _CLS_TO_TAG.get(cls)
    cbor_tag = cbor2.CBORTag

    def conv(v: Any, depth: int) -> Any:
        if type(v) is cbor_tag and v.tag == MESSAGE_CBOR_TAG and depth <= MAX_NESTING:
            body = v.value
            if (type(body) is tuple or type(body) is list) and body and type(body[0]) is int \
                    and body[0] == tag:
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
        cls = type(v)  # (cbor2's frozendict and dict before the slower ABC check)
        if cls is not _FROZENDICT and cls is not dict and not isinstance(v, Mapping):
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
        self._heads: dict[tuple[str, str], bytes] = {}  # (src, dst) -> the frame's head

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
        head = self._heads.get((src, dst))
        if head is None:
            if len(self._heads) >= 1024:
                self._heads.clear()
            head = self._heads[(src, dst)] = self._frame_head + to_cbor(src) + to_cbor(dst)
        frame = head + body
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
