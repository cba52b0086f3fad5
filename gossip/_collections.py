"""Two small containers that keep the gossip core's per-message work O(1).

``IdSet`` is a set of node ids that also picks a uniformly random member in
O(1) (a list plus an index map; removal swaps with the last element). Its order
depends only on the order of operations, never on hashing, so runs replay.

``BroadcastQueue`` holds the updates waiting to be piggybacked: at most one
per subject node (a newer update about a node replaces the older one), kept in
two priority levels (urgent: failure news and refutations; normal: joins and
metadata) and, within a level, in buckets by how many times each was sent.
``take`` hands out urgent updates before normal ones, then the least-sent
first and, among equals, the one queued (or last sent) most recently; an update leaves the queue once it has
been sent ``retransmit_limit`` times. So metadata churn can never starve
failure news. The queue is bounded: past ``max_size`` the most-sent, oldest
normal update is dropped (urgent ones only when nothing else is left).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from meshfaas.core.types import NodeId


class IdSet:
    """A set of node ids with O(1) add, remove and random choice."""

    def __init__(self) -> None:
        self._items: list[NodeId] = []
        self._pos: dict[NodeId, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, node: object) -> bool:
        return node in self._pos

    def __iter__(self) -> Iterator[NodeId]:
        return iter(self._items)

    def add(self, node: NodeId) -> None:
        if node not in self._pos:
            self._pos[node] = len(self._items)
            self._items.append(node)

    def discard(self, node: NodeId) -> None:
        i = self._pos.pop(node, None)
        if i is None:
            return
        last = self._items.pop()
        if last != node:
            self._items[i] = last
            self._pos[last] = i

    def choice(self, rng: random.Random) -> NodeId | None:
        return self._items[rng.randrange(len(self._items))] if self._items else None

    def sample(self, rng: random.Random, k: int, accept: Callable[[NodeId], bool]) -> list[NodeId]:
        """Up to ``k`` distinct random members that ``accept``.

        Small sets are filtered exhaustively, so a few members are always found;
        large ones take at most 4k random tries (O(k), never O(n)).
        """
        items = self._items
        if len(items) <= 8 * k:
            candidates = [node for node in items if accept(node)]
            return rng.sample(candidates, min(k, len(candidates)))
        picked: list[NodeId] = []
        for _ in range(4 * k):
            if len(picked) >= k:
                break
            node = items[rng.randrange(len(items))]
            if node not in picked and accept(node):
                picked.append(node)
        return picked


class _Entry:
    __slots__ = ("level", "live", "node", "transmits", "update")

    def __init__(self, node: NodeId, update: Any, level: int) -> None:
        self.node = node
        self.update = update
        self.level = level
        self.transmits = 0
        self.live = True


class BroadcastQueue:
    """Updates waiting to be piggybacked; see the module docstring.

    Each (level, send count) bucket is a deque used as a stack (newest on the
    right). Replaced or finished entries are only marked dead and skipped when
    met, so every operation is O(1) amortized.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._by_node: dict[NodeId, _Entry] = {}
        # _levels[level][transmits]: the entries of that bucket, oldest on the left
        self._levels: list[list[deque[_Entry]]] = [[deque()], [deque()]]
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_node)

    def enqueue(self, node: NodeId, update: Any, *, urgent: bool = False) -> None:
        """Queue ``update`` about ``node``, replacing any older one about it."""
        old = self._by_node.pop(node, None)
        if old is not None:
            old.live = False
        entry = _Entry(node, update, 0 if urgent else 1)
        self._by_node[node] = entry
        self._levels[entry.level][0].append(entry)
        if len(self._by_node) > self.max_size:
            self._evict_one()

    def pending(self, node: NodeId) -> Any:
        entry = self._by_node.get(node)
        return None if entry is None else entry.update

    def take(self, count: int, retransmit_limit: int) -> list[Any]:
        """Up to ``count`` updates, least-sent first; each counts as sent once."""
        chosen: list[_Entry] = []
        for buckets in self._levels:
            for transmits, stack in enumerate(buckets):
                while stack and len(chosen) < count:
                    entry = stack.pop()
                    if entry.live and entry.transmits == transmits:
                        chosen.append(entry)
                if len(chosen) >= count:
                    break
        for entry in reversed(chosen):  # the newest ends on top of its next bucket
            self._bump(entry, retransmit_limit)
        return [e.update for e in chosen]

    def _bump(self, entry: _Entry, retransmit_limit: int) -> None:
        entry.transmits += 1
        if entry.transmits >= retransmit_limit:
            entry.live = False
            del self._by_node[entry.node]
            return
        buckets = self._levels[entry.level]
        while len(buckets) <= entry.transmits:
            buckets.append(deque())
        buckets[entry.transmits].append(entry)

    def _evict_one(self) -> None:
        for buckets in reversed(self._levels):
            for transmits in range(len(buckets) - 1, -1, -1):
                stack = buckets[transmits]
                while stack:
                    entry = stack.popleft()
                    if entry.live and entry.transmits == transmits:
                        entry.live = False
                        del self._by_node[entry.node]
                        self.dropped += 1
                        return
