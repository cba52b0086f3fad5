"""The deterministic simulator: the same protocol cores, a virtual world, every fault.

Public API:

- :class:`World`, :class:`NodeBoot`, :class:`NetworkConfig` (``simulator.world``)
- :class:`Scenario`, :class:`Checker`, :class:`Run`, :func:`register_scenario`,
  :func:`run_scenario`, :func:`scenarios`, :class:`RunResult` (``simulator.scenario``)
- :class:`FaultPlan`, :class:`Fault`, :func:`random_plan` (``simulator.faults``)
- Hypothesis strategies in ``simulator.strategies`` (needs Hypothesis).
"""

from simulator.faults import ALL_KINDS, NETWORK_KINDS, Fault, FaultPlan, random_plan
from simulator.scenario import (
    Checker,
    Run,
    RunResult,
    Scenario,
    get_scenario,
    register_scenario,
    run_scenario,
    scenarios,
)
from simulator.world import NetworkConfig, NodeBoot, World, derive_rng

__all__ = [
    "ALL_KINDS", "NETWORK_KINDS", "Checker", "Fault", "FaultPlan", "NetworkConfig", "NodeBoot",
    "Run", "RunResult", "Scenario", "World", "derive_rng", "get_scenario", "random_plan",
    "register_scenario", "run_scenario", "scenarios",
]
