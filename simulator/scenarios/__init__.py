"""The shipped scenarios. Importing this package registers every one of them."""

from simulator.scenarios import broadcast  # noqa: F401
