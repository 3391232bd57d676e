"""A contributor's submissions: commit the claim, reveal it once the commitment is final, serve
its bundle.

    submit(BUNDLE):  checks (signed by this node's key, this network, bases still the heads, a
                     round that has started, every blob present and matching), blobs copied
                     into the node's blob store (the tile protocol serves them from there),
                     CommitDelta(hash(claim, sender)) sent               -> "committing"
    the commitment is in a final block:  RevealDelta(claim, manifest) -> "revealing"
    the claim is on the chain:           its record tells the rest    -> "revealed"
    the reveal window closed first:                                   -> "expired"

Submissions are files under `submissions_dir` (the signed manifest and a small JSON state), so
a node that restarts between commit and reveal goes on where it stopped. A request that can
never succeed is refused when it arrives, with the reason (`SubmissionRefused`).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from chain import codec, crypto
from chain.blobs import BlobStore
from chain.crypto import PrivateKey, format_address
from chain.errors import BlyanError, DecodingError, InvalidTransaction
from chain.heads import validate_delta_claim
from chain.learning import MAX_MANIFEST_BYTES, SignedManifest, is_signed_by
from chain.payloads import CommitDelta, DeltaClaim, RevealDelta
from chain.records import commitment_key
from chain.rounds import compute_commitment, compute_round_of, get_claim, get_model_head, make_claim
from chain.state import Overlay
from chain.transition import get_nonce
from chain.types import CHAIN_PARAMETER, Transaction, TxBody
from consensus.pol import PolRejection
from node.core.feed import Committed
from node.core.ports import NodeHandle
from node.pol.bundle import Bundle

logger = logging.getLogger(__name__)

COMMITTING = "committing"
REVEALING = "revealing"
REVEALED = "revealed"
EXPIRED = "expired"
FAILED = "failed"


class SubmissionRefused(BlyanError):
    """A bundle that this node cannot submit, and why."""


@dataclass
class Submission:
    claim_hash: bytes
    signed: SignedManifest
    status: str
    commit_height: int = 0
    """Height of the block holding the commitment (0: not final yet)."""
    reason: str = ""

    @property
    def claim(self) -> DeltaClaim:
        return make_claim(self.signed.manifest)

    def to_json(self) -> dict:
        return {"claim": self.claim_hash.hex(), "status": self.status, "commit_height": self.commit_height,
                "reason": self.reason, "round": self.signed.manifest.round_id,
                "blocks": [b.name for b in self.signed.manifest.blocks]}


class SubmissionService:
    """This node's own claims, from commit to reveal."""

    def __init__(self, node: NodeHandle, key: PrivateKey | None, blobs: BlobStore, submissions_dir: Path,
                 *, name: str = "") -> None:
        self.node = node
        self.key = key
        self.blobs = blobs
        self.dir = Path(submissions_dir)
        self.name = name or node.network.local_id
        self.submissions: dict[bytes, Submission] = {}
        self._load()

    # --- submitting ---------------------------------------------------------------------------

    def submit(self, bundle_path: Path) -> Submission:
        """Check a bundle, keep its blobs, send its commitment."""
        if self.key is None:
            raise SubmissionRefused("this node has no key: it cannot sign a commitment")
        try:
            bundle = Bundle.load(Path(bundle_path))
        except PolRejection as err:
            raise SubmissionRefused(f"not a bundle: {err}") from err
        signed, man = bundle.signed, bundle.manifest
        if not is_signed_by(signed, self.key.public_key):
            raise SubmissionRefused(
                f"the manifest is signed by {format_address(crypto.address_of(man.contributor))}, this node's key "
                f"is {format_address(self.key.address)}: submit from the contributor's node (its key signs the "
                "commitment and the reveal)")
        if man.network_id != self.node.network_id:
            raise SubmissionRefused(f"the manifest is for network {man.network_id!r}, this node is on "
                                    f"{self.node.network_id!r}")
        claim = make_claim(man)
        claim_hash = codec.hash_of(claim)
        held = self.submissions.get(claim_hash)
        if held is not None and held.status not in (EXPIRED, FAILED):
            return held
        state = self.node.store.state(CHAIN_PARAMETER)
        view = Overlay(state)
        if get_claim(view, claim_hash) is not None:
            raise SubmissionRefused("this claim was revealed already")
        try:
            validate_delta_claim(view, claim)
        except InvalidTransaction as err:
            raise SubmissionRefused(str(err)) from err
        if man.model_head != get_model_head(view):
            raise SubmissionRefused("the model moved since this bundle was trained (another claim was applied): "
                                    "train again on the new heads")
        current = compute_round_of(state.height + 1, self.node.store.pact.params.pol)
        if man.round_id > current:
            raise SubmissionRefused(f"round {man.round_id} has not started: the chain is in round {current}")
        try:
            blobs = bundle.read_all()
        except PolRejection as err:
            raise SubmissionRefused(f"the bundle's blobs do not hold: {err}") from err
        for data in blobs:
            self.blobs.put(data)
        commitment = compute_commitment(claim_hash, self.key.address)
        if view.get(commitment_key(commitment)) is None:
            self._send(CommitDelta(commitment))
        sub = Submission(claim_hash, signed, COMMITTING)
        self.submissions[claim_hash] = sub
        self._save(sub)
        logger.info("%s: committed claim %s (round %d, %s)", self.name, claim_hash.hex()[:16], man.round_id,
                    ", ".join(b.name for b in man.blocks))
        return sub

    def _send(self, payload: object) -> Transaction:
        state = self.node.store.state(CHAIN_PARAMETER)
        nonce = get_nonce(state, self.key.address) + self.node.count_pending(CHAIN_PARAMETER, self.key.address)
        body = TxBody(CHAIN_PARAMETER, self.key.public_key, nonce, payload)
        tx = Transaction(body, self.key.sign(self.node.network_id, crypto.KIND_TX, codec.encode(body)))
        result = self.node.submit_tx(tx)
        if not result.added:
            raise SubmissionRefused(f"{type(payload).__name__} refused: {result.outcome.value}: {result.reason}")
        return tx

    # --- following the chain --------------------------------------------------------------

    def on_parameter_block(self, event: Committed) -> None:
        """Reveal what is committed; note what was revealed or expired."""
        state = event.state
        view = Overlay(state)
        window = self.node.store.pact.params.pol.reveal_window
        for sub in list(self.submissions.values()):
            if sub.status not in (COMMITTING, REVEALING):
                continue
            if get_claim(view, sub.claim_hash) is not None:
                sub.status = REVEALED
                self._save(sub)
                logger.info("%s: claim %s revealed", self.name, sub.claim_hash.hex()[:16])
                continue
            commitment = compute_commitment(sub.claim_hash, self.key.address)
            pending = view.get(commitment_key(commitment))
            if pending is None:
                if sub.commit_height and state.height >= sub.commit_height + window:
                    sub.status, sub.reason = EXPIRED, f"not revealed within {window} heights of the commitment"
                    self._save(sub)
                continue
            if sub.status == COMMITTING:
                sub.commit_height = sub.commit_height or state.height
                try:
                    self._send(RevealDelta(sub.claim, sub.signed, self.node.network.local_id))
                except SubmissionRefused as err:
                    sub.status, sub.reason = FAILED, str(err)
                    self._save(sub)
                    logger.warning("%s: cannot reveal %s: %s", self.name, sub.claim_hash.hex()[:16], err)
                    continue
                sub.status = REVEALING
                self._save(sub)

    async def follow(self) -> None:
        """Follow the node's feed (the daemon runs it)."""
        feed = self.node.feed.subscribe("submissions", (Committed,), maxlen=4096)
        try:
            async for event in feed:
                if event.chain_id == CHAIN_PARAMETER:
                    self.on_parameter_block(event)
        finally:
            self.node.feed.unsubscribe(feed)

    # --- files ------------------------------------------------------------------------------

    def _save(self, sub: Submission) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        base = self.dir / sub.claim_hash.hex()
        manifest = base.with_suffix(".manifest")
        if not manifest.exists():
            _write(manifest, codec.encode(sub.signed))
        _write(base.with_suffix(".json"), json.dumps(sub.to_json()).encode())

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for file in sorted(self.dir.glob("*.json")):
            try:
                info = json.loads(file.read_text())
                signed = codec.decode(SignedManifest, file.with_suffix(".manifest").read_bytes(),
                                      max_size=MAX_MANIFEST_BYTES)
                sub = Submission(bytes.fromhex(info["claim"]), signed, info["status"], int(info["commit_height"]),
                                 str(info["reason"]))
            except (OSError, ValueError, KeyError, TypeError, DecodingError) as err:
                logger.warning("%s: ignoring submission %s: %s", self.name, file, err)
                continue
            if codec.hash_of(sub.claim) != sub.claim_hash:
                logger.warning("%s: ignoring submission %s: its manifest makes another claim", self.name, file)
                continue
            self.submissions[sub.claim_hash] = sub


def _write(file: Path, data: bytes) -> None:
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, file)
