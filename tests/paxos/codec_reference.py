"""The wire codec's decoding as it was before the generated decoders (commit 1dba947),
kept as the reference the differential test compares the fast decoders against, with
the growth rule of session 5 (a message body with more or fewer trailing fields than
its class). Only the converters are here; the message registry is the live one."""

# ruff: noqa
from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import cbor2

from meshfaas.core.codec import _TAG_TO_CLS, MAX_NESTING, MESSAGE_CBOR_TAG, DecodeError

Converter = Callable[[Any, int], Any]
_REF_DECODERS: dict[type, Callable[[list[Any], int], Any]] = {}


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


def _conv_any(v: Any, depth: int) -> Any:
    """Plain CBOR data, with messages decoded wherever they appear."""
    _check_depth(depth)
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
    decoder = _REF_DECODERS.get(cls) or _compile_message(cls)
    return decoder(body, depth)


def _compile_message(cls: type) -> Callable[[list[Any], int], Any]:
    hints = typing.get_type_hints(cls)
    fields = attrs.fields(cls)
    keys = [f.alias or f.name for f in fields]
    convs = [_converter(hints.get(f.name, Any)) for f in fields]
    n = len(fields)
    qualname = cls.__qualname__

    has_default = [f.default is not attrs.NOTHING for f in fields]

    def decode(body: Any, depth: int) -> Any:
        # The growth rule: extra trailing fields (a newer peer's) are ignored; missing
        # trailing fields (an older peer's) take their defaults, if they all have one.
        got = len(body) - 1
        if got < n and not all(has_default[got:]):
            raise DecodeError(f"{qualname}: expected {n} fields, got {got}")
        kwargs = {}
        for i in range(min(got, n)):
            kwargs[keys[i]] = convs[i](body[i + 1], depth + 1)
        try:
            return cls(**kwargs)
        except Exception as exc:  # an attrs validator refused a value
            raise DecodeError(f"{qualname}: {exc}") from None

    _REF_DECODERS[cls] = decode
    return decode


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
        return lambda v, depth: _decode_message(v, depth, tp)
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
    convs = [_converter(a) for a in args]

    def conv(v: Any, depth: int) -> Any:
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
            return tuple(item(x, depth + 1) for x in v)

        return conv_var
    items = [_converter(a) for a in args]

    def conv_fixed(v: Any, depth: int) -> tuple[Any, ...]:
        _check_depth(depth)
        if (type(v) is not list and type(v) is not tuple) or len(v) != len(items):
            raise DecodeError(f"expected an array of {len(items)}")
        return tuple(c(x, depth + 1) for c, x in zip(items, v, strict=True))

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
