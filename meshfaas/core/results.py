"""The result store's port: how the node core reads a record it no longer holds in memory.

Theory of operation
-------------------
Every finished invocation's record is written by the core as a durable write
to table :data:`RESULTS_TABLE` (key: the invocation id, value: ``(wall_ns,
record)``, the wall time it was stored at). The core keeps only the newest
``MeshConfig.max_results`` of them in memory (its *recent cache*); the
driver's store keeps every record for the retention time, on disk, indexed by
id (the trio runtime: :mod:`meshfaas.runtime.results`, a SQLite file of its
own; the simulator: the node's simulated disk).

A record that is not in the cache is read back through one effect, kind
:data:`LOOKUP_KIND`, whose arguments are a :class:`ResultLookup`. Its result
value is the stored ``(wall_ns, record)`` (a tuple or, after a CBOR round
trip, a two-item list) or None when the store has no such record; an error
result (the disk failed, or a driver without a store) counts as a miss. The
core, not the store, applies the retention to what it reads: a record stored
longer ago than ``result_retention_ns`` is NotFound whether or not the store
has deleted it yet, so every implementation of the port behaves alike.

Ids come from callers and peers: :func:`valid_invocation_id` says which are
worth a disk read at all (a malformed one is NotFound at once).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from typing import Any

import attrs

from meshfaas.core import client_proto as proto
from meshfaas.core.codec import DecodeError, from_cbor

RESULTS_TABLE = "m.results"
LOOKUP_KIND = "result_lookup"
INVOCATION_ID_MAX_CHARS = 256
_ID_RE = re.compile(r"[\x21-\x7e]{1,256}")  # visible ASCII, INVOCATION_ID_MAX_CHARS

StoredResult = tuple[int, proto.InvocationRecord]
"""A stored record: (wall ns when it was stored, the record)."""


@attrs.frozen(kw_only=True)
class ResultLookup:
    """Effect ``result_lookup``: read the stored record of ``invocation_id``."""

    invocation_id: str


def valid_invocation_id(text: str) -> bool:
    """Whether ``text`` could name an invocation (visible ASCII, 1 to 256 characters)."""
    return isinstance(text, str) and _ID_RE.fullmatch(text) is not None


def stored_result(value: Any) -> StoredResult | None:
    """``value`` as a :data:`StoredResult`, or None when it is not one (absent or damaged)."""
    if isinstance(value, (bytes, bytearray)):
        try:
            value = from_cbor(bytes(value))
        except DecodeError:
            return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        return None
    wall_ns, record = value
    if type(wall_ns) is not int or not isinstance(record, proto.InvocationRecord):
        return None
    return wall_ns, record


def lookup_in_rows(rows: Mapping[Hashable, Any], lookup: ResultLookup) -> StoredResult | None:
    """The port answered from an in-memory table image (the simulator's disk)."""
    found = stored_result(rows.get(lookup.invocation_id))
    if found is None or found[1].invocation_id != lookup.invocation_id:
        return None
    return found
