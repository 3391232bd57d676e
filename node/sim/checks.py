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

Learning runs add:

- **no forged delta accepted**: no claim of a byzantine contributor (nor a copy) is ever
  certified or accepted, nor in any block's deltas, on any honest node;
- **re-verify**: every delta the validity replay sees applied passes the real verifier again,
  on its bundle from a node's blob store and against the chain as it was just before the close
  that applied it (`Reverifier`);
- **heads**: every honest node has the same head and delta list for every parameter block, and
  materialises the same bytes for every head with deltas (`check_materialised`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chain import codec
from chain.commit import InvalidCommit, verify_commit
from chain.context import Context
from chain.errors import BlyanError, InvalidBlock, MissingDependency
from chain.kv import MemoryKV
from chain.ledger import LedgerView, read_ledger_view
from chain.pact import GenesisPact
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_CERTIFIED,
    STATUS_APPROVED,
    STATUS_REJECTED,
    AcceptedDelta,
    ClaimRecord,
    DatasetRecord,
    Earning,
    ExpertState,
    dataset_key,
    delta_key,
    earning_key,
    is_expert_key,
    paid_key,
    parse_expert_key,
)
from chain.reward import get_validator_set, validate_supply
from chain.rounds import get_claim
from chain.state import Overlay, State
from chain.store import ChainStore
from chain.types import CHAIN_DATASET, CHAIN_IDS, CHAIN_NAMES, CHAIN_PARAMETER, CHAIN_REWARD, ValidatorSet
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


ImportHook = Callable[[int, State, ChainStore], None]
"""Called after each block the validity replay imports: (chain id, that chain's state before
the block, the replay's store)."""


def check_validity(pact: GenesisPact, stores: dict[str, ChainStore], violations: list[Violation],
                   on_import: ImportHook | None = None) -> bool:
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
                before = replay.state(chain_id)
                replay.import_block(block, ctx)
            except MissingDependency:
                continue
            except (InvalidBlock, InvalidCommit) as err:
                violations.append(Violation("validity", f"{CHAIN_NAMES[chain_id]} height {h}: {err}"))
                return False
            if on_import is not None:
                on_import(chain_id, before, replay)
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
    """Datasets not decided (approved or rejected), or approved without their reward paid.
    Whether the decision was right is the data check's (`node.sim.data`)."""
    left = []
    for submission in datasets:
        raw = store.state(CHAIN_DATASET).get(dataset_key(submission))
        rec = None if raw is None else codec.decode(DatasetRecord, raw)
        if rec is None or rec.status not in (STATUS_APPROVED, STATUS_REJECTED):
            left.append(submission)
        elif rec.status == STATUS_APPROVED and \
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


# --- learning ----------------------------------------------------------------------------------


def check_no_forged_accepted(stores: dict[str, ChainStore], forged: dict[bytes, str],
                             violations: list[Violation]) -> bool:
    """No forged claim (`forged`: claim hash -> who made it) is certified, accepted or a delta
    of any block on any honest node."""
    ok = True
    for node, store in stores.items():
        view = Overlay(store.state(CHAIN_PARAMETER))
        applied = {h for _, state in read_expert_states(store) for h in state.deltas}
        for claim_hash, who in forged.items():
            rec = get_claim(view, claim_hash)
            status = rec.status if rec is not None else ""
            if status in (CLAIM_CERTIFIED, CLAIM_ACCEPTED) or claim_hash in applied \
                    or view.get(delta_key(claim_hash)) is not None:
                ok = False
                violations.append(Violation("no-forged-accepted", f"{node}: forged claim {claim_hash.hex()[:16]} of "
                                            f"{who} is {status or 'applied'}"))
    return ok


def read_expert_states(store: ChainStore) -> list[tuple[str, ExpertState]]:
    """Every parameter block's head record, by name."""
    state = store.state(CHAIN_PARAMETER)
    return sorted((parse_expert_key(k), codec.decode(ExpertState, v)) for k, v in state.items() if is_expert_key(k))


def check_heads(stores: dict[str, ChainStore], violations: list[Violation]) -> bool:
    """Every honest node has the same head and deltas for every parameter block."""
    seen: dict[str, tuple[str, tuple[bytes, tuple[bytes, ...]]]] = {}
    ok = True
    for node, store in stores.items():
        for name, state in read_expert_states(store):
            mine = (state.head, tuple(state.deltas))
            first = seen.setdefault(name, (node, mine))
            if first[1] != mine:
                ok = False
                violations.append(Violation("heads", f"{node} {name}: head {state.head.hex()[:16]} "
                                            f"({len(state.deltas)} deltas), {first[0]} has "
                                            f"{first[1][0].hex()[:16]} ({len(first[1][1])} deltas)"))
    return ok


Materialise = Callable[[str, str, ExpertState, ChainStore], bytes | None]
"""`materialise(node, block name, its state, the node's store)`: the blob id of the weights the
node builds for the head (`node.experts.materialise`), None when it lacks a delta blob; raises
`BlyanError` when the weights do not have the root the chain names."""


def check_materialised(stores: dict[str, ChainStore], materialise: Materialise, violations: list[Violation]) -> int:
    """Every honest node that holds the delta blobs builds the same bytes for every head with
    deltas; the number of (node, head) pairs compared (-1: a violation)."""
    seen: dict[tuple[str, bytes], tuple[str, bytes]] = {}
    compared, ok = 0, True
    for node, store in stores.items():
        for name, state in read_expert_states(store):
            if not state.deltas:
                continue
            try:
                blob_id = materialise(node, name, state, store)
            except BlyanError as err:
                ok = False
                violations.append(Violation("materialised", f"{node} {name} at {state.head.hex()[:16]}: {err}"))
                continue
            if blob_id is None:
                continue
            compared += 1
            first = seen.setdefault((name, state.head), (node, blob_id))
            if first[1] != blob_id:
                ok = False
                violations.append(Violation("materialised", f"{node} {name} at {state.head.hex()[:16]}: blob "
                                            f"{blob_id.hex()[:16]}, {first[0]} built {first[1].hex()[:16]}"))
    return compared if ok else -1


Reverify = Callable[[LedgerView, ClaimRecord], Any]
"""`reverify(ledger the claim was applied to, its record) -> VerifyReport` (`node.sim.learning`)."""


class Reverifier:
    """Re-verifies each delta the validity replay sees applied, against the ledger just before
    the block that applied it (the heads its validators measured on)."""

    def __init__(self, reverify: Reverify, violations: list[Violation]) -> None:
        self.reverify = reverify
        self.violations = violations
        self.checked: list[str] = []
        """Claims re-verified, in the order they were applied."""
        self.ok = True

    def on_import(self, chain_id: int, before: State, replay: ChainStore) -> None:
        if chain_id != CHAIN_PARAMETER:
            return
        after = replay.state(CHAIN_PARAMETER)
        changed = [i for i, (a, b) in enumerate(zip(before.bucket_hashes, after.bucket_hashes, strict=True)) if a != b]
        applied = [k[1:] for i in changed for k in after.bucket(i)
                   if k[:1] == b"D" and len(k) == 33 and before.get(k) is None]
        if not applied:
            return
        ledger = read_ledger_view(before, replay.state(CHAIN_DATASET))
        for claim_hash in sorted(applied):
            self._check(claim_hash, Overlay(after), ledger, after.height)

    def _check(self, claim_hash: bytes, view: Overlay, ledger: LedgerView, height: int) -> None:
        rec = get_claim(view, claim_hash)
        self.checked.append(claim_hash.hex())
        try:
            report = self.reverify(ledger, rec)
            failure = "" if report.accepted else f"{report.verdict.reason}: {report.rejection}"
        except BlyanError as err:
            failure = f"cannot re-verify: {err}"
        if failure:
            self.ok = False
            self.violations.append(Violation("reverify", f"delta {claim_hash.hex()[:16]} applied at parameter height "
                                             f"{height} does not verify again: {failure}"))

    def check_complete(self, store: ChainStore) -> bool:
        """Every delta `store` holds accepted was re-verified."""
        state = store.state(CHAIN_PARAMETER)
        for key, raw in state.items():
            if key[:1] == b"D" and len(key) == 33 and key[1:].hex() not in self.checked:
                self.ok = False
                accepted = codec.decode(AcceptedDelta, raw)
                self.violations.append(Violation("reverify", f"delta {key[1:].hex()[:16]} (applied at parameter "
                                                 f"height {accepted.height}) was never re-verified"))
        return self.ok


def compute_run_digest(digests: dict[str, str]) -> str:
    """One hash of every chain's finalized block hashes: equal runs give equal digests."""
    return hashlib.sha256("".join(digests[CHAIN_NAMES[c]] for c in CHAIN_IDS).encode()).hexdigest()
