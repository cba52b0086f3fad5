"""Two small containers that keep the gossip core's per-message work O(1).

``IdSet`` is a set of node ids that also picks a uniformly random member in
O(1) (a list plus an index map; removal swaps with the last element). Its order
depends only on the order of operations, never on hashing, so runs replay.

``BroadcastQueue`` holds the updates waiting to be piggybacked: at most one
per subject node (a newer update about a node replaces the older one), kept in
buckets by how many times each was sent. ``take`` hands out the least-sent
updates first and, among equals, the newest; an update leaves the queue once it
has been sent ``retransmit_limit`` times. The queue is bounded: past
``max_size`` the most-sent, oldest update is dropped.
"""

from __future__ import annotations

import random
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
        """Up to ``k`` distinct random members that ``accept`` (3k tries at most)."""
        picked: list[NodeId] = []
        items = self._items
        if not items:
            return picked
        for _ in range(3 * k):
            if len(picked) >= k:
                break
            node = items[rng.randrange(len(items))]
            if node not in picked and accept(node):
                picked.append(node)
        return picked


class _Entry:
    __slots__ = ("entry_id", "node", "transmits", "update")

    def __init__(self, entry_id: int, node: NodeId, update: Any) -> None:
        self.entry_id = entry_id
        self.node = node
        self.update = update
        self.transmits = 0


class BroadcastQueue:
    """Updates waiting to be piggybacked; see the module docstring."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self._by_node: dict[NodeId, _Entry] = {}
        self._buckets: list[dict[int, _Entry]] = [{}]
        self._next_id = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._by_node)

    def enqueue(self, node: NodeId, update: Any) -> None:
        """Queue ``update`` about ``node``, replacing any older one about it."""
        old = self._by_node.pop(node, None)
        if old is not None:
            del self._buckets[old.transmits][old.entry_id]
        self._next_id += 1
        entry = _Entry(self._next_id, node, update)
        self._by_node[node] = entry
        self._buckets[0][entry.entry_id] = entry
        if len(self._by_node) > self.max_size:
            self._evict_one()

    def pending(self, node: NodeId) -> Any:
        entry = self._by_node.get(node)
        return None if entry is None else entry.update

    def take(self, count: int, retransmit_limit: int) -> list[Any]:
        """Up to ``count`` updates, least-sent first; each counts as sent once."""
        chosen: list[_Entry] = []
        for bucket in self._buckets:
            for entry_id in reversed(bucket):
                if len(chosen) >= count:
                    break
                chosen.append(bucket[entry_id])
            if len(chosen) >= count:
                break
        for entry in chosen:
            self._bump(entry, retransmit_limit)
        return [e.update for e in chosen]

    def _bump(self, entry: _Entry, retransmit_limit: int) -> None:
        del self._buckets[entry.transmits][entry.entry_id]
        entry.transmits += 1
        if entry.transmits >= retransmit_limit:
            del self._by_node[entry.node]
            return
        while len(self._buckets) <= entry.transmits:
            self._buckets.append({})
        self._buckets[entry.transmits][entry.entry_id] = entry

    def _evict_one(self) -> None:
        for bucket in reversed(self._buckets):
            if bucket:
                entry = bucket.pop(next(iter(bucket)))
                del self._by_node[entry.node]
                self.dropped += 1
                return
