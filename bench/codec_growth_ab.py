"""The growth rule's cost on the decoders' straight path, measured in one process.

Usage::

    .venv/bin/python bench/codec_growth_ab.py [--pairs 20]

For each hot message of bench/codec_bench.py, whole frames go through
``Codec.decode`` (cbor2's parse included) with the generated decoders of this tree
("new") or with the same generated source but the prologue before the growth rule
("old": a body of another length raises), swapped in and out of the codec's decoder
table and timed interleaved (``--pairs`` pairs, the order alternating, each time the
best of 3 x 2,000 calls). In one process, so both sides share the interpreter, the
heap and the load of the moment; the separate-process A/B of codec_bench.py on a
shared machine is noisier than the difference sought. Prints the medians and the
median paired difference (new - old) in microseconds of wall time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs

from meshfaas.core import codec as C

sys.path.insert(0, str(Path(__file__).resolve().parent))
import codec_bench  # (a sibling script, found through the path above)

Decoder = Callable[[Any, int], Any]


def old_decoder(cls: type) -> Decoder:
    """``cls``'s generated decoder with the prologue of before the growth rule."""
    captured: dict[str, Any] = {}
    generate = C._generate

    def spy(name: str, lines: list[str], namespace: dict[str, Any]) -> Callable[..., Any]:
        captured.update(lines=list(lines), namespace=namespace)
        return generate(name, lines, namespace)

    C._generate = spy
    try:
        C._compile_message(cls)
    finally:
        C._generate = generate
    lines, n = captured["lines"], len(attrs.fields(cls))
    i = lines.index(f"    if len(body) != {n + 1}:")
    refuse = f"        raise DecodeError(f'{{_name}}: expected {n} fields, got {{len(body) - 1}}')"
    old: Decoder = generate("decode", [*lines[:i + 1], refuse, *lines[i + 4:]],
                            captured["namespace"])
    return old


def best_us(codec: C.Codec, decoders: dict[type, Decoder], frame: bytes) -> float:
    C._DECODERS.update(decoders)
    return min(timeit.repeat(lambda: codec.decode(frame), number=2000, repeat=3)) / 2000 * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=20)
    pairs = p.parse_args().pairs
    codec = C.Codec("bench")
    msgs = {**codec_bench.peer_messages(), "client UpdateConfig": codec_bench.client_request()}
    frames = {name: codec.encode("n1", "n2", m) for name, m in msgs.items()}
    for name, frame in frames.items():
        assert codec.decode(frame).msg == msgs[name]  # (compiles every decoder involved)
    new = dict(C._DECODERS)
    old = {cls: old_decoder(cls) for cls in new}
    C._DECODERS.update(new)
    for name, frame in frames.items():
        o: list[float] = []
        n: list[float] = []
        for k in range(pairs):
            for side in ((old, o), (new, n))[:: 1 if k % 2 == 0 else -1]:
                side[1].append(best_us(codec, side[0], frame))
        diff = statistics.median(b - a for a, b in zip(o, n, strict=True))
        print(f"{name:22} old {statistics.median(o):8.2f} us  new {statistics.median(n):8.2f} us"
              f"  median paired difference {diff:+.2f} us")


if __name__ == "__main__":
    main()
