"""The invariants a simulation checks, and the report that says whether they held.

- **no double-sign**: no honest node signs two different votes for one (chain, height, round,
  step) — watched on every node's feed (`Checker`);
- **safety**: honest nodes finalized the same block at every height of every chain;
- **state roots**: they agree on each block's state root, and each node's state matches its head;
- **supply**: the reward ledger balances on every honest node, and at every height of a replay;
- **validity**: the longest honest chains replay from genesis through the chain rules and the
  commit certificates;
- **liveness**: every client transaction, and every dataset's approval and reward, is final on
  every honest node, and all honest nodes reach the same heights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from chain import codec
from chain.commit import InvalidCommit, verify_commit
from chain.context import Context
from chain.errors import BlyanError, InvalidBlock, MissingDependency
from chain.kv import MemoryKV
from chain.pact import GenesisPact
from chain.records import STATUS_APPROVED, DatasetRecord, Earning, dataset_key, earning_key, paid_key
from chain.reward import get_validator_set, validate_supply
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_NAMES, CHAIN_REWARD, ValidatorSet
from node.core.feed import Feed, Penalized, RoundStarted, Subscription, VoteSigned

CHECKER_QUEUE = 1 << 20
"""Events a node may produce in one run before the checker lags (it would say so)."""


@dataclass
class Violation:
    invariant: str
    detail: str


class Checker:
    """Watches every node's feed: signed votes (double signing), penalties, rounds."""

    def __init__(self, honest: set[str]) -> None:
        self.honest = honest
        self.votes: dict[tuple, bytes] = {}
        self.violations: list[Violation] = []
        self.penalties = 0
        self.max_round = 0
        self._subs: list[tuple[str, Subscription]] = []

    def watch(self, node: str, feed: Feed) -> None:
        """Follow one node's feed for the whole run (across its restarts: the feed is the node's)."""
        self._subs.append((node, feed.subscribe("checker", (VoteSigned, Penalized, RoundStarted), CHECKER_QUEUE)))

    def collect(self) -> None:
        """Check every event the nodes produced since the last call."""
        for node, sub in self._subs:
            for event in sub.drain():
                if isinstance(event, VoteSigned):
                    self.on_vote_signed(node, event)
                elif isinstance(event, Penalized):
                    self.penalties += 1
                else:
                    self.max_round = max(self.max_round, event.round)
            if sub.dropped:
                self.violations.append(Violation("checker", f"{node}: {sub.dropped} events not checked"))

    def on_vote_signed(self, node: str, event: VoteSigned) -> None:
        if node not in self.honest:
            return
        v = event.signed.vote
        key = (node, v.chain_id, v.height, v.round, v.step)
        earlier = self.votes.setdefault(key, v.block_hash)
        if earlier != v.block_hash:
            self.violations.append(Violation("no-double-sign", f"{node} signed two votes at {key[1:]}"))


def check_agreement(stores: dict[str, ChainStore], violations: list[Violation]) -> tuple[dict, dict, bool, bool]:
    """Safety and state roots across honest stores: (heights, digests, safety, state_roots)."""
    heights, digests = {}, {}
    safety = state_roots = True
    for chain_id in CHAIN_IDS:
        name = CHAIN_NAMES[chain_id]
        top = max(s.height(chain_id) for s in stores.values())
        heights[name] = top
        digest = hashlib.sha256()
        for h in range(1, top + 1):
            seen = {}
            for node, store in stores.items():
                block = store.get_block(chain_id, h)
                if block is not None:
                    seen[node] = block
            hashes = {b.hash() for b in seen.values()}
            if len(hashes) > 1:
                safety = False
                violations.append(Violation("safety", f"{name} height {h}: honest nodes finalized different blocks"))
            roots = {b.header.state_root for b in seen.values()}
            if len(roots) > 1:
                state_roots = False
                violations.append(Violation("state-roots", f"{name} height {h}: state roots differ"))
            digest.update(next(iter(seen.values())).hash() if len(hashes) == 1 else b"?")
        digests[name] = digest.hexdigest()
        for node, store in stores.items():
            header = store.get_header(chain_id, store.height(chain_id))
            if header.state_root != store.state(chain_id).root:
                state_roots = False
                violations.append(Violation("state-roots", f"{node} {name}: state does not match head"))
    return heights, digests, safety, state_roots


def check_ledgers(stores: dict[str, ChainStore], violations: list[Violation]) -> bool:
    ok = True
    for node, store in stores.items():
        try:
            validate_supply(store.state(CHAIN_REWARD))
        except BlyanError as err:
            ok = False
            violations.append(Violation("supply", f"{node}: {err}"))
    return ok


def check_validity(pact: GenesisPact, stores: dict[str, ChainStore], violations: list[Violation]) -> bool:
    """Replay the longest honest chains from genesis through the chain rules and commits."""
    network_id = pact.network_id
    ref = max(stores.values(), key=lambda s: sum(s.height(c) for c in CHAIN_IDS))
    replay = ChainStore.open(MemoryKV(), pact)
    known: dict[bytes, ValidatorSet] = {}

    def remember() -> None:
        vs = get_validator_set(replay.state(CHAIN_REWARD))
        known[vs.hash()] = vs

    def earning(chain_id: int, tx_hash: bytes) -> Earning | None:
        raw = replay.state(chain_id).get(earning_key(tx_hash)) if chain_id != CHAIN_REWARD else None
        return None if raw is None else codec.decode(Earning, raw)

    remember()
    progress = True
    while progress:
        progress = False
        for chain_id in CHAIN_IDS:
            h = replay.height(chain_id) + 1
            block = ref.get_block(chain_id, h)
            if block is None:
                continue
            prev_header = replay.get_header(chain_id, h - 1)
            vs = known.get(prev_header.next_validators_hash)
            prev_vs = known.get(prev_header.validators_hash) if h > 1 else None
            commit = ref.get_commit(chain_id, h)
            if vs is None:
                continue
            try:
                if commit is not None:
                    verify_commit(chain_id, h, block.hash(), commit, vs, network_id)
                ctx = Context(network_id, pact.params, vs, prev_vs, earnings=earning, next_validators=known.get)
                replay.import_block(block, ctx)
            except MissingDependency:
                continue
            except (InvalidBlock, InvalidCommit) as err:
                violations.append(Violation("validity", f"{CHAIN_NAMES[chain_id]} height {h}: {err}"))
                return False
            if chain_id == CHAIN_REWARD:
                remember()
                try:
                    validate_supply(replay.state(CHAIN_REWARD))
                except BlyanError as err:
                    violations.append(Violation("supply", f"replay at reward height {h}: {err}"))
                    return False
            progress = True
    for chain_id in CHAIN_IDS:
        if replay.height(chain_id) != ref.height(chain_id):
            violations.append(Violation("validity", f"{CHAIN_NAMES[chain_id]} replay stopped at "
                                        f"{replay.height(chain_id)} of {ref.height(chain_id)}"))
            return False
    return True


def find_unfinished_datasets(store: ChainStore, datasets: list[bytes]) -> list[bytes]:
    """Datasets not approved, or approved without their reward paid."""
    left = []
    for submission in datasets:
        raw = store.state(CHAIN_DATASET).get(dataset_key(submission))
        rec = None if raw is None else codec.decode(DatasetRecord, raw)
        if rec is None or rec.status != STATUS_APPROVED or \
                store.state(CHAIN_REWARD).get(paid_key(CHAIN_DATASET, submission)) is None:
            left.append(submission)
    return left


def check_liveness(stores: dict[str, ChainStore], heights: dict[str, int], submitted: list[tuple[int, bytes]],
                   datasets: list[bytes], liveness_bound: float, violations: list[Violation]) -> bool:
    ok = True
    for node, store in stores.items():
        for chain_id in CHAIN_IDS:
            if store.height(chain_id) != heights[CHAIN_NAMES[chain_id]]:
                ok = False
                violations.append(Violation("liveness", f"{node} {CHAIN_NAMES[chain_id]} at "
                                            f"{store.height(chain_id)}, others at {heights[CHAIN_NAMES[chain_id]]}"))
        missing = [h for c, h in submitted if store.get_tx_location(c, h) is None]
        missing += find_unfinished_datasets(store, datasets)
        if missing:
            ok = False
            violations.append(Violation("liveness", f"{node}: {len(missing)} of {len(submitted)} "
                                        f"transactions not final {liveness_bound:g}s after the last fault"))
    return ok


def compute_run_digest(digests: dict[str, str]) -> str:
    """One hash of every chain's finalized block hashes: equal runs give equal digests."""
    return hashlib.sha256("".join(digests[CHAIN_NAMES[c]] for c in CHAIN_IDS).encode()).hexdigest()
