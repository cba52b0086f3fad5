"""API keys, roles and the permission table.

Theory of operation
-------------------
A client authenticates every request with an API key, a string of the form::

    mf_<key_id>_<secret>

``key_id`` is 16 lowercase hex characters and names the key in the replicated
state; ``secret`` is 43 URL-safe base64 characters (32 random bytes). The
secret is generated at the edge (the node serving ``key create``, or ``meshfaas
up``) from ``os.urandom`` and shown to the person once. The replicated state
(the FaaS state machine, see :mod:`meshfaas.core.faas`) keeps only
``key_id``, the role, a per-key random ``salt`` and
``HMAC-SHA256(salt, secret)``. Because secrets carry 256 bits of entropy a slow
password hash would add nothing; a keyed hash with a per-key salt means two
keys never share a digest and a leaked snapshot reveals no usable key.
Comparison is constant time (:func:`hmac.compare_digest`).

This module is pure: randomness is passed in as bytes (``make_api_key``), so
the proposer draws it and the log carries only the result.

Roles form a ladder of client operations (:data:`PERMISSIONS`):

* ``viewer`` reads: list and get functions, versions, aliases, members,
  status, logs;
* ``invoker`` invokes (sync and async), reads results, members and status;
* ``developer`` does what viewer and invoker do, and deploys, updates,
  deletes, publishes versions and manages aliases;
* ``admin`` does everything, including managing API keys.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from typing import Literal, get_args

import attrs

Role = Literal["admin", "developer", "invoker", "viewer"]
ROLES: tuple[Role, ...] = get_args(Role)

KEY_PREFIX = "mf"
KEY_ID_BYTES = 8
SECRET_BYTES = 32
SALT_BYTES = 16
_KEY_RE = re.compile(r"mf_([0-9a-f]{16})_([A-Za-z0-9_-]{43})")

# ---------------------------------------------------------------------------
# Operations and the permission table
# ---------------------------------------------------------------------------

Operation = Literal[
    "ping",
    "deploy",
    "upload_blob",
    "invoke",
    "invoke_async",
    "result",
    "list_functions",
    "get_function",
    "delete_function",
    "update_config",
    "publish_version",
    "list_versions",
    "create_alias",
    "update_alias",
    "delete_alias",
    "list_aliases",
    "members",
    "status",
    "logs",
    "create_key",
    "list_keys",
    "revoke_key",
]
OPERATIONS: tuple[Operation, ...] = get_args(Operation)

_VIEW: frozenset[Operation] = frozenset(
    {"ping", "list_functions", "get_function", "list_versions", "list_aliases",
     "members", "status", "logs"}
)
_INVOKE: frozenset[Operation] = frozenset(
    {"ping", "invoke", "invoke_async", "result", "members", "status"}
)
_DEVELOP: frozenset[Operation] = _VIEW | _INVOKE | frozenset(
    {"deploy", "upload_blob", "delete_function", "update_config", "publish_version",
     "create_alias", "update_alias", "delete_alias"}
)
_ADMIN: frozenset[Operation] = frozenset(OPERATIONS)

PERMISSIONS: dict[Role, frozenset[Operation]] = {
    "admin": _ADMIN,
    "developer": _DEVELOP,
    "invoker": _INVOKE,
    "viewer": _VIEW,
}


def is_allowed(role: str, operation: str) -> bool:
    """Whether ``role`` may perform client ``operation``. Unknown names: never."""
    allowed = PERMISSIONS.get(role)  # type: ignore[call-overload]
    return allowed is not None and operation in allowed


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


class BadApiKey(ValueError):
    """The string is not shaped like a meshfaas API key."""


@attrs.frozen(kw_only=True)
class NewApiKey:
    """A freshly made key: the string to hand to the person once, and what to store."""

    key_id: str
    secret: str
    salt: bytes
    secret_hash: bytes

    @property
    def token(self) -> str:
        return f"{KEY_PREFIX}_{self.key_id}_{self.secret}"


def make_api_key(random_bytes: bytes) -> NewApiKey:
    """Build a key from ``KEY_ID_BYTES + SECRET_BYTES + SALT_BYTES`` random bytes."""
    need = KEY_ID_BYTES + SECRET_BYTES + SALT_BYTES
    if len(random_bytes) != need:
        raise ValueError(f"make_api_key needs exactly {need} random bytes")
    key_id = random_bytes[:KEY_ID_BYTES].hex()
    raw_secret = random_bytes[KEY_ID_BYTES : KEY_ID_BYTES + SECRET_BYTES]
    salt = random_bytes[KEY_ID_BYTES + SECRET_BYTES :]
    secret = base64.urlsafe_b64encode(raw_secret).rstrip(b"=").decode("ascii")
    return NewApiKey(key_id=key_id, secret=secret, salt=salt, secret_hash=hash_secret(salt, secret))


def random_bytes_needed() -> int:
    """How many bytes of randomness :func:`make_api_key` takes."""
    return KEY_ID_BYTES + SECRET_BYTES + SALT_BYTES


def parse_api_key(token: str) -> tuple[str, str]:
    """Split a key string into ``(key_id, secret)``; raise :class:`BadApiKey`."""
    match = _KEY_RE.fullmatch(token)
    if match is None:
        raise BadApiKey("not a meshfaas API key (expected mf_<16 hex>_<43 chars>)")
    return match.group(1), match.group(2)


def hash_secret(salt: bytes, secret: str) -> bytes:
    """HMAC-SHA256 of the secret keyed by the per-key salt."""
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).digest()


def secret_matches(salt: bytes, secret_hash: bytes, secret: str) -> bool:
    """Constant-time check of ``secret`` against a stored hash."""
    try:
        candidate = hash_secret(salt, secret)
    except (UnicodeEncodeError, binascii.Error):
        return False
    return hmac.compare_digest(candidate, secret_hash)
