"""Multi-Paxos: a replicated log as a sans-IO core. See docs/paxos.md.

The public names: :class:`Replica` and :class:`PaxosConfig` (``paxos.replica``),
the state machine protocol and the commands and results (``paxos.api``).
"""

from paxos.api import (
    Applied,
    CommandResult,
    LeaderInfo,
    LeaderQuery,
    Propose,
    Read,
    ReadResult,
    Reconfigure,
    StateMachine,
    Suspect,
)
from paxos.replica import PaxosConfig, Replica

__all__ = [
    "Applied", "CommandResult", "LeaderInfo", "LeaderQuery", "PaxosConfig", "Propose", "Read",
    "ReadResult", "Reconfigure", "Replica", "StateMachine", "Suspect",
]
