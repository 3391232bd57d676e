"""Builders for tests and simulations: small pacts, signed transactions, certified blocks.

Keys here come from `PrivateKey.from_label`: deterministic and insecure by design.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from chain import codec, crypto
from chain.commit import make_commit, sign_vote
from chain.context import Context, EarningsView
from chain.pact import (
    PACT_VERSION,
    GenesisAccount,
    GenesisPact,
    GenesisValidator,
    build_genesis,
    compute_genesis_validators,
)
from chain.params import ChainParams
from chain.state import State
from chain.tensors import ModelSpec, TensorRecord
from chain.transition import apply_block, build_block
from chain.types import (
    CHAIN_IDS,
    STEP_PRECOMMIT,
    ZERO_PUBKEY,
    ZERO_SIGNATURE,
    Block,
    CommitCertificate,
    Transaction,
    TxBody,
    ValidatorSet,
    Vote,
)
from genesis.params import test_params

TEST_NETWORK = "testnet-unit"
TINY_MODEL = ModelSpec("blyan-tiny", "0.1.0", 256, 32, 1, 2, 2, 1, 64, 64, 0)


def validator_keys(n: int, prefix: str = "validator") -> list[crypto.PrivateKey]:
    return [crypto.PrivateKey.from_label(f"{prefix}-{i}") for i in range(n)]


def account_keys(n: int, prefix: str = "account") -> list[crypto.PrivateKey]:
    return [crypto.PrivateKey.from_label(f"{prefix}-{i}") for i in range(n)]


def make_pact(
    validators: list[crypto.PrivateKey],
    accounts: list[tuple[bytes, int]] = (),
    stake: int = 10_000,
    params: ChainParams | None = None,
    tensors: tuple[TensorRecord, ...] = (),
    network_id: str = TEST_NETWORK,
    model: ModelSpec = TINY_MODEL,
) -> GenesisPact:
    return GenesisPact(
        version=PACT_VERSION,
        network_id=network_id,
        genesis_time_ms=1_700_000_000_000,
        params=params or test_params(),
        validators=tuple(GenesisValidator(k.public_key, stake, f"v{i}") for i, k in enumerate(validators)),
        accounts=tuple(GenesisAccount(addr, bal) for addr, bal in accounts),
        model=model,
        tensors=tensors,
        datasets=(),
        bootstrap=(),
    )


def sign_tx(key: crypto.PrivateKey, network_id: str, chain_id: int, nonce: int, payload: object) -> Transaction:
    body = TxBody(chain_id, key.public_key, nonce, payload)
    return Transaction(body, key.sign(network_id, crypto.KIND_TX, codec.encode(body)))


def system_tx(chain_id: int, payload: object) -> Transaction:
    return Transaction(TxBody(chain_id, ZERO_PUBKEY, 0, payload), ZERO_SIGNATURE)


def certify(
    block: Block, keys: list[crypto.PrivateKey], network_id: str, round_: int = 0
) -> CommitCertificate:
    """Precommits of every key for `block`: a commit certificate."""
    h = block.header
    votes = [
        sign_vote(k, network_id, Vote(h.chain_id, h.height, round_, STEP_PRECOMMIT, block.hash(), k.address))
        for k in keys
    ]
    return make_commit(votes)


@dataclass
class LocalChains:
    """The three chains in memory, advanced block by block with real signatures (no network)."""

    pact: GenesisPact
    keys: list[crypto.PrivateKey]
    states: dict[int, State] = field(default_factory=dict)
    commits: dict[int, CommitCertificate | None] = field(default_factory=dict)
    blocks: dict[int, list[Block]] = field(default_factory=dict)

    @classmethod
    def create(cls, pact: GenesisPact, keys: list[crypto.PrivateKey]) -> LocalChains:
        genesis = build_genesis(pact)
        chains = cls(pact, keys)
        for chain_id in CHAIN_IDS:
            chains.states[chain_id] = genesis[chain_id].state
            chains.commits[chain_id] = None
            chains.blocks[chain_id] = []
        return chains

    @property
    def validators(self) -> ValidatorSet:
        return compute_genesis_validators(self.pact)

    def context(self, earnings: EarningsView | None = None) -> Context:
        return Context(self.pact.network_id, self.pact.params, self.validators, earnings=earnings)

    def propose(
        self, chain_id: int, txs: list[Transaction], earnings: EarningsView | None = None
    ) -> tuple[Block, list[tuple[Transaction, Exception]]]:
        state = self.states[chain_id]
        proposer = self.keys[state.height % len(self.keys)].address
        return build_block(
            state, txs, self.context(earnings), proposer, state.time_ms + 1_000, self.commits[chain_id]
        )

    def advance(
        self, chain_id: int, txs: list[Transaction], earnings: EarningsView | None = None
    ) -> tuple[Block, list[tuple[Transaction, Exception]]]:
        """Propose, apply and certify one block; returns it and the rejected transactions."""
        block, rejected = self.propose(chain_id, txs, earnings)
        state, _ = apply_block(self.states[chain_id], block, self.context(earnings))
        self.states[chain_id] = state
        self.commits[chain_id] = certify(block, self.keys, self.pact.network_id)
        self.blocks[chain_id].append(block)
        return block, rejected
