"""``meshfaas up``: a whole local mesh on one machine, with no other service.

It starts ``--nodes`` node processes (``meshfaas node start``) on loopback,
each with its own data directory under ``--data-dir`` and embedded storage,
waits until the mesh has a Paxos leader and the first admin key is in the
replicated state, prints the endpoints, writes ``DATA_DIR/credentials.json``
and runs until Ctrl-C or SIGTERM, which it passes on to every node. Run again
on the same data directory, it resumes the same mesh: the same cluster keys,
the same admin key, everything deployed before.

Ports: node ``i`` (from 0) binds ``base_port + 3i`` for peers, ``+1`` for
clients and ``+2`` for events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from meshfaas.core import auth

console = Console(stderr=True)
READY_TIMEOUT_S = 60.0


def _ports(base: int, i: int) -> tuple[str, str, str]:
    return (f"tcp://127.0.0.1:{base + 3 * i}", f"tcp://127.0.0.1:{base + 3 * i + 1}",
            f"tcp://127.0.0.1:{base + 3 * i + 2}")


def _ensure_admin_key(data_dir: Path) -> str:
    """The admin key: made once, its public half written for the nodes to bootstrap."""
    creds = data_dir / "credentials.json"
    if creds.exists():
        return str(json.loads(creds.read_text())["api_key"])
    key = auth.make_api_key(os.urandom(auth.random_bytes_needed()))
    public = {"key_id": key.key_id, "name": "admin", "salt": key.salt.hex(),
              "secret_hash": key.secret_hash.hex()}
    path = data_dir / "bootstrap-key.json"
    path.write_text(json.dumps(public, indent=2))
    _write_private(creds, {"endpoints": [], "api_key": key.token})
    return key.token


def _write_private(path: Path, content: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(content, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def _die_with_parent() -> None:
    """In the child: get SIGTERM if ``meshfaas up`` dies, so no node is left behind."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Mesh:
    """The node processes of one local mesh."""

    def __init__(self, data_dir: Path, nodes: int, base_port: int, sandbox: str,
                 capacity: int, extra_args: tuple[str, ...] = (),
                 capacities: tuple[int, ...] = ()) -> None:
        self.data_dir = data_dir
        self.ids = [f"n{i + 1}" for i in range(nodes)]
        self.base_port = base_port
        self.sandbox = sandbox
        self.capacity = capacity
        self.extra_args = extra_args
        self.capacities = capacities  # per node, overriding ``capacity``
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.info: dict[str, dict[str, Any]] = {}

    def _args(self, i: int, node_id: str) -> list[str]:
        peer, client, events = _ports(self.base_port, i)
        args = [sys.executable, "-m", "meshfaas", "node", "start", "--id", node_id,
                "--data-dir", str(self.data_dir / node_id), "--peer", peer, "--client", client,
                "--events", events, "--voters", ",".join(self.ids),
                "--capacity", str(self.capacities[i] if i < len(self.capacities) else self.capacity),
                "--sandbox", self.sandbox, "--uid-base", str(200_000 + 2_000 * i),
                "--bootstrap-key", str(self.data_dir / "bootstrap-key.json"), *self.extra_args]
        if i > 0:
            args += ["--join", _ports(self.base_port, 0)[0],
                     "--keys", str(self.data_dir / self.ids[0] / "keys" / "cluster.json")]
        return args

    def start(self) -> None:
        for i in range(len(self.ids)):
            self.start_node(i)

    def start_node(self, i: int) -> None:
        """Start node ``i`` (again) and read its endpoints line."""
        node_id = self.ids[i]
        log = open(self.data_dir / f"{node_id}.log", "a")  # noqa: SIM115 (kept for the child)
        proc = subprocess.Popen(self._args(i, node_id), stdout=subprocess.PIPE, stderr=log,
                                text=True, start_new_session=True, preexec_fn=_die_with_parent)
        self.procs[node_id] = proc
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            proc.wait()
            raise click.ClickException(
                f"node {node_id} did not start; see {self.data_dir / (node_id + '.log')}")
        self.info[node_id] = json.loads(line)

    def kill(self, node_id: str) -> None:
        """kill -9 one node (for failure tests)."""
        proc = self.procs[node_id]
        proc.kill()
        proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def endpoints(self) -> list[str]:
        return [self.info[n]["client"] for n in self.ids]

    def dead(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is not None]


def _wait_ready(client: Any, deadline: float) -> Any:
    from meshfaas.client import MeshfaasError

    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            status = client.status()
            if status.leader:
                return status
            last = "no Paxos leader yet"
        except MeshfaasError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise click.ClickException(f"the mesh did not become ready in {READY_TIMEOUT_S:.0f}s: {last}")


def _print_endpoints(mesh: Mesh, creds: Path) -> None:
    table = Table(title="meshfaas local mesh", show_lines=False)
    for col in ("node", "client", "events", "peer"):
        table.add_column(col, no_wrap=True)
    for n in mesh.ids:
        info = mesh.info[n]
        table.add_row(n, info["client"], info["events"], info["peer"])
    console.print(table)
    runtimes = sorted({r for n in mesh.ids for r in mesh.info[n].get("runtimes", [])})
    console.print(f"runtimes: {', '.join(runtimes) or 'none found'}")
    console.print(f"credentials: [bold]{creds}[/bold]  (the CLI and "
                  "meshfaas.Client.from_credentials read it)")


def _run_example(client: Any, example: Path) -> None:
    name = example.name
    with console.status(f"deploying {name} from {example}"):
        client.deploy(name, str(example), handler="app.handler", runtime="python3.11",
                      timeout_s=10)
    with console.status(f"invoking {name}"):
        result = client.invoke(name, {"name": "meshfaas"})
    console.print(f"[green]deployed and invoked {name}[/green]: {json.dumps(result)}")


@click.command("up")
@click.option("--nodes", type=click.IntRange(1, 15), default=3, show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path(".meshfaas"), show_default=True)
@click.option("--base-port", type=click.IntRange(1024, 65000), default=7100, show_default=True)
@click.option("--capacity", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="Invocations each node runs at once.")
@click.option("--sandbox", type=click.Choice(["nsjail", "unsafe"]), default="nsjail",
              show_default=True, help="'unsafe' runs user code without isolation.")
@click.option("--example", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="Deploy and invoke this example function once the mesh is up.")
@click.option("--result-retention", "result_retention_s", type=click.FloatRange(1, 30 * 86400),
              default=3600.0, show_default=True,
              help="Seconds an invocation's record and result stay readable by request id.")
@click.option("--result-max-mb", type=click.IntRange(16, 2**22), default=4096, show_default=True,
              help="Bound on each node's result store (past it the oldest records go first).")
@click.option("--exit-after-ready", is_flag=True, help="Stop the mesh once it is up (for checks).")
def up(nodes: int, data_dir: Path, base_port: int, capacity: int, sandbox: str,
       example: Path | None, result_retention_s: float, result_max_mb: int,
       exit_after_ready: bool) -> None:
    """Run a local mesh until Ctrl-C; resumes the same mesh from DATA_DIR."""
    from meshfaas.client import Client

    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    api_key = _ensure_admin_key(data_dir)
    mesh = Mesh(data_dir, nodes, base_port, sandbox, capacity,
                extra_args=("--result-retention", f"{result_retention_s:g}",
                            "--result-max-mb", str(result_max_mb)))
    stop = {"now": False}

    def on_signal(signum: int, _frame: Any) -> None:
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        with console.status(f"starting {nodes} node(s) in {data_dir}"):
            mesh.start()
        server_key = mesh.info[mesh.ids[0]]["public_key"]
        creds = data_dir / "credentials.json"
        _write_private(creds, {"endpoints": mesh.endpoints(), "api_key": api_key,
                               "server_public_key": server_key,
                               "events_endpoints": [mesh.info[n]["events"] for n in mesh.ids]})
        with Client(mesh.endpoints(), api_key, server_public_key=server_key or None) as client:
            with console.status("waiting for a Paxos leader and the admin key"):
                _wait_ready(client, time.monotonic() + READY_TIMEOUT_S)
                _wait_key(client, time.monotonic() + READY_TIMEOUT_S)
            _print_endpoints(mesh, creds)
            if example is not None:
                _run_example(client, example)
        if exit_after_ready:
            return
        console.print("mesh is up; Ctrl-C stops it")
        while not stop["now"]:
            dead = mesh.dead()
            if dead:
                raise click.ClickException(f"node(s) {', '.join(dead)} exited; see their logs "
                                           f"in {data_dir}")
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        with console.status("stopping the mesh"):
            mesh.stop()
        console.print("mesh stopped")


def _wait_key(client: Any, deadline: float) -> None:
    """The admin key is proposed by the first leader; wait until it authenticates."""
    from meshfaas.client import MeshfaasError, Unauthorized

    while time.monotonic() < deadline:
        try:
            client.list_functions()
            return
        except Unauthorized:
            time.sleep(0.2)
        except MeshfaasError:
            time.sleep(0.2)
    raise click.ClickException("the admin key was not accepted in time")
