"""The ``paxos`` scenario: hundreds of seeds with zero violations, and proof that the
checkers bite (each broken variant is found within a bounded number of seeds; a
Hypothesis fault plan that breaks one is found and shrunk)."""

from __future__ import annotations

import datetime
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis import strategies as st

from simulator import run_scenario
from simulator.faults import Fault, FaultPlan
from simulator.strategies import fault_plans

CHUNK = 50
FIXED_SEEDS = 400  # seeds 1..400 every run
VARYING_SEEDS = 100  # plus 100 seeds that change every day (printed on failure)
# Settings that hunt consensus bugs: a crash or a loss burst every ~60 ms, 20 ms fsyncs,
# 12 clients, 60 ms election timeouts, restarts within 10 ms.
HUNT = {"fault_kinds": "crash,loss", "fault_gap_ms": 60, "fsync_max_us": 20_000,
        "clients": 12, "election_ms": 60, "restart_max_ms": 10}


def _varying_base() -> int:
    today = datetime.datetime.now(datetime.UTC).date()
    return int(os.environ.get("PAXOS_SEED_BASE", today.strftime("%Y%m%d"))) * 1_000


def _sweep(seeds: range, **kwargs: Any) -> list[str]:
    failures = []
    for seed in seeds:
        result = run_scenario("paxos", seed=seed, **kwargs)
        if result.violations:
            failures.append(f"seed {seed}: {result.violations[:3]}\n  replay: {result.replay}")
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("start", range(1, FIXED_SEEDS + 1, CHUNK))
def test_fixed_seeds_have_no_violation(start: int) -> None:
    failures = _sweep(range(start, start + CHUNK))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("offset", range(0, VARYING_SEEDS, CHUNK))
def test_varying_seeds_have_no_violation(offset: int) -> None:
    base = _varying_base() + offset
    failures = _sweep(range(base, base + CHUNK))
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_reconfiguration_under_faults_never_splits_the_slot() -> None:
    """Voters change every 250 ms among random sets of 1-5 of 5 nodes, with every fault:
    no slot ever gets two values (there are never two disjoint majorities)."""
    failures = _sweep(range(1, 31), nodes=5, params={"reconfig": True})
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_hunting_settings_are_safe_for_the_correct_protocol() -> None:
    failures = _sweep(range(1, 21), params=HUNT)
    assert not failures, "\n".join(failures)


THRIFTY = {"accept_to": "quorum"}  # Accept to a majority only: the mesh node's default


@pytest.mark.slow
@pytest.mark.parametrize("start", range(200_001, 200_201, CHUNK))
def test_thrifty_accepts_have_no_violation(start: int) -> None:
    failures = _sweep(range(start, start + CHUNK), params=THRIFTY)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_thrifty_accepts_under_reconfiguration_and_hunting_settings() -> None:
    failures = _sweep(range(1, 21), nodes=5, params={**THRIFTY, "reconfig": True})
    failures += _sweep(range(1, 21), params={**THRIFTY, **HUNT})
    assert not failures, "\n".join(failures)


def test_same_seed_same_trace() -> None:
    first = run_scenario("paxos", seed=7)
    second = run_scenario("paxos", seed=7)
    assert first.trace_hash == second.trace_hash
    assert first.figures == second.figures
    assert first.figures["committed"] > 0


def test_figures_are_reported() -> None:
    result = run_scenario("paxos", seed=3)
    for name in ("committed", "acked_lost", "duplicate_applies", "linearizable",
                 "leader_changes"):
        assert name in result.figures
    assert result.figures["linearizable"] is True
    assert result.figures["acked_lost"] == 0 and result.figures["duplicate_applies"] == 0


# ---------------------------------------------------------------------------
# The checkers bite: broken variants are found
# ---------------------------------------------------------------------------

VARIANTS = {
    # variant: (scenario parameters, seeds within which the simulator must find it)
    "apply_out_of_order": ({}, 20),
    "forget_sessions": ({}, 30),
    "skip_reproposal": (HUNT, 20),
    "reply_before_persist": (HUNT, 20),
    "reuse_ballot_after_restart": (HUNT, 60),
}


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_simulator_finds_each_broken_variant(variant: str) -> None:
    params, bound = VARIANTS[variant]
    for seed in range(1, bound + 1):
        result = run_scenario("paxos", seed=seed, params={**params, "variant": variant})
        if result.violations:
            return
    pytest.fail(f"variant {variant} survived {bound} seeds")


# Coarse fault plans (few distinct times and amounts) keep the shrinking short.
COARSE_PLANS = st.lists(
    st.builds(Fault, at_ms=st.sampled_from(range(0, 600, 50)),
              kind=st.sampled_from(["isolate", "crash"]), nodes=st.tuples(st.integers(0, 2)),
              amount=st.sampled_from([0, 100, 400])),
    max_size=4,
).map(lambda faults: FaultPlan(tuple(sorted(faults, key=lambda f: f.at_ms))))


@pytest.mark.slow
def test_hypothesis_finds_and_shrinks_a_plan_that_breaks_exactly_once() -> None:
    failing: list[FaultPlan] = []

    def breaks(plan: FaultPlan) -> bool:
        result = run_scenario("paxos", seed=1, duration_s=0.6, plan=plan,
                              params={"variant": "forget_sessions", "clients": 1})
        if result.violations:
            failing.append(plan)
        return bool(result.violations)

    plan = find(COARSE_PLANS, breaks,
                settings=settings(max_examples=200, database=None, derandomize=True,
                                  deadline=None, suppress_health_check=list(HealthCheck)))
    assert breaks(plan)  # the shrunk plan replays
    first = failing[0]
    assert len(plan.faults) <= len(first.faults)
    assert sum(f.at_ms for f in plan.faults) <= sum(f.at_ms for f in first.faults)


@settings(max_examples=25, deadline=None)
@given(plan=fault_plans(1_500, 3))
def test_generated_fault_plans_never_break_the_correct_protocol(plan: FaultPlan) -> None:
    result = run_scenario("paxos", seed=11, duration_s=1.5, plan=plan)
    assert not result.violations, f"{result.violations[:3]}\nreplay: {result.replay}"


SOAK_SEEDS = 10_000
SOAK_CHUNK = 250


@pytest.mark.soak
@pytest.mark.timeout(1_800)
@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") != "soak",
                    reason="10,000 seeds: run by `make soak`")
@pytest.mark.parametrize("start", range(100_001, 100_001 + SOAK_SEEDS, SOAK_CHUNK))
def test_soak_seeds(start: int) -> None:
    odd_chunk = (start - 100_001) // SOAK_CHUNK % 2
    failures = _sweep(range(start, start + SOAK_CHUNK), params=THRIFTY if odd_chunk else None)
    assert not failures, "\n".join(failures[:20])
