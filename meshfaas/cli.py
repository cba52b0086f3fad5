"""The ``meshfaas`` command line.

Each area registers its commands from its own module (see ``_register``), so
this file stays a thin index.
"""

from __future__ import annotations

import importlib

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="meshfaas")
def cli() -> None:
    """meshfaas: Lambda-compatible Python functions on a peer-to-peer mesh."""


# (module, attribute) pairs; each attribute is a click command or group.
_COMMANDS: list[tuple[str, str]] = [
    ("meshfaas.cli_sim", "sim"),
    ("meshfaas.runtime.mesh", "node_cli"),
    ("meshfaas.cli_up", "up"),
    ("sandbox.cli", "sandbox_cli"),
    ("meshfaas.cli_client", "deploy"),
    ("meshfaas.cli_client", "invoke"),
    ("meshfaas.cli_client", "ls"),
    ("meshfaas.cli_client", "get"),
    ("meshfaas.cli_client", "rm"),
    ("meshfaas.cli_client", "versions"),
    ("meshfaas.cli_client", "alias"),
    ("meshfaas.cli_client", "logs"),
    ("meshfaas.cli_client", "result"),
    ("meshfaas.cli_client", "members"),
    ("meshfaas.cli_client", "status"),
    ("meshfaas.cli_client", "key"),
]


def _register() -> None:
    for module, attr in _COMMANDS:
        cli.add_command(getattr(importlib.import_module(module), attr))


_register()


def main() -> None:
    cli()
