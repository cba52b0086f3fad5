"""Hypothesis strategies for fault plans, so that a failing schedule shrinks.

Only tests (and people exploring) import this module; it needs Hypothesis.
Shrinking works on the plan's structure: fewer faults, earlier times, smaller
amounts, lower node indices; every plan is valid for every run (see
:mod:`simulator.faults`).
"""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from simulator.faults import ALL_KINDS, Fault, FaultKind, FaultPlan


def faults(duration_ms: int, n_nodes: int,
           kinds: Sequence[FaultKind] = ALL_KINDS) -> st.SearchStrategy[Fault]:
    return st.builds(
        Fault,
        at_ms=st.integers(0, max(0, duration_ms - 1)),
        kind=st.sampled_from(list(kinds)),
        nodes=st.tuples(st.integers(0, n_nodes - 1), st.integers(0, n_nodes - 1)),
        amount=st.integers(0, 2_000),
    )


def fault_plans(duration_ms: int, n_nodes: int, *, kinds: Sequence[FaultKind] = ALL_KINDS,
                max_faults: int = 30) -> st.SearchStrategy[FaultPlan]:
    """Plans of up to ``max_faults`` faults within the first ``duration_ms``."""
    return st.lists(faults(duration_ms, n_nodes, kinds), max_size=max_faults).map(
        lambda fs: FaultPlan(tuple(sorted(fs, key=lambda f: f.at_ms)))
    )
