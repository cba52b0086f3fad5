"""meshfaas sandboxes: nsjail jails running AWS-Lambda-compatible Python handlers.

The public API (see docs/sandbox.md)::

    from sandbox import Executor, ExecutorConfig, FunctionSpec

    async with Executor(ExecutorConfig(data_dir=...)) as executor:
        result = await executor.invoke(function, "1", b'{"x": 1}', request_id)
"""

from sandbox.executor import Executor, ExecutorConfig, FunctionSpec, InvocationResult
from sandbox.layers import LayerError
from sandbox.process import SandboxStartError
from sandbox.runtimes import Runtime, RuntimeMissing
from sandbox.spec import CgroupPlan, SandboxSpec, render_nsjail_argv

__all__ = [
    "CgroupPlan",
    "Executor",
    "ExecutorConfig",
    "FunctionSpec",
    "InvocationResult",
    "LayerError",
    "Runtime",
    "RuntimeMissing",
    "SandboxSpec",
    "SandboxStartError",
    "render_nsjail_argv",
]
