"""The shipped scenario: it holds on many seeds, its checkers catch broken variants,
failing fault plans shrink, and runs are deterministic across processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given, settings

from simulator import FaultPlan, run_scenario
from simulator.faults import ALL_KINDS
from simulator.strategies import fault_plans

KINDS = [k for k in ALL_KINDS if k != "crash_lose_disk"]


@pytest.mark.parametrize("seed", range(1, 41))
def test_correct_protocol_holds_on_seeds(seed):
    result = run_scenario("broadcast", seed=seed, duration_s=4.0)
    assert result.violations == (), result.replay
    assert result.figures["accepted"] > 0


@pytest.mark.parametrize("variant", ["ack-before-persist", "no-dedupe"])
def test_checkers_find_each_broken_variant_within_30_seeds(variant):
    failing = [
        s
        for s in range(1, 31)
        if run_scenario("broadcast", seed=s, params={"variant": variant}).violations
    ]
    assert failing, f"the simulator never caught {variant}"


@settings(max_examples=40)
@given(fault_plans(4_000, 5, kinds=KINDS))
def test_correct_protocol_holds_under_generated_fault_plans(plan):
    result = run_scenario("broadcast", seed=7, duration_s=4.0, plan=plan)
    assert result.violations == (), result.replay


def test_a_failing_plan_shrinks_and_replays():
    """Hypothesis finds a plan that breaks ack-before-persist and shrinks it."""
    from hypothesis import find

    params = {"variant": "ack-before-persist", "rate": 200.0}

    def run(plan: FaultPlan):
        return run_scenario("broadcast", seed=3, nodes=3, duration_s=0.5, params=params, plan=plan)

    plan = find(
        fault_plans(500, 3, kinds=["crash", "restart"], max_faults=4),
        lambda p: bool(run(p).violations),
        settings=settings(max_examples=300, database=None),
    )
    assert len(plan.faults) <= 3  # shrunk to the essence: a crash (and maybe a restart)
    again = run(plan)
    assert again.violations
    assert "--plan" in again.replay and FaultPlan.from_json(plan.to_json()) == plan


def _cli(*args, hashseed="0"):
    env = {**os.environ, "PYTHONHASHSEED": hashseed}
    return subprocess.run(
        [sys.executable, "-m", "meshfaas", "sim", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_same_seed_same_hash_in_separate_processes_whatever_the_hash_seed():
    runs = [
        _cli("--scenario", "broadcast", "--seed", "1", "--json", hashseed=h) for h in ("0", "4242")
    ]
    outs = [json.loads(r.stdout.strip().splitlines()[-1]) for r in runs]
    assert all(r.returncode == 0 for r in runs)
    assert outs[0]["trace_hash"] == outs[1]["trace_hash"]
    assert outs[0]["violations"] == []
    for key in ("scenario", "seed", "nodes", "virtual_seconds", "events", "wall_seconds"):
        assert key in outs[0]
    other = json.loads(
        _cli("--scenario", "broadcast", "--seed", "2", "--json").stdout.splitlines()[-1]
    )
    assert other["trace_hash"] != outs[0]["trace_hash"]


def test_cli_exits_non_zero_and_prints_the_replay_command_for_a_broken_variant():
    run = _cli("--scenario", "broadcast", "--seed", "1", "-p", "variant=no-dedupe", "--json")
    assert run.returncode == 1
    assert json.loads(run.stdout.splitlines()[-1])["violations"]
    assert "meshfaas sim --scenario broadcast --seed 1" in run.stderr
    assert "variant=no-dedupe" in run.stderr


def test_cli_list_and_bad_input():
    assert "broadcast" in _cli("--list").stdout
    bad = _cli("--scenario", "nope")
    assert bad.returncode == 2 and "unknown scenario" in bad.stderr
    bad_param = _cli("--scenario", "broadcast", "-p", "bogus=1")
    assert bad_param.returncode == 2 and "unknown parameter" in bad_param.stderr
