"""The etcd 3.4 reference: install, run a 3-member cluster on loopback, talk to it.

``EtcdCluster`` is a context manager: entering it starts three members in a
fresh temporary directory on free loopback ports and waits until the cluster
commits a write; leaving it (normally, on an exception or on Ctrl-C) stops the
members (SIGTERM, then SIGKILL after a grace period) and removes the directory.

Three ways for the load generator to talk to etcd, one connection per client,
clients spread round-robin over the members (a follower forwards proposals to
the leader):

- ``grpc`` (default): etcd's native protocol, ``etcdserverpb.KV/Put`` through
  grpcio with a hand-encoded request. The Python etcd client package (``etcd3``)
  does not import with current protobuf, so it is not used.
- ``h11``: the v3 HTTP/JSON gateway (``POST /v3/kv/put``, base64 key and value)
  with h11, the HTTP/1.1 engine under httpx, driven directly.
- ``httpx``: the same gateway through httpx.

The gateway costs etcd itself CPU for the JSON-to-gRPC translation (about 2.5x
the server CPU per put measured here), so the gRPC figures are the fair
reference; the benchmark reports client and server CPU per put for each.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import h11
import httpx
import trio

ETCD_PACKAGES = ("etcd-server", "etcd-client")
MEMBERS = 3
START_TIMEOUT_S = 30.0
STOP_GRACE_S = 5.0


class EtcdUnavailable(RuntimeError):
    """etcd is not installed and could not be installed here."""


def ensure_installed() -> str:
    """Path of the etcd binary, installing Debian's etcd-server/etcd-client if missing."""
    found = shutil.which("etcd")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise EtcdUnavailable("etcd is missing and apt-get as root is not available")
    print("etcd not found: apt-get update && apt-get install -y " + " ".join(ETCD_PACKAGES))
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *ETCD_PACKAGES], check=True, env=env)
    found = shutil.which("etcd")
    if not found:
        raise EtcdUnavailable("apt-get install finished but etcd is still not on PATH")
    return found


def etcd_version(binary: str) -> str:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0] if out.stdout else "unknown"


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports the kernel says are free on 127.0.0.1 right now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class EtcdCluster:
    """Three etcd members on loopback in a temporary directory (see the module docstring)."""

    name = "etcd"

    def __init__(self, binary: str, client: str = "grpc") -> None:
        self.binary = binary
        self.client = client
        self.tmp: Path | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.client_urls: list[str] = []
        self.first = 0  # client i talks to member (first + i) mod 3 (place_from_leader)

    def __enter__(self) -> EtcdCluster:
        try:
            self._start()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _member_args(self, i: int, peers: list[str], cluster: str) -> list[str]:
        assert self.tmp is not None
        args = [
            self.binary,
            f"--name=m{i}",
            f"--data-dir={self.tmp / f'm{i}'}",
            f"--listen-client-urls={self.client_urls[i]}",
            f"--advertise-client-urls={self.client_urls[i]}",
            f"--listen-peer-urls={peers[i]}",
            f"--initial-advertise-peer-urls={peers[i]}",
            f"--initial-cluster={cluster}",
            "--initial-cluster-state=new",
            "--initial-cluster-token=meshfaas-bench",
            "--logger=zap",
            "--log-level=warn",
        ]
        return args

    def _start(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="meshfaas-etcd-"))
        ports = _free_ports(2 * MEMBERS)
        self.client_urls = [f"http://127.0.0.1:{p}" for p in ports[:MEMBERS]]
        peers = [f"http://127.0.0.1:{p}" for p in ports[MEMBERS:]]
        cluster = ",".join(f"m{i}={url}" for i, url in enumerate(peers))
        for i in range(MEMBERS):
            log = open(self.tmp / f"m{i}.log", "wb")  # noqa: SIM115 -- closed by the child's exit
            self.procs.append(
                subprocess.Popen(
                    self._member_args(i, peers, cluster),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches us; we stop the members
                )
            )
            log.close()

    def _wait_ready(self) -> None:
        """Wait (with a deadline) until every member is up and a put commits."""
        deadline = time.monotonic() + START_TIMEOUT_S
        last = ""
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    for url in self.client_urls:
                        r = client.post(url + "/v3/kv/put", content=_put_body(b"ready", b"1"))
                        r.raise_for_status()
                    return
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}: {exc}"
                time.sleep(0.2)  # polling a starting process; the deadline bounds it
        raise EtcdUnavailable(f"etcd cluster not ready after {START_TIMEOUT_S}s ({last})")

    def _check_alive(self) -> None:
        for i, proc in enumerate(self.procs):
            if proc.poll() is not None:
                assert self.tmp is not None
                tail = (self.tmp / f"m{i}.log").read_text(errors="replace")[-2000:]
                raise EtcdUnavailable(f"etcd member m{i} exited ({proc.returncode}):\n{tail}")

    def stop(self) -> None:
        """Stop every member and remove the temporary directory. Idempotent."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs = []
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def server_pids(self) -> Sequence[int]:
        return [p.pid for p in self.procs]

    def place_from_leader(self) -> None:
        """Client i talks to the member i places after the Raft leader (client 0 to
        the leader itself), not after m0 (see bench/_meshfaas.py)."""
        with httpx.Client(timeout=2.0) as client:
            for i, url in enumerate(self.client_urls):
                status = client.post(url + "/v3/maintenance/status", content=b"{}").json()
                if status.get("leader") and status.get("header", {}).get("member_id") == status["leader"]:
                    self.first = i
                    return

    async def connect(self, client_index: int) -> EtcdConnection | H11Connection | GrpcConnection:
        url = self.client_urls[(self.first + client_index) % len(self.client_urls)]
        kinds = {"grpc": GrpcConnection, "h11": H11Connection, "httpx": EtcdConnection}
        return kinds[self.client](url)


def _put_body(key: bytes, value: bytes) -> bytes:
    return json.dumps(
        {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode()}
    ).encode()


class EtcdConnection:
    """One client: httpx, one keep-alive HTTP/1.1 connection to one member's JSON gateway."""

    def __init__(self, base_url: str) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            timeout=httpx.Timeout(10.0),
            headers={"content-type": "application/json"},
        )

    async def put(self, key: bytes, value: bytes) -> None:
        r = await self._client.post("/v3/kv/put", content=_put_body(key, value))
        if r.status_code != 200:
            raise RuntimeError(f"etcd put: HTTP {r.status_code} {r.text[:200]}")

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self._client.aclose()


class H11Connection:
    """One client: one keep-alive HTTP/1.1 connection, h11 over a trio TCP stream.

    h11 is the HTTP/1.1 protocol engine httpx itself runs on; driving it
    directly skips httpx's request/response object layers, which cost about
    1 ms of client CPU per put here (see docs/benchmarks.md).
    """

    def __init__(self, base_url: str) -> None:
        host_port = base_url.removeprefix("http://")
        self._host, port = host_port.rsplit(":", 1)
        self._port = int(port)
        self._headers = [("Host", host_port), ("Content-Type", "application/json")]
        self._stream: trio.SocketStream | None = None
        self._conn = h11.Connection(h11.CLIENT)

    async def put(self, key: bytes, value: bytes) -> None:
        if self._stream is None:
            self._stream = await trio.open_tcp_stream(self._host, self._port)
        body = _put_body(key, value)
        headers = [*self._headers, ("Content-Length", str(len(body)))]
        conn = self._conn
        out = conn.send(h11.Request(method="POST", target="/v3/kv/put", headers=headers))
        out += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
        await self._stream.send_all(out)
        status = await self._read_response()
        conn.start_next_cycle()
        if status != 200:
            raise RuntimeError(f"etcd put: HTTP {status}")

    async def _read_response(self) -> int:
        assert self._stream is not None
        status = 0
        while True:
            event = self._conn.next_event()
            if event is h11.NEED_DATA:
                self._conn.receive_data(await self._stream.receive_some(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.EndOfMessage):
                return status
            elif isinstance(event, h11.ConnectionClosed):
                raise RuntimeError("etcd closed the connection")

    async def aclose(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                await self._stream.aclose()
            self._stream = None


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def put_request_pb(key: bytes, value: bytes) -> bytes:
    """etcdserverpb.PutRequest{key: 1, value: 2} in protobuf wire format (two bytes fields)."""
    return b"\x0a" + _varint(len(key)) + key + b"\x12" + _varint(len(value)) + value


class GrpcConnection:
    """One client: its own gRPC channel (HTTP/2 connection) to one member, KV.Put.

    Uses grpcio's generic unary call with the request encoded by hand (a
    PutRequest has two bytes fields), so no generated stubs or protobuf
    runtime are needed. grpcio completes calls on its own thread; the callback
    hands the completion to the trio loop through the trio token.
    """

    def __init__(self, base_url: str) -> None:
        import grpc

        self._grpc = grpc
        self._channel = grpc.insecure_channel(
            base_url.removeprefix("http://"), options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self._put = self._channel.unary_unary("/etcdserverpb.KV/Put")

    async def put(self, key: bytes, value: bytes) -> None:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()

        def wake(_future: object) -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(done.set)

        future = self._put.future(put_request_pb(key, value), timeout=10.0)
        future.add_done_callback(wake)
        try:
            await done.wait()
        except trio.Cancelled:
            future.cancel()
            raise
        future.result()  # raises grpc.RpcError on failure

    async def aclose(self) -> None:
        self._channel.close()


def check_perf(binary_dir: str, endpoints: Sequence[str], load: str = "l") -> str:
    """Run ``etcdctl check perf`` (etcd's own Go gRPC client) and return its report."""
    etcdctl = shutil.which("etcdctl") or os.path.join(binary_dir, "etcdctl")
    out = subprocess.run(
        [etcdctl, f"--endpoints={','.join(endpoints)}", "check", "perf", f"--load={load}"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return (out.stdout + out.stderr).strip()
