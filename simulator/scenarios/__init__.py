"""The shipped scenarios. Importing this package registers every one of them."""

from simulator.scenarios import broadcast  # noqa: F401
from simulator.scenarios import paxos  # noqa: F401
from simulator.scenarios import gossip  # noqa: F401
