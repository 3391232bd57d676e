"""Peer discovery over real libp2p on 127.0.0.1 (p2p/libp2p_discovery.py): a node given one
live peer finds the rest, connection targets and the trim above `max_peers`, the address book
across a restart, and peers that send garbage over peer exchange."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from chain.codec import encode
from p2p.libp2p_discovery import PexAddr, PexResponse, dialable_addr
from p2p.libp2p_net import Libp2pConfig, Libp2pNetwork
from p2p.network import RemoteError
from tests.p2p.libp2p_support import WAIT, Watch, seed

PEX = "/blyan/pex/1"


@asynccontextmanager
async def chain_of(n: int, **overrides: object) -> AsyncIterator[list[Libp2pNetwork]]:
    """`n` nodes, node i (i > 0) bootstrapping to node i-1 only."""
    async with AsyncExitStack() as stack:
        nets: list[Libp2pNetwork] = []
        for i in range(n):
            boot = tuple(nets[-1].listen_addrs()) if nets else ()
            config = Libp2pConfig.for_tests(seed(i + 1), boot, **overrides)
            nets.append(await stack.enter_async_context(Libp2pNetwork.open(config)))
        yield nets


async def all_connected(nets: list[Libp2pNetwork], least: int, timeout: float = WAIT) -> None:
    watches = [Watch(net) for net in nets]
    for watch in watches:
        await watch.until(lambda w=watch: len(w.net.peers()) >= least, timeout)


def test_dialable_addresses() -> None:
    assert dialable_addr("/ip4/10.1.2.3/tcp/4001", False) == "/ip4/10.1.2.3/tcp/4001"
    assert dialable_addr("/ip4/127.0.0.1/tcp/4001", True) == "/ip4/127.0.0.1/tcp/4001"
    assert dialable_addr("/dns4/seed.example.org/tcp/4001", False) == "/dns4/seed.example.org/tcp/4001"
    for bad in (
        "/ip4/127.0.0.1/tcp/4001",  # loopback from a node that is not on loopback
        "/ip4/0.0.0.0/tcp/4001",
        "/ip4/224.0.0.1/tcp/4001",
        "/ip4/10.1.2.3/tcp/0",
        "/ip4/10.1.2.3/udp/4001",
        "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
        "/ip4/10.1.2.3",
        "not a multiaddr",
        "",
    ):
        assert dialable_addr(bad, False) is None, bad


async def test_new_node_given_one_live_peer_finds_the_rest() -> None:
    """A line of five (each knowing only its predecessor): every node ends up connected to
    every other one, through peer exchange alone."""
    async with chain_of(5) as nets:
        await all_connected(nets, len(nets) - 1)
        for net in nets:
            assert net.discovery.exchanges >= 1
        # A sixth node given only the last one finds all five.
        config = Libp2pConfig.for_tests(seed(9), tuple(nets[-1].listen_addrs()))
        async with Libp2pNetwork.open(config) as late:
            watch = Watch(late)
            await watch.connected_to(*(net.local_id for net in nets))


async def test_node_stops_dialling_at_its_target() -> None:
    async with chain_of(6, target_peers=2) as nets:
        await all_connected(nets, 2)
        for net in nets:
            assert net.discovery.book.entries  # it learned peers it did not dial
        # Nobody dialled beyond its target: every connection above 2 was someone else's dial.
        for net in nets:
            dialled = net.discovery._dialled  # noqa: SLF001
            assert len(dialled) <= 2


async def test_above_max_peers_the_newest_inbound_are_hung_up() -> None:
    async with AsyncExitStack() as stack:
        hub = await stack.enter_async_context(
            Libp2pNetwork.open(Libp2pConfig.for_tests(seed(1), target_peers=2, max_peers=2))
        )
        boot = tuple(hub.listen_addrs())
        leaves = [
            await stack.enter_async_context(
                Libp2pNetwork.open(Libp2pConfig.for_tests(seed(i), boot, target_peers=2, max_peers=6))
            )
            for i in range(2, 7)
        ]
        watch = Watch(hub)
        await watch.until(lambda: hub.discovery.trimmed >= 1, timeout=2 * WAIT)
        await watch.until(lambda: len(hub.peers()) <= 2, timeout=2 * WAIT)
        # The leaves that were hung up on had exchanged addresses first: they found each other.
        await all_connected(leaves, 1, timeout=2 * WAIT)


async def test_address_book_brings_a_restarted_node_back_without_bootstrap(tmp_path: Path) -> None:
    peers_file = tmp_path / "peers.json"
    async with chain_of(3) as (b, c, d):
        config = Libp2pConfig.for_tests(seed(20), tuple(b.listen_addrs()), peers_file=peers_file)
        async with Libp2pNetwork.open(config) as a:
            await Watch(a).connected_to(b.local_id, c.local_id, d.local_id)
        saved = {entry["peer"] for entry in json.loads(peers_file.read_text())["peers"]}
        assert {b.local_id, c.local_id, d.local_id} <= saved
        restarted = Libp2pConfig.for_tests(seed(20), (), peers_file=peers_file)  # no bootstrap
        async with Libp2pNetwork.open(restarted) as a:
            await Watch(a).connected_to(b.local_id, c.local_id, d.local_id)


async def test_unreadable_address_book_is_reported_and_bootstrap_still_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    peers_file = tmp_path / "peers.json"
    peers_file.write_text("{ not json")
    async with chain_of(1) as (b,):
        config = Libp2pConfig.for_tests(seed(20), tuple(b.listen_addrs()), peers_file=peers_file)
        async with Libp2pNetwork.open(config) as a:
            await Watch(a).connected_to(b.local_id)
    assert "unreadable" in caplog.text


async def test_garbage_peer_exchange_request_is_refused_and_penalised() -> None:
    async with chain_of(2) as (a, b):
        await Watch(b).connected_to(a.local_id)
        with pytest.raises(RemoteError, match="bad peer-exchange request"):
            await b.request(a.local_id, PEX, b"\xff\x00garbage", timeout=5.0)
        assert a.score(b.local_id) < 0


async def test_malformed_peer_exchange_response_is_penalised_and_not_learned() -> None:
    """A liar answers peer exchange with an unspecified address and a loopback one next to a
    good entry: the malformed entry is dropped, the liar penalised, the good one learned."""
    liar_config = Libp2pConfig.for_tests(seed(30), pex_protocol="/blyan/other-pex/1")
    async with Libp2pNetwork.open(liar_config) as liar:
        good = "12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo"
        bad = "12D3KooWJWoaqZhDaoEFshF7Rh1bpY9ohihFhzcW6d69Lr2NASuq"

        async def lie(requester: str, data: bytes) -> bytes:
            return encode(PexResponse((
                PexAddr(good, ("/ip4/127.0.0.1/tcp/9",)),
                PexAddr(bad, ("/ip4/0.0.0.0/tcp/9",)),
                PexAddr("not-a-peer-id", ("/ip4/127.0.0.1/tcp/9",)),
            )))

        liar.set_request_handler(PEX, lie, 1024)
        config = Libp2pConfig.for_tests(seed(31), tuple(liar.listen_addrs()))
        async with Libp2pNetwork.open(config) as victim:
            await Watch(victim).connected_to(liar.local_id)
            with trio.fail_after(WAIT):
                added = await victim.discovery._exchange(liar.local_id)  # noqa: SLF001
            assert added in (0, 1)  # 0: the loop's own exchange got there first
            assert good in victim.discovery.book.entries
            assert bad not in victim.discovery.book.entries
            assert victim.score(liar.local_id) < 0
