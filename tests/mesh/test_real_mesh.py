"""Real node processes on loopback: a mesh deploys and invokes, survives kill -9 of its
leader without losing an acknowledged deploy, and fails or retries invocations whose
node dies, explicitly.

Every wait is on a condition with a deadline; every process started here is stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from meshfaas.cli_up import Mesh, _ensure_admin_key
from meshfaas.client import Client, MeshfaasError, Timeout, Unavailable

if __package__ is None or not __package__.startswith("tests"):  # imported by bench/ scripts
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.ports import port_range

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello"
SLEEPY = Path(__file__).resolve().parent / "handlers" / "sleepy"


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except MeshfaasError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last error: {last})")


class LocalMesh:
    def __init__(self, root: Path, nodes: int, extra_args: tuple[str, ...] = ()) -> None:
        self.root = root
        self.api_key = _ensure_admin_key(root)
        self.mesh = Mesh(root, nodes, port_range(3 * nodes), "nsjail", capacity=4,
                         extra_args=("--async-retry-delay", "1", *extra_args))

    def start(self) -> None:
        self.mesh.start()
        for node in self.mesh.ids:
            with self.client(node) as client:
                wait_for(lambda c=client: c.list_functions() is not None, 60,
                         f"{node} to accept the admin key")

    def client(self, node: str | None = None, **kwargs: Any) -> Client:
        endpoints = ([self.mesh.info[node]["client"]] if node else self.mesh.endpoints())
        key = self.mesh.info[self.mesh.ids[0]]["public_key"]
        return Client(endpoints, self.api_key, server_public_key=key, **kwargs)

    def leader(self) -> str:
        return wait_for(lambda: self.client().status().leader, 30, "a leader")

    def stop(self) -> None:
        self.mesh.stop()


@pytest.fixture
def mesh3(tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(tmp_path, 3)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.stop()


def test_deploy_then_invoke_through_every_node_and_resume(tmp_path: Path) -> None:
    mesh = LocalMesh(tmp_path, 3)
    try:
        mesh.start()
        mesh.client().deploy("hello", str(EXAMPLE), handler="app.handler")
        for node in mesh.mesh.ids:
            with mesh.client(node) as client:
                out = client.invoke("hello", {"name": node})
                assert out["greeting"] == f"Hello, {node}!"
    finally:
        mesh.stop()
    again = LocalMesh(tmp_path, 3)  # the same data directory: the same mesh
    again.mesh.base_port = mesh.mesh.base_port
    try:
        again.start()
        with again.client() as client:
            assert [f.name for f in client.list_functions()] == ["hello"]
            assert client.invoke("hello", {"name": "again"})["greeting"] == "Hello, again!"
    finally:
        again.stop()


def test_meshfaas_up_starts_a_mesh_deploys_the_example_and_stops(tmp_path: Path) -> None:
    """`meshfaas up` (what `make up` runs), with the result-store options passed to
    its nodes: it writes credentials.json, deploys and invokes the example, and
    with --exit-after-ready stops every node it started."""
    import json
    import subprocess

    data = tmp_path / "mesh"
    done = subprocess.run(
        [sys.executable, "-m", "meshfaas", "up", "--nodes", "1", "--data-dir", str(data),
         "--base-port", str(port_range(3)), "--example", str(EXAMPLE),
         "--result-retention", "120", "--result-max-mb", "64", "--exit-after-ready"],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Hello, meshfaas!" in done.stdout + done.stderr
    creds = json.loads((data / "credentials.json").read_text())
    assert creds["endpoints"] and creds["api_key"].startswith("mf_")
    assert (data / "n1" / "results.db").exists()  # the node ran with its result store


@pytest.fixture(params=[3, 5], ids=["3-nodes", "5-nodes"])
def mesh_n(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalMesh]:
    mesh = LocalMesh(tmp_path, request.param)
    try:
        mesh.start()
        yield mesh
    finally:
        mesh.stop()


def test_kill_9_the_leader_while_deploys_and_invocations_stream(mesh_n: LocalMesh) -> None:
    mesh3 = mesh_n
    with mesh3.client() as client:
        client.deploy("hello", str(EXAMPLE), handler="app.handler")
    acked: list[str] = []
    invoke_ok: list[float] = []
    stop = threading.Event()

    def deployer() -> None:
        with mesh3.client(timeout_s=10) as client:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    client.deploy(f"f{i}", str(EXAMPLE), handler="app.handler")
                    acked.append(f"f{i}")
                except MeshfaasError:
                    pass

    def invoker() -> None:
        with mesh3.client(timeout_s=10) as client:
            while not stop.is_set():
                try:
                    client.invoke("hello", {"name": "x"}, timeout_s=10)
                    invoke_ok.append(time.monotonic())
                except MeshfaasError:
                    time.sleep(0.05)

    threads = [threading.Thread(target=deployer, daemon=True),
               threading.Thread(target=invoker, daemon=True)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(acked) >= 3 and invoke_ok, 60, "deploys and invocations flowing")
        leader = mesh3.leader()
        mesh3.mesh.kill(leader)
        killed_at = time.monotonic()
        wait_for(lambda: any(t > killed_at for t in invoke_ok), 30, "an invocation after the kill")
        recovered_s = min(t for t in invoke_ok if t > killed_at) - killed_at
        print(f"first invocation {recovered_s:.2f} s after kill -9 of the leader {leader}")
        n_acked = len(acked)
        wait_for(lambda: len(acked) > n_acked, 30, "a deploy acknowledged after the kill")
        mesh3.mesh.start_node(mesh3.mesh.ids.index(leader))
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    expected = {"hello", *acked}
    for node in mesh3.mesh.ids:  # every node, the restarted one too, has every acked deploy
        with mesh3.client(node) as client:
            wait_for(lambda c=client: expected <= {f.name for f in c.list_functions()}, 60,
                     f"{node} to hold every acknowledged deploy")


def _in_flight(client: Client) -> int:
    """Invocations in flight as the client's node sees them: its own running
    count, every peer's gossiped load and what it sent a peer lately."""
    return sum(client.status().load.values())


def _wait_until_nothing_in_flight(client: Client) -> None:
    """Before starting the invocation a test then looks for: a figure left by an
    earlier one (a peer's gossiped load lags it) must not be taken for it."""
    wait_for(lambda: _in_flight(client) == 0, 60, "no invocation in flight")


def _running_on(mesh: LocalMesh, client: Client) -> str:
    def busy() -> str | None:
        loads = client.status().load
        return next((n for n, load in sorted(loads.items()) if load > 0), None)

    return wait_for(busy, 20, "the invocation to start somewhere")


def _seen_by(mesh: LocalMesh, node: str, state: str) -> set[str]:
    """The members ``node`` holds in ``state``."""
    with mesh.client(node, timeout_s=5) as client:
        return {m.node for m in client.members() if m.state == state}


def test_a_restarted_first_node_rejoins_through_the_peers_it_knew(tmp_path: Path) -> None:
    """n1 is started without --join (the others join it). Killed, declared dead and
    restarted, it must find the mesh again itself: its peers reach out to a dead
    member only every fourth push-pull round (minutes apart once the mesh has
    settled; here the first such round after the start-up ramp is ~30 s after the
    join), and until then it could neither hear nor answer anyone (a two-node
    Paxos majority that needs it stalls: seen as a 2-minute election storm)."""
    mesh = LocalMesh(tmp_path, 3, extra_args=("--push-pull-interval-ms", "120000"))
    try:
        mesh.start()
        mesh.mesh.kill("n1")
        wait_for(lambda: "n1" in _seen_by(mesh, "n2", "dead") & _seen_by(mesh, "n3", "dead"),
                 60, "n2 and n3 to declare n1 dead")
        mesh.mesh.start_node(0)
        everyone = set(mesh.mesh.ids)
        wait_for(lambda: _seen_by(mesh, "n1", "alive") == everyone
                 and _seen_by(mesh, "n2", "alive") == everyone, 12, "n1 to rejoin n2 and n3")
        with mesh.client("n1") as client:  # and Paxos works through it again
            client.deploy("hello", str(EXAMPLE), handler="app.handler")
            assert client.invoke("hello", {"name": "again"})["greeting"] == "Hello, again!"
            client.deploy("sleepy", str(SLEEPY), handler="app.handler")
        # A caller waiting for a run longer than its silence limit pings its node
        # every 0.2 s, naming its request; the node answers that it has it in
        # hand, so the call is waited for (unanswered pings would fail it after
        # 0.8 s, an answer "not in hand" at once).
        with mesh.client("n1", liveness_interval_s=0.2, liveness_timeout_s=0.8) as client:
            assert client.invoke("sleepy", {"seconds": 2})["slept"] == 2
    finally:
        mesh.stop()


def test_a_node_killed_mid_invocation(mesh3: LocalMesh) -> None:
    with mesh3.client() as client:
        client.deploy("sleepy", str(SLEEPY), handler="app.handler", timeout_s=20)
        client.invoke("sleepy", {"seconds": 0})  # warm the path
    errors: list[Exception] = []

    def caller() -> None:
        with mesh3.client("n1", timeout_s=60) as client:
            try:
                client.invoke("sleepy", {"seconds": 15})
            except MeshfaasError as exc:
                errors.append(exc)

    thread = threading.Thread(target=caller, daemon=True)
    with mesh3.client("n1") as observer:
        _wait_until_nothing_in_flight(observer)  # the warm-up's load may still be gossiped
        thread.start()
        victim = _running_on(mesh3, observer)
    if victim == "n1":  # the entry node ran it: killing it cuts the caller off too
        mesh3.mesh.kill("n1")
    else:
        mesh3.mesh.kill(victim)
    thread.join(90)
    assert not thread.is_alive()
    assert errors and isinstance(errors[0], (Unavailable, Timeout)), errors
    mesh3.mesh.start_node(mesh3.mesh.ids.index(victim))

    # Asynchronous: the attempt on a dead node is retried elsewhere and succeeds.
    with mesh3.client() as client:
        _wait_until_nothing_in_flight(client)
        invocation = client.invoke_async("sleepy", {"seconds": 2})
        victim = _running_on(mesh3, client)
        mesh3.mesh.kill(victim)
    survivors = [n for n in mesh3.mesh.ids if n != victim]
    with mesh3.client(survivors[0], timeout_s=10) as client:
        record = wait_for(lambda: (r := client.result(invocation)).status == "succeeded" and r,
                          120, "the async invocation to be retried and succeed")
        assert record.attempts >= 2


def _async_invoke(mesh: LocalMesh, node: str, payload: Any, out: dict[str, Any]) -> None:
    """Run one AsyncClient.invoke under trio (in a helper thread); record how it ended."""
    import trio

    from meshfaas.client import AsyncClient

    async def call() -> None:
        key = mesh.mesh.info[mesh.mesh.ids[0]]["public_key"]
        async with AsyncClient([mesh.mesh.info[node]["client"]], mesh.api_key,
                               server_public_key=key) as client:
            try:
                out["value"] = await client.invoke("sleepy", payload, timeout_s=120)
            except MeshfaasError as exc:
                out["error"] = exc
        out["at"] = time.monotonic()

    trio.run(call)


def _start_callers_and_wait_until_routed(mesh: LocalMesh, entry: str,
                                         callers: list[threading.Thread]) -> None:
    """Start the callers (one invocation each, through ``entry``) and return once
    ``entry`` has taken every one in and routed it.

    ``entry``'s ``status().load`` is its own running count plus every peer's
    gossiped load plus what it sent a peer lately, so the sum rises by one per
    invocation it routes (to itself or to a warmer peer: its own figure alone
    may not move). The sum counts any invocation anywhere, though -- one left
    running on a survivor by an earlier step of the test, or a peer's stale
    gossiped load -- so the callers start only once ``entry`` sees nothing in
    flight anywhere; the rise is then theirs. (A stop that lands before a caller
    has even connected makes it fail over as "down", not by the silence under test.)
    """
    with mesh.client(entry) as observer:
        _wait_until_nothing_in_flight(observer)
        for caller in callers:
            caller.start()
        wait_for(lambda: _in_flight(observer) >= len(callers), 30,
                 f"{entry} to route the {len(callers)} invocation(s)")


def test_callers_of_a_node_killed_mid_invocation_fail_fast(mesh3: LocalMesh) -> None:
    """Sync and trio callers get Unavailable within seconds of kill -9 (or SIGSTOP) of the
    node they are connected to, not at their 120 s timeout."""
    with mesh3.client() as client:
        client.deploy("sleepy", str(SLEEPY), handler="app.handler", timeout_s=60)
        entry = client.invoke_detailed("sleepy", {"seconds": 0}).node  # warm there: runs there
    sync_out: dict[str, Any] = {}

    def sync_caller() -> None:
        with mesh3.client(entry) as caller:
            try:
                sync_out["value"] = caller.invoke("sleepy", {"seconds": 6}, timeout_s=120)
            except MeshfaasError as exc:
                sync_out["error"] = exc
        sync_out["at"] = time.monotonic()

    async_out: dict[str, Any] = {}
    threads = [threading.Thread(target=sync_caller, daemon=True),
               threading.Thread(target=_async_invoke, daemon=True,
                                args=(mesh3, entry, {"seconds": 6}, async_out))]
    _start_callers_and_wait_until_routed(mesh3, entry, threads)
    mesh3.mesh.kill(entry)
    killed_at = time.monotonic()
    for t in threads:
        t.join(30)
    for name, out in (("sync", sync_out), ("trio", async_out)):
        assert isinstance(out.get("error"), Unavailable), (name, out)
        assert "may or may not have run" in str(out["error"]), (name, out)
        waited_s = out["at"] - killed_at
        print(f"{name} caller: Unavailable {waited_s:.2f} s after kill -9 of {entry}")
        assert waited_s < 8, (name, waited_s)
    survivors = [mesh3.mesh.info[n]["client"] for n in mesh3.mesh.ids if n != entry]
    key = mesh3.mesh.info[mesh3.mesh.ids[0]]["public_key"]
    with Client([mesh3.mesh.info[entry]["client"], *survivors], mesh3.api_key,
                server_public_key=key) as client:  # the default connect timeout: a survivor's
        # CURVE handshake waits for its ZAP answer, from a node that may be slow to schedule
        assert "sleepy" in {f.name for f in client.list_functions()}  # a read fails over
    mesh3.mesh.start_node(mesh3.mesh.ids.index(entry))  # (a mesh stops faster whole)
    _caller_of_a_hung_node_fails_fast(mesh3, next(n for n in mesh3.mesh.ids if n != entry))


def _caller_of_a_hung_node_fails_fast(mesh: LocalMesh, entry: str) -> None:
    """SIGSTOP, not kill: the connection stays open and only the silence tells."""
    out: dict[str, Any] = {}
    thread = threading.Thread(target=_async_invoke, daemon=True,
                              args=(mesh, entry, {"seconds": 6}, out))
    _start_callers_and_wait_until_routed(mesh, entry, [thread])
    proc = mesh.mesh.procs[entry]
    proc.send_signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        thread.join(30)
    finally:
        proc.send_signal(signal.SIGCONT)
    assert isinstance(out.get("error"), Unavailable) and "no answer" in str(out["error"]), out
    waited_s = out["at"] - stopped_at
    print(f"trio caller: Unavailable {waited_s:.2f} s after SIGSTOP of {entry}")
    assert waited_s < 8, waited_s
