"""Gossip's wire messages (tags 100-199) and the node metadata they carry.

Every message is a frozen attrs value with keyword-only fields, registered with
the shared codec. The codec checks types; sizes and ranges that make a message
dangerous are checked here by attrs validators (so a decoded message is always
bounded) or, for what needs the receiver's state, by the core.

``Alive``, ``Suspect`` and ``Dead`` are *updates*: they ride piggybacked on
every probe message (``Ping``, ``Ack``, ``PingReq``, ``Nack``, ``Gossip``).
A ``Dead`` whose ``accuser`` is its own ``node`` is a graceful leave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs

from meshfaas.core.codec import message
from meshfaas.core.types import NodeId

MAX_INCARNATION = 2**63 - 1
MAX_SEQ = 2**63 - 1
MAX_ADDR_CHARS = 256
MAX_NAME_CHARS = 128
MAX_RUNTIMES = 16
MAX_WARM_FUNCTIONS = 64
MAX_UPDATES_PER_MESSAGE = 64
MAX_MEMBERS_PER_SYNC = 65_536
MAX_CO_ACCUSERS = 8

Role = Literal["voter", "worker"]
StateName = Literal["alive", "suspect", "dead", "left"]


def _bounded_str(limit: int) -> Callable[[Any, attrs.Attribute[Any], str], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
        if len(value) > limit:
            raise ValueError(f"{attribute.name}: {len(value)} chars, over {limit}")

    return check


def _bounded_names(limit: int) -> Callable[[Any, attrs.Attribute[Any], tuple[str, ...]], None]:
    def check(_inst: object, attribute: attrs.Attribute[Any], value: tuple[str, ...]) -> None:
        if len(value) > limit:
            raise ValueError(f"{attribute.name}: {len(value)} entries, over {limit}")
        if any(len(v) > MAX_NAME_CHARS for v in value):
            raise ValueError(f"{attribute.name}: a name over {MAX_NAME_CHARS} chars")

    return check


def _non_negative(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if not 0 <= value <= MAX_INCARNATION:
        raise ValueError(f"{attribute.name} out of range: {value}")


@message(100)
@attrs.frozen(kw_only=True)
class NodeMeta:
    """What a node tells the cluster about itself; bounded in size.

    ``warm`` is a bounded tuple of function ids with warm sandboxes; ``load``
    and ``capacity`` are in concurrent invocations. Its version is the
    incarnation of the ``Alive`` that carries it.
    """

    peer_addr: str = attrs.field(default="", validator=_bounded_str(MAX_ADDR_CHARS))
    client_addr: str = attrs.field(default="", validator=_bounded_str(MAX_ADDR_CHARS))
    http_addr: str = attrs.field(default="", validator=_bounded_str(MAX_ADDR_CHARS))
    runtimes: tuple[str, ...] = attrs.field(default=(), validator=_bounded_names(MAX_RUNTIMES))
    capacity: int = attrs.field(default=0, validator=_non_negative)
    load: int = attrs.field(default=0, validator=_non_negative)
    warm: tuple[str, ...] = attrs.field(default=(), validator=_bounded_names(MAX_WARM_FUNCTIONS))
    role: Role = "worker"


@message(101)
@attrs.frozen(kw_only=True)
class Alive:
    """``node`` is alive at ``incarnation`` with ``meta``."""

    node: NodeId
    incarnation: int
    meta: NodeMeta


@message(102)
@attrs.frozen(kw_only=True)
class Suspect:
    """``accuser`` suspects ``node`` at ``incarnation``.

    ``others`` are further independent accusers the sender knows of (Lifeguard
    confirmations), carried together so they spread in one message.
    """

    node: NodeId
    incarnation: int
    accuser: NodeId
    others: tuple[NodeId, ...] = attrs.field(default=(), validator=_bounded_names(MAX_CO_ACCUSERS))


@message(103)
@attrs.frozen(kw_only=True)
class Dead:
    """``accuser`` declares ``node`` dead; ``accuser == node`` means it left."""

    node: NodeId
    incarnation: int
    accuser: NodeId


Update = Alive | Suspect | Dead


@message(104)
@attrs.frozen(kw_only=True)
class Ping:
    """A probe. ``target`` is who the sender meant, so a misdirected ping is dropped."""

    seq: int
    target: NodeId
    updates: tuple[Alive | Suspect | Dead, ...] = ()


@message(105)
@attrs.frozen(kw_only=True)
class Ack:
    seq: int
    updates: tuple[Alive | Suspect | Dead, ...] = ()


@message(106)
@attrs.frozen(kw_only=True)
class PingReq:
    """Please probe ``target`` for me and answer ``Ack(seq)`` or ``Nack(seq)``."""

    seq: int
    target: NodeId
    updates: tuple[Alive | Suspect | Dead, ...] = ()


@message(107)
@attrs.frozen(kw_only=True)
class Nack:
    """A helper could not reach the target in time (Lifeguard)."""

    seq: int
    updates: tuple[Alive | Suspect | Dead, ...] = ()


@message(108)
@attrs.frozen(kw_only=True)
class MemberState:
    """One row of a push-pull full-state exchange."""

    node: NodeId
    state: StateName
    incarnation: int
    meta: NodeMeta


@message(109)
@attrs.frozen(kw_only=True)
class PushPullRequest:
    """Our whole view; the receiver merges it and answers with its own."""

    join: bool
    members: tuple[MemberState, ...]


@message(110)
@attrs.frozen(kw_only=True)
class PushPullReply:
    members: tuple[MemberState, ...]


@message(111)
@attrs.frozen(kw_only=True)
class Gossip:
    """Updates with no probe attached (used to spread a graceful leave at once)."""

    updates: tuple[Alive | Suspect | Dead, ...] = ()
