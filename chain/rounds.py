"""Learning rounds on the parameter chain: commit, reveal, PoL votes, and each round's close.

A contributor's claim goes through these states (`ClaimRecord.status`):

    CommitDelta(commitment)          a hash of (claim, sender): nothing of the delta is visible
      -> RevealDelta(claim, manifest) in a later block, within `reveal_window` heights: VOTING
      -> CertifyDelta(votes)          accepting votes of > 2/3 of the power: CERTIFIED
         RejectDelta(votes)           rejecting votes that leave no quorum: REJECTED
         (neither within `vote_window` heights of the reveal: EXPIRED)
      -> the close of the round the certificate landed in (the last height of a window of
         `round_length` heights): the best certified claim of the round (largest relative gain,
         then claim hash) is applied; every other one is REJECTED by compare-and-swap (without
         cost to its contributor's quota). Applied: ACCEPTED, the blocks' heads and the model's
         head move, the contributor and every validator whose vote matched are paid.

Commit-then-reveal: a claim is bound to its sender before anyone can see its delta, and a delta
blob can be revealed once; a copy seen in a reveal cannot be committed in time to be revealed
first, nor revealed again under another name.

The base of a claim is the whole model, not only the blocks it trains: a forward pass, in
training, replay and evaluation, runs through every block, so a claim measured on one model says
nothing of another. The chain keeps the model's head (`KEY_MODEL_HEAD`: the last claim applied);
a commitment records it, a reveal is refused once it moved, a certificate for a claim whose model
moved rejects the claim, and a round's close applies one claim: "the best one" (the combination
rule; a gain-weighted mean of the top claims, which would need the combination itself measured
before it becomes the head, is not built). So the head a round's close applies is exactly what
the validators measured.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from chain import codec, crypto
from chain.context import Context, TxEnv
from chain.errors import InvalidSignature, InvalidTransaction
from chain.heads import bump_version, validate_delta_claim
from chain.learning import TrainingManifest, compute_manifest_hash, verify_manifest_signature
from chain.params import PolParams
from chain.payloads import (
    BlockChange,
    CertifyDelta,
    CommitDelta,
    DeltaClaim,
    PolCertificate,
    PolVote,
    RejectDelta,
    RevealDelta,
)
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_CERTIFIED,
    CLAIM_EXPIRED,
    CLAIM_REJECTED,
    CLAIM_VOTING,
    KEY_MODEL_HEAD,
    MAX_CLAIMS_PER_ROUND,
    MAX_DUE_PER_HEIGHT,
    AcceptedDelta,
    ClaimRecord,
    Commitment,
    ContributorRecord,
    DueAt,
    Earning,
    ExpertState,
    RoundRecord,
    claim_key,
    commitment_key,
    contributor_key,
    delta_key,
    due_key,
    earning_key,
    expert_key,
    manifest_key,
    revealed_blob_key,
    round_key,
)
from chain.state import Overlay
from chain.types import ValidatorSet

COMMITMENT_DOMAIN = b"blyan-delta-commitment/1"
EARNING_DOMAIN = b"blyan-round-earning/1"
PPM = 1_000_000


def compute_commitment(claim_hash: bytes, sender: bytes) -> bytes:
    """What `CommitDelta` carries: binds the claim to its sender's address."""
    return codec.sha256(COMMITMENT_DOMAIN + claim_hash + sender)


def make_claim(man: TrainingManifest) -> DeltaClaim:
    """The claim a training manifest makes: what a contributor commits to and reveals."""
    d = man.delta
    return DeltaClaim(
        manifest_hash=compute_manifest_hash(man),
        blocks=tuple(BlockChange(b.name, b.base_head, b.result_root) for b in man.blocks),
        round_id=man.round_id, delta_blob=d.blob_id, delta_size=d.compressed_bytes, delta_root=d.root,
        raw_size=d.raw_bytes, compression=d.method,
        ratio_ppm=max(1, min(PPM, d.compressed_bytes * PPM // max(1, d.raw_bytes))),
        contributor=crypto.address_of(man.contributor),
    )


def compute_round(height: int, ctx: Context) -> int:
    """The learning round a parameter-chain height belongs to (rounds count from 1)."""
    return compute_round_of(height, ctx.params.pol)


def compute_round_of(height: int, params: PolParams) -> int:
    return height // params.round_length + 1


def is_round_close(height: int, ctx: Context) -> bool:
    """Whether `height` is the last height of its round."""
    return height % ctx.params.pol.round_length == ctx.params.pol.round_length - 1


def compute_gain_ppm(base_loss: int, new_loss: int) -> int:
    """Relative validation-loss gain, millionths (0 when the loss did not go down)."""
    if base_loss == 0 or new_loss >= base_loss:
        return 0
    return (base_loss - new_loss) * PPM // base_loss


def compute_delta_reward(base_loss: int, new_loss: int, ctx: Context) -> int:
    """The contributor's reward: the base, plus the gain times the genesis rate, capped."""
    r = ctx.params.rewards
    return min(r.delta_reward_cap, r.delta_reward + compute_gain_ppm(base_loss, new_loss) * r.delta_gain_reward // PPM)


def compute_earning_id(claim_hash: bytes, recipient: bytes, reason: str) -> bytes:
    """The id a round-close earning is recorded and paid under (it has no transaction of its own)."""
    return codec.sha256(EARNING_DOMAIN + claim_hash + recipient + reason.encode())


def get_open_limit(rec: ContributorRecord, ctx: Context) -> int:
    """How many open claims a contributor may hold: one less for each rejected claim beyond
    those accepted."""
    return max(0, ctx.params.pol.max_open_claims - max(0, rec.rejected - rec.accepted))


# --- reading records ------------------------------------------------------------------------


def get_claim(view: Overlay, claim_hash: bytes) -> ClaimRecord | None:
    return view.get_record(claim_key(claim_hash), ClaimRecord)


def get_contributor(view: Overlay, address: bytes) -> ContributorRecord:
    return view.get_record(contributor_key(address), ContributorRecord) or ContributorRecord(0, 0, 0)


def _get_due(view: Overlay, height: int) -> DueAt:
    return view.get_record(due_key(height), DueAt) or DueAt((), ())


def _add_due(view: Overlay, height: int, commitment: bytes | None = None, claim: bytes | None = None) -> None:
    due = _get_due(view, height)
    if len(due.commitments) + len(due.claims) >= MAX_DUE_PER_HEIGHT:
        raise InvalidTransaction(f"height {height} has {MAX_DUE_PER_HEIGHT} deadlines already; try a later block")
    if commitment is not None:
        due = replace(due, commitments=(*due.commitments, commitment))
    if claim is not None:
        due = replace(due, claims=(*due.claims, claim))
    view.put_record(due_key(height), due)


def get_model_head(view: Overlay) -> bytes:
    """The model's head: the last claim applied, or zero for the genesis model."""
    return view.get(KEY_MODEL_HEAD) or bytes(32)


def _change_open(view: Overlay, address: bytes, by: int, accepted: int = 0, rejected: int = 0) -> None:
    rec = get_contributor(view, address)
    view.put_record(contributor_key(address), ContributorRecord(
        max(0, rec.open + by), rec.accepted + accepted, rec.rejected + rejected))


# --- votes ----------------------------------------------------------------------------------


def is_improvement(base_loss: int, new_loss: int, min_improvement_ppm: int) -> bool:
    """The loss fell, by at least `min_improvement_ppm` of the base."""
    needed = base_loss * min_improvement_ppm // PPM
    return new_loss < base_loss and base_loss - new_loss >= needed


def is_accepting_vote(vote: PolVote, ctx: Context) -> bool:
    """The validator's verifier accepted, and the loss it measured improved by the genesis minimum."""
    v = vote.verdict
    return v.accepted and is_improvement(v.base_loss, v.new_loss, ctx.params.pol.min_improvement_ppm)


def validate_votes(cert: PolCertificate, claim: ClaimRecord, claim_hash: bytes, ctx: Context,
                   validators: ValidatorSet, accepting: bool) -> int:
    """Check every vote of `cert` (sorted signers, members of the set, this claim, signed, and
    all accepting or all rejecting); the power they hold."""
    signers = [sv.vote.validator for sv in cert.votes]
    if not signers:
        raise InvalidTransaction("no PoL votes")
    if signers != sorted(set(signers)):
        raise InvalidTransaction("PoL votes not sorted by validator or duplicated")
    power = 0
    for sv in cert.votes:
        vote = sv.vote
        member = validators.get(vote.validator)
        if member is None:
            raise InvalidTransaction("PoL vote from a non-validator")
        if vote.claim_hash != claim_hash:
            raise InvalidTransaction("PoL vote is for another claim")
        if vote.verdict.validator != member.public_key:
            raise InvalidTransaction("PoL verdict names another validator's key")
        if vote.verdict.manifest_hash != claim.claim.manifest_hash:
            raise InvalidTransaction("PoL verdict is for another manifest")
        try:
            crypto.verify(member.public_key, ctx.network_id, crypto.KIND_POL_VOTE, codec.encode(vote), sv.signature)
        except InvalidSignature as err:
            raise InvalidTransaction("bad PoL vote signature") from err
        if is_accepting_vote(vote, ctx) != accepting:
            raise InvalidTransaction("a certificate holds only accepting votes" if accepting
                                     else "a rejection holds only rejecting votes")
        power += member.power
    return power


def _median_losses(cert: PolCertificate) -> tuple[int, int]:
    base = [sv.vote.verdict.base_loss for sv in cert.votes]
    new = [sv.vote.verdict.new_loss for sv in cert.votes]
    return int(statistics.median_low(base)), int(statistics.median_low(new))


def _reasons_of(cert: PolCertificate) -> str:
    reasons = sorted({sv.vote.verdict.reason or "no improvement" for sv in cert.votes})
    return ", ".join(reasons)[:256]


# --- transactions ---------------------------------------------------------------------------


def apply_commit(view: Overlay, env: TxEnv, p: CommitDelta) -> None:
    if view.get(commitment_key(p.commitment)) is not None:
        raise InvalidTransaction("this commitment is pending already")
    rec = get_contributor(view, env.sender)
    limit = get_open_limit(rec, env.ctx)
    if rec.open >= limit:
        raise InvalidTransaction(f"{rec.open} open claims: this contributor may hold {limit} "
                                 f"({rec.rejected} rejected, {rec.accepted} accepted)")
    view.put_record(commitment_key(p.commitment), Commitment(env.sender, env.height, get_model_head(view)))
    _add_due(view, env.height + env.ctx.params.pol.reveal_window, commitment=p.commitment)
    _change_open(view, env.sender, +1)


def validate_reveal(view: Overlay, env: TxEnv, p: RevealDelta) -> tuple[bytes, bytes]:
    """The reveal's rules; (claim hash, commitment)."""
    claim, signed = p.claim, p.manifest
    claim_hash = codec.hash_of(claim)
    commitment = compute_commitment(claim_hash, env.sender)
    pending = view.get_record(commitment_key(commitment), Commitment)
    if pending is None:
        raise InvalidTransaction("no pending commitment to this claim by its sender (commit first, or it expired)")
    if pending.height >= env.height:
        raise InvalidTransaction("the commitment is not final yet: reveal in a later block")
    if env.height > pending.height + env.ctx.params.pol.reveal_window:
        raise InvalidTransaction("the reveal window of the commitment has closed")
    if claim.contributor != env.sender:
        raise InvalidTransaction("the claim's contributor is not its sender")
    if pending.model_head != get_model_head(view):
        raise InvalidTransaction("the model moved since the commitment (another claim was applied): "
                                 "train again on the new heads")
    if signed.manifest.model_head != pending.model_head:
        raise InvalidTransaction("the manifest was trained on another model than the one the commitment was "
                                 "made on: train again on the new heads")
    if get_claim(view, claim_hash) is not None:
        raise InvalidTransaction("this claim was revealed already")
    if view.get(revealed_blob_key(claim.delta_blob)) is not None:
        raise InvalidTransaction("this delta blob was revealed before (a copied delta)")
    man = signed.manifest
    if compute_manifest_hash(man) != claim.manifest_hash:
        raise InvalidTransaction("the manifest is not the one the claim names")
    if crypto.address_of(man.contributor) != env.sender:
        raise InvalidTransaction("the manifest's contributor is not the sender")
    try:
        verify_manifest_signature(signed)
    except InvalidSignature as err:
        raise InvalidTransaction("the manifest is not signed by its contributor") from err
    if man.network_id != env.ctx.network_id:
        raise InvalidTransaction(f"the manifest is for network {man.network_id!r}")
    if claim != make_claim(signed.manifest):
        raise InvalidTransaction("the claim does not say what its manifest says")
    if claim.round_id > compute_round(env.height, env.ctx):
        raise InvalidTransaction(f"round {claim.round_id} has not started (round {compute_round(env.height, env.ctx)})")
    validate_delta_claim(view, claim)
    return claim_hash, commitment


def apply_reveal(view: Overlay, env: TxEnv, p: RevealDelta) -> None:
    claim_hash, commitment = validate_reveal(view, env, p)
    pending = view.get_record(commitment_key(commitment), Commitment)
    view.delete(commitment_key(commitment))
    view.put(revealed_blob_key(p.claim.delta_blob), claim_hash)
    view.put_record(claim_key(claim_hash), ClaimRecord(
        claim=p.claim, manifest=p.manifest, provider=p.provider, model_head=pending.model_head, status=CLAIM_VOTING,
        commit_height=pending.height, reveal_height=env.height, decided_height=0, applied_height=0,
        base_loss_ppm=0, new_loss_ppm=0, reason="", voters=(),
    ))
    _add_due(view, env.height + env.ctx.params.pol.vote_window, claim=claim_hash)


def _voting_claim(view: Overlay, claim_hash: bytes) -> ClaimRecord:
    rec = get_claim(view, claim_hash)
    if rec is None:
        raise InvalidTransaction("no revealed claim of this hash")
    if rec.status != CLAIM_VOTING:
        raise InvalidTransaction("the claim is not open for votes")
    return rec


def apply_certify(view: Overlay, env: TxEnv, p: CertifyDelta) -> None:
    rec = _voting_claim(view, p.claim_hash)
    validators = env.ctx.validators
    power = validate_votes(p.certificate, rec, p.claim_hash, env.ctx, validators, accepting=True)
    if not validators.is_quorum(power):
        raise InvalidTransaction(f"accepting PoL votes hold {power} of {validators.total_power} power, not > 2/3")
    base, new = _median_losses(p.certificate)
    voters = tuple(sv.vote.validator for sv in p.certificate.votes)
    if rec.model_head != get_model_head(view):  # another claim moved the model since: it can never apply
        _reject(view, p.claim_hash, rec, env.height, "stale base: the model moved since the reveal", base, new,
                voters, counts=False)
        _pay_voters(view, p.claim_hash, voters, env.ctx)
        return
    round_id = compute_round(env.height, env.ctx)
    certified = view.get_record(round_key(round_id), RoundRecord) or RoundRecord(())
    if len(certified.certified) >= MAX_CLAIMS_PER_ROUND:
        raise InvalidTransaction(f"round {round_id} has {MAX_CLAIMS_PER_ROUND} certified claims; try the next round")
    view.put_record(round_key(round_id), RoundRecord((*certified.certified, p.claim_hash)))
    view.put_record(claim_key(p.claim_hash), replace(
        rec, status=CLAIM_CERTIFIED, decided_height=env.height, base_loss_ppm=base, new_loss_ppm=new, voters=voters))


def apply_reject(view: Overlay, env: TxEnv, p: RejectDelta) -> None:
    rec = _voting_claim(view, p.claim_hash)
    validators = env.ctx.validators
    power = validate_votes(p.votes, rec, p.claim_hash, env.ctx, validators, accepting=False)
    if validators.is_quorum(validators.total_power - power):
        raise InvalidTransaction(f"rejecting PoL votes hold {power} of {validators.total_power} power: "
                                 "the others could still accept")
    base, new = _median_losses(p.votes)
    voters = tuple(sv.vote.validator for sv in p.votes.votes)
    _reject(view, p.claim_hash, rec, env.height, _reasons_of(p.votes), base, new, voters)
    _pay_voters(view, p.claim_hash, voters, env.ctx)


def _reject(view: Overlay, claim_hash: bytes, rec: ClaimRecord, height: int, reason: str, base: int, new: int,
            voters: tuple[bytes, ...], *, counts: bool = True) -> None:
    """Record the claim rejected; `counts`: against the contributor's quota (votes rejected it;
    losing a compare-and-swap to a better claim does not count)."""
    view.put_record(claim_key(claim_hash), replace(
        rec, status=CLAIM_REJECTED, decided_height=rec.decided_height or height, reason=reason[:256],
        base_loss_ppm=base, new_loss_ppm=new, voters=voters))
    _change_open(view, rec.claim.contributor, -1, rejected=1 if counts else 0)


def _stale_block(view: Overlay, claim: DeltaClaim) -> str | None:
    for change in claim.blocks:
        expert = view.get_record(expert_key(change.name), ExpertState)
        if expert is None or expert.head != change.base:
            return change.name
    return None


def _earn(view: Overlay, claim_hash: bytes, recipient: bytes, amount: int, reason: str) -> None:
    if amount > 0:
        view.put_record(earning_key(compute_earning_id(claim_hash, recipient, reason)),
                        Earning(recipient, amount, reason))


def _pay_voters(view: Overlay, claim_hash: bytes, voters: tuple[bytes, ...], ctx: Context) -> None:
    for voter in voters:
        _earn(view, claim_hash, voter, ctx.params.rewards.pol_vote_reward, "pol-vote")


# --- the end of a block ---------------------------------------------------------------------


def end_block(view: Overlay, height: int, ctx: Context) -> None:
    """Deadlines that fall due at `height`, then, at a round's last height, its close."""
    due = _get_due(view, height)
    for commitment in due.commitments:
        pending = view.get_record(commitment_key(commitment), Commitment)
        if pending is not None:  # never revealed
            view.delete(commitment_key(commitment))
            _change_open(view, pending.sender, -1)
    for claim_hash in due.claims:
        rec = get_claim(view, claim_hash)
        if rec is not None and rec.status == CLAIM_VOTING:
            view.put_record(claim_key(claim_hash), replace(
                rec, status=CLAIM_EXPIRED, decided_height=height,
                reason=f"no certificate nor rejection within {ctx.params.pol.vote_window} heights"))
            _change_open(view, rec.claim.contributor, -1)
    if due.commitments or due.claims:
        view.delete(due_key(height))
    if is_round_close(height, ctx):
        close_round(view, compute_round(height, ctx), height, ctx)


def close_round(view: Overlay, round_id: int, height: int, ctx: Context) -> None:
    """Apply the round's best certified claim (largest gain, then claim hash); the others were
    measured on a model that this one changes, so they are rejected (compare-and-swap)."""
    certified = view.get_record(round_key(round_id), RoundRecord)
    if certified is None:
        return
    view.delete(round_key(round_id))
    records = [(h, get_claim(view, h)) for h in certified.certified]
    order = sorted(records, key=lambda hr: (-compute_gain_ppm(hr[1].base_loss_ppm, hr[1].new_loss_ppm), hr[0]))
    applied = None
    for claim_hash, rec in order:
        if applied is not None or rec.model_head != get_model_head(view) or _stale_block(view, rec.claim):
            why = (f"a better claim of round {round_id} ({applied.hex()[:16]}) moved the model" if applied
                   else "the model moved since the reveal")
            _reject(view, claim_hash, rec, height, f"compare-and-swap: {why}", rec.base_loss_ppm, rec.new_loss_ppm,
                    rec.voters, counts=False)
            _pay_voters(view, claim_hash, rec.voters, ctx)
            continue
        _apply_claim(view, claim_hash, rec, height, ctx)
        applied = claim_hash


def _apply_claim(view: Overlay, claim_hash: bytes, rec: ClaimRecord, height: int, ctx: Context) -> None:
    claim = rec.claim
    for change in claim.blocks:
        expert = view.get_record(expert_key(change.name), ExpertState)
        view.put_record(expert_key(change.name), replace(
            expert, head=claim_hash, deltas=(*expert.deltas, claim_hash),
            version=bump_version(expert.version, 2), last_round=max(expert.last_round, claim.round_id)))
    view.put(manifest_key(claim.manifest_hash), claim_hash)
    view.put(KEY_MODEL_HEAD, claim_hash)
    view.put_record(delta_key(claim_hash), AcceptedDelta(claim, height, rec.base_loss_ppm, rec.new_loss_ppm))
    view.put_record(claim_key(claim_hash), replace(rec, status=CLAIM_ACCEPTED, applied_height=height))
    _change_open(view, claim.contributor, -1, accepted=1)
    _earn(view, claim_hash, claim.contributor, compute_delta_reward(rec.base_loss_ppm, rec.new_loss_ppm, ctx), "delta")
    _pay_voters(view, claim_hash, rec.voters, ctx)
