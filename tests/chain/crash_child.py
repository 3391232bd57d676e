"""Child process of tests/chain/test_crash.py: append reward-chain blocks to a LevelDB ChainStore.

    python tests/chain/crash_child.py DATA_DIR [MAX_HEIGHT]

Opens (or initialises) the store, resumes from its stored head, and imports one block after
another, each with a few transfers whose nonces come from the stored state. After each
`import_block` returns it prints "COMMITTED <height>" (flushed). Keys, amounts, times and
proposers follow from the height alone, so a restarted child continues the same chain.
"""

from __future__ import annotations

import sys
from pathlib import Path

from chain.context import Context
from chain.leveldb import LevelDBKV
from chain.pact import GenesisPact, compute_genesis_validators
from chain.payloads import Transfer
from chain.store import ChainStore
from chain.transition import build_block, get_nonce
from chain.types import CHAIN_REWARD, Transaction
from genesis.testkit import account_keys, certify, make_pact, sign_tx, validator_keys

VKEYS = validator_keys(4, prefix="crash-validator")
AKEYS = account_keys(4, prefix="crash-account")
PACT: GenesisPact = make_pact(VKEYS, [(k.address, 10**9) for k in AKEYS], network_id="crashnet")
TXS_PER_BLOCK = 4


def context() -> Context:
    return Context(PACT.network_id, PACT.params, compute_genesis_validators(PACT))


def block_txs(store: ChainStore, height: int) -> list[Transaction]:
    """A few transfers for block `height`, nonces read from the stored state."""
    state = store.state(CHAIN_REWARD)
    nonces = {k.address: get_nonce(state, k.address) for k in AKEYS}
    txs = []
    for i in range(TXS_PER_BLOCK):
        sender = AKEYS[(height + i) % len(AKEYS)]
        recipient = AKEYS[(height + 2 * i + 1) % len(AKEYS)]
        amount = 1 + (height * 31 + i * 7) % 997
        txs.append(sign_tx(sender, PACT.network_id, CHAIN_REWARD, nonces[sender.address],
                           Transfer(recipient.address, amount)))
        nonces[sender.address] += 1
    return txs


def append_block(store: ChainStore, ctx: Context) -> int:
    state = store.state(CHAIN_REWARD)
    height = state.height + 1
    last_commit = store.get_commit(CHAIN_REWARD, state.height) if state.height > 0 else None
    if state.height > 0 and last_commit is None:
        raise SystemExit(f"no commit stored for head {state.height}")
    proposer = VKEYS[height % len(VKEYS)].address
    block, rejected = build_block(state, block_txs(store, height), ctx, proposer,
                                  state.time_ms + 1_000, last_commit)
    if rejected:
        raise SystemExit(f"transactions rejected at height {height}: {rejected}")
    store.import_block(block, ctx, certify(block, VKEYS, PACT.network_id))
    return height


def main() -> None:
    path = Path(sys.argv[1])
    max_height = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    store = ChainStore.open(LevelDBKV(path), PACT)
    ctx = context()
    print(f"OPENED {store.height(CHAIN_REWARD)}", flush=True)
    while store.height(CHAIN_REWARD) < max_height:
        height = append_block(store, ctx)
        print(f"COMMITTED {height}", flush=True)
    store.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
