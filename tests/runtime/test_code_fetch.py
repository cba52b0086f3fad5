"""An invocation keeps looking for its code's blob a while: a node just started may
know no peer yet when Paxos (which reached it first) hands it an invocation."""

from __future__ import annotations

import trio
import trio.testing

from meshfaas.runtime.mesh import fetch_with_patience


class Peers:
    """Which peers the node can reach, and which of them has the blob."""

    def __init__(self, holder: str) -> None:
        self.holder = holder
        self.reachable: list[str] = []
        self.tries: list[list[str]] = []

    async def fetch(self, peers: list[str]) -> tuple[bool, str]:
        self.tries.append(list(peers))
        if self.holder in peers and self.holder in self.reachable:
            return True, ""
        return False, f"no peer of {len(peers)} had blob"


async def test_a_peer_heard_of_after_the_start_serves_the_blob(
        autojump_clock: trio.testing.MockClock) -> None:
    peers = Peers(holder="n3")

    async def gossip_hears_them() -> None:
        await trio.sleep(1.0)
        peers.reachable = ["n1", "n3"]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(gossip_hears_them)
        start = trio.current_time()
        ok, error = await fetch_with_patience(peers.fetch, (), lambda: peers.reachable,
                                              patience_s=5.0, retry_s=0.2)
    assert (ok, error) == (True, "")
    assert peers.tries[0] == []  # the core named no source
    assert peers.tries[-1] == ["n1", "n3"]
    assert 1.0 <= trio.current_time() - start < 1.5


async def test_it_gives_up_after_its_patience_with_the_last_error(
        autojump_clock: trio.testing.MockClock) -> None:
    peers = Peers(holder="n9")
    start = trio.current_time()
    ok, error = await fetch_with_patience(peers.fetch, ("n2",), lambda: ["n1"],
                                          patience_s=5.0, retry_s=0.2)
    assert not ok and error == "no peer of 2 had blob"
    assert 4.8 <= trio.current_time() - start <= 5.0 + 1e-6
    assert peers.tries[0] == ["n2"] and peers.tries[-1] == ["n1", "n2"]


async def test_a_first_try_that_works_does_not_wait(
        autojump_clock: trio.testing.MockClock) -> None:
    peers = Peers(holder="n2")
    peers.reachable = ["n2"]
    start = trio.current_time()
    assert await fetch_with_patience(peers.fetch, ("n2",), lambda: []) == (True, "")
    assert trio.current_time() == start and len(peers.tries) == 1
