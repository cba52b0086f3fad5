"""A linearizability checker for client histories (Wing & Gong, with Lowe's memo).

Theory of operation
-------------------
A *history* is what clients saw: one :class:`Op` per operation, with the
instant it was called and the instant its answer came back (``return_ns``), or
``return_ns=None`` when no answer ever came (a timeout, a crash of the client's
node). The history is *linearizable* if every completed operation can be given
one point in time between its call and its return such that, executed one by one
in that order, a sequential :class:`Model` gives exactly the outputs the clients
saw. A pending operation (``return_ns=None``) may take effect at any point after
its call, or not at all; its output is unknown and never checked.

Search (Wing & Gong, as Porcupine does it). The calls and returns are laid out
in time order in a doubly linked list. Walking it from the front, a call may be
*linearized* (tried next) when the model accepts it from the current state: its
two entries are lifted out of the list and the walk restarts from the front. A
return reached in the walk means its operation should have been linearized
already: undo the last choice (backtrack) and try the next call after it. The
history is linearizable when every completed operation is lifted; pending
operations' returns sit at the far end, so reaching one means exactly that.

Pruning (Lowe). The pair (set of linearized operations as a bitset, model state)
fully determines what can still happen, so a pair seen once is never explored
again. Model states must therefore be hashable. Two more prunings rest on the
model's word: an op the model calls read-only (``Model.read_only``) and accepts
now is linearized at once, before anything else is tried, and never
backtracked over (placing it as early as possible is never worse); and
``Model.simplify`` drops pending ops that cannot change the verdict.

P-compositionality. A key-value history is linearizable iff each key's
sub-history is, so the history is partitioned by ``Op.key`` and each part is
checked on its own -- exponentially cheaper than the whole.

Bounded work. Every new (bitset, state) pair counts against the key's budget
(``max_states_per_key``, so one hard key cannot starve the others); when it runs
out the key's verdict is ``"unknown"`` rather than a hang. A violation on any key
wins over unknown on another. The caller
decides what unknown means (a simulator should report it, not pass it).

Ties. An operation that returns at the same nanosecond another is called is
taken as concurrent with it (calls sort before returns at equal times): the
checker never reports a violation that depends on an unobservable tie.

On failure the result names the key, the longest prefix of that key's history
that could be linearized (and the model state after it), and the operation that
could not be placed after that prefix -- usually the stale read or the lost
write itself.

Writing a model: subclass :class:`BaseModel` (``init`` and ``step``; the
prunings default to off) or implement :class:`Model` in full, as
:class:`KvModel` does.

Writing a history: :class:`HistoryRecorder` (``invoke`` then ``complete``;
whatever was never completed is pending), or build :class:`Op` values directly.

The key-value model (:class:`KvModel`), one register per key, absent is None:

========  =====================  ==================================================
kind      input                  output checked
========  =====================  ==================================================
put       the new value          ignored
get       None                   the value read (None when absent)
cas       (expected, new)        True if it swapped, False if not; ``expected=None``
                                 means "only if absent"
append    a suffix (str/bytes/   ignored; an absent key appends to an empty value
          tuple)
delete    None                   ignored
========  =====================  ==================================================

An operation that definitely failed (the server said it did not happen) must
not be in the history at all; an ambiguous one is pending.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from typing import Any, Generic, Literal, Protocol, TypeVar

import attrs

DEFAULT_MAX_STATES_PER_KEY = 200_000
"""Default work budget: distinct (linearized set, state) pairs explored per key."""

Verdict = Literal["linearizable", "not_linearizable", "unknown"]

S = TypeVar("S", bound=Hashable)


@attrs.frozen
class Op:
    """One client operation as the client saw it.

    ``call_ns``/``return_ns`` are the client's invoke and answer instants (any
    one clock shared by all clients, e.g. the simulator's). ``return_ns`` is None
    when no answer came: the operation may or may not have taken effect, and
    ``output`` is ignored.
    """

    client_id: Hashable
    kind: str
    key: Hashable
    input: Any
    output: Any
    call_ns: int
    return_ns: int | None

    @property
    def pending(self) -> bool:
        return self.return_ns is None

    def describe(self) -> str:
        """A one-line human form (no key), e.g. ``c1 put('v') -> None [10, 20]``."""
        ret = "pending" if self.return_ns is None else str(self.return_ns)
        out = "?" if self.return_ns is None else repr(self.output)
        arg = "" if self.input is None else repr(self.input)
        return f"{self.client_id} {self.kind}({arg}) -> {out} [{self.call_ns}, {ret}]"


class Model(Protocol[S]):
    """A sequential specification. States must be hashable and treated as values."""

    def init(self) -> S:
        """The state before any operation."""
        ...

    def step(self, state: S, op: Op) -> tuple[bool, S]:
        """Apply ``op`` to ``state``: (did the op's output match, the next state).

        For a pending op (``op.pending``) the output is unknown: accept it and
        return the state it leaves if it took effect.
        """
        ...

    def read_only(self, op: Op) -> bool:
        """True when ``op`` leaves every state it is valid in unchanged (a read).

        The search never backtracks over such an op to try another in its place;
        answer False when unsure (it only costs time).
        """
        ...

    def simplify(self, ops: Sequence[Op]) -> list[Op]:
        """One key's ops minus pending ops that provably cannot change the verdict.

        Each pending op left in doubles the space to search, so a model should
        drop those it can (a pending read, at least). Return ``list(ops)`` if unsure.
        """
        ...


class BaseModel(Generic[S]):
    """A model with the safe defaults for the two optional prunings; subclass it.

    Only ``init`` and ``step`` are left to write; override ``read_only`` and
    ``simplify`` when the model can prove more (they only save time).
    """

    def init(self) -> S:
        raise NotImplementedError

    def step(self, state: S, op: Op) -> tuple[bool, S]:
        raise NotImplementedError

    def read_only(self, op: Op) -> bool:
        return False

    def simplify(self, ops: Sequence[Op]) -> list[Op]:
        return list(ops)


@attrs.frozen(kw_only=True)
class LinearizabilityResult:
    """The checker's answer.

    ``verdict`` is ``"linearizable"``, ``"not_linearizable"`` or ``"unknown"``
    (the work budget ran out first). On ``"not_linearizable"``: ``key`` is the
    key whose history fails; ``prefix`` the longest sequence of its operations
    that could be linearized, ``prefix_state`` the model state after it, and
    ``stuck_op`` the completed operation that could not be placed after it.
    On ``"unknown"``, ``key`` is the key whose search ran out.
    """

    verdict: Verdict
    ops_checked: int
    states_explored: int
    key: Hashable | None = None
    prefix: tuple[Op, ...] = ()
    prefix_state: Any = None
    stuck_op: Op | None = None

    @property
    def ok(self) -> bool:
        return self.verdict == "linearizable"

    @property
    def unknown(self) -> bool:
        return self.verdict == "unknown"

    def explain(self, max_prefix_ops: int = 8) -> str:
        """A short human explanation (the last ``max_prefix_ops`` of the prefix)."""
        if self.verdict == "linearizable":
            return f"linearizable ({self.ops_checked} ops, {self.states_explored} states)"
        if self.verdict == "unknown":
            return f"unknown: gave up on key {self.key!r} after {self.states_explored} states"
        return _explain_violation(self, max_prefix_ops)


def _explain_violation(result: LinearizabilityResult, max_prefix_ops: int) -> str:
    shown = result.prefix[-max_prefix_ops:] if max_prefix_ops > 0 else ()
    skipped = len(result.prefix) - len(shown)
    lines = [
        f"not linearizable on key {result.key!r}: after a linearizable prefix of "
        f"{len(result.prefix)} ops (state {result.prefix_state!r}), no order places:",
        f"    {result.stuck_op.describe() if result.stuck_op else '?'}",
        "  prefix" + (f" (last {len(shown)}, {skipped} earlier elided)" if skipped else "") + ":",
    ]
    lines.extend(f"    {op.describe()}" for op in shown)
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# The key-value model
# ---------------------------------------------------------------------------


class KvModel:
    """One register per key (the model sees one key's ops after partitioning)."""

    KINDS = ("put", "get", "cas", "append", "delete")

    def init(self) -> Any:
        return None

    def read_only(self, op: Op) -> bool:
        return op.kind == "get" or (op.kind == "cas" and not op.pending and not op.output)

    def simplify(self, ops: Sequence[Op]) -> list[Op]:
        """Drop pending gets, and pending puts whose value no read returned.

        A pending get changes nothing. In a key with only put/get/delete, a
        pending put of a value no completed get returned can be left out: in any
        linearization that includes it, no read sits between it and the next
        write, so the same order without it is also valid.
        """
        kept = [op for op in ops if not (op.pending and op.kind == "get")]
        if any(op.kind not in ("put", "get", "delete") for op in kept):
            return kept
        seen = [op.output for op in kept if op.kind == "get" and not op.pending]
        return [op for op in kept if not (op.pending and op.kind == "put" and op.input not in seen)]

    def step(self, state: Any, op: Op) -> tuple[bool, Any]:
        kind = op.kind
        if kind == "get":
            return op.pending or op.output == state, state
        if kind == "put":
            return True, op.input
        if kind == "delete":
            return True, None
        if kind == "append":
            return True, op.input if state is None else state + op.input
        if kind == "cas":
            return _cas_step(state, op)
        raise ValueError(f"KvModel: unknown op kind {kind!r} (expected one of {self.KINDS})")


def _cas_step(state: Any, op: Op) -> tuple[bool, Any]:
    expected, new = op.input
    swapped = state == expected
    if not op.pending and bool(op.output) != swapped:
        return False, state
    return True, new if swapped else state


KV_MODEL = KvModel()


# ---------------------------------------------------------------------------
# Recording a history
# ---------------------------------------------------------------------------


class HistoryRecorder:
    """Collects a history as it happens: ``invoke`` at the call, ``complete`` at the answer.

    An invoked op never completed stays pending. Ops that definitely failed
    should be dropped with :meth:`discard`.
    """

    def __init__(self) -> None:
        self._ops: dict[int, Op] = {}
        self._next_id = 0

    def invoke(
        self, client_id: Hashable, kind: str, key: Hashable, input: Any, call_ns: int
    ) -> int:
        """Record a call; returns a handle for :meth:`complete` or :meth:`discard`."""
        handle = self._next_id
        self._next_id += 1
        self._ops[handle] = Op(client_id, kind, key, input, None, call_ns, None)
        return handle

    def complete(self, handle: int, output: Any, return_ns: int) -> None:
        """Record the answer of an invoked op."""
        op = self._ops[handle]
        if op.return_ns is not None:
            raise ValueError(f"op {handle} completed twice")
        self._ops[handle] = attrs.evolve(op, output=output, return_ns=return_ns)

    def discard(self, handle: int) -> None:
        """Forget an op that definitely did not take effect."""
        del self._ops[handle]

    def history(self) -> tuple[Op, ...]:
        return tuple(self._ops[h] for h in sorted(self._ops))


# ---------------------------------------------------------------------------
# The checker
# ---------------------------------------------------------------------------


def check_linearizable(
    history: Iterable[Op],
    model: Model[Any] = KV_MODEL,
    *,
    max_states_per_key: int = DEFAULT_MAX_STATES_PER_KEY,
) -> LinearizabilityResult:
    """Check ``history`` against ``model``, key by key, each within ``max_states_per_key``.

    Raises ValueError on a malformed history (a return before its call).
    The first non-linearizable key (in sorted order) is reported; an unknown
    key is reported only when no key is found non-linearizable.
    """
    parts = partition_by_key(history)
    explored = 0
    checked = 0
    first_unknown: LinearizabilityResult | None = None
    for key, ops in parts:
        search = _Search(model, model.simplify(ops), max_states_per_key)
        outcome = search.run()
        explored += search.states
        checked += len(ops)
        if outcome == "not_linearizable":
            return search.violation(key, checked, explored)
        if outcome == "unknown" and first_unknown is None:
            first_unknown = LinearizabilityResult(
                verdict="unknown", ops_checked=checked, states_explored=explored, key=key
            )
    if first_unknown is not None:
        return attrs.evolve(first_unknown, ops_checked=checked, states_explored=explored)
    return LinearizabilityResult(
        verdict="linearizable", ops_checked=checked, states_explored=explored
    )


def partition_by_key(history: Iterable[Op]) -> list[tuple[Hashable, list[Op]]]:
    """Group ops by key, keys in a deterministic (repr-sorted) order, ops in input order."""
    groups: dict[Hashable, list[Op]] = defaultdict(list)
    for op in history:
        if op.return_ns is not None and op.return_ns < op.call_ns:
            raise ValueError(f"op returns before it is called: {op.describe()}")
        groups[op.key].append(op)
    return sorted(groups.items(), key=lambda item: (type(item[0]).__name__, repr(item[0])))


_END = -1  # the list is empty: every op is linearized
_OUT_OF_BUDGET = -2
_EXHAUSTED = -3  # backtracked past the first choice
_ALREADY_SEEN = -4
_VERDICT_OF: dict[int, Verdict] = {
    _END: "linearizable",
    _OUT_OF_BUDGET: "unknown",
    _EXHAUSTED: "not_linearizable",
}
_INFINITE = (1, 0)  # sort prefix placing pending returns after every real instant


def _entries(ops: Sequence[Op]) -> list[tuple[int, bool]]:
    """Calls and returns, as (op index, is_return), in time order (calls first at ties)."""
    keyed: list[tuple[tuple[int, int], int, int, bool]] = []
    for i, op in enumerate(ops):
        keyed.append(((0, op.call_ns), 0, i, False))
        ret_at = _INFINITE if op.return_ns is None else (0, op.return_ns)
        keyed.append((ret_at, 1, i, True))
    keyed.sort()
    return [(i, is_ret) for _, _, i, is_ret in keyed]


class _Search:
    """One key's search. Nodes 1..n of the linked list are the entries; 0 is the head."""

    def __init__(self, model: Model[Any], ops: Sequence[Op], budget: int) -> None:
        self.model = model
        self.ops = ops
        self.budget = budget
        self.states = 0
        entries = _entries(ops)
        self.op_of = [-1] + [i for i, _ in entries]
        self.is_return = [False] + [r for _, r in entries]
        n = len(entries)
        self.nxt: list[int] = [*range(1, n + 1), -1]
        self.prv: list[int] = [-1, *range(0, n)]
        self.return_node = [0] * (n + 1)
        call_node = {i: node for node, (i, r) in enumerate(entries, start=1) if not r}
        for node, (i, r) in enumerate(entries, start=1):
            if r:
                self.return_node[call_node[i]] = node
        self.state: Any = model.init()
        self.done = 0  # bitset of the linearized ops' indices
        self.seen: set[tuple[int, Any]] = {(0, self.state)}
        self.stack: list[tuple[int, Any, bool]] = []  # (call node, state before, forced)
        self.best_prefix: tuple[Op, ...] = ()
        self.best_state: Any = self.state
        self.best_stuck: Op | None = None

    def _unlink(self, node: int) -> None:
        nxt, prv = self.nxt, self.prv
        nxt[prv[node]] = nxt[node]
        if nxt[node] != -1:
            prv[nxt[node]] = prv[node]

    def _relink(self, node: int) -> None:
        nxt, prv = self.nxt, self.prv
        nxt[prv[node]] = node
        if nxt[node] != -1:
            prv[nxt[node]] = node

    def _lift(self, call: int) -> None:
        self._unlink(call)
        self._unlink(self.return_node[call])

    def _unlift(self, call: int) -> None:
        self._relink(self.return_node[call])
        self._relink(call)

    def run(self) -> Verdict:
        """Walk the list; see the module docstring. Returns the verdict for this key."""
        node = self._from_front()
        while node >= 0:
            i = self.op_of[node]
            if not self.is_return[node]:
                node = self._try_call(node, i)
            elif self.ops[i].pending:
                return "linearizable"  # only pending ops are left
            else:
                node = self._backtrack(i)
        return _VERDICT_OF[node]

    def _from_front(self) -> int:
        """Linearize every read-only op the model accepts now; the node to walk from.

        Such an op is never worse placed now than later (see :meth:`_backtrack`),
        so taking them first keeps the search from branching on their order. If
        the state after one was already explored, this state is a dead end too.
        """
        node = self.nxt[0]
        while node >= 0 and not self.is_return[node]:
            op = self.ops[self.op_of[node]]
            if self.model.read_only(op):
                ok, new_state = self.model.step(self.state, op)
                if ok:
                    status = self._linearize(node, new_state, forced=True)
                    if status == _ALREADY_SEEN:
                        return self._backtrack(None)
                    if status == _OUT_OF_BUDGET:
                        return status
                    node = self.nxt[0]
                    continue
            node = self.nxt[node]
        return self.nxt[0]

    def _try_call(self, node: int, i: int) -> int:
        """Linearize op ``i`` next if the model allows it and it is new; the next node."""
        ok, new_state = self.model.step(self.state, self.ops[i])
        if not ok:
            return self.nxt[node]
        status = self._linearize(node, new_state, forced=self.model.read_only(self.ops[i]))
        if status == _ALREADY_SEEN:
            return self.nxt[node]
        if status == _OUT_OF_BUDGET:
            return status
        return self._from_front()

    def _linearize(self, node: int, new_state: Any, *, forced: bool) -> int:
        """Push op ``node`` with ``new_state``, unless seen or over budget (then say so)."""
        done = self.done | (1 << self.op_of[node])
        if (done, new_state) in self.seen:
            return _ALREADY_SEEN
        if self.states >= self.budget:
            return _OUT_OF_BUDGET
        self.states += 1
        self.seen.add((done, new_state))
        self.stack.append((node, self.state, forced))
        self.state, self.done = new_state, done
        self._lift(node)
        return 0

    def _backtrack(self, stuck: int | None) -> int:
        """Undo choices up to the last one with alternatives; the node to try after it.

        A read-only choice (a read, a failed cas) has no alternatives worth
        trying: it was valid here, so it leaves the state as it is, and placing it
        as early as possible only loosens the real-time order of the rest; if the
        search fails after it, it fails before it too.
        """
        if stuck is not None:
            self._note_dead_end(stuck)
        while self.stack:
            node, self.state, forced = self.stack.pop()
            self.done &= ~(1 << self.op_of[node])
            self._unlift(node)
            if not forced:
                return self.nxt[node]
        return _EXHAUSTED

    def _note_dead_end(self, stuck: int) -> None:
        if self.best_stuck is not None and len(self.stack) <= len(self.best_prefix):
            return
        self.best_prefix = tuple(self.ops[self.op_of[node]] for node, _, _ in self.stack)
        self.best_state = self.state
        self.best_stuck = self.ops[stuck]

    def violation(self, key: Hashable, checked: int, explored: int) -> LinearizabilityResult:
        return LinearizabilityResult(
            verdict="not_linearizable",
            ops_checked=checked,
            states_explored=explored,
            key=key,
            prefix=self.best_prefix,
            prefix_state=self.best_state,
            stuck_op=self.best_stuck,
        )
