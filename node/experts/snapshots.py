"""The snapshot service: validators compact a block's delta chain into one blob.

    Committed(parameter block) or the expert service's heads built ─> for each block with
        len(state.deltas) >= snapshot_every whose head is materialised here (a validator):
        sign SnapshotClaim(head, materialised record, minor version bumped) ─> SnapshotPool
        ─> gossip "snapshot-attest" (rebroadcast until the head moves)
    gossip "snapshot-attest" ─> SnapshotPool (the chain's own rules; forged: REJECT, penalty)
    > 2/3 of the power ─> CommitSnapshot, which the parameter chain's proposer takes as a
        system transaction (`SystemSource`)

After the snapshot the block's record names the materialised blob and its delta chain is empty:
every node loads that one blob (`resolve_record` gives the state's record for a head without
deltas; the blob is already in the store of each node that materialised the head, and a node
without it fetches it over the tile protocol). Every node runs the pool (any validator may
propose); only validators sign. `snapshot_every` 0 turns automatic snapshots off; `request`
signs the snapshot of one block now (when asked), whatever its count of deltas.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from chain import codec
from chain.crypto import PrivateKey
from chain.errors import BlyanError
from chain.records import ExpertState
from chain.state import State
from chain.types import CHAIN_PARAMETER, Transaction
from node.core.feed import Committed
from node.core.pools import judge_gossip
from node.core.ports import NodeHandle
from node.experts.snapshot_pool import (
    MAX_SNAPSHOT_SIGNATURE_BYTES,
    AddOutcome,
    AddSignature,
    SnapshotPool,
    SnapshotSignature,
    compute_snapshot_record,
    sign_snapshot,
)
from node.experts.weights import ModelView, block_names
from p2p.network import PeerId, Verdict, topic_name

logger = logging.getLogger(__name__)

TOPIC_SNAPSHOT_ATTEST = "snapshot-attest"
FEED_QUEUE = 1024


@dataclass(frozen=True, slots=True)
class SnapshotConfig:
    rebroadcast_s: float = 5.0
    """How often own signatures on current heads are gossiped again (and heads rescanned)."""


class SnapshotService:
    """Sign snapshots of long delta chains (as a validator), pool everyone's signatures,
    propose the snapshot once they hold > 2/3 of the power."""

    def __init__(self, node: NodeHandle, key: PrivateKey | None, view: ModelView,
                 config: SnapshotConfig | None = None, *, name: str = "") -> None:
        self.node = node
        self.key = key
        self.view = view
        """The model with its materialised heads (the expert service's view)."""
        self.config = config or SnapshotConfig()
        self.name = name or node.network.local_id
        self.snapshot_every = node.store.pact.params.pol.snapshot_every
        self.pool = SnapshotPool(node.network_id)
        self.own: dict[tuple[str, bytes], SnapshotSignature] = {}
        """This validator's signatures, by (block, head), while the head stands."""
        self.requested: set[str] = set()
        """Blocks asked to be snapshotted at their next materialised head."""
        self.topic = topic_name(node.network_id, TOPIC_SNAPSHOT_ATTEST)
        self._wake = trio.Event()

    # --- running ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[SnapshotService] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        feed = node.feed.subscribe("snapshots", (Committed,), maxlen=FEED_QUEUE)
        node.network.subscribe(self.topic, self.on_gossip, MAX_SNAPSHOT_SIGNATURE_BYTES)
        node.add_system_source(CHAIN_PARAMETER, self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._sign_loop)
                nursery.start_soon(self._rebroadcast_loop)
                self.wake()
                task_status.started(self)
                async for event in feed:
                    if event.chain_id == CHAIN_PARAMETER:
                        self.on_parameter_block(event.state)
        finally:
            node.feed.unsubscribe(feed)

    @property
    def is_validator(self) -> bool:
        return self.key is not None and self.node.validators().get(self.key.address) is not None

    def wake(self) -> None:
        """Heads moved or were built here: look for snapshots to sign."""
        self._wake.set()

    def request(self, name: str) -> None:
        """Sign a snapshot of `name` at its current head once it is materialised here, whatever
        its count of deltas (an operator's or a test's ask)."""
        self.requested.add(name)
        self.wake()

    def on_parameter_block(self, state: State) -> None:
        """Forget claims and own signatures on heads that moved; look for new ones."""
        self.pool.prune(state)
        for name, head in list(self.own):
            current = self.view.get_state(name)
            if current is None or current.head != head:
                del self.own[(name, head)]
        self.wake()

    async def _sign_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            for signed in self.sign_due():
                await self._publish(signed)

    async def _rebroadcast_loop(self) -> None:
        while True:
            await trio.sleep(self.config.rebroadcast_s)
            self.wake()  # a heads pass this service missed
            for signed in list(self.own.values()):
                await self._publish(signed)

    # --- signing ------------------------------------------------------------------------------

    def is_due(self, name: str, state: ExpertState) -> bool:
        if not state.deltas:
            return False
        if name in self.requested:
            return True
        return self.snapshot_every > 0 and len(state.deltas) >= self.snapshot_every

    def sign_due(self) -> list[SnapshotSignature]:
        """Sign, as a validator, the snapshot of every due block whose head is materialised here
        and not signed yet; each goes into the pool. The signatures made."""
        if not self.is_validator:
            return []
        made = []
        for name in block_names(self.view.spec):
            state = self.view.get_state(name)
            if state is None or (name, state.head) in self.own or not self.is_due(name, state):
                continue
            materialised = self.view.get_record(name, state)
            if materialised is None:
                continue  # not built here yet: the expert service wakes us when it is
            tensor = compute_snapshot_record(state, materialised)
            signed = sign_snapshot(self.key, self.node.network_id, state.head, tensor)
            result = self.add(signed)
            if result.outcome is AddOutcome.INVALID:
                logger.error("%s: own snapshot of %s refused by the pool: %s", self.name, name, result.reason)
                continue
            self.own[(name, state.head)] = signed
            self.requested.discard(name)
            made.append(signed)
            logger.info("%s: signed the snapshot of %s at %s (%d deltas, blob %s)", self.name, name,
                        state.head.hex()[:16], len(state.deltas), tensor.blob_id.hex()[:16])
        return made

    async def _publish(self, signed: SnapshotSignature) -> None:
        try:
            await self.node.network.publish(self.topic, codec.encode(signed))
        except BlyanError as err:
            logger.warning("%s: publishing a snapshot signature failed: %s", self.name, err)

    # --- gossip ---------------------------------------------------------------------------------

    async def on_gossip(self, peer: PeerId, data: bytes) -> Verdict:
        return judge_gossip(self.node, peer, data, SnapshotSignature, MAX_SNAPSHOT_SIGNATURE_BYTES,
                            "snapshot signature", self.add)

    def add(self, signed: SnapshotSignature) -> AddSignature:
        result = self.pool.add(signed, self.node.store.state(CHAIN_PARAMETER), self.node.validators())
        if result.outcome is AddOutcome.ADDED:
            self.node.poke(CHAIN_PARAMETER)
        return result

    # --- SystemSource -------------------------------------------------------------------------

    def make_system_txs(self, state: State) -> list[Transaction]:
        return self.pool.make_system_txs(state, self.node.validators())

    def has_system_work(self, state: State) -> bool:
        return bool(self.make_system_txs(state))

    def describe(self) -> dict:
        return {"validator": self.is_validator, "snapshot_every": self.snapshot_every,
                "own_signatures": len(self.own), "pool_claims": len(self.pool.claims())}
