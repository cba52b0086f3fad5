"""HOOK: the meshfaas side of bench/paxos_bench.py (not available yet).

To enable it, make :func:`open_mesh` start a 3-node meshfaas mesh on loopback
(fsync on, temporary data directories, stopped and removed on exit like
``bench/_etcd.py``'s ``EtcdCluster``) and return an object with the
``bench._loadgen.KvTarget`` shape:

- ``name = "meshfaas"``;
- ``async connect(i)``: a connection (one ``meshfaas.client.AsyncClient`` per
  benchmark client, clients spread round-robin over the three nodes) whose
  ``async put(key, value)`` returns once the write is chosen by Paxos and
  durable on a majority -- the same "committed" the etcd side measures -- and
  ``aclose()``;
- ``server_pids()``: the three node processes.

Until the node process and a client operation that commits one command exist,
:func:`unavailable_reason` says what is missing and the benchmark prints it
instead of figures. Never report numbers from a stand-in.
"""

from __future__ import annotations

import importlib.util
from typing import Any


def unavailable_reason() -> str | None:
    """Why the meshfaas target cannot run yet, or None when it can."""
    if importlib.util.find_spec("meshfaas.runtime.node") is None:
        return "no meshfaas node process yet (meshfaas.runtime.node)"
    from meshfaas import client

    if not hasattr(client, "AsyncClient"):
        return "meshfaas.client has no AsyncClient yet"
    return "the hook in bench/_meshfaas.py (open_mesh) is not written yet"


def open_mesh() -> Any:
    """HOOK: start a 3-node mesh and return a KvTarget context manager (see the docstring)."""
    raise NotImplementedError(unavailable_reason() or "bench/_meshfaas.py: open_mesh")
