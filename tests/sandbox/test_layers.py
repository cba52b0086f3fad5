"""Dependency layers: content addresses, a real (tiny) install, and pip's failure."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from sandbox.executor import Executor, FunctionSpec
from sandbox.layers import (
    LayerError,
    LayerStore,
    check_requirement,
    layer_id,
    normalize_requirements,
)
from sandbox.runtimes import Runtime


def test_normalization_and_content_address() -> None:
    messy = "  six==1.17.0  # pinned\n\nattrs\nsix==1.17.0\n"
    assert normalize_requirements(messy) == ["attrs", "six==1.17.0"]
    assert layer_id(messy, "python3.11") == layer_id(["attrs", "six==1.17.0"], "python3.11")
    assert layer_id(messy, "python3.11") != layer_id(messy, "python3.12")
    assert layer_id(messy, "python3.11") != layer_id("attrs", "python3.11")
    assert len(layer_id("", "python3.11")) == 64


@pytest.mark.slow
async def test_failed_install_carries_pips_message(tmp_path: Path, runtimes: dict[str, Runtime]) -> None:
    store = LayerStore(tmp_path / "layers")
    with pytest.raises(LayerError) as info:
        await store.ensure("meshfaas-no-such-package-zz9==1.0", runtimes["python3.11"])
    message = str(info.value)
    assert "pip install failed" in message
    assert "meshfaas-no-such-package-zz9" in message
    assert "No matching distribution" in message or "Could not find" in message
    assert not list((tmp_path / "layers").glob("*.staging"))


@pytest.mark.slow
async def test_layer_installs_once_is_shared_and_mounted_read_only(
        executor: Executor, make_fn: Callable[..., FunctionSpec], tmp_path: Path) -> None:
    results = []

    async def deploy() -> None:
        results.append(await executor.ensure_layer("six\n", "python3.11"))

    async with trio.open_nursery() as nursery:  # two deploys racing for the same layer
        nursery.start_soon(deploy)
        nursery.start_soon(deploy)
    assert results[0] == results[1] == layer_id(["six"], "python3.11")
    assert await executor.ensure_layer(["six"], "python3.11") == results[0]
    layer_dir = Path(executor.config.data_dir) / "layers" / results[0]
    assert list(layer_dir.glob("__pycache__/six.cpython-311*.pyc"))  # compiled once, outside
    fn = make_fn("app.uses_layer", layer=results[0], runtime="python3.11")
    res = await executor.invoke(fn, "1", b"{}", "r")
    assert res.status == "ok", res.error
    assert json.loads(res.result or b"null") == "/opt/layer/six.py"
    other = make_fn("app.uses_layer", runtime="python3.11", name="no-layer")
    res = await executor.invoke(other, "1", b"{}", "r")
    assert res.error is not None and res.error["errorType"] == "ModuleNotFoundError"


async def test_unknown_layer_is_a_clear_error(executor: Executor,
                                              make_fn: Callable[..., FunctionSpec]) -> None:
    res = await executor.invoke(make_fn("app.handler", layer="0" * 64), "1", b"{}", "r")
    assert res.status == "unavailable"
    assert res.error is not None and "not installed on this node" in res.error["errorMessage"]


@pytest.mark.parametrize("line", ["six", "six==1.17.0", "requests[socks] >=2.31, <3",
                                  "attrs~=23.2", 'tomli; python_version < "3.11"', "zope.interface"])
def test_plain_requirements_are_allowed(line: str) -> None:
    check_requirement(line)


@pytest.mark.parametrize("line", ["-r /etc/shadow", "--index-url http://127.0.0.1/simple six",
                                  "-e git+https://example.invalid/x.git", "/root/secret-wheel.whl",
                                  "./local/pkg", "six @ file:///etc/passwd",
                                  "https://example.invalid/six.whl", "six==1.0 /etc/x",
                                  'six; python_version > "3" --index-url http://127.0.0.1/'])
async def test_options_paths_and_urls_are_refused_before_pip_runs(
        line: str, tmp_path: Path, runtimes: dict[str, Runtime]) -> None:
    store = LayerStore(tmp_path / "layers")
    with pytest.raises(LayerError, match="is not allowed"):
        await store.ensure(["six", line], runtimes["python3.11"])
    assert not (tmp_path / "layers").exists()  # pip never ran
