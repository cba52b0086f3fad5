"""Registers the ``soak`` marker used by ``make soak`` for the long seed sweeps."""

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "soak: long seed sweeps, run by `make soak` only")
