"""SWIM membership with Lifeguard: a pure sans-IO core (see gossip.core and docs/gossip.md)."""

from gossip.core import (
    AddSeeds,
    Gossip,
    GossipConfig,
    Leave,
    MemberEvent,
    MemberInfo,
    UpdateMeta,
)
from gossip.messages import NodeMeta

__all__ = [
    "AddSeeds", "Gossip", "GossipConfig", "Leave", "MemberEvent", "MemberInfo", "NodeMeta",
    "UpdateMeta",
]
