"""Tests for simulator.linearizability: hand-written tables, then generated histories."""

from __future__ import annotations

import itertools
import random
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator.linearizability import (
    KV_MODEL,
    BaseModel,
    HistoryRecorder,
    Op,
    check_linearizable,
    partition_by_key,
)


def op(
    kind: str, inp: Any, out: Any, call: int, ret: int | None, key: str = "k", c: str = "c"
) -> Op:
    return Op(c, kind, key, inp, out, call, ret)


def put(v: Any, call: int, ret: int | None, key: str = "k") -> Op:
    return op("put", v, None, call, ret, key)


def get(out: Any, call: int, ret: int | None, key: str = "k") -> Op:
    return op("get", None, out, call, ret, key)


def cas(exp: Any, new: Any, out: bool, call: int, ret: int | None, key: str = "k") -> Op:
    return op("cas", (exp, new), out, call, ret, key)


def app(v: Any, call: int, ret: int | None, key: str = "k") -> Op:
    return op("append", v, None, call, ret, key)


# ---------------------------------------------------------------------------
# Hand-written histories
# ---------------------------------------------------------------------------

TABLE: list[tuple[str, list[Op], bool]] = [
    ("empty", [], True),
    ("put then get", [put(1, 0, 10), get(1, 20, 30)], True),
    ("get of absent key", [get(None, 0, 10)], True),
    ("stale read", [put(1, 0, 10), put(2, 20, 30), get(1, 40, 50)], False),
    ("lost write", [put(1, 0, 10), get(None, 20, 30)], False),
    ("read of a value never written", [put(1, 0, 10), get(7, 20, 30)], False),
    ("read concurrent with write sees new", [put(1, 0, 100), get(1, 10, 20)], True),
    ("read concurrent with write sees old", [put(1, 0, 100), get(None, 10, 20)], True),
    ("read sees new then old", [put(1, 0, 100), get(1, 10, 20), get(None, 30, 40)], False),
    (
        "concurrent puts, either order, reads agree",
        [put(1, 0, 10), put(2, 0, 10), get(2, 20, 30), get(2, 40, 50)],
        True,
    ),
    (
        "concurrent puts, reads flip back",
        [put(1, 0, 10), put(2, 0, 10), get(1, 20, 30), get(2, 40, 50)],
        False,
    ),
    (
        "two concurrent reads see the two orders of a write",
        [put(1, 0, 10), put(2, 20, 60), get(2, 25, 40), get(1, 30, 50)],
        True,
    ),
    (
        "a read started after a read saw the new value sees it too",
        [put(1, 0, 10), put(2, 20, 60), get(2, 25, 30), get(1, 35, 50)],
        False,
    ),
    ("tie at the same instant is concurrent", [put(1, 0, 10), get(None, 10, 20)], True),
    (
        "cas: one of two concurrent creates wins",
        [cas(None, 1, True, 0, 10), cas(None, 2, False, 0, 10), get(1, 20, 30)],
        True,
    ),
    (
        "cas: both concurrent creates win",
        [cas(None, 1, True, 0, 10), cas(None, 2, True, 0, 10)],
        False,
    ),
    ("cas: fails although it matched", [put(1, 0, 10), cas(1, 2, False, 20, 30)], False),
    ("cas: swap then read", [put(1, 0, 10), cas(1, 2, True, 20, 30), get(2, 40, 50)], True),
    ("append: concurrent, one order", [app("a", 0, 10), app("b", 0, 10), get("ba", 20, 30)], True),
    (
        "append: concurrent, other order",
        [app("a", 0, 10), app("b", 0, 10), get("ab", 20, 30)],
        True,
    ),
    ("append: applied twice", [app("a", 0, 10), app("b", 0, 10), get("aab", 20, 30)], False),
    ("append: lost", [app("a", 0, 10), app("b", 20, 30), get("b", 40, 50)], False),
    ("delete", [put(1, 0, 10), op("delete", None, None, 20, 30), get(None, 40, 50)], True),
    ("pending put that took effect", [put(1, 0, None), get(1, 10, 20)], True),
    ("pending put that did not take effect", [put(1, 0, None), get(None, 10, 20)], True),
    (
        "pending put took effect late",
        [put(1, 0, None), get(None, 10, 20), get(None, 30, 40), get(1, 100, 110)],
        True,
    ),
    (
        "pending put seen, then unseen",
        [put(1, 0, None), get(1, 10, 20), get(None, 30, 40)],
        False,
    ),
    ("pending put seen before its call", [get(1, 0, 10), put(1, 20, None)], False),
    (
        "pending cas that took effect",
        [put(1, 0, 10), cas(1, 2, False, 20, None), get(2, 40, 50)],
        True,
    ),
    (
        "pending cas that could not match",
        [put(1, 0, 10), cas(5, 2, False, 20, None), get(2, 40, 50)],
        False,
    ),
    ("pending read is ignored", [put(1, 0, 10), get(99, 20, None)], True),
    ("keys are independent", [put(1, 0, 10, key="a"), get(None, 20, 30, key="b")], True),
    (
        "a violation on one key of two",
        [put(1, 0, 10, key="a"), get(1, 20, 30, key="a"), get(3, 0, 5, key="b")],
        False,
    ),
]


@pytest.mark.parametrize(
    ("history", "expected"), [(h, e) for _, h, e in TABLE], ids=[n for n, _, _ in TABLE]
)
def test_table(history: list[Op], expected: bool) -> None:
    result = check_linearizable(history)
    assert result.ok is expected, result.explain()
    assert result.verdict == ("linearizable" if expected else "not_linearizable")
    # The verdict does not depend on the order the history is handed over in.
    assert check_linearizable(list(reversed(history))).ok is expected


def test_violation_names_key_prefix_and_stuck_op() -> None:
    stale = get(1, 40, 50)
    history = [put(0, 0, 5, key="a"), put(1, 0, 10), put(2, 20, 30), stale]
    result = check_linearizable(history)
    assert not result.ok and not result.unknown
    assert result.key == "k"
    assert result.stuck_op == stale
    assert result.prefix == (put(1, 0, 10), put(2, 20, 30))
    assert result.prefix_state == 2
    text = result.explain()
    assert "key 'k'" in text and "get() -> 1 [40, 50]" in text


def test_explanation_elides_long_prefixes() -> None:
    history = [put(i, 10 * i, 10 * i + 5) for i in range(20)] + [get(3, 500, 510)]
    result = check_linearizable(history)
    assert not result.ok
    assert len(result.prefix) == 20
    assert "12 earlier elided" in result.explain(max_prefix_ops=8)


def test_work_bound_reports_unknown() -> None:
    # 14 concurrent puts and a read of a value never written: every subset is explored.
    history = [put(i, 0, 10) for i in range(14)] + [get(99, 20, 30)]
    bounded = check_linearizable(history, max_states_per_key=200)
    assert bounded.unknown and not bounded.ok
    assert bounded.key == "k"
    assert bounded.states_explored <= 200
    assert "unknown" in bounded.explain()
    assert check_linearizable(history).verdict == "not_linearizable"


def test_violation_wins_over_unknown() -> None:
    hard = [put(i, 0, 10, key="a") for i in range(14)] + [get(99, 20, 30, key="a")]
    bad = [put(1, 0, 10, key="b"), get(2, 20, 30, key="b")]
    result = check_linearizable(hard + bad, max_states_per_key=300)
    assert result.verdict == "not_linearizable" and result.key == "b"


class CounterModel(BaseModel[int]):
    """A custom model: ``inc`` returns the counter's new value."""

    def init(self) -> int:
        return 0

    def step(self, state: int, op: Op) -> tuple[bool, int]:
        return op.pending or op.output == state + 1, state + 1


def test_any_model_can_be_checked() -> None:
    incs = [op("inc", None, 2, 0, 10), op("inc", None, 1, 0, 10), op("inc", None, 3, 20, 30)]
    assert check_linearizable(incs, CounterModel()).ok
    assert not check_linearizable([*incs, op("inc", None, 3, 40, 50)], CounterModel()).ok
    assert check_linearizable([*incs, op("inc", None, 0, 40, None)], CounterModel()).ok


def test_return_before_call_is_a_misuse() -> None:
    with pytest.raises(ValueError, match="returns before"):
        check_linearizable([put(1, 10, 5)])


def test_unknown_kind_is_a_misuse() -> None:
    with pytest.raises(ValueError, match="unknown op kind"):
        check_linearizable([op("incr", 1, None, 0, 10)])


def test_partition_is_sorted_by_key() -> None:
    parts = partition_by_key([put(1, 0, 1, key="b"), put(2, 0, 1, key="a"), put(3, 2, 3, key="b")])
    assert [k for k, _ in parts] == ["a", "b"]
    assert [o.input for o in parts[1][1]] == [1, 3]


def test_recorder_builds_pending_and_completed_ops() -> None:
    rec = HistoryRecorder()
    h1 = rec.invoke("c1", "put", "k", 1, call_ns=0)
    h2 = rec.invoke("c2", "get", "k", None, call_ns=5)
    h3 = rec.invoke("c3", "put", "k", 9, call_ns=6)
    rec.complete(h2, 1, return_ns=20)
    rec.discard(h3)
    with pytest.raises(ValueError, match="twice"):
        rec.complete(h2, 1, return_ns=21)
    history = rec.history()
    assert [o.pending for o in history] == [True, False]
    assert history[0].describe() == "c1 put(1) -> ? [0, pending]"
    assert check_linearizable(history).ok
    assert h1 == 0


# ---------------------------------------------------------------------------
# Generated histories
# ---------------------------------------------------------------------------

KEYS = ("a", "b", "c")


@st.composite
def sequential_kv_ops(draw: st.DrawFn, max_ops: int = 24) -> list[tuple[str, str, Any]]:
    """(kind, key, input) triples; inputs are small so cas often matches."""
    kinds = st.sampled_from(("put", "get", "get", "cas", "append", "delete"))
    specs = []
    for _ in range(draw(st.integers(0, max_ops))):
        kind, key = draw(kinds), draw(st.sampled_from(KEYS))
        if kind == "put":
            inp: Any = draw(st.sampled_from(("x", "y", "z")))
        elif kind == "cas":
            inp = (draw(st.sampled_from((None, "x", "y", "xa"))), draw(st.sampled_from(("x", "y"))))
        elif kind == "append":
            inp = draw(st.sampled_from(("a", "b")))
        else:
            inp = None
        specs.append((kind, key, inp))
    return specs


def run_sequentially(specs: list[tuple[str, str, Any]]) -> list[tuple[str, str, Any, Any]]:
    """Execute on a dict: (kind, key, input, output) with the outputs a correct store gives."""
    store: dict[str, Any] = {}
    done = []
    for kind, key, inp in specs:
        out: Any = None
        old = store.get(key)
        if kind == "put":
            store[key] = inp
        elif kind == "get":
            out = old
        elif kind == "delete":
            store.pop(key, None)
        elif kind == "append":
            store[key] = inp if old is None else old + inp
        else:
            out = old == inp[0]
            if out:
                store[key] = inp[1]
        done.append((kind, key, inp, out))
    return done


@st.composite
def linearizable_histories(draw: st.DrawFn) -> list[Op]:
    """A sequential run, each op given an interval around its linearization point.

    Op n takes effect at 100*n; its call may start up to 450 ns earlier and its
    return come up to 450 ns later, so up to ~10 ops overlap. Some completed ops
    lose their answer (pending, took effect); some pending ops never took effect.
    """
    executed = run_sequentially(draw(sequential_kv_ops()))
    history = []
    for n, (kind, key, inp, out) in enumerate(executed):
        point = 100 * n
        call = point - draw(st.integers(0, 450))
        ret: int | None = point + draw(st.integers(0, 450))
        if draw(st.integers(0, 9)) == 0:
            ret = None
        history.append(Op(f"c{n}", kind, key, inp, out, call, ret))
    for _ in range(draw(st.integers(0, 3))):  # writes that never happened
        call = draw(st.integers(0, 100 * len(executed) + 100))
        history.append(Op("ghost", "put", draw(st.sampled_from(KEYS)), "never", None, call, None))
    return history


@given(linearizable_histories(), st.randoms(use_true_random=False))
def test_histories_from_a_sequential_run_are_accepted(history: list[Op], rnd: Any) -> None:
    rnd.shuffle(history)
    result = check_linearizable(history)
    assert result.ok, result.explain()


@given(linearizable_histories(), st.data())
def test_a_read_of_a_value_never_written_is_rejected(
    history: list[Op], data: st.DataObject
) -> None:
    reads = [i for i, o in enumerate(history) if o.kind == "get" and not o.pending]
    if not reads:
        history.append(Op("r", "get", "a", None, None, -1000, -900))
        reads = [len(history) - 1]
    i = data.draw(st.sampled_from(reads))
    history[i] = attrs.evolve(history[i], output="bogus")
    result = check_linearizable(history)
    assert result.verdict == "not_linearizable"
    assert result.key == history[i].key
    assert result.stuck_op is not None and result.stuck_op.output == "bogus"


@given(sequential_kv_ops(), st.data())
def test_sequential_history_with_any_wrong_read_is_rejected(
    specs: list[tuple[str, str, Any]], data: st.DataObject
) -> None:
    """Without overlap there is only one order, so any other read value is wrong."""
    specs = [*specs, ("get", data.draw(st.sampled_from(KEYS)), None)]
    executed = run_sequentially(specs)
    history = [
        Op("c", k, key, i, o, 10 * n, 10 * n + 5) for n, (k, key, i, o) in enumerate(executed)
    ]
    n = data.draw(st.sampled_from([n for n, o in enumerate(history) if o.kind == "get"]))
    wrong = data.draw(
        st.sampled_from((None, "x", "y", "z", "a", "xa", "ab")).filter(
            lambda v: v != history[n].output
        )
    )
    history[n] = attrs.evolve(history[n], output=wrong)
    assert check_linearizable(history).verdict == "not_linearizable"


@given(sequential_kv_ops(max_ops=12))
def test_fully_concurrent_run_is_accepted(specs: list[tuple[str, str, Any]]) -> None:
    """Every op overlapping every other still admits the order it was run in."""
    executed = run_sequentially(specs)
    history = [Op(f"c{n}", k, key, i, o, 0, 1_000) for n, (k, key, i, o) in enumerate(executed)]
    assert check_linearizable(history).ok


def random_kv_history(seed: int, n_ops: int, overlap_ns: int) -> list[Op]:
    """A run of ``n_ops`` on two keys with unique values; op n takes effect at 100*n."""
    rnd = random.Random(seed)
    store: dict[str, int] = {}
    history = []
    for n in range(n_ops):
        key, kind = rnd.choice("ab"), rnd.choice(("put", "get", "cas", "cas", "delete"))
        old, inp, out = store.get(key), None, None
        if kind == "put":
            inp = store[key] = n
        elif kind == "get":
            out = old
        elif kind == "delete":
            store.pop(key, None)
        else:
            inp = (rnd.choice((None, old, n - 1)), n)
            out = old == inp[0]
            if out:
                store[key] = n
        call = 100 * n - rnd.randrange(overlap_ns)
        ret = None if rnd.random() < 0.1 else 100 * n + rnd.randrange(overlap_ns)
        history.append(Op(f"c{n % 7}", kind, key, inp, out, call, ret))
    return history


@pytest.mark.parametrize("seed", range(20))
def test_longer_random_runs_are_accepted_and_a_bad_read_rejected(seed: int) -> None:
    history = random_kv_history(seed, n_ops=200, overlap_ns=500)
    result = check_linearizable(history)
    assert result.ok, result.explain()
    reads = [i for i, o in enumerate(history) if o.kind == "get" and not o.pending]
    i = reads[len(reads) // 2]
    history[i] = attrs.evolve(history[i], output=-1)
    bad = check_linearizable(history)
    assert bad.verdict == "not_linearizable" and bad.stuck_op == history[i]


def brute_force_linearizable(history: list[Op]) -> bool:
    """The definition, by enumeration: some subset of the pending ops and some order."""
    completed = [o for o in history if not o.pending]
    pending = [o for o in history if o.pending]
    for mask in range(1 << len(pending)):
        chosen = completed + [p for b, p in enumerate(pending) if mask >> b & 1]
        for order in itertools.permutations(chosen):
            if _respects_real_time(order) and _replays(order):
                return True
    return False


def _respects_real_time(order: tuple[Op, ...]) -> bool:
    return not any(
        b.return_ns is not None and b.return_ns < a.call_ns
        for i, a in enumerate(order)
        for b in order[i + 1 :]
    )


def _replays(order: tuple[Op, ...]) -> bool:
    state = KV_MODEL.init()
    for o in order:
        ok, state = KV_MODEL.step(state, o)
        if not ok:
            return False
    return True


@st.composite
def arbitrary_small_histories(draw: st.DrawFn) -> list[Op]:
    """Up to 6 ops on one key with random intervals and random outputs: often not linearizable."""
    values = st.sampled_from((None, "x", "y"))
    history = []
    for n in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(("put", "get", "get", "cas", "cas", "append", "delete")))
        inp: Any = {
            "put": draw(st.sampled_from(("x", "y"))),
            "cas": (draw(values), draw(st.sampled_from(("x", "y")))),
            "append": draw(st.sampled_from(("x", "y"))),
        }.get(kind)
        out = (
            draw(st.booleans()) if kind == "cas" else draw(st.sampled_from((None, "x", "y", "xy")))
        )
        call = draw(st.integers(0, 20))
        ret = None if draw(st.integers(0, 2)) == 0 else call + draw(st.integers(0, 10))
        history.append(
            Op(f"c{n}", kind, "k", inp, out if kind in ("get", "cas") else None, call, ret)
        )
    return history


@settings(max_examples=300)  # cheap examples; more of them find pruning mistakes
@given(arbitrary_small_histories())
def test_verdict_matches_brute_force_on_small_histories(history: list[Op]) -> None:
    assert check_linearizable(history).ok == brute_force_linearizable(history)
