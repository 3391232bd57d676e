"""Crash safety of the LevelDB ChainStore: a writer killed with SIGKILL at a random instant.

A child process (`crash_child.py`) appends reward-chain blocks and prints "COMMITTED <height>"
after each `import_block` returns. The parent reads those lines, kills the child after a seeded
random number of them plus a seeded random amount of busy work, reopens the store and checks that
no reported block was lost, that every block, hash index, transaction index and commit is there,
that the state matches the head and a replay of the stored blocks, and that the supply audit
passes. The next child resumes from the stored head.
"""

from __future__ import annotations

import importlib.util
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chain import codec
from chain.commit import verify_commit
from chain.leveldb import LevelDBKV
from chain.pact import build_genesis
from chain.reward import validate_supply
from chain.state import State
from chain.store import ChainStore
from chain.transition import apply_block
from chain.types import CHAIN_IDS, CHAIN_REWARD

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHILD_PATH = HERE / "crash_child.py"


def _load_child():
    spec = importlib.util.spec_from_file_location("crash_child", CHILD_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


child = _load_child()


def busy_work(iterations: int) -> int:
    """Burn a little CPU so that the kill lands at an arbitrary point of the child's loop."""
    acc = 0
    for i in range(iterations):
        acc = (acc * 31 + i) & 0xFFFF
    return acc


class Verifier:
    """What the parent knows of the chain so far: block hashes and the replayed state."""

    def __init__(self) -> None:
        self.ctx = child.context()
        self.hashes: list[bytes] = []
        self.state: State = build_genesis(child.PACT)[CHAIN_REWARD].state

    def check(self, path: Path, last_committed: int) -> int:
        """Reopen the store, check it from top to bottom, and return its reward-chain height."""
        store = ChainStore.open(LevelDBKV(path), child.PACT)
        try:
            return self._check(store, last_committed)
        finally:
            store.close()

    def _check(self, store: ChainStore, last_committed: int) -> int:
        height = store.height(CHAIN_REWARD)
        assert last_committed <= height <= last_committed + 1, (
            f"store at height {height}, child had reported {last_committed}"
        )
        assert all(store.height(c) == 0 for c in CHAIN_IDS if c != CHAIN_REWARD)
        head = store.get_header(CHAIN_REWARD, height)
        assert head.state_root == store.state(CHAIN_REWARD).root
        assert store.head(CHAIN_REWARD) == codec.hash_of(head)
        assert store.get_block(CHAIN_REWARD, height + 1) is None
        for h in range(1, height + 1):
            block = store.get_block(CHAIN_REWARD, h)
            assert block is not None, f"block {h} missing below head {height}"
            block_hash = block.hash()
            if h <= len(self.hashes):
                assert block_hash == self.hashes[h - 1], f"block {h} was rewritten"
            else:
                self.hashes.append(block_hash)
            assert store.get_height_of(CHAIN_REWARD, block_hash) == h
            for index, tx in enumerate(block.txs):
                loc = store.get_tx_location(CHAIN_REWARD, tx.hash())
                assert loc is not None and (loc.height, loc.index) == (h, index)
            commit = store.get_commit(CHAIN_REWARD, h)
            assert commit is not None, f"commit of block {h} missing"
            verify_commit(CHAIN_REWARD, h, block_hash, commit, self.ctx.validators, self.ctx.network_id)
        for h in range(self.state.height + 1, height + 1):
            self.state, _ = apply_block(self.state, store.get_block(CHAIN_REWARD, h), self.ctx)
        stored = store.state(CHAIN_REWARD)
        assert (self.state.root, self.state.head, self.state.height) == (stored.root, stored.head, height)
        assert sorted(self.state.items()) == sorted(stored.items())
        validate_supply(stored)
        return height


def run_child_until_killed(path: Path, rng: random.Random, stderr_path: Path) -> tuple[int, int, bool]:
    """Start a child, kill it at a random moment; return (opened height, last reported, killed)."""
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(CHILD_PATH), str(path)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, bufsize=1,
        )
    try:
        first = proc.stdout.readline()
        assert first.startswith("OPENED "), f"child did not open the store: {stderr_path.read_text()}"
        opened = last = int(first.split()[1])
        for _ in range(rng.randint(0, 4)):
            line = proc.stdout.readline()
            assert line == f"COMMITTED {last + 1}\n", f"{line!r}; stderr: {stderr_path.read_text()}"
            last += 1
        busy_work(rng.randint(0, 40_000))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        # lines already in the pipe were printed after their import returned: committed too
        for line in proc.stdout.read().splitlines():
            assert line == f"COMMITTED {last + 1}", f"{line!r}; stderr: {stderr_path.read_text()}"
            last += 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return opened, last, proc.returncode == -signal.SIGKILL


def run_kill_loop(tmp_path: Path, runs: int, seed: int) -> None:
    rng = random.Random(seed)
    path = tmp_path / "chains"
    verifier = Verifier()
    height = 0
    for run in range(runs):
        opened, last, killed = run_child_until_killed(path, rng, tmp_path / "child.stderr")
        assert killed, f"run {run}: child exited by itself: {(tmp_path / 'child.stderr').read_text()}"
        assert opened == height, f"run {run}: child resumed at {opened}, store was at {height}"
        try:
            height = verifier.check(path, last)
        except AssertionError as err:
            raise AssertionError(f"seed {seed}, run {run}: {err}") from err
    assert height > runs // 2, f"only {height} blocks in {runs} runs: the kills come too early"
    # once more from scratch: a full replay of every stored block from genesis
    full = Verifier()
    full.hashes = list(verifier.hashes)
    assert full.check(path, height) == height


@pytest.mark.slow
def test_crash_kill_restart_keeps_every_committed_block(tmp_path: Path) -> None:
    run_kill_loop(tmp_path, runs=50, seed=20_250_101)


@pytest.mark.long
@pytest.mark.parametrize("seed", [1, 2])
def test_crash_kill_restart_long(tmp_path: Path, seed: int) -> None:
    run_kill_loop(tmp_path, runs=200, seed=seed)


def test_crash_child_resumes_to_same_chain(tmp_path: Path) -> None:
    """Without kills: a child stopped at height 3 and restarted builds the chain of one that ran to 6."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    for path, stops in ((straight, [6]), (resumed, [3, 6])):
        for stop in stops:
            result = subprocess.run(
                [sys.executable, str(CHILD_PATH), str(path), str(stop)],
                cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
            )
            assert result.stdout.splitlines()[-1] == "DONE", result.stderr
    heads = []
    for path in (straight, resumed):
        store = ChainStore.open(LevelDBKV(path))
        heads.append((store.height(CHAIN_REWARD), store.head(CHAIN_REWARD), store.state(CHAIN_REWARD).root))
        store.close()
    assert heads[0] == heads[1]
    assert heads[0][0] == 6
