"""Gossip in the deterministic simulator: scenarios, fault schedules, properties.

Completeness (a crashed node is held dead by every node up all along) and
accuracy (no live node is declared dead at <= 5% loss) are checkers inside the
scenarios (simulator/scenarios/gossip.py); convergence after the faults stop is
the scenarios' liveness condition. Every run here encodes every message through
the codec.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simulator import Fault, FaultPlan, run_scenario
from simulator.scenarios.gossip import percentile

DURATION_MS = 20_000


def test_crash_scenario_detects_every_crash_without_false_deaths() -> None:
    r = run_scenario("gossip-crash", seed=3, nodes=10, duration_s=55)
    assert r.violations == ()
    f = r.figures
    assert f["crashes"] == 3 and f["detections_missed"] == 0
    assert f["false_dead"] == 0
    assert 0.5 < f["detect_first_periods_mean"] < 4
    assert f["detect_all_seconds_max"] < 12


def test_a_run_replays_to_the_same_trace() -> None:
    a = run_scenario("gossip-crash", seed=11, nodes=6, duration_s=25, params={"crashes": 1})
    b = run_scenario("gossip-crash", seed=11, nodes=6, duration_s=25, params={"crashes": 1})
    c = run_scenario("gossip-crash", seed=12, nodes=6, duration_s=25, params={"crashes": 1})
    assert a.trace_hash == b.trace_hash != c.trace_hash
    assert a.figures == b.figures


@pytest.mark.slow
def test_five_percent_loss_gives_no_false_death() -> None:
    r = run_scenario("gossip-loss", seed=5, nodes=12, duration_s=120)
    assert r.violations == ()
    assert r.figures["false_dead"] == 0
    assert 2.0 < r.figures["msgs_per_node_per_period"] < 6


@pytest.mark.slow
def test_lifeguard_spares_a_slow_node_that_plain_swim_kills() -> None:
    on = run_scenario("gossip-slow-node", seed=1, nodes=10, duration_s=150,
                      params={"lifeguard": True})
    off = run_scenario("gossip-slow-node", seed=1, nodes=10, duration_s=150,
                       params={"lifeguard": False})
    assert on.violations == () and off.violations == ()
    assert off.figures["false_dead"] > 0
    assert on.figures["false_dead"] < off.figures["false_dead"]


def test_a_mass_join_reaches_every_pair() -> None:
    r = run_scenario("gossip-join", seed=2, nodes=24, duration_s=40)
    assert r.violations == ()
    assert r.figures["pairs_unknown"] == 0
    assert r.figures["dissemination_rounds_p999"] < 30


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert percentile([5.0], 0.999) == 5.0


# ------------------------------------------------------------ fault schedules


def _quiet_fault() -> st.SearchStrategy[Fault]:
    """Crashes, restarts and at most 5% loss: completeness and accuracy must hold."""
    return st.one_of(
        st.builds(Fault, at_ms=st.integers(0, DURATION_MS - 1),
                  kind=st.sampled_from(["crash", "restart"]),
                  nodes=st.tuples(st.integers(1, 5), st.integers(1, 5))),
        st.builds(Fault, at_ms=st.integers(0, DURATION_MS - 1), kind=st.just("loss"),
                  amount=st.integers(0, 50)),
    )


def _plans(fault: st.SearchStrategy[Fault], max_faults: int) -> st.SearchStrategy[FaultPlan]:
    return st.lists(fault, max_size=max_faults).map(
        lambda fs: FaultPlan(tuple(sorted(fs, key=lambda f: f.at_ms))))


@settings(max_examples=10)
@given(plan=_plans(_quiet_fault(), 8), seed=st.integers(0, 2**16))
def test_crashes_and_light_loss_keep_completeness_and_accuracy(plan: FaultPlan, seed: int) -> None:
    r = run_scenario("gossip-crash", seed=seed, nodes=6, duration_s=DURATION_MS / 1000 + 5,
                     params={"crashes": 0, "warmup_s": 5.0}, plan=plan)
    assert r.violations == (), r.replay


_ANY_NETWORK_FAULT = st.builds(
    Fault, at_ms=st.integers(0, DURATION_MS - 1),
    kind=st.sampled_from(["partition", "isolate", "block", "heal", "clog", "loss", "crash",
                          "restart", "stall", "duplicate", "reorder"]),
    nodes=st.tuples(st.integers(0, 5), st.integers(0, 5)),
    amount=st.integers(0, 2_000),
)


@settings(max_examples=10)
@given(plan=_plans(_ANY_NETWORK_FAULT, 10), seed=st.integers(0, 2**16))
def test_membership_converges_after_any_faults_stop(plan: FaultPlan, seed: int) -> None:
    r = run_scenario("gossip-crash", seed=seed, nodes=6, duration_s=DURATION_MS / 1000 + 5,
                     params={"crashes": 0, "warmup_s": 5.0}, plan=plan)
    assert r.violations == (), r.replay


# ------------------------------------------------------ the checkers can fail


def test_completeness_bites_when_suspicions_never_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    from gossip import core

    monkeypatch.setitem(core._TIMERS, "suspect", lambda self, key, now: None)
    r = run_scenario("gossip-crash", seed=3, nodes=6, duration_s=30, params={"crashes": 1})
    assert any("gossip-completeness" in v for v in r.violations)


def test_accuracy_bites_when_acks_are_ignored_and_nobody_refutes(monkeypatch: pytest.MonkeyPatch) -> None:
    from gossip import core
    from gossip.messages import Ack

    monkeypatch.setitem(core._HANDLERS, Ack, lambda self, src, msg, now: None)
    monkeypatch.setattr(core.Gossip, "_refute", lambda self, their_incarnation: None)
    r = run_scenario("gossip-loss", seed=3, nodes=6, duration_s=30, params={"loss": 0.0})
    assert any("gossip-accuracy" in v for v in r.violations)


def test_convergence_bites_without_reconnection(monkeypatch: pytest.MonkeyPatch) -> None:
    from gossip.core import Gossip

    monkeypatch.setattr(Gossip, "_push_pull_target", lambda self: self._live.choice(self._rng))
    plan = FaultPlan((Fault(at_ms=0, kind="partition", nodes=(0, 1), amount=3),))
    r = run_scenario("gossip-crash", seed=3, nodes=6, duration_s=30,
                     params={"crashes": 0, "warmup_s": 5.0}, plan=plan)
    assert any("liveness" in v for v in r.violations)


def test_the_trace_does_not_depend_on_pythonhashseed() -> None:
    import os
    import subprocess
    import sys

    code = ("from simulator import run_scenario; "
            "print(run_scenario('gossip-crash', seed=4, nodes=6, duration_s=25, "
            "params={'crashes': 1}).trace_hash)")
    hashes = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120, check=True)
        hashes.add(out.stdout.strip())
    assert len(hashes) == 1 and len(next(iter(hashes))) == 64
