"""``meshfaas sim``: run the deterministic simulator from the command line."""

from __future__ import annotations

import json
import sys
import time

import click

from simulator.faults import FaultPlan
from simulator.scenario import get_scenario, run_scenario, scenarios


def _parse_params(pairs: tuple[str, ...]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="-p")
        params[key] = value
    return params


def _list() -> None:
    for name, cls in scenarios().items():
        params = ", ".join(f"{k}={v}" for k, v in cls.params.items()) or "-"
        click.echo(f"{name:<20} {cls.description}")
        click.echo(f"{'':<20} nodes={cls.default_nodes} duration={cls.default_duration_s:g}s params: {params}")


@click.command()
@click.option("--scenario", "name", help="Scenario to run (see --list).")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed: the run is a function of it.")
@click.option("--nodes", type=click.IntRange(1, 100_000), default=None, help="Number of nodes.")
@click.option("--duration", type=click.FloatRange(0.0, 1e7), default=None,
              help="Virtual seconds of the safety phase.")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="A scenario parameter; repeatable.")
@click.option("--plan", "plan_json", default=None, help="A fault plan as JSON (from a replay command).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@click.option("--list", "list_only", is_flag=True, help="List the scenarios and exit.")
def sim(name: str | None, seed: int, nodes: int | None, duration: float | None,
        params: tuple[str, ...], plan_json: str | None, as_json: bool, list_only: bool) -> None:
    """Run a scenario of the deterministic simulator; exit 0 exactly when no property failed."""
    if list_only:
        _list()
        return
    if not name:
        raise click.UsageError("--scenario is required (or --list)")
    try:
        get_scenario(name)
        plan = FaultPlan.from_json(plan_json) if plan_json else None
        started = time.perf_counter()
        result = run_scenario(name, seed=seed, nodes=nodes, duration_s=duration,
                              params=_parse_params(params), plan=plan)
        wall = time.perf_counter() - started
    except (KeyError, ValueError) as exc:
        raise click.UsageError(str(exc.args[0] if exc.args else exc)) from None
    out = result.to_json_dict()
    out["wall_seconds"] = round(wall, 3)
    if as_json:
        click.echo(json.dumps(out, sort_keys=False))
    else:
        _print_human(out)
    if result.violations:
        click.echo(f"FAILED: {len(result.violations)} violation(s). Replay with:\n  {result.replay}",
                   err=True)
        sys.exit(1)


def _print_human(out: dict[str, object]) -> None:
    for key, value in out.items():
        if key == "violations":
            click.echo(f"{key:>18}: {len(value) if isinstance(value, list) else value}")
            for v in value if isinstance(value, list) else []:
                click.echo(f"{'':>18}  - {v}")
        else:
            click.echo(f"{key:>18}: {value}")
