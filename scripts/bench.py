#!/usr/bin/env python3
"""Blyan benchmarks: our code against a plain baseline, on the same machine, in the same run.

Every row times one thing of ours and one baseline that does the irreducible part of the same
work (plain msgpack, raw PyNaCl, a plain file write, ...) and reports the ratio of the two, so a
figure means the same on a laptop and on a server. Samples of ours and of the baseline are taken
alternately, so that a machine that slows down mid-run slows both. A row may carry a goal on its
ratio; the run reports which goals are met.

    bash scripts/bench                    # everything; writes docs/BENCHMARKS.md
    bash scripts/bench --only codec,blobs # some sections
    bash scripts/bench --quick --out /tmp/b.md --json

Adding a section (a later issue's consensus simulation, gossip latency, tile loads, ...):

    @section("gossip", "Gossip latency", notes=["what the baseline is, caveats"])
    def bench_gossip(run: SectionRun) -> None:
        ours, base = run.time_pair(lambda: ..., lambda: ..., repeat=run.pick(15, 3))
        run.time_row("gossip.fanout", "what is timed", ours, base, "what the baseline does",
                     goal=2.0)

`run.skip("no GPU")` marks a section that cannot run here. `run.row(...)` takes any figures
(throughputs, latencies) when a time ratio does not fit.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_OUT = ROOT / "docs" / "BENCHMARKS.md"
MiB = 1 << 20

# --- results ----------------------------------------------------------------------------------


@dataclass
class Stat:
    """Seconds per operation over several samples."""

    median: float
    p95: float
    samples: int

    @classmethod
    def of(cls, samples: list[float]) -> Stat:
        if not samples:
            raise ValueError("no samples")
        ordered = sorted(samples)
        # nearest rank: the smallest sample with at least 95% of the samples at or below it
        rank = max(1, -(-95 * len(ordered) // 100))
        return cls(statistics.median(ordered), ordered[rank - 1], len(ordered))

    @property
    def rate(self) -> float:
        return 1.0 / self.median


@dataclass
class Row:
    """One benchmark: our figure, the baseline's, their ratio and the goal on that ratio."""

    name: str
    what: str
    ours: float
    """Our figure, in `unit`."""
    baseline: float
    """The baseline's figure, in `unit`."""
    unit: str
    """"s" (a time per operation: lower is better) or a rate such as "tx/s" (higher is better)."""
    ours_text: str
    baseline_text: str
    baseline_what: str
    ratio: float
    """ours / baseline."""
    better: str
    """"lower" or "higher": which way the ratio should go."""
    goal: float | None = None
    """A ceiling on the ratio when lower is better, a floor when higher is better."""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool | None:
        if self.goal is None:
            return None
        return self.ratio <= self.goal if self.better == "lower" else self.ratio >= self.goal

    @property
    def goal_text(self) -> str:
        if self.goal is None:
            return "—"
        return f"{'≤' if self.better == 'lower' else '≥'} {self.goal:g}"

    @property
    def result_text(self) -> str:
        return {None: "—", True: "pass", False: "FAIL"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["passed"] = self.passed
        return out


@dataclass
class SectionResult:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    error: str | None = None
    seconds: float = 0.0


class Skip(Exception):
    """Raised by `SectionRun.skip`: the section cannot run on this machine."""


@dataclass
class Config:
    quick: bool
    tmpdir: Path


class SectionRun:
    """What a section function gets: the config, timing helpers, and where rows go."""

    def __init__(self, cfg: Config, result: SectionResult) -> None:
        self.cfg = cfg
        self.result = result

    def pick(self, full: Any, quick: Any) -> Any:
        """`full` normally, `quick` under --quick."""
        return quick if self.cfg.quick else full

    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def skip(self, reason: str) -> None:
        raise Skip(reason)

    @contextmanager
    def tempdir(self) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="blyan-bench-", dir=self.cfg.tmpdir) as d:
            yield Path(d)

    # --- timing ---

    def calibrate(self, fn: Callable[[], object]) -> int:
        """How many calls make one sample last about `min_time` (timeit's autorange, shorter)."""
        min_time = self.pick(0.03, 0.005)
        number = 1
        while True:
            elapsed = _sample(fn, number, None)
            if elapsed >= min_time or number >= 1 << 20:
                return number
            number = max(number * 2, int(number * min_time / max(elapsed, 1e-9) * 1.2))

    def time_pair(
        self,
        ours: Callable[[], object],
        base: Callable[[], object],
        repeat: int,
        number: int | None = None,
        setup_ours: Callable[[], object] | None = None,
        setup_base: Callable[[], object] | None = None,
    ) -> tuple[Stat, Stat]:
        """Per-call time of `ours` and `base`, samples alternated; `number` calls a sample
        (calibrated when None; 1 when there is a setup, which runs untimed before each call)."""
        if setup_ours or setup_base:
            n_ours = n_base = 1
        elif number is None:
            n_ours, n_base = self.calibrate(ours), self.calibrate(base)
        else:
            n_ours = n_base = number
        a: list[float] = []
        b: list[float] = []
        for _ in range(repeat):
            a.append(_sample(ours, n_ours, setup_ours) / n_ours)
            b.append(_sample(base, n_base, setup_base) / n_base)
        return Stat.of(a), Stat.of(b)

    # --- rows ---

    def row(self, row: Row) -> Row:
        self.result.rows.append(row)
        return row

    def time_row(
        self,
        name: str,
        what: str,
        ours: Stat,
        base: Stat,
        baseline_what: str,
        goal: float | None = None,
        per: str = "ops/s",
        size: int | None = None,
    ) -> Row:
        """A row of two times per operation: ratio = our time / the baseline's (lower is better).
        With `size` (bytes per operation) the texts show a throughput in MiB/s instead of ops/s."""

        def text(s: Stat) -> str:
            rate = f"{s.rate * size / MiB:,.0f} MiB/s" if size else f"{fmt_rate(s.rate)} {per}"
            return f"{fmt_time(s.median)} · {rate} (p95 {fmt_time(s.p95)}, n={s.samples})"

        extra = {"ours_p95_s": ours.p95, "baseline_p95_s": base.p95, "ours_per_s": ours.rate,
                 "baseline_per_s": base.rate}
        if size:
            extra["bytes"] = float(size)
        return self.row(Row(
            name=name, what=what, ours=ours.median, baseline=base.median, unit="s",
            ours_text=text(ours), baseline_text=text(base), baseline_what=baseline_what,
            ratio=ours.median / base.median, better="lower", goal=goal, extra=extra,
        ))


def _sample(fn: Callable[[], object], number: int, setup: Callable[[], object] | None) -> float:
    """Seconds for `number` calls of `fn`, garbage collection off (as timeit does)."""
    if setup is not None:
        setup()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return time.perf_counter() - start
    finally:
        if was_enabled:
            gc.enable()


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("µs", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_rate(per_second: float) -> str:
    for suffix, scale in (("M", 1e6), ("k", 1e3)):
        if per_second >= scale:
            return f"{per_second / scale:.3g}{suffix}"
    return f"{per_second:.3g}"


# --- the registry ------------------------------------------------------------------------------

SectionFn = Callable[[SectionRun], None]


@dataclass
class Section:
    name: str
    title: str
    fn: SectionFn
    notes: list[str]


SECTIONS: dict[str, Section] = {}
"""Registered benchmark sections, in the order they run and are written."""


def section(name: str, title: str, notes: list[str] | None = None) -> Callable[[SectionFn], SectionFn]:
    """Register a benchmark section; `notes` are written under its table."""

    def register(fn: SectionFn) -> SectionFn:
        if name in SECTIONS:
            raise ValueError(f"benchmark section {name!r} registered twice")
        SECTIONS[name] = Section(name, title, fn, list(notes or []))
        return fn

    return register


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
                    for index, (block, commit) in enumerate(zip(blocks, commits)):
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
    touched = len({i for i, (a, b) in enumerate(zip(state.bucket_hashes, after.bucket_hashes)) if a != b})
    what = f"with_changes + root: {n_changed} of {n_accounts:,} accounts"
    o, b = run.time_pair(ours, dict_copy, repeat)
    run.time_row("state.apply.vs_dict", what, o, b, "flat dict copy + update (no root)", per="blocks/s")
    o, b = run.time_pair(ours, full_rehash, repeat)
    run.time_row("state.apply.vs_rehash", what, o, b, "root recomputed from every bucket",
                 goal=1.0, per="blocks/s")
    run.note(f"{n_changed} changed accounts fall in {touched} of {len(after.bucket_hashes)} "
             f"buckets here, so copy-on-write copies and rehashes about "
             f"{touched / len(after.bucket_hashes):.0%} of the state.")


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

    from node.simulation import SimConfig, run_sim

    _logging.disable(_logging.WARNING)
    try:
        cases = [
            ("sim.7nodes", 7, 7, run.pick(60.0, 20.0), 1.0, 100.0),
            ("sim.7nodes.busy", 7, 7, run.pick(60.0, 20.0), 4.0, None),
            ("sim.100nodes", 100, 10, run.pick(20.0, 10.0), 1.0, None),
        ]
        for name, nodes, validators, duration, rate, goal in cases:
            cfg = SimConfig(seed=1, nodes=nodes, validators=validators, duration=duration,
                            liveness_bound=duration / 2, tx_rate=rate)
            report = run_sim(cfg)
            wall = report["wall_seconds"]
            speed = duration / wall
            blocks = sum(report["heights"].values())
            run.row(Row(
                name=name,
                what=f"{nodes} nodes ({validators} validators), {duration:g} simulated s, "
                     f"{rate:g} client tx/s, all invariants {'hold' if report['ok'] else 'BROKEN'}",
                ours=speed, baseline=1.0, unit="x",
                ours_text=f"{speed:,.1f} sim-s per wall-s ({wall:.2f} s wall); "
                          f"{blocks / duration:.2f} finalized blocks per sim-s",
                baseline_text="1 sim-s per wall-s", baseline_what="real time",
                ratio=speed, better="higher", goal=goal,
                extra={"wall_s": wall, "blocks": float(blocks)},
            ))
    finally:
        _logging.disable(_logging.NOTSET)


# --- the machine -------------------------------------------------------------------------------


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg()) + " (1 / 5 / 15 min)"
    except OSError:
        return "unknown"


def machine_info(tmpdir: Path, load_at_start: str) -> dict[str, str]:
    info = {"platform": platform.platform()}
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info["cpu"] = model or platform.processor() or platform.machine()
    info["cores"] = str(os.cpu_count())
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["ram"] = f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
                break
    except OSError:
        pass
    info["python"] = f"{platform.python_version()} ({platform.python_implementation()})"
    info["torch"] = torch_info()
    for dist in ("msgpack", "PyNaCl", "plyvel"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    info["temp dir"] = f"{tmpdir} ({filesystem_of(tmpdir)})"
    info["load at start"] = load_at_start
    info["load at end"] = load_average()
    return info


def torch_info() -> str:
    try:
        import torch
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return "not importable"
    text = torch.__version__
    try:
        if torch.cuda.is_available():
            names = {torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())}
            return f"{text}, CUDA {torch.version.cuda}: {', '.join(sorted(names))}"
    except Exception:  # noqa: BLE001
        pass
    return f"{text} (no CUDA device)"


def filesystem_of(path: Path) -> str:
    """The file system type of the mount holding `path` (Linux), or "unknown"."""
    try:
        best, kind = "", "unknown"
        target = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) < 3:
                continue
            mount = parts[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best):
                best, kind = mount, parts[2]
        return kind
    except OSError:
        return "unknown"


# --- output ------------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(
    results: list[SectionResult], machine: dict[str, str], command: str, date: str, quick: bool,
    seconds: float,
) -> str:
    rows = [r for s in results for r in s.rows]
    goals = [r for r in rows if r.passed is not None]
    met = sum(1 for r in goals if r.passed)
    lines = [
        "# Benchmarks",
        "",
        "Generated by `scripts/bench.py`; do not edit by hand, run `bash scripts/bench` again.",
        "",
        f"- Date (UTC): {date}",
        f"- Command: `{command}`",
        f"- Mode: {'quick (small sizes, few repeats: not figures to quote)' if quick else 'full'}",
        f"- Sections: {', '.join(s.name for s in results)} ({seconds:.0f} s in all)",
        f"- Goals met: {met} of {len(goals)}",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
        *(f"| {k} | {_cell(v)} |" for k, v in machine.items()),
        "",
        "## How to read",
        "",
        "Each row runs our code and a baseline doing the irreducible part of the same work on the "
        "same machine in the same run, samples of the two alternated. **ratio = ours ÷ baseline** "
        "in the row's own unit: for times lower is better (1.0 = as fast as the baseline), for "
        "rates (tx/s) higher is better. A goal bounds the ratio (≤ a ceiling for times, ≥ a floor "
        "for rates). Times are medians per operation; p95 and the number of samples are in "
        "brackets. Time samples run with the garbage collector off, as `timeit` does; the chain "
        "import runs with it on. Run on an otherwise idle machine: under load the two sides of a "
        "row do not slow alike (on a shared 2-core VM the signature checks slowed twice as much "
        "as the import), so the load at the start and at the end is recorded above.",
        "",
    ]
    for s in results:
        lines += [f"## {s.name}: {s.title}", ""]
        if s.skipped:
            lines += [f"Skipped: {s.skipped}", ""]
            continue
        if s.error:
            lines += ["**Error**:", "", "```", s.error.rstrip(), "```", ""]
        if s.rows:
            lines += [
                "| benchmark | what | ours | baseline | ratio | goal | result |",
                "| --- | --- | --- | --- | ---: | --- | --- |",
            ]
            for r in s.rows:
                base = f"{r.baseline_text}: {r.baseline_what}"
                lines.append(
                    f"| `{r.name}` | {_cell(r.what)} | {_cell(r.ours_text)} | {_cell(base)} "
                    f"| {r.ratio:.3g} | {r.goal_text} | {r.result_text} |"
                )
            lines.append("")
        if s.notes:
            lines += [*(f"- {_cell(n)}" for n in s.notes), ""]
    return "\n".join(lines)


def render_table(results: list[SectionResult]) -> str:
    header = ("benchmark", "ours", "baseline", "ratio", "goal", "result")
    table = [header]
    for s in results:
        if s.skipped:
            table.append((s.name, f"skipped: {s.skipped}", "", "", "", ""))
        if s.error:
            table.append((s.name, "ERROR (see the markdown)", "", "", "", ""))
        for r in s.rows:
            ours = r.ours_text.split(" (")[0]
            base = r.baseline_text.split(" (")[0]
            table.append((r.name, ours, base, f"{r.ratio:.3g}", r.goal_text, r.result_text))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    out = []
    for i, row in enumerate(table):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench.py",
        description="Run Blyan's benchmarks against their baselines; write a markdown report.",
    )
    parser.add_argument("--quick", action="store_true",
                        help="small sizes and few repeats (for tests; figures not to quote)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help=f"run only these sections, of: {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="where to write the markdown (default: docs/BENCHMARKS.md)")
    parser.add_argument("--json", action="store_true",
                        help="print the results as JSON on stdout instead of the table")
    parser.add_argument("--tmpdir", type=Path, default=Path(tempfile.gettempdir()),
                        help="where the LevelDB and blob benchmarks write (default: system temp)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = parser.parse_args(argv)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SECTIONS]
        if unknown or not names:
            parser.error(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                         f"known: {', '.join(SECTIONS)}")
        args.sections = [n for n in SECTIONS if n in names]
    else:
        args.sections = list(SECTIONS)
    return args


def run_sections(names: list[str], cfg: Config, log: Callable[[str], None]) -> list[SectionResult]:
    results = []
    for name in names:
        sec = SECTIONS[name]
        result = SectionResult(sec.name, sec.title, notes=list(sec.notes))
        log(f"bench: {name} ...")
        start = time.perf_counter()
        try:
            sec.fn(SectionRun(cfg, result))
        except Skip as skip:
            result.skipped = str(skip)
        except Exception:  # noqa: BLE001 - report it and go on with the other sections
            result.error = traceback.format_exc()
            log(result.error)
        result.seconds = time.perf_counter() - start
        log(f"bench: {name} done in {result.seconds:.1f} s")
        results.append(result)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = os.environ.get("BLYAN_BENCH_COMMAND") or shlex.join(
        ["python", "scripts/bench.py", *(sys.argv[1:] if argv is None else argv)]
    )
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    load_at_start = load_average()
    started = time.perf_counter()
    cfg = Config(quick=args.quick, tmpdir=args.tmpdir)
    results = run_sections(args.sections, cfg, log)
    seconds = time.perf_counter() - started
    machine = machine_info(args.tmpdir, load_at_start)  # after the runs: importing torch is not free
    markdown = render_markdown(results, machine, command, date, args.quick, seconds)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown + "\n")
    log(f"bench: wrote {args.out}")

    rows = [r for s in results for r in s.rows]
    if args.json:
        doc = {
            "date": date, "command": command, "quick": args.quick, "machine": machine,
            "seconds": seconds,
            "sections": [
                {"name": s.name, "title": s.title, "skipped": s.skipped, "error": s.error,
                 "seconds": s.seconds, "notes": s.notes, "rows": [r.to_json() for r in s.rows]}
                for s in results
            ],
        }
        print(json.dumps(doc, indent=2))
    else:
        print(render_table(results))
        missed = [r.name for r in rows if r.passed is False]
        print(f"\ngoals met: {sum(1 for r in rows if r.passed)} of "
              f"{sum(1 for r in rows if r.passed is not None)}"
              + (f"; missed: {', '.join(missed)}" if missed else ""))
    if any(s.error for s in results):
        return 1
    if args.strict and any(r.passed is False for r in rows):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
