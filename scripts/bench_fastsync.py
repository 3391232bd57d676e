"""Benchmark section: fast sync from a certified snapshot vs full replay of the same chain."""

from __future__ import annotations

import time

from benchlib import Row, SectionRun, Stat, fmt_time, section


@section("fastsync", "Fast sync vs full replay of a long chain", notes=[
    "A reward chain of N blocks (2 signed transfers each, 4 validators, devnet parameters: epochs "
    "of 100 blocks) is built once into LevelDB. **Full replay**: a fresh LevelDB store imports every "
    "block the way catch-up does (commit certificate verified, block applied, one synced batch per "
    "block). **Fast sync**: a fresh LevelDB store walks the trust path (one certified header per "
    "epoch boundary), checks the snapshot header's commit, fetches the 4096 bucket hashes and the "
    "buckets, verifies each against the state root and installs it in one batch. Both run in "
    "process against the serving node's handlers (no network), so the figure is the verification "
    "and storage work; over libp2p add the round trips (N/100/64 + 7 requests for fast sync, N/32 "
    "for replay).",
    "Goal: fast sync at least 100x faster (ratio <= 0.01).",
])
def bench_fastsync(run: SectionRun) -> None:
    import trio

    from chain.leveldb import LevelDBKV
    from chain.store import ChainStore
    from chain.types import CHAIN_REWARD
    from genesis.history import ChainHistory
    from genesis.params import devnet_params
    from genesis.testkit import account_keys, make_pact, validator_keys
    from node.sync.fastsync import SnapshotClient
    from node.sync.snapshots import SnapshotServer

    n_blocks = run.pick(10_000, 300)
    keys = validator_keys(4, prefix="bench-fastsync")
    payer = account_keys(1, prefix="bench-fastsync-payer")[0]
    pact = make_pact(keys, [(payer.address, 10**15)], params=devnet_params(), network_id="bench")
    with run.tempdir() as tmp:
        source = ChainHistory(ChainStore.open(LevelDBKV(tmp / "source"), pact), keys)
        started = time.perf_counter()
        source.grow_reward(n_blocks, payer, txs_per_block=2)
        build_s = time.perf_counter() - started
        blocks = [source.store.get_block(CHAIN_REWARD, h) for h in range(1, n_blocks + 1)]
        commits = [source.store.get_commit(CHAIN_REWARD, h) for h in range(1, n_blocks + 1)]

        def replay(index: int) -> float:
            store = ChainStore.open(LevelDBKV(tmp / f"replay-{index}"), pact)
            follower = ChainHistory(store, keys)
            started = time.perf_counter()
            for block, commit in zip(blocks, commits, strict=True):
                follower.import_block(block, commit)
            seconds = time.perf_counter() - started
            if store.state(CHAIN_REWARD).root != source.store.state(CHAIN_REWARD).root:
                raise RuntimeError("replay reached another state")
            store.close()
            return seconds

        def fast(index: int) -> float:
            store = ChainStore.open(LevelDBKV(tmp / f"fast-{index}"), pact)
            sets = dict(ChainHistory(store, keys).sets)
            server = SnapshotServer(source.store, source.sets.get)
            client = SnapshotClient(store, lambda protocol, data, size: server.handle(protocol, data), sets)

            async def main() -> None:
                await client.sync_chains(await client.get_offers(), log=lambda line: None)

            started = time.perf_counter()
            trio.run(main)
            seconds = time.perf_counter() - started
            if store.state(CHAIN_REWARD).root != source.store.state(CHAIN_REWARD).root:
                raise RuntimeError("fast sync reached another state")
            store.close()
            return seconds

        fast_s = [fast(i) for i in range(run.pick(5, 2))]
        replay_s = [replay(i) for i in range(run.pick(1, 1))]
        source.store.close()
    ours, base = Stat.of(fast_s), Stat.of(replay_s)
    run.row(Row(
        "fastsync.10k" if n_blocks == 10_000 else f"fastsync.{n_blocks}",
        f"fast sync to the head of a {n_blocks:,}-block chain", ours.median, base.median, "s",
        fmt_time(ours.median), fmt_time(base.median),
        "full replay of every block (commit check, apply, synced write)",
        ours.median / base.median, "lower", 0.01,
        extra={"speedup": base.median / ours.median, "build_s": build_s},
    ))
    run.note(f"Building the {n_blocks:,}-block chain took {build_s:.1f} s; "
             f"speedup {base.median / ours.median:,.0f}x.")
