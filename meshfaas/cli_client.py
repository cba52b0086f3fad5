"""The client commands of the ``meshfaas`` CLI, built on the SDK (``meshfaas.Client``).

Where the endpoint and key come from, first found wins: the ``--endpoint`` and
``--api-key`` flags; the environment (``MESHFAAS_ENDPOINT``, comma-separated,
and ``MESHFAAS_API_KEY``); ``DATA_DIR/credentials.json`` (``--data-dir``,
``MESHFAAS_DATA_DIR``, default ``.meshfaas``), which ``meshfaas up`` writes.
The CURVE keys come from the credentials file or ``DATA_DIR/keys/cluster.json``.

Exit codes: 0 success, 1 a request failed (the error kind is printed), 2 bad
usage or a refused code package.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import attrs
import click
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from meshfaas import client as sdk
from meshfaas.core.faas_package import PackageError

F = TypeVar("F", bound=Callable[..., Any])
console = Console()
err_console = Console(stderr=True)
DEFAULT_DATA_DIR = ".meshfaas"


# ---------------------------------------------------------------------------
# Connection options
# ---------------------------------------------------------------------------


def connection_options(func: F) -> F:
    """``--endpoint``, ``--api-key``, ``--data-dir``, ``--timeout`` on a command."""
    options = [
        click.option("--endpoint", "-e", "endpoints", multiple=True,
                     help="Client endpoint (tcp://HOST:PORT); repeat or comma-separate."),
        click.option("--api-key", "-k", default=None, help="API key (mf_...)."),
        click.option("--data-dir", default=None, type=click.Path(file_okay=False),
                     help="Where credentials.json is (default $MESHFAAS_DATA_DIR or .meshfaas)."),
        click.option("--timeout", "timeout_s", default=sdk.DEFAULT_TIMEOUT_S, show_default=True,
                     type=float, help="Seconds to wait for a reply."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


@attrs.frozen(kw_only=True)
class Target:
    endpoints: tuple[str, ...]
    api_key: str
    creds: sdk.Credentials | None


def resolve_target(endpoints: tuple[str, ...], api_key: str | None, data_dir: str | None,
                   environ: dict[str, str] | None = None) -> Target:
    """Endpoints and key from flags, then the environment, then credentials.json."""
    env = dict(os.environ) if environ is None else environ
    directory = Path(data_dir or env.get("MESHFAAS_DATA_DIR") or DEFAULT_DATA_DIR)
    creds = None
    if (directory / "credentials.json").exists():
        creds = sdk.load_credentials(directory)
    found = _split(endpoints) or _split((env.get("MESHFAAS_ENDPOINT", ""),))
    if not found and creds is not None:
        found = creds.endpoints
    key = api_key or env.get("MESHFAAS_API_KEY") or (creds.api_key if creds else "")
    if not found:
        raise click.UsageError("no endpoint: use --endpoint, MESHFAAS_ENDPOINT or "
                               f"{directory}/credentials.json (meshfaas up writes it)")
    if not key:
        raise click.UsageError("no API key: use --api-key, MESHFAAS_API_KEY or credentials.json")
    return Target(endpoints=found, api_key=key, creds=creds)


def _split(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def open_client(endpoints: tuple[str, ...], api_key: str | None, data_dir: str | None,
                timeout_s: float) -> sdk.Client:
    target = resolve_target(endpoints, api_key, data_dir)
    creds = target.creds
    return sdk.Client(
        list(target.endpoints), target.api_key, timeout_s=timeout_s,
        server_public_key=creds.server_public_key if creds else None,
        client_public_key=creds.client_public_key if creds else None,
        client_secret_key=creds.client_secret_key if creds else None,
        events_endpoints=creds.events_endpoints if creds else ())


def with_client(func: Callable[..., Any]) -> Callable[..., Any]:
    """Open the client from the connection options; turn SDK errors into exit codes."""

    @functools.wraps(func)
    def wrapper(endpoints: tuple[str, ...], api_key: str | None, data_dir: str | None,
                timeout_s: float, **kwargs: Any) -> Any:
        with open_client(endpoints, api_key, data_dir, timeout_s) as client:
            try:
                return func(client, **kwargs)
            except sdk.FunctionError as exc:
                err_console.print(f"[red]FunctionError[/red] {exc.errorType}: {exc.errorMessage}")
                sys.exit(1)
            except sdk.MeshfaasError as exc:
                err_console.print(f"[red]{exc.kind}[/red]: {exc.message}")
                sys.exit(1)
            except PackageError as exc:
                err_console.print(f"[red]code refused[/red]: {exc}")
                sys.exit(2)

    return wrapper


# ---------------------------------------------------------------------------
# Output helpers
# ---------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """Records as plain JSON data (bytes as UTF-8 text when they are, else base64)."""
    if attrs.has(type(value)):
        return {k: jsonable(v) for k, v in attrs.asdict(value, recurse=False).items()
                if k not in ("salt", "secret_hash")}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple, frozenset, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            return base64.b64encode(value).decode()
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, sort_keys=True))


def when(wall_ns: int) -> str:
    if not wall_ns:
        return "-"
    return dt.datetime.fromtimestamp(wall_ns / 1e9, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def parse_env(pairs: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--env")
        env[key] = value
    return env


def parse_payload(payload: str | None, payload_file: str | None) -> Any:
    if payload_file:
        payload = Path(payload_file).read_text()
    if payload is None or payload == "":
        return None
    try:
        return json.loads(payload)
    except ValueError:
        raise click.BadParameter("the payload must be JSON", param_hint="PAYLOAD") from None


json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------


@click.command()
@click.argument("name")
@click.argument("code", type=click.Path(exists=True))
@click.option("--handler", required=True, help="module.function, e.g. app.handler")
@click.option("--runtime", default="python3.11", show_default=True)
@click.option("--memory", "memory_mb", default=128, show_default=True, type=int, help="MB")
@click.option("--function-timeout", "function_timeout_s", default=3, show_default=True,
              type=int, help="Seconds a run may take (1-900).")
@click.option("--env", "env_pairs", multiple=True, help="KEY=VALUE; repeat.")
@click.option("--requirement", "requirements", multiple=True, help="A pip requirement; repeat.")
@click.option("--requirements-file", type=click.Path(exists=True, dir_okay=False))
@click.option("--reserved-concurrency", type=int, default=None)
@click.option("--description", default="")
@click.option("--publish", is_flag=True, help="Publish a version after deploying.")
@connection_options
@with_client
def deploy(client: sdk.Client, name: str, code: str, handler: str, runtime: str,
           memory_mb: int, function_timeout_s: int, env_pairs: tuple[str, ...],
           requirements: tuple[str, ...], requirements_file: str | None,
           reserved_concurrency: int | None, description: str, publish: bool) -> None:
    """Create or update function NAME from CODE (a directory or a .zip)."""
    reqs = list(requirements)
    if requirements_file:
        reqs += [line.strip() for line in Path(requirements_file).read_text().splitlines()
                 if line.strip() and not line.lstrip().startswith("#")]
    with _upload_progress() as report:
        result = client.deploy(
            name, code, handler=handler, runtime=runtime, memory_mb=memory_mb,
            timeout_s=function_timeout_s, env=parse_env(env_pairs), requirements=reqs,
            reserved_concurrency=reserved_concurrency, description=description,
            publish=publish, progress=report)
    fn = result.function
    verb = "created" if result.created else "updated"
    console.print(f"[green]{verb}[/green] {fn.name} (revision {fn.revision}, "
                  f"code {fn.code.sha256[:12]}, {fn.code.size_bytes} bytes)")
    if result.version is not None:
        console.print(f"published version {result.version.version}")


class _upload_progress:
    """A rich progress bar for the upload, shown only on a terminal."""

    def __init__(self) -> None:
        self.progress = Progress(TextColumn("uploading"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), console=err_console, transient=True,
                                 disable=not err_console.is_terminal)
        self.task: Any = None

    def __enter__(self) -> Callable[[int, int], None]:
        self.progress.start()
        return self.report

    def report(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.progress.add_task("upload", total=total)
        self.progress.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()


@click.command()
@click.argument("name")
@click.argument("payload", required=False)
@click.option("--file", "payload_file", type=click.Path(exists=True, dir_okay=False),
              help="Read the JSON payload from a file.")
@click.option("--qualifier", "-q", default=None, help="A version number or an alias.")
@click.option("--async", "is_async", is_flag=True, help="Queue it; print the invocation id.")
@click.option("--idempotency-key", default=None)
@click.option("--log", "show_log", is_flag=True,
              help="Also print the invocation id, node and log tail (on stderr).")
@connection_options
@with_client
def invoke(client: sdk.Client, name: str, payload: str | None, payload_file: str | None,
           qualifier: str | None, is_async: bool, idempotency_key: str | None,
           show_log: bool) -> None:
    """Invoke NAME with a JSON PAYLOAD and print the result."""
    event = parse_payload(payload, payload_file)
    if is_async:
        click.echo(client.invoke_async(name, event, qualifier, idempotency_key=idempotency_key))
        return
    detailed = client.invoke_detailed(name, event, qualifier)
    if show_log:
        err_console.print(f"[dim]{detailed.invocation_id} on {detailed.node}, "
                          f"version {detailed.executed_version}[/dim]")
        err_console.print(detailed.log_tail, markup=False, highlight=False, end="")
    result = sdk.decode_payload(detailed.payload)
    click.echo(json.dumps(jsonable(result)) if not isinstance(result, str) else result)


@click.command(name="ls")
@json_option
@connection_options
@with_client
def ls(client: sdk.Client, as_json: bool) -> None:
    """List functions."""
    functions = client.list_functions()
    if as_json:
        print_json(functions)
        return
    table = Table("name", "runtime", "handler", "memory", "timeout", "revision", "version",
                  "modified (UTC)")
    for fn in functions:
        c = fn.config
        table.add_row(fn.name, c.runtime, c.handler, f"{c.memory_mb} MB", f"{c.timeout_s} s",
                      str(fn.revision), str(fn.last_version or "-"), when(fn.modified_wall_ns))
    console.print(table)


@click.command()
@click.argument("name")
@json_option
@connection_options
@with_client
def get(client: sdk.Client, name: str, as_json: bool) -> None:
    """Show function NAME: configuration, code, versions, aliases."""
    details = client.get_function(name)
    if as_json:
        print_json(details)
        return
    fn, c = details.function, details.function.config
    table = Table(show_header=False, title=fn.name)
    for key, value in [
        ("handler", c.handler), ("runtime", c.runtime), ("memory", f"{c.memory_mb} MB"),
        ("timeout", f"{c.timeout_s} s"), ("reserved concurrency", str(c.reserved_concurrency)),
        ("env", ", ".join(sorted(c.env)) or "-"), ("requirements", ", ".join(c.requirements) or "-"),
        ("code", f"{fn.code.sha256} ({fn.code.size_bytes} bytes)"),
        ("revision", str(fn.revision)), ("versions", ", ".join(str(v.version) for v in details.versions) or "-"),
        ("aliases", ", ".join(_alias_text(a) for a in details.aliases) or "-"),
        ("modified (UTC)", when(fn.modified_wall_ns)),
    ]:
        table.add_row(key, value)
    console.print(table)


def _alias_text(alias: Any) -> str:
    if alias.extra_version is None:
        return f"{alias.alias}->{alias.version}"
    share = alias.extra_weight_bp / 100
    return f"{alias.alias}->{alias.version} ({100 - share:g}%) + {alias.extra_version} ({share:g}%)"


@click.command()
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@connection_options
@with_client
def rm(client: sdk.Client, name: str, yes: bool) -> None:
    """Delete function NAME with its versions and aliases."""
    if not yes and sys.stdin.isatty():
        click.confirm(f"delete {name} and all its versions and aliases?", abort=True)
    client.delete(name)
    console.print(f"deleted {name}")


@click.command()
@click.argument("name")
@click.option("--publish", is_flag=True, help="Publish $LATEST as a new version first.")
@click.option("--description", "-d", default="")
@json_option
@connection_options
@with_client
def versions(client: sdk.Client, name: str, publish: bool, description: str, as_json: bool) -> None:
    """List the versions of NAME (or publish one with --publish)."""
    if publish:
        version = client.publish_version(name, description)
        console.print(f"version {version.version} of {name}")
    listed = client.list_versions(name)
    if as_json:
        print_json(listed)
        return
    table = Table("version", "code", "memory", "timeout", "published (UTC)", "description")
    for v in listed:
        table.add_row(str(v.version), v.code.sha256[:12], f"{v.config.memory_mb} MB",
                      f"{v.config.timeout_s} s", when(v.published_wall_ns), v.description)
    console.print(table)


@click.command()
@click.argument("name")
@click.argument("alias_name", required=False)
@click.argument("version", required=False)
@click.option("--weight", default=None, metavar="VERSION=SHARE",
              help="Send SHARE (0-1) of the traffic to another VERSION, e.g. 3=0.1")
@click.option("--update", is_flag=True, help="Change an existing alias.")
@click.option("--delete", is_flag=True, help="Delete ALIAS_NAME.")
@connection_options
@with_client
def alias(client: sdk.Client, name: str, alias_name: str | None, version: str | None,
          weight: str | None, update: bool, delete: bool) -> None:
    """List aliases of NAME, or point ALIAS_NAME at VERSION (optionally weighted)."""
    if delete:
        if not alias_name:
            raise click.UsageError("--delete needs ALIAS_NAME")
        client.delete_alias(name, alias_name)
        console.print(f"deleted alias {name}:{alias_name}")
        return
    if alias_name:
        if not version:
            raise click.UsageError("give the VERSION the alias points to")
        record = client.create_alias(name, alias_name, version, _weights(weight), update=update)
        console.print(_alias_text(record))
        return
    table = Table("alias", "version", "extra version", "extra share")
    for a in client.list_aliases(name):
        table.add_row(a.alias, a.version, a.extra_version or "-",
                      f"{a.extra_weight_bp / 100:g}%" if a.extra_version else "-")
    console.print(table)


def _weights(weight: str | None) -> dict[str | int, float] | None:
    if not weight:
        return None
    version, sep, share = weight.partition("=")
    try:
        return {version: float(share)} if sep else None
    except ValueError:
        raise click.BadParameter("expected VERSION=SHARE", param_hint="--weight") from None


# ---------------------------------------------------------------------------
# Invocations, logs, the mesh
# ---------------------------------------------------------------------------


@click.command()
@click.argument("invocation_id")
@json_option
@connection_options
@with_client
def result(client: sdk.Client, invocation_id: str, as_json: bool) -> None:
    """Show the record and result of an invocation."""
    record = client.result(invocation_id)
    if as_json:
        print_json(record)
        return
    table = Table(show_header=False, title=invocation_id)
    for key, value in jsonable(record).items():
        if value not in ("", None, 0) or key in ("status",):
            table.add_row(key, str(value))
    console.print(table)


@click.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new log lines.")
@click.option("--limit", default=100, show_default=True)
@click.option("--events-endpoint", "events_endpoints", multiple=True,
              help="A node's event PUB endpoint to follow (default: from members or "
                   "credentials.json); repeat.")
@connection_options
@with_client
def logs(client: sdk.Client, name: str, follow: bool, limit: int,
         events_endpoints: tuple[str, ...]) -> None:
    """Print recent log lines of NAME (and follow them with -f)."""
    if events_endpoints:
        client.events_endpoints = list(_split(events_endpoints))
    events: Iterator[Any] = client.logs(name, follow=follow, limit=limit)
    try:
        for event in events:
            stamp = when(event.wall_ns)
            for line in event.text.splitlines() or [""]:
                click.echo(f"{stamp} {event.node} {event.invocation_id} {line}")
    except KeyboardInterrupt:
        pass


@click.command()
@json_option
@connection_options
@with_client
def members(client: sdk.Client, as_json: bool) -> None:
    """List the mesh's members as the answering node sees them."""
    listed = client.members()
    if as_json:
        print_json(listed)
        return
    table = Table("node", "state", "client endpoint", "runtimes", "load", "warm")
    colour = {"alive": "green", "suspect": "yellow", "dead": "red"}
    for m in listed:
        table.add_row(m.node, f"[{colour.get(m.state, 'white')}]{m.state}[/]", m.client_endpoint,
                      ", ".join(m.runtimes), f"{m.load}/{m.capacity}", str(m.warm))
    console.print(table)


@click.command()
@json_option
@connection_options
@with_client
def status(client: sdk.Client, as_json: bool) -> None:
    """The leader, log indices and load per node."""
    info = client.status()
    if as_json:
        print_json(info)
        return
    console.print(f"node [bold]{info.node}[/bold], leader [bold]{info.leader or '-'}[/bold], "
                  f"commit index {info.commit_index}, applied {info.applied_index}, "
                  f"{info.functions} functions")
    table = Table("node", "in flight")
    for node, load in sorted(info.load.items()):
        table.add_row(node, str(load))
    console.print(table)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


@click.group()
def key() -> None:
    """Create, list and revoke API keys (admin)."""


@key.command(name="create")
@click.argument("name")
@click.option("--role", type=click.Choice(["admin", "developer", "invoker", "viewer"]),
              default="developer", show_default=True)
@connection_options
@with_client
def key_create(client: sdk.Client, name: str, role: str) -> None:
    """Create a key; its secret is printed once, on stdout."""
    created = client.create_key(name, role)
    err_console.print(f"key {created.key_id} ({created.role}); store it now, it is not shown again:")
    click.echo(created.api_key)


@key.command(name="ls")
@json_option
@connection_options
@with_client
def key_ls(client: sdk.Client, as_json: bool) -> None:
    """List keys (never their secrets)."""
    keys = client.list_keys()
    if as_json:
        print_json(keys)
        return
    table = Table("key id", "name", "role", "created (UTC)", "revoked (UTC)")
    for k in keys:
        table.add_row(k.key_id, k.name, k.role, when(k.created_wall_ns), when(k.revoked_wall_ns))
    console.print(table)


@key.command(name="revoke")
@click.argument("key_id")
@connection_options
@with_client
def key_revoke(client: sdk.Client, key_id: str) -> None:
    """Revoke a key; requests made with it are refused from then on."""
    client.revoke_key(key_id)
    console.print(f"revoked {key_id}")
