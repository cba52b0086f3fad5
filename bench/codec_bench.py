"""Encode and decode cost of the hot wire messages (the Paxos commit path and a client request).

Usage::

    .venv/bin/python bench/codec_bench.py [--rounds 2000]

Prints microseconds per encode and per decode (best of 5 runs of ``--rounds`` each) for:
an ``Accept`` carrying 1 and 20 commands (each an ``UpdateFunctionConfig``, as the
paxos benchmark's puts are), ``Accepted``, ``Heartbeat``, a ``Forward`` of one
command, a client ``UpdateConfig`` request and its reply (a ``FunctionRecord``, decoded
as the SDK does), and a Paxos log row as the store writes it (1 and 20 commands).
Times are the thread's CPU time (``time.thread_time``), so other processes on a
shared machine disturb them less than wall time. Run it before and after a codec
change (interleaved, on the same machine): it also checks that every message
decodes back to itself.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from meshfaas import client
from meshfaas.core import client_proto as proto
from meshfaas.core import faas
from meshfaas.core.codec import Codec, from_cbor, to_cbor
from paxos.messages import Accept, Accepted, Batch, Command, Forward, Heartbeat

BALLOT = (7, "n1")


def update(i: int) -> Command:
    patch = faas.ConfigPatch(description=f"k{i}=" + "76" * 64)
    payload = faas.UpdateFunctionConfig(name="kv", patch=patch, wall_ns=1_700_000_000_000_000_000 + i)
    return Command(client_id=f"n2/1/{i % 32}", seq=1000 + i, payload=payload)


def peer_messages() -> dict[str, Any]:
    return {
        "Accept 1 cmd": Accept(ballot=BALLOT, entries=((41, Batch(ballot=BALLOT, cmds=(update(0),))),),
                               commit_upto=40),
        "Accept 20 cmds": Accept(ballot=BALLOT, commit_upto=40, entries=(
            (41, Batch(ballot=BALLOT, cmds=tuple(update(i) for i in range(20)))),)),
        "Accepted": Accepted(ballot=BALLOT, slots=(41,), ok=True, promised=BALLOT, chosen_upto=40),
        "Heartbeat": Heartbeat(ballot=BALLOT, commit_upto=41, hb_id=0),
        "Forward 1 cmd": Forward(cmds=(update(1),)),
    }


def client_request() -> proto.ClientRequest:
    body = proto.UpdateConfig(name="kv", patch=faas.ConfigPatch(description="6b303d" + "76" * 60))
    return proto.ClientRequest(request_id="r123", api_key="mfk_admin_" + "x" * 40, body=body)


def client_reply() -> proto.ClientResponse:
    config = faas.FunctionConfig(handler="app.handler", env={"A": "1"},
                                 description="6b303d" + "76" * 60)
    record = faas.FunctionRecord(name="kv", config=config, code=faas.CodeRef(sha256="ab" * 32,
                                 size_bytes=1234), revision=57, created_wall_ns=1_700_000_000_000_000_000,
                                 modified_wall_ns=1_700_000_000_100_000_000, last_version=0)
    return proto.ok("r123", record)


def best_us(fn: Callable[[], Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.thread_time()
        for _ in range(rounds):
            fn()
        best = min(best, (time.thread_time() - start) / rounds)
    return best * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2000)
    rounds = p.parse_args().rounds
    codec = Codec("bench")
    print(f"{'message':<22} {'bytes':>6} {'encode us':>10} {'decode us':>10}")
    for name, msg in peer_messages().items():
        frame = codec.encode("n1", "n2", msg)
        assert codec.decode(frame).msg == msg
        enc = best_us(lambda m=msg: codec.encode("n1", "n2", m), rounds)
        dec = best_us(lambda f=frame: codec.decode(f), rounds)
        print(f"{name:<22} {len(frame):>6} {enc:>10.1f} {dec:>10.1f}")
    for name, value, decode in (("client UpdateConfig", client_request(), proto.decode_request),
                                ("client reply (record)", client_reply(), client._decode_response)):
        frame = proto.encode(value)
        assert decode(frame) == value
        enc = best_us(lambda v=value: proto.encode(v), rounds)
        dec = best_us(lambda f=frame, d=decode: d(f), rounds)
        print(f"{name:<22} {len(frame):>6} {enc:>10.1f} {dec:>10.1f}")
    for name, accept in (("log row, 1 cmd", "Accept 1 cmd"), ("log row, 20 cmds", "Accept 20 cmds")):
        row = [list(BALLOT), peer_messages()[accept].entries[0][1], False]
        blob = to_cbor(row)
        assert from_cbor(blob)[1] == row[1]
        enc = best_us(lambda r=row: to_cbor(r), rounds)
        dec = best_us(lambda b=blob: from_cbor(b), rounds)
        print(f"{name:<22} {len(blob):>6} {enc:>10.1f} {dec:>10.1f}")

if __name__ == "__main__":
    main()
