"""The clients of a simulation: wallets that sign transfers and resubmit them until final, and
(optionally) validator-set rotation. Contributors of datasets are `node.sim.data`'s, of deltas
`node.sim.learning`'s.

Every choice is drawn from the run's seeded RNG, so the workload is part of the run's pure
function of its seed. Audits and votes on datasets are the data service's (`node.sim.data`),
PoL votes the PoL service's (`node.sim.learning`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol

from chain import codec, crypto
from chain.pact import GenesisPact
from chain.payloads import Stake, Transfer, Unstake
from chain.store import ChainStore
from chain.types import CHAIN_REWARD, Transaction, TxBody
from node.sim.scenario import SIM_NETWORK, SimConfig


@dataclass
class Client:
    """A wallet: signs transactions and resubmits them until they are final."""

    key: crypto.PrivateKey
    nonces: dict[int, int] = field(default_factory=dict)
    pending: list[Transaction] = field(default_factory=list)


def sign(client: Client, payload: object, chain_id: int = CHAIN_REWARD, nonce: int | None = None) -> Transaction:
    """A transaction of `client`, with its next nonce on the chain unless one is given."""
    if nonce is None:
        nonce = client.nonces.get(chain_id, 0)
        client.nonces[chain_id] = nonce + 1
    body = TxBody(chain_id, client.key.public_key, nonce, payload)
    return Transaction(body, client.key.sign(SIM_NETWORK, crypto.KIND_TX, codec.encode(body)))


class Cluster(Protocol):
    """What the workload needs of the running simulation."""

    def submit(self, tx: Transaction, rng: random.Random) -> None:
        """Hand a transaction to a random live honest node."""

    def reference_store(self) -> ChainStore | None:
        """The store of the first live honest node (None: none is up)."""


class Workload:
    """Clients and contributors, with everything they submitted (for the liveness check)."""

    def __init__(self, cfg: SimConfig, pact: GenesisPact, client_keys: list[crypto.PrivateKey]) -> None:
        self.cfg = cfg
        self.pact = pact
        self.clients = [Client(k) for k in client_keys]
        self.wallets: list[Client] = []
        """Validators' own wallets (staking when the set rotates)."""
        self.submitted: list[tuple[int, bytes]] = []
        """(chain, transaction hash) of everything a client submitted."""
        self.datasets: list[bytes] = []
        """Submission hashes of datasets (approval and reward are waited for too)."""

    def track(self, client: Client, tx: Transaction) -> None:
        client.pending.append(tx)
        self.submitted.append((tx.body.chain_id, tx.hash()))

    def submit_transfer(self, cluster: Cluster, client: Client, rng: random.Random) -> None:
        to = self.clients[rng.randrange(len(self.clients))].key.address
        tx = sign(client, Transfer(to, rng.randrange(1, 1000)))
        self.track(client, tx)
        cluster.submit(tx, rng)

    def rotate(self, cluster: Cluster, node_keys: list[crypto.PrivateKey], rng: random.Random) -> None:
        """Every non-validator node stakes, and the last genesis validator unstakes all: at the
        next epoch boundary the set changes while the chains keep finalizing."""
        moves = [(key, Stake(2_000_000)) for key in node_keys[self.cfg.validators:]]
        moves.append((node_keys[self.cfg.validators - 1], Unstake(1_000_000)))
        for key, payload in moves:
            wallet = Client(key)
            tx = sign(wallet, payload)
            self.wallets.append(wallet)
            self.track(wallet, tx)
            cluster.submit(tx, rng)

    def resubmit(self, cluster: Cluster, rng: random.Random) -> None:
        """What a wallet does: send again whatever is not final yet."""
        store = cluster.reference_store()
        if store is None:
            return
        for client in self.clients + self.wallets:
            client.pending = [tx for tx in client.pending
                              if store.get_tx_location(tx.body.chain_id, tx.hash()) is None]
            for tx in client.pending:
                cluster.submit(tx, rng)
