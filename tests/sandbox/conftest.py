"""Fixtures for the sandbox tests: a real nsjail executor over the test handlers.

If nsjail genuinely cannot run on this host, every test that needs it is
skipped with a loud reason (printed to the terminal too); nothing is faked.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from sandbox_testlib import HANDLERS, MAX_SANDBOXES, UID_BASE, require_nsjail

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec
from sandbox.runtimes import Runtime, discover_runtimes


@pytest.fixture(scope="session")
def runtimes() -> dict[str, Runtime]:
    found = discover_runtimes()
    if not found:
        pytest.skip("!!! no Python runtime found for the sandbox tests !!!")
    return found


@pytest.fixture
def default_runtime(runtimes: dict[str, Runtime]) -> str:
    return "python3.11" if "python3.11" in runtimes else sorted(runtimes)[0]


@pytest.fixture
def config(tmp_path: Path) -> ExecutorConfig:
    # MESHFAAS_TEST_CGROUPS=off runs the suite as on a host without delegated cgroups.
    cgroups = "off" if os.environ.get("MESHFAAS_TEST_CGROUPS") == "off" else "auto"
    return ExecutorConfig(data_dir=str(tmp_path / "node-data"), uid_base=UID_BASE,
                          max_sandboxes=MAX_SANDBOXES, max_per_function=4, cgroups=cgroups)


@pytest.fixture
async def executor(config: ExecutorConfig, runtimes: dict[str, Runtime]) -> AsyncIterator[Executor]:
    require_nsjail()
    async with Executor(config, runtimes=runtimes) as ex:
        yield ex


@pytest.fixture
def make_fn(default_runtime: str) -> Callable[..., FunctionSpec]:
    def make(handler: str, folder: str = "basic", **kwargs: Any) -> FunctionSpec:
        kwargs.setdefault("runtime", default_runtime)
        kwargs.setdefault("timeout_ms", 5000)
        name = kwargs.pop("name", handler.replace(".", "-"))
        return FunctionSpec(name=name, handler=handler, code_dir=str(HANDLERS / folder), **kwargs)
    return make
