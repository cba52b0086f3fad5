"""The key-value state machine used by the tests and the scenario."""

from paxos.api import Queryable, StateMachine
from paxos.kv import KvStateMachine


def test_commands_and_results() -> None:
    kv = KvStateMachine()
    assert kv.apply(1, ["put", "k", "v1"]) is None
    assert kv.apply(2, ["put", "k", "v2"]) == "v1"
    assert kv.apply(3, ["get", "k"]) == "v2"
    assert kv.apply(4, ["cas", "k", "nope", "x"]) is False
    assert kv.apply(5, ["cas", "k", "v2", "v3"]) is True
    assert kv.apply(6, ["append", "k", "+"]) == "v3+"
    assert kv.apply(7, ["cas", "new", None, "first"]) is True
    assert kv.query(["get", "new"]) == "first"


def test_bad_commands_are_no_ops_with_an_error_result() -> None:
    kv = KvStateMachine()
    assert kv.apply(1, "junk") == ["error", "malformed"]
    assert kv.apply(2, ["put", "k"])[0] == "error"
    assert kv.apply(3, ["drop", "k"])[0] == "error"
    assert kv.data == {}


def test_snapshot_round_trip() -> None:
    kv = KvStateMachine()
    kv.apply(1, ["put", "a", "1"])
    kv.apply(2, ["append", "b", "x"])
    other = KvStateMachine()
    other.restore(kv.snapshot())
    assert other.data == kv.data and other.last_index == 2
    assert other.snapshot() == kv.snapshot()


def test_implements_the_protocols() -> None:
    assert isinstance(KvStateMachine(), StateMachine)
    assert isinstance(KvStateMachine(), Queryable)
