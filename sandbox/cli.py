"""``meshfaas sandbox``: check this host's sandboxing, run a handler in a jail."""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import click
import trio

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec


@click.group("sandbox")
def sandbox_cli() -> None:
    """Sandboxes: check the host, run a handler locally in a jail."""


async def _check(config: ExecutorConfig) -> dict[str, Any]:
    code = Path(tempfile.mkdtemp(prefix="meshfaas-check-"))
    (code / "check.py").write_text("def handler(event, context):\n    return 'ok'\n")
    code.chmod(0o755)
    report: dict[str, Any] = {}
    async with Executor(config) as ex:
        report.update(backend=ex.backend.kind, nsjail=ex.backend.nsjail_path,
                      cgroups=ex.backend.cgroups.version, cgroup_reason=ex.backend.cgroups.reason,
                      runtimes={n: r.version for n, r in ex.runtime_info().items()})
        for name in ex.runtimes():
            fn = FunctionSpec(name="check", handler="check.handler", code_dir=str(code), runtime=name)
            res = await ex.invoke(fn, "1", b"{}", str(uuid.uuid4()))
            report[f"invoke {name}"] = res.status if res.status == "ok" else res.error
    return report


@sandbox_cli.command("check")
@click.option("--data-dir", default=None, help="Where layers and spare folders go (default: a temp dir).")
@click.option("--unsafe", is_flag=True, help="Check the unsafe backend instead of nsjail.")
def check(data_dir: str | None, unsafe: bool) -> None:
    """Say whether nsjail, cgroups and each runtime work on this host."""
    config = ExecutorConfig(data_dir=data_dir or tempfile.mkdtemp(prefix="meshfaas-data-"),
                            backend="unsafe" if unsafe else "nsjail", spares_per_shape=0)
    report = trio.run(_check, config)
    click.echo(json.dumps(report, indent=2))
    failed = [k for k, v in report.items() if k.startswith("invoke") and v != "ok"]
    sys.exit(1 if failed or not report.get("runtimes") else 0)


@sandbox_cli.command("invoke")
@click.argument("code_dir", type=click.Path(exists=True, file_okay=False))
@click.argument("handler")
@click.option("--event", default="{}", help="The event, as JSON.")
@click.option("--runtime", default="python3.11")
@click.option("--memory-mb", default=128, type=int)
@click.option("--timeout-ms", default=3000, type=int)
@click.option("--requirements", default=None, type=click.Path(exists=True, dir_okay=False),
              help="A requirements.txt to install as the dependency layer.")
@click.option("--data-dir", default=None)
def invoke(code_dir: str, handler: str, event: str, runtime: str, memory_mb: int, timeout_ms: int,
           requirements: str | None, data_dir: str | None) -> None:
    """Run HANDLER ("module.function") from CODE_DIR once in a fresh jail and print the result."""
    config = ExecutorConfig(data_dir=data_dir or tempfile.mkdtemp(prefix="meshfaas-data-"),
                            spares_per_shape=0)

    async def run() -> Any:
        async with Executor(config) as ex:
            layer = None
            if requirements:
                layer = await ex.ensure_layer(Path(requirements).read_text(), runtime)
            fn = FunctionSpec(name=Path(code_dir).resolve().name, handler=handler,
                              code_dir=str(Path(code_dir).resolve()), runtime=runtime,
                              memory_mb=memory_mb, timeout_ms=timeout_ms, layer=layer)
            return await ex.invoke(fn, "$LATEST", event.encode(), str(uuid.uuid4()))

    res = trio.run(run)
    click.echo(res.log_tail, err=True)
    click.echo(res.result.decode() if res.result is not None else json.dumps(res.error, indent=2))
    sys.exit(0 if res.status == "ok" else 1)
