"""The cluster's CURVE keys and our own ZAP handler.

Theory of operation
-------------------
A cluster has one CURVE keypair and a cluster id, created by the first node of a
new cluster in its data directory (``DATA/keys/cluster.json``, mode 0600). Every
other node is given the same file (copied, or a path to it). A node

* serves every listening socket (peer ROUTER, client ROUTER, event PUB) as a
  CURVE server with the cluster's secret key, and
* connects every outgoing socket (the per-peer DEALERs) as a CURVE client that
  expects the cluster's public key and presents the cluster keypair itself.

A process without the file cannot complete a handshake with any of them, so it
can neither send frames that reach the application nor read anything.

Which client keys a server admits is decided by :class:`ZapHandler`, a trio task
bound on ``inproc://zeromq.zap.01`` in the node's zmq context (libzmq asks it
about every CURVE handshake; we do not use pyzmq's thread authenticator). Each
server socket names its ZAP domain (``peer``, ``client``, ``events``). The
handler admits the cluster's public key and client keys registered with
:meth:`ZapHandler.allow`, and denies everything else, counting each answer. A
domain opened with :meth:`ZapHandler.open_domain` (the node opens ``client`` and
``events``) admits any CURVE client: such a client still needs the cluster's
*public* key to complete the handshake, the traffic is encrypted, and each
request is authorized by its API key. The ``peer`` domain is never opened. Sockets set ``ZAP_ENFORCE_DOMAIN``
so that if the handler is missing, handshakes fail rather than pass.

An insecure mode (no CURVE, no ZAP) exists only through :meth:`Security.insecure`
and warns when used.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import warnings
from pathlib import Path
from typing import Any

import attrs
import trio
import zmq
from zmq.utils import z85

from meshfaas.runtime.zsock import Counters, Parts, ZSock

KEYS_DIR = "keys"
CLUSTER_FILE = "cluster.json"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
PEER_DOMAIN = b"peer"  # ZAP domains: which socket a handshake is for
CLIENT_DOMAIN = b"client"
EVENTS_DOMAIN = b"events"
CLUSTER_KEY_LABEL = "cluster"


class KeyFileError(Exception):
    """The cluster key file is missing, malformed or readable by others."""


class InsecureModeWarning(UserWarning):
    """Sockets run without CURVE: anyone who can reach them can join and read."""


@attrs.frozen(kw_only=True, repr=False)
class ClusterKeys:
    """The cluster's id and CURVE keypair (z85-encoded, 40 bytes each)."""

    cluster_id: str
    public_key: bytes
    secret_key: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"ClusterKeys(cluster_id={self.cluster_id!r}, public_key={self.public_key!r})"

    @classmethod
    def generate(cls, cluster_id: str | None = None) -> ClusterKeys:
        public, secret = zmq.curve_keypair()
        return cls(cluster_id=cluster_id or f"c-{secrets.token_hex(8)}",
                   public_key=public, secret_key=secret)

    def to_json(self) -> str:
        return json.dumps({"cluster_id": self.cluster_id,
                           "public_key": self.public_key.decode(),
                           "secret_key": self.secret_key.decode()}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClusterKeys:
        try:
            raw = json.loads(text)
            keys = cls(cluster_id=str(raw["cluster_id"]),
                       public_key=raw["public_key"].encode(),
                       secret_key=raw["secret_key"].encode())
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise KeyFileError(f"malformed cluster key file: {exc}") from None
        if zmq.curve_public(keys.secret_key) != keys.public_key:
            raise KeyFileError("cluster key file: public key does not match the secret key")
        return keys


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def cluster_key_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / KEYS_DIR / CLUSTER_FILE


def write_keys(path: Path, keys: ClusterKeys) -> None:
    """Write ``keys`` to ``path`` with mode 0600 (created exclusively, fsynced)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, keys.to_json().encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_keys(path: Path | str) -> ClusterKeys:
    """Read a key file; refuse one that group or others may read."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_text()
    except OSError as exc:
        raise KeyFileError(f"cannot read cluster keys at {path}: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{path} is accessible by group or others (mode {oct(mode & 0o777)}); "
                           "chmod 600 it")
    return ClusterKeys.from_json(text)


def ensure_cluster_keys(
    data_dir: Path | str, *, given: Path | str | None = None, create: bool = True
) -> ClusterKeys:
    """The keys this node uses, in order: its data directory, ``given`` (copied in),
    or, when ``create`` (the first node of a new cluster), freshly generated."""
    own = cluster_key_path(data_dir)
    if own.exists():
        keys = read_keys(own)
        if given is not None and read_keys(given) != keys:
            raise KeyFileError(f"{given} belongs to another cluster than {own}")
        return keys
    if given is not None:
        keys = read_keys(given)
    elif create:
        keys = ClusterKeys.generate()
    else:
        raise KeyFileError(f"no cluster keys in {own.parent} and none given: "
                           "copy the cluster's keys/cluster.json from an existing node")
    write_keys(own, keys)
    return keys


# ---------------------------------------------------------------------------
# Socket security
# ---------------------------------------------------------------------------


class Security:
    """How this node's sockets authenticate: CURVE with the cluster keys, or insecure."""

    def __init__(self, keys: ClusterKeys | None, *, client_keypair: tuple[bytes, bytes] | None = None):
        self.keys = keys
        self._client_keypair = client_keypair

    @classmethod
    def curve(cls, keys: ClusterKeys) -> Security:
        return cls(keys)

    @classmethod
    def insecure(cls) -> Security:
        warnings.warn("meshfaas sockets run WITHOUT CURVE: any process that reaches them can "
                      "join the cluster and read its traffic", InsecureModeWarning, stacklevel=2)
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.keys is not None

    def server(self, sock: zmq.Socket[Any], domain: bytes = PEER_DOMAIN) -> None:
        """Make ``sock`` (ROUTER, PUB) a CURVE server checked by the ZAP handler
        under ``domain``."""
        if self.keys is None:
            return
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)
        sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)
        sock.curve_secretkey = self.keys.secret_key
        sock.curve_publickey = self.keys.public_key
        sock.curve_server = True

    def client(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` (DEALER, SUB) a CURVE client of a cluster server."""
        if self.keys is None:
            return
        public, secret = self._client_keypair or (self.keys.public_key, self.keys.secret_key)
        sock.curve_serverkey = self.keys.public_key
        sock.curve_publickey = public
        sock.curve_secretkey = secret


# ---------------------------------------------------------------------------
# The ZAP handler
# ---------------------------------------------------------------------------


class ZapHandler:
    """Answers libzmq's ZAP requests (RFC 27) from a trio task.

    Bind it (the constructor does) before any CURVE server socket of the same
    context accepts a connection, and run :meth:`run` in the node's nursery.
    """

    def __init__(self, ctx: zmq.Context[Any], keys: ClusterKeys, counters: Counters | None = None):
        self.counters = counters if counters is not None else Counters()
        self._allowed: dict[bytes, str] = {}
        self._open_domains: set[bytes] = set()
        self.allow(keys.public_key, CLUSTER_KEY_LABEL)
        sock = ctx.socket(zmq.ROUTER)
        sock.bind(ZAP_ENDPOINT)
        self._zsock = ZSock(sock, name="zap", on_recv=self._handle_request, counters=self.counters)

    def allow(self, public_key_z85: bytes, label: str) -> None:
        """Admit clients presenting this public key; ``label`` becomes their user id."""
        self._allowed[z85.decode(public_key_z85)] = label

    def revoke(self, public_key_z85: bytes) -> None:
        self._allowed.pop(z85.decode(public_key_z85), None)

    def open_domain(self, domain: bytes) -> None:
        """Admit any CURVE client on sockets of ``domain`` (never the peer domain)."""
        if domain == PEER_DOMAIN:
            raise ValueError("the peer domain admits only the cluster's key")
        self._open_domains.add(domain)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        await self._zsock.run(task_status=task_status)

    def _label(self, domain: bytes, public_key: bytes) -> str | None:
        label = self._allowed.get(public_key)
        if label is None and domain in self._open_domains and len(public_key) == 32:
            label = "client:" + z85.encode(public_key).decode()
        return label

    def _handle_request(self, parts: Parts) -> None:
        # [routing id, b"", version, request id, domain, address, identity, mechanism, creds...]
        if len(parts) < 8 or parts[1] != b"" or parts[2] != b"1.0":
            self.counters.inc("zap.malformed")
            return
        routing_id, request_id, domain, mechanism = parts[0], parts[3], parts[4], parts[7]
        label = self._label(domain, parts[8]) if mechanism == b"CURVE" and len(parts) > 8 else None
        if label is None:
            self.counters.inc("zap.denied")
            reply = [b"400", b"key not allowed", b""]
        else:
            self.counters.inc("zap.allowed")
            reply = [b"200", b"OK", label.encode()]
        self._zsock.send_nowait([routing_id, b"", b"1.0", request_id, *reply, b""])
