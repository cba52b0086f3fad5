"""``python -m meshfaas`` is the ``meshfaas`` command."""

from meshfaas.cli import main

main()
