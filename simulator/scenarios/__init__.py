"""The shipped scenarios. Importing this package registers every one of them."""

from simulator.scenarios import (
    broadcast,  # noqa: F401
    gossip,  # noqa: F401
    mesh,  # noqa: F401
    paxos,  # noqa: F401
)
