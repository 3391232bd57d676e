"""Pending transactions of one chain: admission, fair selection for a block, removal on commit.

A transaction is admitted when it is well formed, signed, not a system transaction (those are
made by the proposer, never gossiped), and its nonce is one the sender could still use: at or
above the sender's nonce in the committed state and less than `max_nonce_gap` beyond it. A local
submission (`add(..., check_state=True)`, the RPC) is also refused when its payload fails against
the committed state after the sender's pending transactions before it (insufficient balance or
stake, ...): its sender is told why, where a pending transaction that can never be final would
only start an empty block. Gossip skips that check (a relayed transaction may follow ones this
node has not seen); `drop_failing` prunes what fails once a block could take it, and
`chain.transition.build_block` has the last word.

Memory is bounded three ways: `max_txs` transactions, `max_bytes` encoded bytes, and
`max_per_sender` transactions per sender. When the pool is full, a newcomer displaces the
highest-nonce transaction of the sender holding the most, if that sender holds more than the
newcomer's sender will once it is in: one sender cannot fill the pool and lock everyone else
out. ("More than it holds now" would let two senders displace each other back and forth for
ever, each gossip round evicting what the last one admitted; counting the newcomer means a
displaced sender is never left below the sender that displaced it.)

Selection takes, for each sender, its transactions in nonce order from its committed nonce with
no gap, and interleaves senders round-robin in order of first arrival, so one busy sender cannot
fill a block while others wait. Everything is ordered by explicit sequence numbers and sorts:
the same calls in the same order give the same pool and the same selections.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from chain import codec
from chain.context import Context
from chain.errors import DecodingError, InvalidSignature, InvalidTransaction, MissingDependency
from chain.state import Overlay, State
from chain.transition import apply_tx, get_nonce, is_system_tx, nonce_key, open_block_view, validate_tx_envelope
from chain.types import Transaction

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MempoolConfig:
    """Operator limits of one chain's mempool."""

    max_txs: int = 5_000
    """Transactions held in all."""
    max_bytes: int = 16 * 1024 * 1024
    """Encoded bytes held in all."""
    max_per_sender: int = 64
    """Transactions held per sender."""
    max_nonce_gap: int = 64
    """A nonce is admitted only below the sender's committed nonce plus this."""

    def __post_init__(self) -> None:
        if min(self.max_txs, self.max_bytes, self.max_per_sender, self.max_nonce_gap) < 1:
            raise ValueError("mempool limits must be positive")

    @classmethod
    def for_tests(cls) -> MempoolConfig:
        return cls(max_txs=256, max_bytes=1024 * 1024, max_per_sender=16, max_nonce_gap=16)


class Outcome(enum.Enum):
    """What `Mempool.add` did with a transaction."""

    ADDED = "added"
    """Admitted (gossip: accept)."""
    DUPLICATE = "duplicate"
    """Already held (ignore)."""
    NONCE_TAKEN = "nonce taken"
    """Another pending transaction of the sender holds that nonce (ignore)."""
    INVALID = "invalid"
    """Breaks a rule whoever relays it (gossip: reject, penalise the peer)."""
    NONCE_TOO_LOW = "nonce too low"
    """The nonce is already used in the committed state (ignore)."""
    NONCE_GAP = "nonce gap"
    """The nonce is too far ahead of the committed state (ignore)."""
    FULL = "full"
    """The pool is full and nothing could be displaced (ignore)."""
    SENDER_FULL = "sender full"
    """The sender already holds `max_per_sender` transactions (ignore)."""
    FAILS_STATE = "fails against state"
    """A local submission whose payload fails against the committed state after the sender's
    pending transactions (insufficient balance or stake, ...); only with `check_state`."""


@dataclass(frozen=True, slots=True)
class AddResult:
    """The outcome of `Mempool.add`, with a reason for humans."""

    outcome: Outcome
    """What happened."""
    reason: str = ""
    """Why it was not added (empty when it was)."""

    @property
    def added(self) -> bool:
        return self.outcome is Outcome.ADDED

    @property
    def is_invalid(self) -> bool:
        """True when the relaying peer deserves a penalty (gossip verdict REJECT)."""
        return self.outcome is Outcome.INVALID


@dataclass(frozen=True, slots=True)
class _Entry:
    tx: Transaction
    tx_hash: bytes
    sender: bytes
    nonce: int
    size: int
    seq: int
    """Arrival number: orders everything the pool does."""


class Mempool:
    """Pending transactions of one chain. Owned by the chain's consensus task; not thread-safe."""

    def __init__(self, chain_id: int, config: MempoolConfig | None = None) -> None:
        self.chain_id = chain_id
        self.config = config or MempoolConfig()
        self._entries: dict[bytes, _Entry] = {}
        """By transaction hash, in arrival order."""
        self._senders: dict[bytes, dict[int, _Entry]] = {}
        """Sender address -> nonce -> entry."""
        self._first_seq: dict[bytes, int] = {}
        """Sender address -> arrival number of the transaction that made it a pending sender."""
        self._next_seq = 0
        self._bytes = 0

    # --- queries ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, tx_hash: object) -> bool:
        return tx_hash in self._entries

    @property
    def total_bytes(self) -> int:
        """Encoded bytes of every pending transaction."""
        return self._bytes

    def get(self, tx_hash: bytes) -> Transaction | None:
        entry = self._entries.get(tx_hash)
        return None if entry is None else entry.tx

    def pending_hashes(self) -> list[bytes]:
        """Hashes of every pending transaction, in arrival order."""
        return [e.tx_hash for e in sorted(self._entries.values(), key=lambda e: e.seq)]

    def count_of(self, sender: bytes) -> int:
        """Transactions held for a sender address."""
        return len(self._senders.get(sender, ()))

    def holds_nonce(self, sender: bytes, nonce: int) -> bool:
        """Whether a transaction of `sender` with `nonce` is held."""
        return nonce in self._senders.get(sender, {})

    def has_ready(self, state: State | Overlay) -> bool:
        """Whether a block on `state` could take a transaction: some sender's committed nonce is
        held (a pool of nonce gaps alone is no work)."""
        return any(get_nonce(state, sender) in held for sender, held in self._senders.items())

    # --- admission --------------------------------------------------------------------------

    def add(self, tx: Transaction, state: State | Overlay, ctx: Context, *, check_state: bool = False) -> AddResult:
        """Admit `tx` if it is valid and fits; `state` is the chain's committed state. With
        `check_state` (a local submission), also refuse a payload that fails against it."""
        encoded = codec.encode(tx)
        size = len(encoded)
        tx_hash = codec.sha256(encoded)
        if tx_hash in self._entries:
            return AddResult(Outcome.DUPLICATE, "already pending")
        if size > ctx.params.consensus.max_tx_bytes:
            return AddResult(Outcome.INVALID, f"{size} bytes exceed {ctx.params.consensus.max_tx_bytes}")
        if is_system_tx(tx):
            return AddResult(Outcome.INVALID, "system transactions are made by the proposer")
        try:
            sender = validate_tx_envelope(tx, self.chain_id, ctx)
        except InvalidTransaction as err:
            if isinstance(err.__cause__, InvalidSignature):
                return AddResult(Outcome.INVALID, f"bad signature: not signed by its sender for network "
                                                  f"{ctx.network_id!r}")
            return AddResult(Outcome.INVALID, err.reason)
        nonce = tx.body.nonce
        committed = get_nonce(state, sender)
        if nonce < committed:
            return AddResult(Outcome.NONCE_TOO_LOW, f"nonce {nonce} is used: the sender's next nonce is {committed}")
        if nonce >= committed + self.config.max_nonce_gap:
            return AddResult(Outcome.NONCE_GAP, f"nonce {nonce} is {nonce - committed} ahead of the sender's "
                                                f"next nonce {committed} (at most {self.config.max_nonce_gap - 1})")
        held = self._senders.get(sender, {})
        if nonce in held:
            return AddResult(Outcome.NONCE_TAKEN, f"nonce {nonce} is taken by pending transaction "
                                                  f"{held[nonce].tx_hash.hex()}")
        if len(held) >= self.config.max_per_sender:
            return AddResult(Outcome.SENDER_FULL, f"sender holds {len(held)} transactions")
        if check_state:
            if not isinstance(state, State):
                raise TypeError("check_state needs the committed State (its height), not an Overlay")
            failure = self._failure_against(tx, sender, state, ctx)
            if failure:
                return AddResult(Outcome.FAILS_STATE, failure)
        victims = self._plan_evictions(sender, size)
        if victims is None:
            return AddResult(Outcome.FULL, f"{len(self)} transactions, {self._bytes} bytes")
        for victim in victims:
            logger.debug("mempool %d evicts %s", self.chain_id, victim.tx_hash.hex()[:16])
            self._drop(victim)
        self._insert(_Entry(tx, tx_hash, sender, nonce, size, self._next_seq))
        self._next_seq += 1
        return AddResult(Outcome.ADDED)

    def _failure_against(self, tx: Transaction, sender: bytes, state: State, ctx: Context) -> str:
        """Why `tx`'s payload fails on `state` after the sender's pending run before it; empty
        when it applies or cannot be judged here yet (a missing dependency).

        Pending transactions that fail end the run (they will be dropped). When the run stops
        short of `tx`'s nonce (a gap), the payload is judged as if the gap were filled: the
        nonce is set to `tx`'s, so only balances, stakes and the payload's own rules decide."""
        height = state.height + 1
        view = open_block_view(state, height, ctx)
        held = self._senders.get(sender, {})
        for nonce in range(get_nonce(state, sender), tx.body.nonce):
            if nonce not in held:
                break
            try:
                apply_tx(view, held[nonce].tx, self.chain_id, height, ctx)
            except (InvalidTransaction, DecodingError, MissingDependency):
                break
        view.put(nonce_key(sender), tx.body.nonce.to_bytes(8, "big"))  # the encoding apply_tx uses
        try:
            apply_tx(view, tx, self.chain_id, height, ctx)
        except InvalidTransaction as err:
            return err.reason
        except DecodingError as err:
            return str(err)
        except MissingDependency:
            return ""
        return ""

    def _plan_evictions(self, sender: bytes, size: int) -> list[_Entry] | None:
        """Entries to evict so that a newcomer of `size` bytes from `sender` fits; None if none do.

        Each eviction takes the highest nonce of the sender holding the most (ties: the sender
        that arrived last), and only while that sender holds more than the newcomer's sender
        will hold with the newcomer. Nothing changes unless every needed eviction is allowed.
        """
        excess_txs = len(self._entries) + 1 - self.config.max_txs
        excess_bytes = self._bytes + size - self.config.max_bytes
        if excess_txs <= 0 and excess_bytes <= 0:
            return []
        if size > self.config.max_bytes:
            return None
        counts = {s: len(held) for s, held in self._senders.items()}
        own = counts.get(sender, 0) + 1
        victims: list[_Entry] = []
        while excess_txs > 0 or excess_bytes > 0:
            richest = max(counts, key=lambda s: (counts[s], self._first_seq[s]))
            if counts[richest] <= own:
                return None
            nonces = sorted(self._senders[richest])
            victim = self._senders[richest][nonces[counts[richest] - 1]]
            counts[richest] -= 1
            victims.append(victim)
            excess_txs -= 1
            excess_bytes -= victim.size
        return victims

    def _insert(self, entry: _Entry) -> None:
        if entry.sender not in self._senders:
            self._senders[entry.sender] = {}
            self._first_seq[entry.sender] = entry.seq
        self._senders[entry.sender][entry.nonce] = entry
        self._entries[entry.tx_hash] = entry
        self._bytes += entry.size

    def _drop(self, entry: _Entry) -> None:
        del self._entries[entry.tx_hash]
        self._bytes -= entry.size
        held = self._senders[entry.sender]
        del held[entry.nonce]
        if not held:
            del self._senders[entry.sender]
            del self._first_seq[entry.sender]

    # --- selection and removal --------------------------------------------------------------

    def select(self, state: State | Overlay, max_txs: int, max_bytes: int) -> list[Transaction]:
        """Transactions for a block on `state`: at most `max_txs`, at most `max_bytes` encoded.

        Each sender's run of consecutive nonces from its committed nonce, interleaved one per
        sender per turn in order of first arrival. A sender whose next transaction does not fit
        in the bytes left is passed over from then on (its later nonces would leave a gap).
        """
        runs = []
        for sender in sorted(self._senders, key=lambda s: self._first_seq[s]):
            held = self._senders[sender]
            run = []
            nonce = get_nonce(state, sender)
            while nonce in held:
                run.append(held[nonce])
                nonce += 1
            if run:
                runs.append(run)
        chosen: list[Transaction] = []
        left = max_bytes
        depth = 0
        while runs and len(chosen) < max_txs:
            still = []
            for run in runs:
                if len(chosen) >= max_txs:
                    break
                entry = run[depth]
                if entry.size > left:
                    continue
                chosen.append(entry.tx)
                left -= entry.size
                if depth + 1 < len(run):
                    still.append(run)
            runs = still
            depth += 1
        return chosen

    def remove_committed(self, block_txs: Iterable[Transaction], state: State | Overlay) -> int:
        """Forget the transactions of a committed block and any whose nonce `state` has used.

        `state` is the chain's state after the block. Returns how many were removed.
        """
        removed = 0
        for tx in block_txs:
            entry = self._entries.get(tx.hash())
            if entry is not None:
                self._drop(entry)
                removed += 1
        for sender in sorted(self._senders, key=lambda s: self._first_seq[s]):
            committed = get_nonce(state, sender)
            stale = [e for n, e in sorted(self._senders[sender].items()) if n < committed]
            for entry in stale:
                self._drop(entry)
            removed += len(stale)
        return removed

    def remove(self, tx_hash: bytes) -> bool:
        """Forget one transaction (a block builder rejected it); False if it was not pending."""
        entry = self._entries.get(tx_hash)
        if entry is None:
            return False
        self._drop(entry)
        return True

    def drop_failing(self, state: State, ctx: Context, wanted: int) -> list[Transaction]:
        """Up to `wanted` transactions that a block on `state` could take, in selection order;
        each one met on the way that fails against `state` (after those before it) is dropped,
        with a debug log naming the reason. One that lacks a dependency is kept but not
        returned, and so are its sender's later ones: they may apply once another chain catches
        up.

        With `wanted=1` this is the "has work" question: a pool of failing transactions alone
        gives none, so it never starts an empty block."""
        height = state.height + 1
        view = open_block_view(state, height, ctx)
        found: list[Transaction] = []
        waiting: set[bytes] = set()  # senders whose earlier transaction lacks a dependency
        for tx in self.select(state, len(self), 1 << 62):
            if len(found) >= wanted:
                break
            entry = self._entries[tx.hash()]
            if entry.sender in waiting:
                continue
            try:
                apply_tx(view, tx, self.chain_id, height, ctx)
            except (InvalidTransaction, DecodingError) as err:
                logger.debug("mempool %d drops %s: %s", self.chain_id, entry.tx_hash.hex()[:16], err)
                self._drop(entry)
                continue
            except MissingDependency:
                waiting.add(entry.sender)
                continue
            found.append(tx)
        return found
