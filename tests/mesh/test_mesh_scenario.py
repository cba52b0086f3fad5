"""The ``mesh`` simulator scenario: many seeds, Hypothesis fault plans, checkers that bite."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from simulator import ALL_KINDS, RunResult, run_scenario
from simulator.faults import Fault, FaultPlan
from simulator.strategies import fault_plans

# Async retries back off 60 s then 120 s by default; the sweep shortens the backoff
# to 5 s so that more seeds fit the test budget (a few seeds keep the default).
FAST = {"retry_base_ms": 5_000, "liveness_s": 120.0}
SEEDS_3 = list(range(1, 51))
SEEDS_3_LONG_OUTAGES = list(range(51, 61))  # crashed nodes stay down up to 10 s
SEEDS_3_DEFAULT_BACKOFF = [1, 2, 3]
SEEDS_5 = [1, 2, 3, 4]
PLAN_KINDS = list(ALL_KINDS)  # the scenario keeps one lost disk per run, as Paxos allows
FIGURES = ("deploys_acked", "deploys_lost", "invocations", "async_accepted", "async_succeeded",
           "async_dead_letter", "async_lost", "duplicate_completions", "routed_to_dead",
           "leader_changes")


def assert_clean(result: RunResult) -> None:
    assert result.violations == (), f"replay: {result.replay}\n" + "\n".join(result.violations)
    assert result.figures["deploys_lost"] == 0
    assert result.figures["async_lost"] == 0
    assert result.figures["duplicate_completions"] == 0
    assert result.figures["routed_to_dead"] == 0
    assert result.figures["async_accepted"] == (
        result.figures["async_succeeded"] + result.figures["async_dead_letter"])


@pytest.mark.parametrize("seed", SEEDS_3)
def test_three_nodes_under_random_faults(seed: int) -> None:
    result = run_scenario("mesh", seed=seed, params=FAST)
    assert_clean(result)
    assert set(FIGURES) <= set(result.figures)
    assert result.figures["deploys_acked"] > 0  # the workload ran


@pytest.mark.parametrize("seed", SEEDS_3_LONG_OUTAGES)
def test_three_nodes_with_long_outages(seed: int) -> None:
    assert_clean(run_scenario("mesh", seed=seed, params={**FAST, "restart_max_ms": 10_000}))


@pytest.mark.parametrize("seed", [700, 701, 702, 703, 704])
def test_busy_mesh_on_a_duplicating_reordering_lossy_network(seed: int) -> None:
    params = {**FAST, "rate": 20.0, "fault_kinds": "duplicate,reorder,loss,clog,stall"}
    assert_clean(run_scenario("mesh", seed=seed, params=params))


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS_3_DEFAULT_BACKOFF)
def test_three_nodes_with_lambda_backoff(seed: int) -> None:
    result = run_scenario("mesh", seed=seed)
    assert_clean(result)
    assert result.figures["async_accepted"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS_5)
def test_five_nodes_under_random_faults(seed: int) -> None:
    result = run_scenario("mesh", seed=seed, nodes=5, params=FAST)
    assert_clean(result)
    assert result.nodes == 5 and result.figures["deploys_acked"] > 0


def test_quiet_network_serves_everything() -> None:
    result = run_scenario("mesh", seed=7, duration_s=6, params={"faults": False})
    assert_clean(result)
    figures = result.figures
    assert figures["deploys_acked"] > 0 and figures["async_accepted"] > 0
    assert figures["invocations"]["sync_ok"] > 0
    assert figures["requests_failed"] == 0
    assert figures["leader_changes"] == 1


def test_same_seed_same_trace() -> None:
    first = run_scenario("mesh", seed=11, duration_s=4, params={"liveness_s": 30.0})
    second = run_scenario("mesh", seed=11, duration_s=4, params={"liveness_s": 30.0})
    assert first.trace_hash == second.trace_hash
    assert first.figures == second.figures


@pytest.mark.slow
@settings(max_examples=8)
@given(plan=fault_plans(5_000, 3, kinds=PLAN_KINDS, max_faults=15))
def test_hypothesis_fault_plans(plan: object) -> None:
    result = run_scenario("mesh", seed=3, duration_s=5, plan=plan,  # type: ignore[arg-type]
                          params=FAST)
    assert_clean(result)


# ---------------------------------------------------------------------------
# Deliberately broken nodes: each checker must catch its bug
# ---------------------------------------------------------------------------


def broken(variant: str, seed: int, **params: object) -> RunResult:
    return run_scenario("mesh", seed=seed, params={**FAST, "variant": variant,
                                                   "liveness_s": 30.0, **params})


def test_acking_async_before_it_is_chosen_is_caught() -> None:
    result = broken("ack-async-early", 3)
    assert any(v.startswith("no-acked-async-lost") and "has no record of accepted async" in v
               for v in result.violations), result.violations


# One node down for 8 s while calls flow (the crash's amount 2,000 is the longest
# restart delay): long enough for gossip to declare it dead and for calls to
# reach the router after DEAD_ROUTE_BOUND_NS.
LONG_OUTAGE = FaultPlan((Fault(at_ms=1_000, kind="crash", nodes=(2,), amount=2_000),))


def test_routing_to_dead_members_is_caught() -> None:
    """Within the first five seeds of a long outage (a bound, not a picked seed: the
    random plans of the seed sweeps route to a dead member too rarely to rely on)."""
    for seed in range(1, 6):
        result = run_scenario("mesh", seed=seed, plan=LONG_OUTAGE, params={
            **FAST, "variant": "route-to-dead", "liveness_s": 30.0, "restart_max_ms": 8_000})
        if result.violations:
            break
    assert any(v.startswith("no-route-to-dead") for v in result.violations), result.violations
    assert result.figures["routed_to_dead"] > 0
    correct = run_scenario("mesh", seed=seed, plan=LONG_OUTAGE, params={
        **FAST, "liveness_s": 30.0, "restart_max_ms": 8_000})
    assert_clean(correct)


def test_hedged_async_attempts_are_caught() -> None:
    result = broken("hedge-async", 1)
    assert any(v.startswith("no-duplicate-completion") for v in result.violations), \
        result.violations
    assert result.figures["duplicate_completions"] > 0


# A busy mesh whose crashed nodes come back within 0.5 s, before gossip declares them
# dead: a node runs an async attempt for the leader, its answer is lost, it crashes and
# restarts unnoticed, and the leader's resend reaches the new life, which must not run
# it again. Which seeds show it moves with every timing change (1001 and 1010 at first,
# then 1036 and 1082, then 1008 and 1010): the test sweeps from 1000 and asks for one
# within FENCE_SEEDS, about 1 in 70 so far.
QUICK_RESTARTS = {"rate": 20.0, "restart_max_ms": 500}
FENCE_SEEDS = 300


@pytest.mark.slow
def test_running_a_resend_addressed_to_an_earlier_life_is_caught() -> None:
    for seed in range(1000, 1000 + FENCE_SEEDS):
        result = broken("no-restart-fence", seed, **QUICK_RESTARTS)
        if any(v.startswith("no-duplicate-completion") for v in result.violations):
            break
    else:
        raise AssertionError(f"no seed of {FENCE_SEEDS} ran a resend twice without the fence")
    assert_clean(run_scenario("mesh", seed=seed, params={**FAST, **QUICK_RESTARTS,
                                                         "liveness_s": 30.0}))


def test_unknown_variant_or_fault_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown variant"):
        run_scenario("mesh", seed=1, params={"variant": "nope"})
    with pytest.raises(ValueError, match="unknown fault kind"):
        run_scenario("mesh", seed=1, params={"fault_kinds": "crash,meteor"})


def test_a_run_with_a_lost_disk_stays_clean() -> None:
    # Seed 3 loses n3's disk at 3.6 s; before lane sessions carried a random
    # incarnation, the restarted node reused its first boot's Paxos sessions and a
    # new deploy was acknowledged with an old deploy's result.
    lost: list[str] = []

    def watch(world: object) -> None:
        crash = world.crash  # type: ignore[attr-defined]

        def crash_and_note(node_id: str, *, lose_disk: bool = False) -> None:
            if lose_disk and world.is_up(node_id):  # type: ignore[attr-defined]
                lost.append(node_id)
            crash(node_id, lose_disk=lose_disk)

        world.crash = crash_and_note  # type: ignore[attr-defined]

    result = run_scenario("mesh", seed=3, params=FAST, on_world=watch)
    assert lost, "the plan lost no disk: this test no longer tests that"
    assert_clean(result)


@pytest.mark.slow
def test_a_long_busy_run_snapshots_and_installs_snapshots(monkeypatch: pytest.MonkeyPatch) -> None:
    from paxos.replica import Replica

    installs: list[int] = []
    install = Replica.install_snapshot

    def counting_install(self: Replica, *args: object) -> None:
        installs.append(1)
        install(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(Replica, "install_snapshot", counting_install)
    # One node down for 20 of the 30 s (a random plan left it to chance: seed 2 had
    # one install, and none after a change of commit-notice timing): it misses far
    # more than snapshot_every + log_keep slots, so it must install a snapshot.
    outage = FaultPlan((Fault(at_ms=2_000, kind="crash", nodes=(2,), amount=20_000),))
    result = run_scenario("mesh", seed=2, duration_s=30, plan=outage,
                          params={**FAST, "rate": 20.0})
    assert installs, "no replica installed a snapshot: this run no longer tests that"
    assert_clean(result)
