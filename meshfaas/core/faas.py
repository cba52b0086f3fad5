"""The FaaS replicated state machine: functions, versions, aliases, keys, async invocations.

Theory of operation
-------------------
Every node holds one :class:`FaasStateMachine`, and Multi-Paxos feeds every node
the same commands in the same order through ``apply(index, command)``. The
machine is pure and deterministic: it reads no clock and draws no random
number. Anything that needs a time (``wall_ns`` of a change, the next attempt
of an async invocation) or randomness (request ids, key salts) is decided by
the *proposer* and carried inside the command, so every replica computes the
same state.

What goes through the log (and so through this machine):

* functions: create, update code, update configuration, delete, and deploy
  (create or replace code and configuration in one entry, maybe publishing);
* versions: publish (an immutable copy of ``$LATEST``'s config and code);
* aliases: create, update, delete, each pointing at a version and optionally
  routing a share of traffic (in basis points) to a second version;
* API keys: put (hashed secret only, see :mod:`meshfaas.core.auth`), revoke;
* asynchronous invocations: accept (with an idempotency key), start attempt,
  record attempt result, and prune old finished records.

What does *not* go through the log: invocation results and invocation records
(duration, memory, log tail). They are written to a per-node result store by
the node that produced them and fetched by request id (see docs/faas.md).
Putting every result through consensus would cap throughput at the log's
rate for data nobody else needs to agree on.

Bad commands never raise: ``apply`` answers a :class:`FaasError` value (kind
``BadRequest``, ``NotFound``, ``Conflict``, ``LimitExceeded`` or ``Throttled``) and leaves the
state unchanged, so a bad entry in the log cannot stop a replica. Misuse by the
driver (an index lower than the last one applied) raises; several commands may
share one index (a batch chosen in one slot).

``snapshot()`` is canonical CBOR of a :class:`FaasSnapshot` whose collections
are sorted lists, so equal states give equal bytes on every replica whatever
``PYTHONHASHSEED`` is; ``restore(data)`` reverses it.

Async invocation life cycle (``AsyncRecord.status``)::

    accept -> pending --start(attempt n)--> running --ok--> succeeded
                 ^                             |
                 +---- failed, n < 3 ----------+
                                               +--- failed, n == 3 --> dead_letter

An attempt number must be the next one (``start``) or the current one
(``record``); a stale or repeated command answers ``Conflict`` and changes
nothing, so a retried proposal can never complete an invocation twice.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

from meshfaas.core.auth import ROLES, BadApiKey, Role, parse_api_key, secret_matches
from meshfaas.core.codec import DecodeError, from_cbor, message, to_cbor

# ---------------------------------------------------------------------------
# Limits (put a limit on everything)
# ---------------------------------------------------------------------------

MEMORY_MB_MIN = 128
MEMORY_MB_MAX = 10_240
TIMEOUT_S_MIN = 1
TIMEOUT_S_MAX = 900
ENV_MAX_BYTES = 4 * 1024
REQUIREMENTS_MAX = 100
REQUIREMENT_MAX_CHARS = 200
DESCRIPTION_MAX_CHARS = 256
CODE_MAX_BYTES = 50 * 1024 * 1024
RESERVED_CONCURRENCY_MAX = 100_000
MAX_FUNCTIONS = 10_000
MAX_VERSIONS_PER_FUNCTION = 1_000
MAX_ALIASES_PER_FUNCTION = 100
MAX_API_KEYS = 10_000
MAX_PROVEN_TOKENS = 1_024  # authenticate's cache of proven tokens (cleared when full)
MAX_ASYNC_RECORDS = 100_000
ASYNC_PAYLOAD_MAX_BYTES = 256 * 1024
ASYNC_BACKLOG_MAX_BYTES = 256 * 1024 * 1024  # payloads kept in the state, all records
ASYNC_MAX_ATTEMPTS = 3  # the first attempt and 2 retries, as Lambda does
WEIGHT_BP_MAX = 10_000  # basis points: 10_000 = all traffic
LATEST = "$LATEST"

ASYNC_RETRY_DELAYS_NS = (60_000_000_000, 120_000_000_000)
"""Default backoff before retry 1 and retry 2 (Lambda waits 1 then 2 minutes)."""

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ALIAS_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_HANDLER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+$")
_RUNTIME_RE = re.compile(r"^python3\.[0-9]{1,2}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_RESERVED_ENV_PREFIXES = ("AWS_", "LAMBDA_", "MESHFAAS_", "_")
_VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
_KEY_ID_RE = re.compile(r"^[0-9a-f]{16}$")
_ID_RE = re.compile(r"^[A-Za-z0-9._:~-]{1,128}$")

ErrorKind = Literal["BadRequest", "NotFound", "Conflict", "LimitExceeded", "Throttled"]
AsyncStatus = Literal["pending", "running", "succeeded", "dead_letter"]


def async_retry_delay_ns(attempt: int) -> int:
    """Default backoff after failed ``attempt`` (1 or 2) before the next one."""
    if not 1 <= attempt <= len(ASYNC_RETRY_DELAYS_NS):
        raise ValueError(f"no retry follows attempt {attempt}")
    return ASYNC_RETRY_DELAYS_NS[attempt - 1]


# ---------------------------------------------------------------------------
# Records (registered: they are stored in snapshots and returned to clients)
# ---------------------------------------------------------------------------


@message(300)
@attrs.frozen(kw_only=True)
class FunctionConfig:
    """How to run a function. ``reserved_concurrency=None`` means unreserved."""

    handler: str
    runtime: str = "python3.11"
    memory_mb: int = 128
    timeout_s: int = 3
    env: dict[str, str] = attrs.field(factory=dict)
    reserved_concurrency: int | None = None
    requirements: tuple[str, ...] = ()
    description: str = ""


@message(301)
@attrs.frozen(kw_only=True)
class CodeRef:
    """Content address of a function's code zip: lowercase hex SHA-256 and size."""

    sha256: str
    size_bytes: int


@message(302)
@attrs.frozen(kw_only=True)
class FunctionRecord:
    """A function's ``$LATEST``. ``revision`` grows by one on every change."""

    name: str
    config: FunctionConfig
    code: CodeRef
    revision: int
    created_wall_ns: int
    modified_wall_ns: int
    last_version: int  # highest published version number, 0 if none


@message(303)
@attrs.frozen(kw_only=True)
class VersionRecord:
    """An immutable published version."""

    name: str
    version: int
    config: FunctionConfig
    code: CodeRef
    published_wall_ns: int
    description: str = ""


@message(304)
@attrs.frozen(kw_only=True)
class AliasRecord:
    """A named pointer to a version, optionally splitting traffic with a second one.

    ``version`` is a published version number as a string or ``$LATEST``;
    ``extra_version`` (a published version, never ``$LATEST``) receives
    ``extra_weight_bp`` basis points of the traffic, ``version`` the rest.
    """

    name: str
    alias: str
    version: str
    extra_version: str | None = None
    extra_weight_bp: int = 0
    description: str = ""
    modified_wall_ns: int = 0


@message(305)
@attrs.frozen(kw_only=True)
class ApiKeyRecord:
    """An API key as the replicated state keeps it: never the secret itself."""

    key_id: str
    name: str
    role: Role
    salt: bytes
    secret_hash: bytes
    created_wall_ns: int
    revoked_wall_ns: int = 0  # 0 while the key is active

    @property
    def active(self) -> bool:
        return self.revoked_wall_ns == 0


@message(306)
@attrs.frozen(kw_only=True)
class AsyncRecord:
    """One accepted asynchronous invocation and where it stands.

    ``attempts`` counts attempts started. ``node`` ran the latest attempt and
    holds its result in its result store. ``lease_until_wall_ns`` bounds a
    running attempt: past it, the scheduler may record the attempt as failed.
    """

    request_id: str
    idempotency_key: str
    function: str
    qualifier: str
    payload: bytes
    accepted_wall_ns: int
    status: AsyncStatus = "pending"
    attempts: int = 0
    next_attempt_at_wall_ns: int = 0
    node: str = ""
    lease_until_wall_ns: int = 0
    error_type: str = ""
    error_message: str = ""
    finished_wall_ns: int = 0


@message(307)
@attrs.frozen(kw_only=True)
class FaasError:
    """The result of a command that was refused; the state is unchanged."""

    kind: ErrorKind
    message: str


@message(308)
@attrs.frozen(kw_only=True)
class ConfigPatch:
    """Fields to change in a function's configuration; ``None`` keeps the current value."""

    handler: str | None = None
    runtime: str | None = None
    memory_mb: int | None = None
    timeout_s: int | None = None
    env: dict[str, str] | None = None
    reserved_concurrency: int | None = None
    clear_reserved_concurrency: bool = False
    requirements: tuple[str, ...] | None = None
    description: str | None = None


@message(309)
@attrs.frozen(kw_only=True)
class Resolved:
    """What to run for ``name:qualifier``: the executed version, its config and code."""

    name: str
    version: str
    config: FunctionConfig
    code: CodeRef


@message(310)
@attrs.frozen(kw_only=True)
class Deleted:
    """The result of a successful delete or revoke."""

    what: str
    name: str


@message(311)
@attrs.frozen(kw_only=True)
class Deployed:
    """The result of :class:`DeployFunction`: the function, and the version if one was published."""

    function: FunctionRecord
    version: VersionRecord | None = None
    created: bool = False


# ---------------------------------------------------------------------------
# Commands (tags 320-339)
# ---------------------------------------------------------------------------


@message(320)
@attrs.frozen(kw_only=True)
class CreateFunction:
    name: str
    config: FunctionConfig
    code: CodeRef
    wall_ns: int


@message(321)
@attrs.frozen(kw_only=True)
class UpdateFunctionCode:
    name: str
    code: CodeRef
    wall_ns: int
    expected_revision: int | None = None


@message(322)
@attrs.frozen(kw_only=True)
class UpdateFunctionConfig:
    name: str
    patch: ConfigPatch
    wall_ns: int
    expected_revision: int | None = None


@message(323)
@attrs.frozen(kw_only=True)
class DeleteFunction:
    name: str
    wall_ns: int


@message(324)
@attrs.frozen(kw_only=True)
class PublishVersion:
    name: str
    wall_ns: int
    description: str = ""
    expected_revision: int | None = None


@message(325)
@attrs.frozen(kw_only=True)
class CreateAlias:
    name: str
    alias: str
    version: str
    wall_ns: int
    extra_version: str | None = None
    extra_weight_bp: int = 0
    description: str = ""


@message(326)
@attrs.frozen(kw_only=True)
class UpdateAlias:
    name: str
    alias: str
    version: str
    wall_ns: int
    extra_version: str | None = None
    extra_weight_bp: int = 0
    description: str = ""


@message(327)
@attrs.frozen(kw_only=True)
class DeleteAlias:
    name: str
    alias: str
    wall_ns: int


@message(328)
@attrs.frozen(kw_only=True)
class PutApiKey:
    key_id: str
    name: str
    role: str
    salt: bytes
    secret_hash: bytes
    wall_ns: int


@message(329)
@attrs.frozen(kw_only=True)
class RevokeApiKey:
    key_id: str
    wall_ns: int


@message(330)
@attrs.frozen(kw_only=True)
class AcceptAsyncInvocation:
    """Accept an async invocation. ``next_attempt_at_wall_ns`` is normally ``wall_ns``."""

    request_id: str
    idempotency_key: str
    function: str
    qualifier: str
    payload: bytes
    wall_ns: int
    next_attempt_at_wall_ns: int


@message(331)
@attrs.frozen(kw_only=True)
class StartAsyncAttempt:
    request_id: str
    attempt: int
    node: str
    wall_ns: int
    lease_until_wall_ns: int


@message(332)
@attrs.frozen(kw_only=True)
class RecordAsyncAttempt:
    """The outcome of attempt ``attempt``; ``retry_at_wall_ns`` is used if it failed."""

    request_id: str
    attempt: int
    ok: bool
    wall_ns: int
    node: str = ""
    error_type: str = ""
    error_message: str = ""
    retry_at_wall_ns: int = 0


@message(333)
@attrs.frozen(kw_only=True)
class PruneAsyncRecords:
    """Forget succeeded and dead-lettered records finished before ``before_wall_ns``."""

    before_wall_ns: int
    wall_ns: int


@message(334)
@attrs.frozen(kw_only=True)
class Noop:
    """An entry that changes nothing (a new leader's first proposal, tests)."""


# ---------------------------------------------------------------------------
# Snapshot
# ---------------------------------------------------------------------------


@message(335)
@attrs.frozen(kw_only=True)
class DeployFunction:
    """Create ``name``, or replace its code and configuration, in one entry; maybe publish."""

    name: str
    config: FunctionConfig
    code: CodeRef
    wall_ns: int
    publish: bool = False
    description: str = ""


@message(340)
@attrs.frozen(kw_only=True)
class FaasSnapshot:
    """The whole state, every collection a list sorted by its key."""

    last_index: int
    functions: list[FunctionRecord]
    versions: list[VersionRecord]
    aliases: list[AliasRecord]
    keys: list[ApiKeyRecord]
    asyncs: list[AsyncRecord]


# ---------------------------------------------------------------------------
# Validation (pure leaf functions, each answers an error message or None)
# ---------------------------------------------------------------------------


def check_function_name(name: str) -> str | None:
    if not _NAME_RE.fullmatch(name):
        return f"function name {name!r} must be 1-64 letters, digits, '-' or '_'"
    return None


def check_alias_name(alias: str) -> str | None:
    if not _ALIAS_RE.fullmatch(alias) or alias.isdigit() or alias == LATEST:
        return f"alias {alias!r} must be 1-128 letters, digits, '-' or '_', not all digits"
    return None


def check_env(env: dict[str, str]) -> str | None:
    total = 0
    for key in sorted(env):
        if not _ENV_KEY_RE.fullmatch(key):
            return f"environment variable name {key!r} is not valid"
        if key.upper().startswith(_RESERVED_ENV_PREFIXES):
            return f"environment variable name {key!r} is reserved"
        total += len(key.encode()) + len(env[key].encode())
    if total > ENV_MAX_BYTES:
        return f"environment is {total} bytes, over the {ENV_MAX_BYTES}-byte limit"
    return None


def check_requirements(requirements: tuple[str, ...]) -> str | None:
    if len(requirements) > REQUIREMENTS_MAX:
        return f"at most {REQUIREMENTS_MAX} requirements"
    for req in requirements:
        if not req.strip() or len(req) > REQUIREMENT_MAX_CHARS or "\n" in req:
            return f"requirement {req[:40]!r} is empty, too long or spans lines"
    return None


def _check_range(what: str, value: int, low: int, high: int) -> str | None:
    if not low <= value <= high:
        return f"{what} must be between {low} and {high}, got {value}"
    return None


def check_config(config: FunctionConfig) -> str | None:
    """The first thing wrong with ``config``, or None.

    (Every replica runs this on every configuration change it applies: written
    out as one test after another, without a list of closures per call.)"""
    if not _HANDLER_RE.fullmatch(config.handler):
        return f"handler {config.handler!r} must look like module.function"
    if not _RUNTIME_RE.fullmatch(config.runtime):
        return f"runtime {config.runtime!r} must look like python3.11"
    problem = (_check_range("memory_mb", config.memory_mb, MEMORY_MB_MIN, MEMORY_MB_MAX)
               or _check_range("timeout_s", config.timeout_s, TIMEOUT_S_MIN, TIMEOUT_S_MAX))
    if problem is not None:
        return problem
    if config.env:  # (an empty environment has nothing to check)
        problem = check_env(config.env)
        if problem is not None:
            return problem
    if config.reserved_concurrency is not None:
        problem = _check_range("reserved_concurrency", config.reserved_concurrency, 0,
                               RESERVED_CONCURRENCY_MAX)
        if problem is not None:
            return problem
    if config.requirements:
        problem = check_requirements(config.requirements)
        if problem is not None:
            return problem
    if len(config.description) > DESCRIPTION_MAX_CHARS:
        return f"description over {DESCRIPTION_MAX_CHARS} characters"
    return None


def check_code(code: CodeRef) -> str | None:
    if not _SHA256_RE.fullmatch(code.sha256):
        return "code sha256 must be 64 lowercase hex characters"
    return _check_range("code size_bytes", code.size_bytes, 1, CODE_MAX_BYTES)


def apply_patch(config: FunctionConfig, patch: ConfigPatch) -> FunctionConfig:
    """``config`` with the fields ``patch`` sets replaced.

    (Built field by field rather than through ``attrs.evolve``: every replica
    runs this for every configuration change. A test checks it against the
    ``evolve`` form for every field, so a field added to ``FunctionConfig``
    without a line here fails it.)"""
    if patch.clear_reserved_concurrency:
        reserved = None
    elif patch.reserved_concurrency is not None:
        reserved = patch.reserved_concurrency
    else:
        reserved = config.reserved_concurrency
    return FunctionConfig(
        handler=config.handler if patch.handler is None else patch.handler,
        runtime=config.runtime if patch.runtime is None else patch.runtime,
        memory_mb=config.memory_mb if patch.memory_mb is None else patch.memory_mb,
        timeout_s=config.timeout_s if patch.timeout_s is None else patch.timeout_s,
        env=config.env if patch.env is None else patch.env,
        reserved_concurrency=reserved,
        requirements=config.requirements if patch.requirements is None else patch.requirements,
        description=config.description if patch.description is None else patch.description,
    )


def version_number(version: str) -> int | None:
    """The number of a published version string such as ``"3"``, else None."""
    return int(version) if _VERSION_RE.fullmatch(version) else None


def pick_weighted(alias: AliasRecord, draw_bp: int) -> str:
    """The version an invocation through ``alias`` runs, for a draw in [0, 10000)."""
    if alias.extra_version is not None and draw_bp < alias.extra_weight_bp:
        return alias.extra_version
    return alias.version


def _bad(message_text: str) -> FaasError:
    return FaasError(kind="BadRequest", message=message_text)


def _not_found(message_text: str) -> FaasError:
    return FaasError(kind="NotFound", message=message_text)


def _conflict(message_text: str) -> FaasError:
    return FaasError(kind="Conflict", message=message_text)


def _limit(message_text: str) -> FaasError:
    return FaasError(kind="LimitExceeded", message=message_text)


# ---------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------


class FaasStateMachine:
    """The replicated FaaS state. Implements the ``paxos.api.StateMachine`` shape."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.last_index = 0  # the index of the last applied log entry
        self.functions: dict[str, FunctionRecord] = {}
        self.versions: dict[str, dict[int, VersionRecord]] = {}
        self.aliases: dict[str, dict[str, AliasRecord]] = {}
        self.keys: dict[str, ApiKeyRecord] = {}
        self.asyncs: dict[str, AsyncRecord] = {}
        self.idempotency: dict[tuple[str, str], str] = {}  # (function, key) -> request id
        self.async_payload_bytes = 0  # sum of the payloads kept in ``asyncs``
        # Not replicated state: a cache of tokens already proven, token -> the record
        # it proved (valid while that very record object is the key's: a revoke or a
        # restore replaces it). Spares the regex and the HMAC on every request.
        self._proven: dict[str, ApiKeyRecord] = {}

    # -- the StateMachine interface ----------------------------------------

    def apply(self, index: int, command: Any) -> Any:
        """Apply a command of log entry ``index``; answer its result or a :class:`FaasError`.

        Several commands may share an index (a batch chosen in one Paxos slot);
        indices must never go backwards.
        """
        if index < self.last_index:
            raise ValueError(f"entry {index} applied after entry {self.last_index}")
        self.last_index = index
        method = _DISPATCH.get(type(command))
        if method is None:
            return _bad(f"not a FaaS command: {type(command).__qualname__}")
        return getattr(self, method)(command)

    def snapshot(self) -> bytes:
        return to_cbor(self._as_snapshot())

    def restore(self, data: bytes) -> None:
        """Replace the whole state with a snapshot's. Raises DecodeError on bad bytes."""
        snap = from_cbor(data, FaasSnapshot)
        if not isinstance(snap, FaasSnapshot):
            raise DecodeError("not a FaaS snapshot")
        self._reset()
        self.last_index = snap.last_index
        self.functions = {f.name: f for f in snap.functions}
        for v in snap.versions:
            self.versions.setdefault(v.name, {})[v.version] = v
        for a in snap.aliases:
            self.aliases.setdefault(a.name, {})[a.alias] = a
        self.keys = {k.key_id: k for k in snap.keys}
        for record in snap.asyncs:
            self._put_async(record)
        self.idempotency = {(r.function, r.idempotency_key): r.request_id for r in snap.asyncs}

    def _as_snapshot(self) -> FaasSnapshot:
        return FaasSnapshot(
            last_index=self.last_index,
            functions=[self.functions[n] for n in sorted(self.functions)],
            versions=[vs[v] for n in sorted(self.versions) for vs in [self.versions[n]]
                      for v in sorted(vs)],
            aliases=[al[a] for n in sorted(self.aliases) for al in [self.aliases[n]]
                     for a in sorted(al)],
            keys=[self.keys[k] for k in sorted(self.keys)],
            asyncs=[self.asyncs[r] for r in sorted(self.asyncs)],
        )

    # -- functions ---------------------------------------------------------

    def apply_create_function(self, cmd: CreateFunction) -> FunctionRecord | FaasError:
        problem = check_function_name(cmd.name) or check_config(cmd.config) or check_code(cmd.code)
        if problem is not None:
            return _bad(problem)
        if cmd.name in self.functions:
            return _conflict(f"function {cmd.name} already exists")
        if len(self.functions) >= MAX_FUNCTIONS:
            return _limit(f"at most {MAX_FUNCTIONS} functions")
        record = FunctionRecord(
            name=cmd.name, config=cmd.config, code=cmd.code, revision=1,
            created_wall_ns=cmd.wall_ns, modified_wall_ns=cmd.wall_ns, last_version=0,
        )
        self.functions[cmd.name] = record
        return record

    def apply_deploy(self, cmd: DeployFunction) -> Deployed | FaasError:
        problem = check_function_name(cmd.name) or check_config(cmd.config) or check_code(cmd.code)
        if problem is None and len(cmd.description) > DESCRIPTION_MAX_CHARS:
            problem = f"description over {DESCRIPTION_MAX_CHARS} characters"
        if problem is not None:
            return _bad(problem)
        if cmd.publish and len(self.versions.get(cmd.name, {})) >= MAX_VERSIONS_PER_FUNCTION:
            return _limit(f"at most {MAX_VERSIONS_PER_FUNCTION} versions per function")
        record = self.functions.get(cmd.name)
        created = record is None
        if record is None:
            made = self.apply_create_function(CreateFunction(
                name=cmd.name, config=cmd.config, code=cmd.code, wall_ns=cmd.wall_ns))
            if isinstance(made, FaasError):
                return made
            record = made
        elif (record.config, record.code) != (cmd.config, cmd.code):
            record = self._changed(record, cmd.wall_ns, config=cmd.config, code=cmd.code)
        if not cmd.publish:
            return Deployed(function=record, created=created)
        version = self.apply_publish_version(PublishVersion(
            name=cmd.name, wall_ns=cmd.wall_ns, description=cmd.description))
        if isinstance(version, FaasError):  # cannot happen: checked above
            return version
        return Deployed(function=self.functions[cmd.name], version=version, created=created)

    def _existing(self, name: str, expected_revision: int | None) -> FunctionRecord | FaasError:
        record = self.functions.get(name)
        if record is None:
            return _not_found(f"function {name} not found")
        if expected_revision is not None and expected_revision != record.revision:
            return _conflict(
                f"function {name} is at revision {record.revision}, not {expected_revision}")
        return record

    def _changed(self, record: FunctionRecord, wall_ns: int, *, config: FunctionConfig | None = None,
                 code: CodeRef | None = None) -> FunctionRecord:
        """``record``'s next revision, with ``config`` and/or ``code`` replaced, stored.
        (Built directly, not through ``attrs.evolve``: the configuration update of
        every replica runs it; a test compares it with the ``evolve`` form.)"""
        updated = FunctionRecord(
            name=record.name, config=record.config if config is None else config,
            code=record.code if code is None else code, revision=record.revision + 1,
            created_wall_ns=record.created_wall_ns, modified_wall_ns=wall_ns,
            last_version=record.last_version)
        self.functions[record.name] = updated
        return updated

    def apply_update_code(self, cmd: UpdateFunctionCode) -> FunctionRecord | FaasError:
        record = self._existing(cmd.name, cmd.expected_revision)
        if isinstance(record, FaasError):
            return record
        problem = check_code(cmd.code)
        if problem is not None:
            return _bad(problem)
        return self._changed(record, cmd.wall_ns, code=cmd.code)

    def apply_update_config(self, cmd: UpdateFunctionConfig) -> FunctionRecord | FaasError:
        record = self._existing(cmd.name, cmd.expected_revision)
        if isinstance(record, FaasError):
            return record
        config = apply_patch(record.config, cmd.patch)
        problem = check_config(config)
        if problem is not None:
            return _bad(problem)
        return self._changed(record, cmd.wall_ns, config=config)

    def apply_delete_function(self, cmd: DeleteFunction) -> Deleted | FaasError:
        if cmd.name not in self.functions:
            return _not_found(f"function {cmd.name} not found")
        del self.functions[cmd.name]
        self.versions.pop(cmd.name, None)
        self.aliases.pop(cmd.name, None)
        return Deleted(what="function", name=cmd.name)

    # -- versions ----------------------------------------------------------

    def apply_noop(self, cmd: Noop) -> None:
        return None

    def apply_publish_version(self, cmd: PublishVersion) -> VersionRecord | FaasError:
        record = self._existing(cmd.name, cmd.expected_revision)
        if isinstance(record, FaasError):
            return record
        if len(cmd.description) > DESCRIPTION_MAX_CHARS:
            return _bad(f"description over {DESCRIPTION_MAX_CHARS} characters")
        versions = self.versions.setdefault(cmd.name, {})
        latest = versions.get(record.last_version)
        if latest is not None and latest.config == record.config and latest.code == record.code:
            return latest  # nothing changed since: Lambda answers the same version
        if len(versions) >= MAX_VERSIONS_PER_FUNCTION:
            return _limit(f"at most {MAX_VERSIONS_PER_FUNCTION} versions per function")
        number = record.last_version + 1
        version = VersionRecord(
            name=cmd.name, version=number, config=record.config, code=record.code,
            published_wall_ns=cmd.wall_ns, description=cmd.description,
        )
        versions[number] = version
        self.functions[cmd.name] = attrs.evolve(record, last_version=number)
        return version

    def _version_exists(self, name: str, version: str) -> bool:
        if version == LATEST:
            return name in self.functions
        number = version_number(version)
        return number is not None and number in self.versions.get(name, {})

    # -- aliases -----------------------------------------------------------

    def _check_alias(self, cmd: CreateAlias | UpdateAlias) -> FaasError | None:
        if cmd.name not in self.functions:
            return _not_found(f"function {cmd.name} not found")
        problem = check_alias_name(cmd.alias)
        if problem is not None:
            return _bad(problem)
        if not self._version_exists(cmd.name, cmd.version):
            return _not_found(f"version {cmd.version} of {cmd.name} not found")
        if len(cmd.description) > DESCRIPTION_MAX_CHARS:
            return _bad(f"description over {DESCRIPTION_MAX_CHARS} characters")
        return self._check_routing(cmd)

    def _check_routing(self, cmd: CreateAlias | UpdateAlias) -> FaasError | None:
        if cmd.extra_version is None:
            return None if cmd.extra_weight_bp == 0 else _bad("a weight needs a second version")
        if LATEST in (cmd.version, cmd.extra_version):
            return _bad("weighted routing needs two published versions, not $LATEST")
        if cmd.extra_version == cmd.version:
            return _bad("weighted routing needs two different versions")
        if not self._version_exists(cmd.name, cmd.extra_version):
            return _not_found(f"version {cmd.extra_version} of {cmd.name} not found")
        return _check_range_error("extra_weight_bp", cmd.extra_weight_bp, 0, WEIGHT_BP_MAX)

    def _alias_record(self, cmd: CreateAlias | UpdateAlias) -> AliasRecord:
        record = AliasRecord(
            name=cmd.name, alias=cmd.alias, version=cmd.version,
            extra_version=cmd.extra_version, extra_weight_bp=cmd.extra_weight_bp,
            description=cmd.description, modified_wall_ns=cmd.wall_ns,
        )
        self.aliases.setdefault(cmd.name, {})[cmd.alias] = record
        return record

    def apply_create_alias(self, cmd: CreateAlias) -> AliasRecord | FaasError:
        error = self._check_alias(cmd)
        if error is not None:
            return error
        existing = self.aliases.get(cmd.name, {})
        if cmd.alias in existing:
            return _conflict(f"alias {cmd.name}:{cmd.alias} already exists")
        if len(existing) >= MAX_ALIASES_PER_FUNCTION:
            return _limit(f"at most {MAX_ALIASES_PER_FUNCTION} aliases per function")
        return self._alias_record(cmd)

    def apply_update_alias(self, cmd: UpdateAlias) -> AliasRecord | FaasError:
        error = self._check_alias(cmd)
        if error is not None:
            return error
        if cmd.alias not in self.aliases.get(cmd.name, {}):
            return _not_found(f"alias {cmd.name}:{cmd.alias} not found")
        return self._alias_record(cmd)

    def apply_delete_alias(self, cmd: DeleteAlias) -> Deleted | FaasError:
        existing = self.aliases.get(cmd.name, {})
        if cmd.alias not in existing:
            return _not_found(f"alias {cmd.name}:{cmd.alias} not found")
        del existing[cmd.alias]
        return Deleted(what="alias", name=f"{cmd.name}:{cmd.alias}")

    # -- API keys ----------------------------------------------------------

    def apply_put_key(self, cmd: PutApiKey) -> ApiKeyRecord | FaasError:
        if not _KEY_ID_RE.fullmatch(cmd.key_id):
            return _bad("key_id must be 16 lowercase hex characters")
        if cmd.role not in ROLES:
            return _bad(f"role must be one of {', '.join(ROLES)}")
        if len(cmd.name) > DESCRIPTION_MAX_CHARS or len(cmd.salt) < 16 or len(cmd.secret_hash) != 32:
            return _bad("key name too long, salt under 16 bytes or hash not 32 bytes")
        if cmd.key_id in self.keys:
            return _conflict(f"key {cmd.key_id} already exists")
        if len(self.keys) >= MAX_API_KEYS:
            return _limit(f"at most {MAX_API_KEYS} API keys")
        record = ApiKeyRecord(
            key_id=cmd.key_id, name=cmd.name, role=cmd.role,
            salt=cmd.salt, secret_hash=cmd.secret_hash, created_wall_ns=cmd.wall_ns,
        )
        self.keys[cmd.key_id] = record
        return record

    def apply_revoke_key(self, cmd: RevokeApiKey) -> ApiKeyRecord | FaasError:
        record = self.keys.get(cmd.key_id)
        if record is None:
            return _not_found(f"key {cmd.key_id} not found")
        if not record.active:
            return record
        revoked = attrs.evolve(record, revoked_wall_ns=max(cmd.wall_ns, 1))
        self.keys[cmd.key_id] = revoked
        return revoked

    # -- async invocations -------------------------------------------------

    def _check_accept(self, cmd: AcceptAsyncInvocation) -> FaasError | None:
        if not _ID_RE.fullmatch(cmd.request_id) or not _ID_RE.fullmatch(cmd.idempotency_key):
            return _bad("request id and idempotency key must be 1-128 plain characters")
        if check_function_name(cmd.function) is not None:
            return _bad(f"function name {cmd.function!r} is not valid")
        if len(cmd.payload) > ASYNC_PAYLOAD_MAX_BYTES:
            return _bad(f"async payload over {ASYNC_PAYLOAD_MAX_BYTES} bytes")
        if cmd.request_id in self.asyncs:
            return _conflict(f"request id {cmd.request_id} already used")
        if len(self.asyncs) >= MAX_ASYNC_RECORDS:
            return FaasError(kind="Throttled",
                             message=f"at most {MAX_ASYNC_RECORDS} async invocations kept")
        if self.async_payload_bytes + len(cmd.payload) > ASYNC_BACKLOG_MAX_BYTES:
            return FaasError(kind="Throttled", message="the async backlog is full")
        return None

    def apply_accept_async(self, cmd: AcceptAsyncInvocation) -> AsyncRecord | FaasError:
        """Accept, or answer the first record accepted under the same idempotency key."""
        first = self.idempotency.get((cmd.function, cmd.idempotency_key))
        if first is not None:
            return self.asyncs[first]
        error = self._check_accept(cmd)
        if error is not None:
            return error
        record = AsyncRecord(
            request_id=cmd.request_id, idempotency_key=cmd.idempotency_key,
            function=cmd.function, qualifier=cmd.qualifier, payload=cmd.payload,
            accepted_wall_ns=cmd.wall_ns, next_attempt_at_wall_ns=cmd.next_attempt_at_wall_ns,
        )
        self._put_async(record)
        self.idempotency[(cmd.function, cmd.idempotency_key)] = cmd.request_id
        return record

    def apply_start_attempt(self, cmd: StartAsyncAttempt) -> AsyncRecord | FaasError:
        record = self.asyncs.get(cmd.request_id)
        if record is None:
            return _not_found(f"async invocation {cmd.request_id} not found")
        if record.status != "pending" or cmd.attempt != record.attempts + 1:
            return _conflict(
                f"{cmd.request_id} is {record.status} after {record.attempts} attempts")
        updated = attrs.evolve(
            record, status="running", attempts=cmd.attempt, node=cmd.node,
            lease_until_wall_ns=cmd.lease_until_wall_ns,
        )
        self._put_async(updated)
        return updated

    def apply_record_attempt(self, cmd: RecordAsyncAttempt) -> AsyncRecord | FaasError:
        record = self.asyncs.get(cmd.request_id)
        if record is None:
            return _not_found(f"async invocation {cmd.request_id} not found")
        if record.status != "running" or cmd.attempt != record.attempts:
            return _conflict(f"{cmd.request_id} attempt {cmd.attempt} is not running")
        node = cmd.node or record.node
        if cmd.ok:
            updated = attrs.evolve(
                record, status="succeeded", node=node, finished_wall_ns=cmd.wall_ns,
                error_type="", error_message="")
        elif record.attempts < ASYNC_MAX_ATTEMPTS:
            updated = attrs.evolve(
                record, status="pending", node=node, error_type=cmd.error_type,
                error_message=cmd.error_message[:1024],
                next_attempt_at_wall_ns=max(cmd.retry_at_wall_ns, cmd.wall_ns))
        else:
            updated = attrs.evolve(
                record, status="dead_letter", node=node, error_type=cmd.error_type,
                error_message=cmd.error_message[:1024], finished_wall_ns=cmd.wall_ns)
        self._put_async(updated)
        return updated

    def apply_prune_async(self, cmd: PruneAsyncRecords) -> int:
        """Forget finished records; answer how many were removed."""
        done = [rid for rid in sorted(self.asyncs)
                if self.asyncs[rid].status in ("succeeded", "dead_letter")
                and self.asyncs[rid].finished_wall_ns < cmd.before_wall_ns]
        for rid in done:
            record = self._drop_async(rid)
            self.idempotency.pop((record.function, record.idempotency_key), None)
        return len(done)

    def _put_async(self, record: AsyncRecord) -> None:
        old = self.asyncs.get(record.request_id)
        self.async_payload_bytes += len(record.payload) - (len(old.payload) if old else 0)
        self.asyncs[record.request_id] = record

    def _drop_async(self, request_id: str) -> AsyncRecord:
        record = self.asyncs.pop(request_id)
        self.async_payload_bytes -= len(record.payload)
        return record

    # -- queries (read-only; safe on any replica) --------------------------

    def list_functions(self) -> list[FunctionRecord]:
        return [self.functions[n] for n in sorted(self.functions)]

    def get_function(self, name: str) -> FunctionRecord | None:
        return self.functions.get(name)

    def list_versions(self, name: str) -> list[VersionRecord]:
        versions = self.versions.get(name, {})
        return [versions[v] for v in sorted(versions)]

    def list_aliases(self, name: str) -> list[AliasRecord]:
        aliases = self.aliases.get(name, {})
        return [aliases[a] for a in sorted(aliases)]

    def list_keys(self) -> list[ApiKeyRecord]:
        return [self.keys[k] for k in sorted(self.keys)]

    def get_async(self, request_id: str) -> AsyncRecord | None:
        return self.asyncs.get(request_id)

    def due_async(self, wall_ns: int, limit: int = 100) -> list[AsyncRecord]:
        """Pending records whose next attempt is due, earliest first."""
        due = [r for r in self.asyncs.values()
               if r.status == "pending" and r.next_attempt_at_wall_ns <= wall_ns]
        due.sort(key=lambda r: (r.next_attempt_at_wall_ns, r.request_id))
        return due[:limit]

    def expired_attempts(self, wall_ns: int) -> list[AsyncRecord]:
        """Running attempts whose lease has passed (their node may be gone)."""
        expired = [r for r in self.asyncs.values()
                   if r.status == "running" and r.lease_until_wall_ns < wall_ns]
        expired.sort(key=lambda r: (r.lease_until_wall_ns, r.request_id))
        return expired

    def resolve(self, name: str, qualifier: str | None, draw_bp: int = 0) -> Resolved | FaasError:
        """What ``name[:qualifier]`` runs; ``draw_bp`` in [0, 10000) picks a weighted version."""
        record = self.functions.get(name)
        if record is None:
            return _not_found(f"function {name} not found")
        version = qualifier or LATEST
        alias = self.aliases.get(name, {}).get(version)
        if alias is not None:
            version = pick_weighted(alias, draw_bp)
        if version == LATEST:
            return Resolved(name=name, version=LATEST, config=record.config, code=record.code)
        number = version_number(version)
        published = None if number is None else self.versions.get(name, {}).get(number)
        if published is None:
            return _not_found(f"{name}:{version} not found")
        return Resolved(name=name, version=version, config=published.config, code=published.code)

    def authenticate(self, token: str) -> ApiKeyRecord | None:
        """The active key record ``token`` proves, or None."""
        proven = self._proven.get(token)
        if proven is not None and self.keys.get(proven.key_id) is proven:
            return proven
        try:
            key_id, secret = parse_api_key(token)
        except BadApiKey:
            return None
        record = self.keys.get(key_id)
        if record is None or not record.active:
            return None
        if not secret_matches(record.salt, record.secret_hash, secret):
            return None
        if len(self._proven) >= MAX_PROVEN_TOKENS:
            self._proven.clear()
        self._proven[token] = record
        return record


def _check_range_error(what: str, value: int, low: int, high: int) -> FaasError | None:
    problem = _check_range(what, value, low, high)
    return None if problem is None else _bad(problem)


_DISPATCH: dict[type, str] = {
    CreateFunction: "apply_create_function",
    DeployFunction: "apply_deploy",
    UpdateFunctionCode: "apply_update_code",
    UpdateFunctionConfig: "apply_update_config",
    DeleteFunction: "apply_delete_function",
    PublishVersion: "apply_publish_version",
    CreateAlias: "apply_create_alias",
    UpdateAlias: "apply_update_alias",
    DeleteAlias: "apply_delete_alias",
    PutApiKey: "apply_put_key",
    RevokeApiKey: "apply_revoke_key",
    AcceptAsyncInvocation: "apply_accept_async",
    StartAsyncAttempt: "apply_start_attempt",
    RecordAsyncAttempt: "apply_record_attempt",
    PruneAsyncRecords: "apply_prune_async",
    Noop: "apply_noop",
}
"""Command type -> the method that applies it."""
