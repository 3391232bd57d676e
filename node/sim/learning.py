"""The learning workload of a simulation: contributors who train real deltas and submit them, the
byzantine ones who forge bundles or copy reveals, and what each node runs for learning.

    before the run (on the genesis heads):  every contributor trains its bundle (`TRAINING`)
    each node:        a TileService over its own blob store (it serves the blocks' weights and
                      the bundle blobs of open and accepted claims, `ChainRecords`), a PolService
                      (validators fetch a revealed bundle over the tile protocol, provider first,
                      and verify it with the real verifier, inline: the clock is trio's
                      MockClock), and a SubmissionService per contributor it hosts
    at SUBMIT_AT_S:   each contributor's host commits its bundle (and reveals it on its own)
    copiers:          follow their host's feed; the first honest reveal they see is committed
                      under their own key (as it is, or re-signed as theirs) and revealed once
                      that commitment is final: the chain refuses it, and the reason is kept

Every delta is trained on the genesis heads and submitted at once, each honest one on its own
expert (a round applies one claim per block). A round's claims are all trained on the same heads,
and its close, which applies them, changes the model each of them was trained and is replayed
on: a validator must have fetched and verified every claim of a round before its close, which
is why a learning run's rounds are long (`scenario.LEARNING_ROUND_LENGTH`). One round is run:
training a second one needs the contributors to train on materialised heads (not done here).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from chain import codec, crypto
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.kv import MemoryKV
from chain.learning import SignedManifest, TrainingManifest, sign_manifest
from chain.ledger import LedgerView, read_ledger_view
from chain.pact import GenesisPact, compute_genesis_hash
from chain.payloads import CommitDelta, RevealDelta
from chain.records import CLAIM_STATUS_NAMES, AcceptedDelta, ClaimRecord, ExpertState, commitment_key, delta_key
from chain.rounds import compute_commitment, get_claim, make_claim
from chain.state import Overlay
from chain.store import ChainStore
from chain.transition import get_nonce
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER, Transaction, TxBody
from gpu.loader import BlobLoader
from node.core.feed import Committed, Feed, Subscription
from node.engine.engine import Engine
from node.experts.bundle_blobs import bundle_refs, fetch_blob
from node.experts.materialise import DeltaBlobMissing, Materialiser
from node.experts.tiles import TileService
from node.experts.weights import ChainRecords, StoreModelView
from node.pol.bundle import MANIFEST_FILE, Bundle
from node.pol.contributor import TrainingOptions, make_training_plan, train_bundle
from node.pol.data import Materials, blob_getter
from node.pol.service import FetchBundle, PolConfig, PolService, make_store_materials
from node.pol.submit import SubmissionRefused, SubmissionService
from node.pol.verifier import VerifyReport, verify_bundle
from node.sim.byzantine import Behaviour, lie_about
from node.sim.checks import Materialise, Reverify
from node.sim.scenario import LEARNING_BLOCKS, SIM_NETWORK, SimConfig, make_contributor_keys, make_learning_world
from p2p.network import Network

logger = logging.getLogger(__name__)
T = TypeVar("T")

HONEST = "honest"
COPIERS = ("copy_reveal", "resign_copy")
TRAINING = TrainingOptions(steps=16, batch_size=4, seq_len=64, lr=3e-3, warmup_steps=2)
"""Four segments of four steps (the learning world checkpoints every 4): a third of a second."""
FORGER_SEED = 100
"""Forgers train with seeds of their own, so no blob of theirs is an honest one's."""
SUBMIT_AT_S = 1.0
POL_CONFIG = PolConfig(queue=16, fetch_backoff_s=1.0)
"""Room for every claim a run makes (at most 8 honest and 4 forged)."""
FEED_QUEUE = 4096
MAX_HOST_WAITS = 1000
"""Restarts of a contributor's host to wait through before giving up on submitting."""


@dataclass
class Contribution:
    """One contributor: its bundle, and what became of it."""

    name: str
    kind: str
    """HONEST or one of FORGERY_KINDS."""
    key: PrivateKey
    host: int
    """Index of the node whose SubmissionService (or copier) acts for it."""
    bundle: Path | None = None
    """None for copiers (they have nothing of their own)."""
    claim_hash: bytes | None = None
    """The claim it committed to (`resign_copy`: its copy's; `copy_reveal` has none of its own)."""
    commitment: bytes | None = None
    """A copier's commitment."""
    copied: bytes | None = None
    """A copier: the honest claim it copied."""
    refused: str = ""
    """Why a node or the chain refused it, when one did."""
    revealed: bool = False
    """A copier sent (or tried to send) its reveal."""

    @property
    def is_forged(self) -> bool:
        return self.kind != HONEST


class Node(Protocol):
    """What the learning workload needs of a simulated node."""

    name: str
    key: PrivateKey
    behaviour: Behaviour
    feed: Feed
    engine: Engine | None
    up: bool
    blobs: BlobStore | None
    dir: Path | None
    submissions: dict[str, SubmissionService]
    ready: trio.Event


@dataclass
class Learning:
    """The contributors of a run and their bundles, trained in `prepare`."""

    cfg: SimConfig
    pact: GenesisPact
    workdir: Path
    hosts: list[int]
    """Nodes that may host contributors (honest ones), in order."""
    contributions: list[Contribution] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i, (kind, key) in enumerate(make_contributor_keys(self.cfg)):
            name = f"c{i}" if kind == HONEST else f"f{i}-{kind}"
            self.contributions.append(Contribution(name, kind, key, self.hosts[i % len(self.hosts)]))

    @property
    def genesis_blobs(self) -> dict[bytes, bytes]:
        return make_learning_world().blobs

    def prepare(self) -> None:
        """Train every bundle on the genesis heads (deterministic: seeded, one torch thread)."""
        m = genesis_materials(self.pact)
        world = make_learning_world()
        for i, c in enumerate(self.contributions):
            if c.kind in COPIERS:
                continue
            c.bundle = self.workdir / "bundles" / c.name
            if c.kind == HONEST:
                options = dataclasses.replace(TRAINING, datasets=world.train, blocks=(LEARNING_BLOCKS[i],), seed=i)
                train_bundle(m, make_training_plan(m, options), c.key, c.bundle)
            elif c.kind == "validation_trained":
                forge_validation_trained(m, c.key, c.bundle, world.train, world.validation, FORGER_SEED + i)
            else:
                forge_wrong_result(m, c.key, c.bundle, world.train, FORGER_SEED + i)

    # --- on every node --------------------------------------------------------------------

    async def run_node_services(self, node: Node, index: int, engine: Engine, nursery: trio.Nursery) -> None:
        """The node's PoL service and the SubmissionServices of the contributors it hosts."""
        verify = lie_about(verify_bundle) if node.behaviour.false_pol_votes else verify_bundle
        tiles = TileService(SIM_NETWORK, node.blobs, BlobLoader(hash_dir=node.dir / "tile-hashes"),
                            ChainRecords(StoreModelView(engine.store)), offload=run_inline)
        tiles.register(engine.network)
        pol = PolService(engine, node.key, node.blobs, node.dir / "votes", make_store_materials(engine, node.blobs),
                         fetch=make_bundle_fetcher(tiles, engine.network, node.blobs), config=POL_CONFIG,
                         name=node.name, verify=verify, offload=False)
        await nursery.start(pol.run)
        node.submissions = {}
        for c in self.contributions:
            if c.host == index and c.kind not in COPIERS:
                service = SubmissionService(engine, c.key, node.blobs, node.dir / "submissions" / c.name,
                                            name=f"{node.name}/{c.name}")
                node.submissions[c.name] = service
                nursery.start_soon(service.follow)

    # --- the workload ---------------------------------------------------------------------

    async def run(self, nodes: list[Node]) -> None:
        """Submit every bundle at SUBMIT_AT_S; copiers follow their hosts' feeds."""
        async with trio.open_nursery() as nursery:
            for c in self.contributions:
                if c.kind in COPIERS:
                    host = nodes[c.host]
                    nursery.start_soon(self._copy, c, host,
                                       host.feed.subscribe(f"copier-{c.name}", (Committed,), FEED_QUEUE))
            await trio.sleep(SUBMIT_AT_S)
            for c in self.contributions:
                if c.bundle is not None:
                    await self._submit(c, nodes)

    async def _submit(self, c: Contribution, nodes: list[Node]) -> None:
        host = nodes[c.host]
        for _ in range(MAX_HOST_WAITS):
            if host.up and c.name in host.submissions:
                break
            await host.ready.wait()  # a crash replaces the event: this waits for the restart
        else:
            c.refused = f"{host.name} never ran its submission service"
            return
        try:
            c.claim_hash = host.submissions[c.name].submit(c.bundle).claim_hash
        except SubmissionRefused as err:
            c.refused = f"submission refused: {err}"
        logger.info("%s (%s) submitted claim %s%s", c.name, c.kind, c.claim_hash.hex()[:16] if c.claim_hash else "-",
                    f": {c.refused}" if c.refused else "")

    async def _copy(self, c: Contribution, host: Node, feed: Subscription) -> None:
        """Commit a copy of the first honest claim revealed, then reveal it once committed."""
        honest = {h.name for h in self.contributions if h.kind == HONEST}
        reveal: RevealDelta | None = None
        try:
            async for event in feed:
                if event.chain_id != CHAIN_PARAMETER or not host.up or host.engine is None:
                    continue
                if reveal is None:
                    target = next((tx.body.payload for tx in event.block.txs if isinstance(tx.body.payload, RevealDelta)
                                   and self._contributor_name(tx.body.payload.claim.contributor) in honest), None)
                    if target is None:
                        continue
                    reveal = make_copy(c, target, host.name)
                    c.copied = codec.hash_of(target.claim)
                    copy_hash = codec.hash_of(reveal.claim)
                    c.claim_hash = copy_hash if copy_hash != c.copied else None
                    c.commitment = compute_commitment(copy_hash, c.key.address)
                    refused = send(host.engine, c.key, CommitDelta(c.commitment))
                    if refused:
                        c.refused, c.revealed = f"commitment refused: {refused}", True
                        return
                elif event.state.get(commitment_key(c.commitment)) is not None:
                    refused = send(host.engine, c.key, reveal)
                    c.refused = f"reveal refused: {refused}" if refused else ""
                    c.revealed = True
                    logger.info("%s (%s) revealed a copy of %s: %s", c.name, c.kind, c.copied.hex()[:16],
                                refused or "admitted")
                    return
        finally:
            host.feed.unsubscribe(feed)

    def _contributor_name(self, address: bytes) -> str | None:
        return next((c.name for c in self.contributions if c.key.address == address), None)

    # --- what the checks need -----------------------------------------------------------

    @property
    def forged(self) -> dict[bytes, str]:
        """Claim hashes of every forged claim or copy made, with who made it."""
        return {c.claim_hash: c.name for c in self.contributions if c.is_forged and c.claim_hash is not None}

    def make_reverify(self, blobs: BlobStore, validator: bytes) -> Reverify:
        """`reverify(ledger, claim record)`: the real verifier on the claim's bundle as `blobs`
        holds it, against the ledger the claim was applied to."""
        genesis_hash = compute_genesis_hash(self.pact)
        get_blob = blob_getter(blobs)

        def reverify(ledger: LedgerView, rec: ClaimRecord) -> VerifyReport:
            m = Materials(self.pact, genesis_hash, ledger, get_blob)
            return verify_bundle(m, Bundle(self.workdir / "reverify", rec.manifest, blobs), validator)

        return reverify

    def make_materialise(self, nodes: list[Node]) -> Materialise:
        """`materialise(node, name, state, store)` with each node's own blob store (into a
        scratch index: a run's nodes keep none)."""
        by_name = {n.name: n for n in nodes}

        def materialise(node: str, name: str, state: ExpertState, store: ChainStore) -> bytes | None:
            n = by_name[node]
            view = Overlay(store.state(CHAIN_PARAMETER))
            heads = Materialiser(n.blobs, n.dir / "check-heads.json")
            try:
                record = heads.materialise(name, state, lambda h: view.get_record(delta_key(h), AcceptedDelta))
            except DeltaBlobMissing:
                return None
            return record.blob_id

        return materialise

    def describe(self, store: ChainStore) -> list[dict]:
        """What became of each contribution, as `store` says."""
        view = Overlay(store.state(CHAIN_PARAMETER))
        out = []
        for c in self.contributions:
            rec = get_claim(view, c.claim_hash) if c.claim_hash is not None else None
            out.append({
                "contributor": c.name, "kind": c.kind,
                "claim": c.claim_hash.hex() if c.claim_hash else None,
                "status": CLAIM_STATUS_NAMES[rec.status] if rec is not None else ("refused" if c.refused
                                                                                   else "not revealed"),
                "reason": rec.reason if rec is not None else c.refused,
                "copied": c.copied.hex() if c.copied else None,
            })
        return out


# --- blobs and materials -----------------------------------------------------------------------


async def run_inline(fn: Callable[[], T]) -> T:
    """The tile service's offload under the mock clock: no thread (the clock would jump while
    one runs), a checkpoint instead."""
    await trio.lowlevel.checkpoint()
    return fn()


def make_bundle_fetcher(tiles: TileService, net: Network, blobs: BlobStore) -> FetchBundle:
    """A manifest's missing blobs from peers over the tile protocol, the provider first (as the
    daemon's `node.app.daemon.make_bundle_fetcher`, without an expert service)."""

    async def fetch(manifest: TrainingManifest, provider: str) -> None:
        missing = [ref for ref in bundle_refs(manifest) if not blobs.has(ref.blob_id)]
        if not missing:
            return
        connected = net.peers()
        peers = ([provider] if provider in connected else []) + [p for p in connected if p != provider]
        for ref in missing:
            await fetch_blob(tiles, net, peers, ref, blobs)

    return fetch


def genesis_materials(pact: GenesisPact) -> Materials:
    """The genesis heads and the learning world's blobs: what every contributor trains on."""
    store = ChainStore.open(MemoryKV(), pact)
    ledger = read_ledger_view(store.state(CHAIN_PARAMETER), store.state(CHAIN_DATASET))
    return Materials(pact, compute_genesis_hash(pact), ledger, blob_getter(make_learning_world().blobs))


# --- forgeries -------------------------------------------------------------------------------


def forge_validation_trained(m: Materials, key: PrivateKey, out: Path, train: tuple[str, ...],
                             validation: tuple[str, ...], seed: int) -> None:
    """Train on the validation set, and declare the training sets (re-signed): the loss gain is
    real, and the replay of the declared batches is what exposes it."""
    options = dataclasses.replace(TRAINING, datasets=train, blocks=(LEARNING_BLOCKS[0],), seed=seed)
    plan = make_training_plan(m, options)
    train_bundle(m, dataclasses.replace(plan, datasets=validation), key, out)
    resign(out, key, lambda man: dataclasses.replace(man, datasets=plan.datasets))


def forge_wrong_result(m: Materials, key: PrivateKey, out: Path, train: tuple[str, ...], seed: int) -> None:
    """Train honestly, then claim other result weights (re-signed): base + decode(delta) is not
    the claimed result root."""
    options = dataclasses.replace(TRAINING, datasets=train, blocks=(LEARNING_BLOCKS[0],), seed=seed)
    train_bundle(m, make_training_plan(m, options), key, out)

    def other_root(man: TrainingManifest) -> TrainingManifest:
        first = man.blocks[0]
        wrong = dataclasses.replace(first, result_root=crypto.sha256(b"forged" + first.result_root))
        return dataclasses.replace(man, blocks=(wrong, *man.blocks[1:]))

    resign(out, key, other_root)


def resign(bundle: Path, key: PrivateKey, change: Callable[[TrainingManifest], TrainingManifest]) -> None:
    """Rewrite a bundle's manifest with `change` and sign it again (its blobs stay)."""
    file = bundle / MANIFEST_FILE
    signed = codec.decode(SignedManifest, file.read_bytes())
    file.write_bytes(codec.encode(sign_manifest(key, change(signed.manifest))))


def make_copy(c: Contribution, honest: RevealDelta, provider: str) -> RevealDelta:
    """A copier's reveal of an honest claim: the claim as it is (`copy_reveal`), or its manifest
    re-signed as the copier's own (`resign_copy`: a new claim naming the same delta blob)."""
    if c.kind == "copy_reveal":
        return RevealDelta(honest.claim, honest.manifest, provider)
    signed = sign_manifest(c.key, dataclasses.replace(honest.manifest.manifest, contributor=c.key.public_key))
    return RevealDelta(make_claim(signed.manifest), signed, provider)


def send(engine: Engine, key: PrivateKey, payload: object) -> str:
    """Sign and submit a parameter-chain transaction; "" when admitted, else the refusal."""
    state = engine.store.state(CHAIN_PARAMETER)
    nonce = get_nonce(state, key.address) + engine.count_pending(CHAIN_PARAMETER, key.address)
    body = TxBody(CHAIN_PARAMETER, key.public_key, nonce, payload)
    result = engine.submit_tx(Transaction(body, key.sign(SIM_NETWORK, crypto.KIND_TX, codec.encode(body))))
    return "" if result.added else f"{result.outcome.value}: {result.reason}"
