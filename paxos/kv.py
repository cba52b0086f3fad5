"""A small key-value state machine for tests and the ``paxos`` simulator scenario.

Commands are lists (they cross the wire as CBOR arrays):

* ``["put", key, value]`` -> the previous value (None when absent)
* ``["get", key]`` -> the value (None when absent)
* ``["cas", key, expected, new]`` -> True if the value was ``expected`` and is now ``new``
* ``["append", key, suffix]`` -> the new value (strings concatenate)

Queries (:meth:`KvStateMachine.query`) are ``["get", key]``. An unknown command
is applied as a no-op whose result is ``["error", reason]``: the log is
already decided, so a bad command must not stop the machine.
"""

from __future__ import annotations

from typing import Any

from meshfaas.core.codec import from_cbor, to_cbor


class KvStateMachine:
    """One dictionary of string keys. Deterministic; snapshots are canonical CBOR."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.last_index = 0

    def apply(self, index: int, command: Any) -> Any:
        self.last_index = index
        if not isinstance(command, (list, tuple)) or not command:
            return ["error", "malformed"]
        op, args = command[0], list(command[1:])
        handler = _OPS.get(op) if isinstance(op, str) else None
        if handler is None or len(args) != _ARITY[op]:
            return ["error", f"bad command {op!r}"]
        return handler(self.data, *args)

    def query(self, query: Any) -> Any:
        if isinstance(query, (list, tuple)) and len(query) == 2 and query[0] == "get":
            return self.data.get(query[1])
        return ["error", "bad query"]

    def snapshot(self) -> bytes:
        return to_cbor([self.last_index, self.data])

    def restore(self, data: bytes) -> None:
        decoded = from_cbor(data)
        self.last_index = int(decoded[0])
        self.data = dict(decoded[1])


def _put(data: dict[str, Any], key: str, value: Any) -> Any:
    previous = data.get(key)
    data[key] = value
    return previous


def _get(data: dict[str, Any], key: str) -> Any:
    return data.get(key)


def _cas(data: dict[str, Any], key: str, expected: Any, new: Any) -> bool:
    if data.get(key) != expected:
        return False
    data[key] = new
    return True


def _append(data: dict[str, Any], key: str, suffix: Any) -> Any:
    current = data.get(key)
    data[key] = suffix if current is None else current + suffix
    return data[key]


_OPS: dict[str, Any] = {"put": _put, "get": _get, "cas": _cas, "append": _append}
_ARITY = {"put": 2, "get": 1, "cas": 3, "append": 2}
