"""Real node processes on loopback: gossip over the CURVE transport.

5 nodes; kill -9 one; the other four declare it dead; restart it and it rejoins
alive with a higher incarnation. A node without the cluster's keys never joins.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from meshfaas.core.codec import from_cbor, to_cbor
from meshfaas.runtime.keys import cluster_key_path, read_keys
from meshfaas.runtime.messages import NodeStatus, NodeStatusRequest
from tests.ports import free_port
from tests.runtime.helpers import send_unless_refused

pytestmark = pytest.mark.slow

PROBE_MS = 200
POLL_S = 0.05


class NodeProc:
    """One ``meshfaas node start`` process and a client socket to ask it for status."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.data_dir = root / name
        self.peer = f"tcp://127.0.0.1:{free_port()}"
        self.client = f"tcp://127.0.0.1:{free_port()}"
        self.log_path = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.expect_exit = False
        self.sock: zmq.Socket[Any] | None = None
        self._connect_args: tuple[Path, bool] = (self.data_dir, True)

    def start(self, *extra: str) -> None:
        args = [sys.executable, "-m", "meshfaas.runtime.node", "start", "--id", self.name,
                "--data-dir", str(self.data_dir), "--peer", self.peer, "--client", self.client,
                "--probe-interval-ms", str(PROBE_MS), "--probe-timeout-ms", str(PROBE_MS // 4),
                *extra]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self.expect_exit = False

    def died(self) -> bool:
        """Exited although nobody stopped it."""
        return self.proc is not None and not self.expect_exit and self.proc.poll() is not None

    def connect(self, keys_from: Path, keyed: bool = True) -> None:
        self.close_socket()
        self._connect_args = (keys_from, keyed)
        keys = read_keys(cluster_key_path(keys_from))
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if keyed:
            sock.curve_serverkey = keys.public_key
            sock.curve_publickey, sock.curve_secretkey = keys.public_key, keys.secret_key
        sock.connect(self.client)
        self.sock = sock

    def status(self, timeout_ms: int = 300) -> NodeStatus | None:
        assert self.sock is not None
        sent = send_unless_refused(self.sock, to_cbor(NodeStatusRequest()))
        if not sent or not self.sock.poll(timeout_ms):
            self.connect(*self._connect_args)  # a fresh socket: no stale reply later
            return None
        reply = from_cbor(self.sock.recv())
        return reply if isinstance(reply, NodeStatus) else None

    def view(self) -> dict[str, tuple[str, int]]:
        status = self.status()
        return {} if status is None else {m.node: (m.state, m.incarnation) for m in status.members}

    def counters(self) -> dict[str, int]:
        status = self.status()
        return {} if status is None else dict(status.counters)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.expect_exit = True
        self.proc.send_signal(sig)

    def wait_exit(self, timeout_s: float = 10) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout_s)

    def close_socket(self) -> None:
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def stop(self) -> None:
        self.close_socket()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str,
             nodes: list[NodeProc]) -> None:
    """Poll ``predicate`` until it holds; on timeout, fail with the nodes' logs."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        dead = [n.name for n in nodes if n.died()]
        if dead or time.monotonic() > deadline:
            logs = "\n".join(f"--- {n.name}\n{n.log_path.read_text()[-3000:]}"
                             for n in nodes if n.log_path.exists())
            why = f"{dead} exited" if dead else f"timed out after {timeout_s}s"
            pytest.fail(f"{why} waiting for {what}\n{logs}")
        time.sleep(POLL_S)  # the pace of polling, not a wait for the condition


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[NodeProc]]:
    nodes = [NodeProc(f"n{i}", tmp_path) for i in range(1, 6)]
    try:
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def all_see(observers: list[NodeProc], subject: str, state: str, min_incarnation: int = 0) -> bool:
    for node in observers:
        seen = node.view().get(subject)
        if seen is None or seen[0] != state or seen[1] < min_incarnation:
            return False
    return True


def test_kill_9_is_declared_dead_and_the_restart_rejoins(cluster: list[NodeProc]) -> None:
    first, *others = cluster
    first.start()
    wait_for(lambda: cluster_key_path(first.data_dir).exists(), 10, "n1's keys", cluster)
    first.connect(first.data_dir)
    wait_for(lambda: first.status() is not None, 15, "n1 to answer", cluster)
    keys = str(cluster_key_path(first.data_dir))
    for node in others:
        node.start("--join", f"{first.peer},{others[0].peer}", "--keys", keys)
    for node in others:
        node.connect(first.data_dir)
    names = [n.name for n in cluster]
    wait_for(lambda: all(all_see(cluster, name, "alive") for name in names), 30,
             "every node to see all 5 alive", cluster)

    victim = cluster[2]
    survivors = [n for n in cluster if n is not victim]
    incarnation = first.view()[victim.name][1]
    victim.kill(signal.SIGKILL)
    victim.wait_exit()
    wait_for(lambda: all_see(survivors, victim.name, "dead"), 30,
             "the four survivors to hold n3 dead", cluster)

    victim.start("--join", f"{first.peer},{cluster[1].peer}")
    victim.connect(first.data_dir)
    wait_for(lambda: all_see(survivors, victim.name, "alive", incarnation + 1), 30,
             "the four survivors to hold n3 alive again, at a higher incarnation", cluster)
    wait_for(lambda: all(all_see([victim], name, "alive") for name in names), 30,
             "the restarted n3 to see all 5 alive", cluster)

    for node in cluster:
        node.kill(signal.SIGTERM)
    assert [node.wait_exit() for node in cluster] == [0] * 5


def test_node_without_the_keys_cannot_join(cluster: list[NodeProc], tmp_path: Path) -> None:
    first, intruder = cluster[0], cluster[1]
    first.start()
    wait_for(lambda: cluster_key_path(first.data_dir).exists(), 10, "n1's keys", cluster)
    first.connect(first.data_dir)
    wait_for(lambda: first.status() is not None, 15, "n1 to answer", cluster)
    # Another cluster's keys (its own fresh ones): CURVE handshakes with n1 fail.
    intruder.start("--join", first.peer, "--keys", str(_other_cluster_keys(tmp_path)))
    wait_for(lambda: first.counters().get("handshake_failed_protocol", 0)
             + first.counters().get("handshake_failed_auth", 0)
             + first.counters().get("handshake_failed_no_detail", 0) >= 2, 20,
             "n1 to refuse the intruder's handshakes", cluster)
    wait_for(lambda: b"handshake with" in intruder.log_path.read_bytes(), 20,
             "the intruder to warn about its failed handshakes", cluster)
    view = first.view()
    assert list(view) == ["n1"]
    assert first.counters().get("received", 0) == 0
    # And a client socket without keys gets no answer from n1's client port.
    plain = NodeProc("plain", tmp_path)
    plain.client = first.client
    plain.connect(first.data_dir, keyed=False)
    try:
        assert plain.status(timeout_ms=500) is None
    finally:
        plain.close_socket()


def _other_cluster_keys(tmp_path: Path) -> Path:
    from meshfaas.runtime.keys import ensure_cluster_keys

    ensure_cluster_keys(tmp_path / "elsewhere")
    return cluster_key_path(tmp_path / "elsewhere")


def test_a_joiner_without_keys_is_refused_at_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "meshfaas.runtime.node", "start", "--id", "x",
         "--data-dir", str(tmp_path / "x"), "--join", "tcp://127.0.0.1:1"],
        capture_output=True, timeout=30, env={**os.environ})
    assert result.returncode != 0
    assert b"no cluster keys" in result.stderr
