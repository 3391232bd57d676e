"""Benchmark sections of the foundation: codec, block import, blobs, state, simulation."""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchlib import MiB, Row, SectionRun, Stat, fmt_rate, fmt_time, section

# --- shared fixtures ---------------------------------------------------------------------------


class RewardFixture:
    """Reward-chain blocks of signed transfers, built once per run with real signatures.

    Built with `genesis.testkit.LocalChains` (pure state transitions, no KV); every block is
    certified by the 4 validators, so block n+1 carries the commit certificate of block n."""

    N_VALIDATORS = 4

    def __init__(self, txs_per_block: int) -> None:
        from chain.payloads import Transfer
        from genesis.testkit import LocalChains, account_keys, make_pact, validator_keys

        self.Transfer = Transfer
        self.txs_per_block = txs_per_block
        self.validators = validator_keys(self.N_VALIDATORS, prefix="bench-validator")
        self.accounts = account_keys(txs_per_block, prefix="bench-account")
        self.pact = make_pact(
            self.validators, [(k.address, 10**15) for k in self.accounts], network_id="bench"
        )
        self.chains = LocalChains.create(self.pact, self.validators)
        self.blocks: list[Any] = []

    def ensure(self, n_blocks: int) -> list[Any]:
        """The first `n_blocks` blocks (built on demand)."""
        from chain.types import CHAIN_REWARD
        from genesis.testkit import sign_tx

        n = self.txs_per_block
        while len(self.blocks) < n_blocks:
            nonce = len(self.blocks)
            txs = [
                sign_tx(key, self.pact.network_id, CHAIN_REWARD, nonce,
                        self.Transfer(self.accounts[(i + 1 + nonce) % n].address, 1 + i))
                for i, key in enumerate(self.accounts)
            ]
            block, rejected = self.chains.advance(CHAIN_REWARD, txs)
            if rejected or len(block.txs) != n:
                raise RuntimeError(f"fixture block rejected {len(rejected)} transfers: {rejected[:1]}")
            self.blocks.append(block)
        return self.blocks[:n_blocks]

    def commit_of(self, index: int) -> Any:
        """The commit certificate of block `index` (carried by the next block, or the latest)."""
        from chain.types import CHAIN_REWARD

        if index + 1 < len(self.blocks):
            return self.blocks[index + 1].last_commit
        if index + 1 == len(self.blocks):
            return self.chains.commits[CHAIN_REWARD]
        raise IndexError(index)


_FIXTURES: dict[int, RewardFixture] = {}


def chain_caches() -> list[Any]:
    """The memo caches (`functools.lru_cache` / `cache`) of functions in loaded `chain` modules,
    such as the memoized signature check of `chain.crypto`."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not (name == "chain" or name.startswith("chain.")):
            continue
        for obj in vars(module).values():
            if callable(getattr(obj, "cache_clear", None)) and callable(getattr(obj, "cache_info", None)):
                if all(obj is not f for f in found):
                    found.append(obj)
    return found


def clear_chain_caches() -> int:
    """Clear the memo caches, and the codec's remembered wire forms: a synced block arrives as
    bytes, so nothing about it is remembered."""
    from chain import codec

    codec.clear_memos()
    caches = chain_caches()
    for cached in caches:
        cached.cache_clear()
    return len(caches)


def reward_fixture(txs_per_block: int = 200) -> RewardFixture:
    if txs_per_block not in _FIXTURES:
        _FIXTURES[txs_per_block] = RewardFixture(txs_per_block)
    return _FIXTURES[txs_per_block]


# --- codec -------------------------------------------------------------------------------------


@section("codec", "Canonical codec vs plain msgpack", notes=[
    "Ours: `chain.codec.encode` (schema walk with type, range and size checks, then "
    "`msgpack.packb`) and `chain.codec.decode` (unpack, field-by-field validation into frozen "
    "dataclasses, and a re-pack to reject non-canonical bytes).",
    "Baseline: `msgpack.packb(to_wire(obj))` with the wire form computed beforehand, and "
    "`msgpack.unpackb(bytes)` into plain lists: the serialization alone, no validation.",
    "The block is a reward-chain block at height 2: 200 signed `Transfer` transactions and the "
    "commit certificate (4 precommit signatures) of height 1.",
])
def bench_codec(run: SectionRun) -> None:
    import msgpack

    from chain.codec import decode, encode, to_wire
    from chain.types import Block, Transaction

    fixture = reward_fixture(200)
    block = fixture.ensure(2)[1]
    assert block.last_commit is not None and len(block.last_commit.signatures) == 4
    tx = block.txs[0]
    repeat = run.pick(15, 3)
    for label, obj, cls, goals in (
        ("tx", tx, Transaction, (10.0, 30.0)),
        ("block", block, Block, (20.0, 35.0)),
    ):
        data = encode(obj)
        raw = to_wire(obj)
        assert decode(cls, data) == obj and msgpack.packb(raw) == data
        what = ("a Transaction with a Transfer payload" if label == "tx"
                else f"a Block of {len(obj.txs)} transfers + a 4-signature commit")
        ours, base = run.time_pair(lambda: encode(obj), lambda: msgpack.packb(raw), repeat)
        run.time_row(f"codec.{label}.encode", f"encode {what} ({len(data):,} B)", ours, base,
                     "msgpack.packb of the prepared wire form", goal=goals[0])
        ours, base = run.time_pair(
            lambda: decode(cls, data),
            lambda: msgpack.unpackb(data, raw=False, use_list=True, strict_map_key=True),
            repeat,
        )
        run.time_row(f"codec.{label}.decode", f"decode {what} ({len(data):,} B)", ours, base,
                     "msgpack.unpackb into lists", goal=goals[1])


# --- chain -------------------------------------------------------------------------------------


@section("chain", "Block import on LevelDB vs raw signature checks", notes=[
    "Ours: `ChainStore.import_block` on a fresh `LevelDBKV` in a temporary directory, from "
    "genesis, one block after another: every rule of `apply_block` (each transaction's "
    "signature, nonce and balances, the state root) and the synced LevelDB write batch of the "
    "block, its indexes, state changes and commit. The blocks are built beforehand with "
    "`genesis.testkit.LocalChains` (pure transitions, no KV).",
    "Baseline: raw PyNaCl `VerifyKey.verify` over the same transaction signatures (keys and "
    "signed messages prepared beforehand): the one cost an import cannot avoid. The ratio is "
    "our tx/s over the baseline's verifies/s, so 1.0 would mean an import costs nothing but its "
    "signature checks. Each block's import is followed by the baseline's check of that block's "
    "signatures, so the two are sampled side by side.",
    "Blocks/s and tx/s come from the median time per block over all imported blocks of all runs; "
    "p95 is the per-block p95.",
    "`+ last-commit check` turns on `Context.check_last_commit`: each block's certificate of its "
    "parent (4 precommits of 4 validators) is verified too.",
    "`chain.crypto` memoizes signature checks (a transaction seen in gossip or the mempool is not "
    "checked again at import). The memo caches of `chain` are cleared before every cold run, so "
    "`chain.import` and `chain.import+commit` check every signature, as a node syncing blocks "
    "it has never seen. `chain.import.warm` imports with every signature already in the cache "
    "(a validator that saw the transactions in its mempool): no goal, the ratio is no longer "
    "against work it does.",
])
def bench_chain(run: SectionRun) -> None:
    import nacl.signing

    from chain import codec, crypto
    from chain.leveldb import LevelDBKV
    from chain.store import ChainStore

    n_blocks = run.pick(20, 3)
    runs = run.pick(5, 2)
    fixture = reward_fixture(200)
    blocks = fixture.ensure(n_blocks)
    commits = [fixture.commit_of(i) for i in range(n_blocks)]
    txs_per_block = fixture.txs_per_block
    network = fixture.pact.network_id
    checks = [
        [(nacl.signing.VerifyKey(tx.body.sender),
          crypto.signing_input(network, crypto.KIND_TX, codec.encode(tx.body)), tx.signature)
         for tx in block.txs]
        for block in blocks
    ]

    def verify_block(index: int) -> None:
        for key, message, signature in checks[index]:
            key.verify(message, signature)

    base_ctx = fixture.chains.context()
    variants = [("", False, False), ("+commit", True, False)]
    if chain_caches():
        variants.append((".warm", False, True))
    for suffix, check_commit, warm in variants:
        ctx = dataclasses.replace(base_ctx, check_last_commit=check_commit)
        per_block: list[float] = []
        verify_samples: list[float] = []
        for _ in range(runs):
            with run.tempdir() as d:
                store = ChainStore.open(LevelDBKV(d / "chains"), fixture.pact)
                try:
                    if not warm:
                        clear_chain_caches()  # a node importing blocks it has not seen yet
                    gc.collect()
                    for index, (block, commit) in enumerate(zip(blocks, commits, strict=True)):
                        start = time.perf_counter()
                        store.import_block(block, ctx, commit)
                        per_block.append(time.perf_counter() - start)
                        start = time.perf_counter()
                        verify_block(index)
                        verify_samples.append((time.perf_counter() - start) / txs_per_block)
                    assert store.height(block.header.chain_id) == n_blocks
                finally:
                    store.close()
        blocks_stat, verify = Stat.of(per_block), Stat.of(verify_samples)
        tx_rate = txs_per_block / blocks_stat.median
        label = (" + last-commit check" if check_commit
                 else ", signatures already checked (memo cache warm)" if warm else "")
        run.row(Row(
            name=f"chain.import{suffix}",
            what=(f"import {n_blocks} reward blocks × {txs_per_block} signed transfers{label}, "
                  f"{runs} runs"),
            ours=tx_rate, baseline=verify.rate, unit="tx/s",
            ours_text=(f"{fmt_rate(tx_rate)} tx/s · {blocks_stat.rate:.3g} blocks/s "
                       f"(p95 {fmt_time(blocks_stat.p95)}/block)"),
            baseline_text=f"{fmt_rate(verify.rate)} verifies/s ({fmt_time(verify.median)} each)",
            baseline_what="PyNaCl VerifyKey.verify of the same signatures",
            ratio=tx_rate / verify.rate, better="higher", goal=None if warm else 0.25,
            extra={"blocks_per_s": blocks_stat.rate, "block_p95_s": blocks_stat.p95,
                   "block_median_s": blocks_stat.median, "verify_s": verify.median},
        ))
        if not check_commit and not warm:
            run.note(f"Here the signature checks are about {tx_rate / verify.rate:.0%} of an "
                     f"import; the rest is codec work (each transaction is encoded and hashed "
                     f"several times), state updates and the LevelDB write.")


# --- blobs -------------------------------------------------------------------------------------


@section("blobs", "Blob store vs plain files", notes=[
    "Ours: `BlobStore.put` (SHA-256, write to a temp file, fsync, rename, fsync the directory), "
    "`BlobStore.get` and `BlobStore.get(verify=True)` (read, then SHA-256 against the id). "
    "The blob is deleted (untimed) before each put, so every put writes.",
    "Baseline: open, write, flush, fsync and close a plain file in the same directory (for "
    "`put_vs_sha`, after a `hashlib.sha256` of the bytes: the whole work of a content-addressed "
    "write, so that row shows the cost of the temp file, rename and directory fsync); "
    "`Path.read_bytes()` of that file; the read plus `hashlib.sha256`. Reads hit the page cache "
    "for both.",
    "Random (incompressible) bytes; the temporary directory's file system is in the machine "
    "table.",
])
def bench_blobs(run: SectionRun) -> None:
    from chain.blobs import BlobStore

    sizes = run.pick([(4 * MiB, 15), (64 * MiB, 5)], [(1 * MiB, 3), (4 * MiB, 3)])
    with run.tempdir() as d:
        store = BlobStore(d / "blobs")
        plain = d / "plain"
        plain.mkdir()
        for size, repeat in sizes:
            data = os.urandom(size)
            digest = hashlib.sha256(data).digest()
            target = plain / digest.hex()
            label = f"{size // MiB}MiB"

            def plain_write(data: bytes = data, target: Path = target) -> None:
                with open(target, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())

            def drop_blob(digest: bytes = digest) -> None:
                store.delete(digest)

            def drop_plain(target: Path = target) -> None:
                target.unlink(missing_ok=True)

            ours, base = run.time_pair(
                lambda: store.put(data), plain_write, repeat,
                setup_ours=drop_blob, setup_base=drop_plain,
            )
            run.time_row(f"blobs.put.{label}", f"put a {label} blob", ours, base,
                         "plain write + fsync", goal=2.5, size=size)

            def hashed_write(data: bytes = data) -> None:
                hashlib.sha256(data).digest()
                plain_write()

            ours, base = run.time_pair(
                lambda: store.put(data), hashed_write, repeat,
                setup_ours=drop_blob, setup_base=drop_plain,
            )
            run.time_row(f"blobs.put_vs_sha.{label}", f"put a {label} blob", ours, base,
                         "hashlib.sha256 + plain write + fsync", goal=1.5, size=size)
            store.put(data)
            plain_write()
            ours, base = run.time_pair(lambda: store.get(digest), target.read_bytes, repeat)
            run.time_row(f"blobs.get.{label}", f"get a {label} blob", ours, base,
                         "plain read", goal=1.25, size=size)
            ours, base = run.time_pair(
                lambda: store.get(digest, verify=True),
                lambda: hashlib.sha256(target.read_bytes()).digest(),
                repeat,
            )
            run.time_row(f"blobs.get_verify.{label}", f"get(verify=True) a {label} blob", ours,
                         base, "plain read + hashlib.sha256", goal=1.25, size=size)
            store.delete(digest)
            drop_plain()


# --- state -------------------------------------------------------------------------------------


@section("state", "State: new state and root after a block", notes=[
    "Ours: `State.with_changes(...)` for a block that rewrites 200 accounts of a reward state "
    "holding N accounts, then `.root`: the touched buckets are copied and rehashed, the rest "
    "shared with the previous state.",
    "Baseline `dict copy`: copy the state as one flat dict and apply the 200 changes: what a "
    "naive immutable state costs, with no root at all.",
    "Baseline `full rehash`: the same new root computed from scratch (every bucket hashed, then "
    "the 16-ary Merkle root): what the root costs without copy-on-write buckets.",
])
def bench_state(run: SectionRun) -> None:
    from chain import codec, merkle
    from chain.records import Account, account_key
    from chain.state import BUCKET_ARITY, State, compute_bucket_hash

    n_accounts = run.pick(100_000, 10_000)
    n_changed = 200
    repeat = run.pick(11, 3)
    keys = [account_key(hashlib.sha256(i.to_bytes(8, "big")).digest()[:20]) for i in range(n_accounts)]
    items = {k: codec.encode(Account(1_000 + i, 0, 0, bytes(32))) for i, k in enumerate(keys)}
    state = State.from_items(2, 1, bytes(32), 1, items)
    step = n_accounts // n_changed
    changes: dict[bytes, bytes | None] = {
        keys[i * step]: codec.encode(Account(7 + i, 0, 0, bytes(32))) for i in range(n_changed)
    }
    after = state.with_changes(changes, 2, bytes(32), 2)
    buckets_after = [after.bucket(i) for i in range(len(after.bucket_hashes))]

    def ours() -> bytes:
        return state.with_changes(changes, 2, bytes(32), 2).root

    def dict_copy() -> dict[bytes, bytes]:
        flat = dict(items)
        flat.update(changes)  # type: ignore[arg-type]  # no deletes among these changes
        return flat

    def full_rehash() -> bytes:
        return merkle.compute_root([compute_bucket_hash(b) for b in buckets_after], BUCKET_ARITY)

    assert full_rehash() == ours()
    touched = len({i for i, (a, b) in enumerate(zip(state.bucket_hashes, after.bucket_hashes, strict=True)) if a != b})
    what = f"with_changes + root: {n_changed} of {n_accounts:,} accounts"
    o, b = run.time_pair(ours, dict_copy, repeat)
    run.time_row("state.apply.vs_dict", what, o, b, "flat dict copy + update (no root)", per="blocks/s")
    o, b = run.time_pair(ours, full_rehash, repeat)
    run.time_row("state.apply.vs_rehash", what, o, b, "root recomputed from every bucket",
                 goal=1.0, per="blocks/s")
    run.note(f"{n_changed} changed accounts fall in {touched} of {len(after.bucket_hashes)} "
             f"buckets here, so copy-on-write copies and rehashes about "
             f"{touched / len(after.bucket_hashes):.0%} of the state.")


SIM_LARGE_LIMIT_S = 600.0
"""The 1,000-node row's goal: its 60 simulated seconds within 10 minutes of wall time."""


@section("sim", "Deterministic network simulation: simulated time vs wall time", notes=[
    "Ours: `node.simulation.run_sim` — real engines (Tendermint, mempools, chain rules, Ed25519 "
    "signatures) on the simulated network under trio's MockClock; the workload sends transfers, "
    "datasets through their audit and vote lifecycle, and PoL-certified deltas. Baseline: real "
    "time (1 simulated second per wall second), so the ratio is the speed-up over real time.",
    "Finalized blocks per simulated second count the blocks of the three chains together (no empty "
    "blocks: a chain only makes blocks when it has work).",
])
def bench_sim(run: SectionRun) -> None:
    import logging as _logging

    from node.sim.simulation import SimConfig, run_sim

    _logging.disable(_logging.WARNING)
    try:
        # Once per process, outside the rows: imports, the honeypots' L0 audit (it loads the
        # toxicity classifier), the codec's schemas.
        run_sim(SimConfig(seed=2, nodes=4, validators=4, duration=8.0, liveness_bound=4.0, tx_rate=1.0))
        run.note("Each row is one `run_sim` after a 4-node warm-up run in the same process (imports, the "
                 "honeypots' L0 audit and its classifier load once per process); wall time includes the "
                 "genesis, the nodes' start and the invariant checks.")
        cases = [
            ("sim.7nodes", 7, 7, run.pick(60.0, 20.0), 1.0, 100.0),
            ("sim.7nodes.busy", 7, 7, run.pick(60.0, 20.0), 4.0, None),
            ("sim.100nodes", 100, 10, run.pick(20.0, 10.0), 1.0, 5.0),
        ]
        for name, nodes, validators, duration, rate, goal in cases:
            cfg = SimConfig(seed=1, nodes=nodes, validators=validators, duration=duration,
                            liveness_bound=duration / 2, tx_rate=rate)
            report = run_sim(cfg)
            _sim_row(run, name, cfg, report["wall_seconds"], report, goal)
        if not run.cfg.quick:
            _bench_sim_large(run)
    finally:
        _logging.disable(_logging.NOTSET)


def _sim_row(run: SectionRun, name: str, cfg: Any, wall: float, report: dict | None, goal: float | None) -> None:
    """A sim row; `report` None: the run did not finish within `wall` seconds."""
    speed = cfg.duration / wall
    if report is None:
        verdict, detail = "not checked: killed", f"did not finish within {wall:.0f} s wall"
    else:
        blocks = sum(report["heights"].values())
        verdict = "hold" if report["ok"] else "BROKEN"
        detail = (f"{speed:,.2f} sim-s per wall-s ({wall:.2f} s wall); "
                  f"{blocks / cfg.duration:.2f} finalized blocks per sim-s")
    run.row(Row(
        name=name,
        what=f"{cfg.nodes} nodes ({cfg.validators} validators"
             f"{f', about {cfg.peers_per_node} connections each' if cfg.peers_per_node else ', all connected'}), "
             f"{cfg.duration:g} simulated s, {cfg.tx_rate:g} client tx/s, all invariants {verdict}",
        ours=speed, baseline=1.0, unit="x", ours_text=detail,
        baseline_text="1 sim-s per wall-s", baseline_what="real time",
        ratio=speed if report is not None and report["ok"] else 0.0, better="higher", goal=goal,
        extra={"wall_s": wall, "blocks": float(sum(report["heights"].values())) if report else 0.0},
    ))


def _bench_sim_large(run: SectionRun) -> None:
    """1,000 nodes, 100 validators (full bench only), in a child process killed at the limit."""
    from node.sim.simulation import SimConfig

    cfg = SimConfig(seed=1, nodes=1000, validators=100, duration=60.0, liveness_bound=30.0, tx_rate=1.0,
                    peers_per_node=16)
    code = ("import json, logging; logging.disable(logging.WARNING)\n"
            "from node.sim.simulation import SimConfig, run_sim\n"
            f"print(json.dumps(run_sim(SimConfig(seed={cfg.seed}, nodes={cfg.nodes}, validators={cfg.validators}, "
            f"duration={cfg.duration}, liveness_bound={cfg.liveness_bound}, tx_rate={cfg.tx_rate}, "
            f"peers_per_node={cfg.peers_per_node}))))\n")
    started = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=SIM_LARGE_LIMIT_S + 60.0,
                             cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        _sim_row(run, "sim.1000nodes", cfg, time.perf_counter() - started, None, cfg.duration / SIM_LARGE_LIMIT_S)
        return
    report = json.loads(out.stdout.strip().splitlines()[-1])
    _sim_row(run, "sim.1000nodes", cfg, report["wall_seconds"], report, cfg.duration / SIM_LARGE_LIMIT_S)
