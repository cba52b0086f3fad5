"""meshfaas: Lambda-compatible Python functions on a peer-to-peer mesh.

The client SDK (``meshfaas.Client``, ``meshfaas.AsyncClient``) is imported
lazily so that the pure cores can use ``meshfaas.core`` without pulling in
zmq or trio.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Client": "meshfaas.client",
    "AsyncClient": "meshfaas.client",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'meshfaas' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
