"""Learning rounds on the parameter chain (`chain.rounds`): commit, then reveal; PoL votes that
certify or reject; expiry; each round's close applying the best certified claim per base
(compare-and-swap); rewards by gain; quotas by rejections."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import codec, crypto
from chain.errors import InvalidTransaction
from chain.learning import sign_manifest
from chain.payloads import CommitDelta, PolCertificate, Reward
from chain.records import (
    CLAIM_ACCEPTED,
    CLAIM_CERTIFIED,
    CLAIM_EXPIRED,
    CLAIM_REJECTED,
    CLAIM_VOTING,
    AcceptedDelta,
    ClaimRecord,
    Earning,
    ExpertState,
    claim_key,
    delta_key,
    earning_key,
    expert_key,
)
from chain.reward import get_account, validate_supply
from chain.rounds import (
    compute_commitment,
    compute_delta_reward,
    compute_earning_id,
    compute_gain_ppm,
    compute_round,
    get_contributor,
    get_model_head,
    is_accepting_vote,
    is_round_close,
    make_claim,
)
from chain.state import Overlay
from chain.tensors import KIND_MODULE
from chain.transition import apply_tx, get_nonce
from chain.types import CHAIN_PARAMETER, CHAIN_REWARD
from genesis.roundkit import (
    BASE_LOSS,
    NEW_LOSS,
    accept_delta,
    advance_to_round_close,
    certify_tx,
    commit_tx,
    make_manifest,
    make_verdict,
    pol_vote,
    reject_tx,
    reveal_tx,
    tensor_record,
)
from genesis.testkit import LocalChains, account_keys, make_pact, sign_tx, system_tx, validator_keys
from tests.chain.refusal_support import assert_refused

EXPERT = "layer0.expert0"
OTHER = "layer0.expert1"
TRAINER, RIVAL = account_keys(2, prefix="trainer")
TENSORS = (tensor_record(EXPERT, 1), tensor_record(OTHER, 2), tensor_record("embed", 3, KIND_MODULE))
NET = "testnet-unit"


def make_chains(stakes: tuple[int, ...] = (10_000,) * 4) -> LocalChains:
    keys = validator_keys(len(stakes))
    pact = make_pact(keys, [(TRAINER.address, 1_000), (RIVAL.address, 1_000)], tensors=TENSORS)
    pact = replace(pact, validators=tuple(replace(v, stake=s) for v, s in zip(pact.validators, stakes, strict=True)))
    return LocalChains.create(pact, keys)


@pytest.fixture
def chains() -> LocalChains:
    return make_chains()


def expert(chains: LocalChains, name: str = EXPERT) -> ExpertState:
    return codec.decode(ExpertState, chains.states[CHAIN_PARAMETER].get(expert_key(name)))


def claim_record(chains: LocalChains, claim) -> ClaimRecord | None:
    raw = chains.states[CHAIN_PARAMETER].get(claim_key(codec.hash_of(claim)))
    return None if raw is None else codec.decode(ClaimRecord, raw)


def manifest(chains: LocalChains, names=(EXPERT,), key=TRAINER, tag: bytes = b"a", round_id: int | None = None, **kw):
    current = compute_round(chains.states[CHAIN_PARAMETER].height + 1, chains.context())
    blocks = [(n, expert(chains, n).head) for n in sorted(names)]
    kw.setdefault("model_head", get_model_head(Overlay(chains.states[CHAIN_PARAMETER])))
    return make_manifest(key, NET, blocks, current if round_id is None else round_id, tag=tag, **kw)


def nonce(chains: LocalChains, key=TRAINER) -> int:
    return get_nonce(chains.states[CHAIN_PARAMETER], key.address)


def advance(chains: LocalChains, txs: list):
    block, rejected = chains.advance(CHAIN_PARAMETER, txs)
    assert not rejected, rejected
    return block


def refused(chains: LocalChains, tx, match: str) -> None:
    """`tx` is invalid on the current state, leaves no change, and a proposer leaves it out."""
    assert_refused(chains, CHAIN_PARAMETER, tx, match)


def reveal(chains: LocalChains, signed, key=TRAINER):
    """Commit and reveal `signed` in two blocks; returns its claim."""
    claim = make_claim(signed.manifest)
    advance(chains, [commit_tx(key, NET, nonce(chains, key), claim)])
    advance(chains, [reveal_tx(key, NET, nonce(chains, key), signed, claim)])
    return claim


def votes(chains: LocalChains, claim, keys=None, **kw):
    return [pol_vote(k, NET, claim, **kw) for k in (chains.keys if keys is None else keys)]


def contributor(chains: LocalChains, key=TRAINER):
    return get_contributor(Overlay(chains.states[CHAIN_PARAMETER]), key.address)


def earning(chains: LocalChains, claim, recipient: bytes, reason: str) -> Earning | None:
    raw = chains.states[CHAIN_PARAMETER].get(earning_key(compute_earning_id(codec.hash_of(claim), recipient, reason)))
    return None if raw is None else codec.decode(Earning, raw)


# --- the whole way -------------------------------------------------------------------------------


def test_claim_committed_revealed_certified_applied_at_round_close(chains: LocalChains) -> None:
    signed = manifest(chains)
    claim = reveal(chains, signed)
    rec = claim_record(chains, claim)
    assert (rec.status, rec.manifest, rec.provider) == (CLAIM_VOTING, signed, "12D3KooWProviderOfTheBundle")
    assert contributor(chains).open == 1
    block = advance(chains, [certify_tx(claim, votes(chains, claim))])
    assert not is_round_close(block.header.height, chains.context())
    assert claim_record(chains, claim).status == CLAIM_CERTIFIED
    assert expert(chains).head == codec.hash_of(TENSORS[0])  # waits for the round's close
    close = advance_to_round_close(chains)
    claim_hash = codec.hash_of(claim)
    state = expert(chains)
    assert (state.head, state.deltas, state.version, state.last_round) == (claim_hash, (claim_hash,), "1.0.1", 1)
    rec = claim_record(chains, claim)
    assert (rec.status, rec.applied_height, rec.base_loss_ppm, rec.new_loss_ppm) == (
        CLAIM_ACCEPTED, close.header.height, BASE_LOSS, NEW_LOSS)
    assert rec.voters == tuple(sorted(k.address for k in chains.keys))
    accepted = codec.decode(AcceptedDelta, chains.states[CHAIN_PARAMETER].get(delta_key(claim_hash)))
    assert accepted == AcceptedDelta(claim, close.header.height, BASE_LOSS, NEW_LOSS)
    record = contributor(chains)
    assert (record.open, record.accepted, record.rejected) == (0, 1, 0)
    assert expert(chains, OTHER).head == codec.hash_of(TENSORS[1])


def test_accepted_claim_pays_contributor_by_gain_and_every_voter(chains: LocalChains) -> None:
    claim = accept_delta(chains, TRAINER, manifest(chains))
    rewards = chains.pact.params.rewards
    paid = earning(chains, claim, TRAINER.address, "delta")
    assert paid == Earning(TRAINER.address, compute_delta_reward(BASE_LOSS, NEW_LOSS, chains.context()), "delta")
    assert paid.amount == min(rewards.delta_reward_cap,
                              rewards.delta_reward + 50_000 * rewards.delta_gain_reward // 1_000_000)  # a 5 % gain
    for k in chains.keys:
        assert earning(chains, claim, k.address, "pol-vote") == Earning(k.address, rewards.pol_vote_reward, "pol-vote")


def test_round_earnings_paid_once_on_the_reward_chain(chains: LocalChains) -> None:
    claim = accept_delta(chains, TRAINER, manifest(chains))
    param_state = chains.states[CHAIN_PARAMETER]

    def earnings(chain_id: int, earning_id: bytes) -> Earning | None:
        if chain_id != CHAIN_PARAMETER:
            return None
        return Overlay(param_state).get_record(earning_key(earning_id), Earning)

    amount = compute_delta_reward(BASE_LOSS, NEW_LOSS, chains.context())
    reward = system_tx(CHAIN_REWARD, Reward(CHAIN_PARAMETER, compute_earning_id(codec.hash_of(claim), TRAINER.address,
                                                                               "delta"), TRAINER.address, amount))
    block, rejected = chains.advance(CHAIN_REWARD, [reward], earnings)
    assert block.txs == (reward,) and not rejected
    assert get_account(chains.states[CHAIN_REWARD], TRAINER.address).balance == 1_000 + amount
    validate_supply(chains.states[CHAIN_REWARD])
    block, rejected = chains.advance(CHAIN_REWARD, [reward], earnings)
    assert block.txs == () and "already paid" in str(rejected[0][1])


def test_delta_reward_grows_with_gain_up_to_the_cap(chains: LocalChains) -> None:
    ctx = chains.context()
    r = ctx.params.rewards
    assert compute_gain_ppm(2_000_000, 1_000_000) == 500_000
    assert compute_gain_ppm(2_000_000, 2_000_000) == compute_gain_ppm(0, 0) == compute_gain_ppm(1, 2) == 0
    small, large = compute_delta_reward(2_000_000, 1_990_000, ctx), compute_delta_reward(2_000_000, 1_800_000, ctx)
    assert r.delta_reward < small < large <= r.delta_reward_cap
    assert compute_delta_reward(2_000_000, 1, ctx) == r.delta_reward_cap


def test_two_deltas_in_two_rounds_chain_on_the_new_head(chains: LocalChains) -> None:
    first = accept_delta(chains, TRAINER, manifest(chains))
    second_signed = manifest(chains, tag=b"b")
    assert second_signed.manifest.blocks[0].base_head == codec.hash_of(first)
    second = accept_delta(chains, TRAINER, second_signed)
    state = expert(chains)
    assert state.deltas == (codec.hash_of(first), codec.hash_of(second))
    assert (state.version, state.last_round) == ("1.0.2", 2)


def test_claim_on_two_blocks_moves_both_heads(chains: LocalChains) -> None:
    claim = accept_delta(chains, TRAINER, manifest(chains, names=(EXPERT, OTHER)))
    assert expert(chains).head == expert(chains, OTHER).head == codec.hash_of(claim)


# --- commit, then reveal -------------------------------------------------------------------------


def test_reveal_without_commitment_refused(chains: LocalChains) -> None:
    refused(chains, reveal_tx(TRAINER, NET, 0, manifest(chains)), "no pending commitment")


def test_reveal_in_the_block_of_its_commitment_refused(chains: LocalChains) -> None:
    signed = manifest(chains)
    claim = make_claim(signed.manifest)
    commit, early = commit_tx(TRAINER, NET, 0, claim), reveal_tx(TRAINER, NET, 1, signed, claim)
    block, rejected = chains.advance(CHAIN_PARAMETER, [commit, early])
    assert block.txs == (commit,)
    assert "not final yet" in str(rejected[0][1])


def test_reveal_at_the_end_of_its_window_and_expiry_after(chains: LocalChains) -> None:
    window = chains.pact.params.pol.reveal_window
    signed = manifest(chains, round_id=1)
    claim = make_claim(signed.manifest)
    commit_block = advance(chains, [commit_tx(TRAINER, NET, 0, claim)])
    while chains.states[CHAIN_PARAMETER].height < commit_block.header.height + window - 1:
        advance(chains, [])
    advance(chains, [reveal_tx(TRAINER, NET, 1, signed, claim)])  # the last height of the window
    assert claim_record(chains, claim).status == CLAIM_VOTING

    other = make_chains()
    signed = manifest(other, round_id=1)
    claim = make_claim(signed.manifest)
    commit_block = advance(other, [commit_tx(TRAINER, NET, 0, claim)])
    assert contributor(other).open == 1
    while other.states[CHAIN_PARAMETER].height < commit_block.header.height + window:
        advance(other, [])
    assert contributor(other).open == 0  # expired, freed
    refused(other, reveal_tx(TRAINER, NET, 1, signed, claim), "no pending commitment")


def test_copied_reveal_under_another_sender_refused(chains: LocalChains) -> None:
    signed = manifest(chains)
    claim = make_claim(signed.manifest)
    advance(chains, [commit_tx(TRAINER, NET, 0, claim)])
    # The rival saw nothing yet; it copies the reveal once it is in gossip and sends it as its own.
    refused(chains, reveal_tx(RIVAL, NET, 0, signed, claim), "no pending commitment")
    # Committing to the same claim binds it to the rival, whom the claim does not name.
    advance(chains, [commit_tx(RIVAL, NET, 0, claim)])
    refused(chains, reveal_tx(RIVAL, NET, 1, signed, claim), "contributor is not its sender")


def test_copied_delta_blob_under_a_new_manifest_refused(chains: LocalChains) -> None:
    claim = reveal(chains, manifest(chains))
    copy = manifest(chains, key=RIVAL)  # same tag: the same delta blob, signed by the rival
    assert make_claim(copy.manifest).delta_blob == claim.delta_blob
    copied = make_claim(copy.manifest)
    advance(chains, [commit_tx(RIVAL, NET, 0, copied)])
    refused(chains, reveal_tx(RIVAL, NET, 1, copy, copied), "revealed before")


def test_claim_revealed_twice_refused(chains: LocalChains) -> None:
    signed = manifest(chains)
    claim = reveal(chains, signed)
    advance(chains, [commit_tx(TRAINER, NET, nonce(chains), claim)])
    refused(chains, reveal_tx(TRAINER, NET, nonce(chains), signed, claim), "revealed already")


def test_commitment_pending_twice_refused(chains: LocalChains) -> None:
    claim = make_claim(manifest(chains).manifest)
    advance(chains, [commit_tx(TRAINER, NET, 0, claim)])
    refused(chains, commit_tx(TRAINER, NET, 1, claim), "pending already")


def test_commitment_binds_claim_and_sender() -> None:
    a, b = codec.sha256(b"a"), codec.sha256(b"b")
    assert compute_commitment(a, TRAINER.address) != compute_commitment(a, RIVAL.address)
    assert compute_commitment(a, TRAINER.address) != compute_commitment(b, TRAINER.address)


@pytest.mark.parametrize("case", ["claim-differs", "signed-by-another", "other-network", "future-round",
                                  "stale-round", "unknown-block", "stale-base", "unknown-compression",
                                  "other-model"])
def test_reveal_refused(chains: LocalChains, case: str) -> None:
    if case in ("stale-round", "stale-base"):
        accept_delta(chains, TRAINER, manifest(chains, tag=b"first"))
    signed = manifest(chains)
    claim = make_claim(signed.manifest)
    match = {"claim-differs": "does not say what its manifest says", "signed-by-another": "not signed",
             "other-network": "for network", "future-round": "has not started", "stale-round": "not after",
             "unknown-block": "no expert", "stale-base": "stale base",
             "unknown-compression": "unknown compression", "other-model": "trained on another model"}[case]
    if case == "claim-differs":
        claim = replace(claim, delta_size=claim.delta_size + 1)
    elif case == "signed-by-another":
        signed = replace(signed, signature=RIVAL.sign(NET, crypto.KIND_MANIFEST, codec.encode(signed.manifest)))
    elif case == "other-network":
        signed = sign_manifest(TRAINER, replace(signed.manifest, network_id="othernet"))
    elif case == "future-round":
        signed = manifest(chains, round_id=compute_round(chains.states[CHAIN_PARAMETER].height + 1,
                                                         chains.context()) + 1)
    elif case == "stale-round":
        signed = manifest(chains, round_id=1)
    elif case == "unknown-block":
        signed = make_manifest(TRAINER, NET, [("layer9.expert9", bytes(32))], 1)
    elif case == "stale-base":
        signed = make_manifest(TRAINER, NET, [(EXPERT, codec.hash_of(TENSORS[0]))], 2, tag=b"stale",
                               model_head=get_model_head(Overlay(chains.states[CHAIN_PARAMETER])))
    elif case == "unknown-compression":
        signed = manifest(chains, method="zip")
    elif case == "other-model":
        signed = manifest(chains, model_head=codec.sha256(b"a model that never was"))
    if case != "claim-differs":
        claim = make_claim(signed.manifest)
    advance(chains, [commit_tx(TRAINER, NET, nonce(chains), claim)])
    refused(chains, reveal_tx(TRAINER, NET, nonce(chains), signed, claim), match)


# --- votes: certify, reject ------------------------------------------------------------------


def test_certificate_by_weighted_power() -> None:
    chains = make_chains(stakes=(70_000, 10_000, 10_000, 10_000))
    claim = reveal(chains, manifest(chains))
    advance(chains, [certify_tx(claim, votes(chains, claim, chains.keys[:1]))])
    assert claim_record(chains, claim).status == CLAIM_CERTIFIED


@pytest.mark.parametrize(("n_validators", "signers", "match"),
                         [(4, 2, "not > 2/3"), (3, 2, "20000 of 30000"), (4, 0, "no PoL votes")])
def test_certificate_without_quorum_refused(n_validators: int, signers: int, match: str) -> None:
    chains = make_chains(stakes=(10_000,) * n_validators)
    claim = reveal(chains, manifest(chains))
    refused(chains, certify_tx(claim, votes(chains, claim, chains.keys[:signers])), match)


@pytest.mark.parametrize("forgery", ["wrong-kind", "other-network", "other-signer", "non-validator",
                                     "another-claim", "verdict-of-another-key", "verdict-of-another-manifest",
                                     "unsorted", "duplicated", "one-rejecting", "one-not-improving"])
def test_certificate_with_a_forged_or_wrong_vote_refused(chains: LocalChains, forgery: str) -> None:
    claim = reveal(chains, manifest(chains))
    good = votes(chains, claim, chains.keys[1:])
    k0 = chains.keys[0]
    bad, match = {
        "wrong-kind": (lambda: pol_vote(k0, NET, claim, kind=crypto.KIND_VOTE), "bad PoL vote signature"),
        "other-network": (lambda: pol_vote(k0, "othernet", claim), "bad PoL vote signature"),
        "other-signer": (lambda: pol_vote(chains.keys[1], NET, claim, validator=k0.address,
                                          verdict=make_verdict(k0, claim.manifest_hash)), "bad PoL vote signature"),
        "non-validator": (lambda: pol_vote(TRAINER, NET, claim), "non-validator"),
        "another-claim": (lambda: pol_vote(k0, NET, claim, claim_hash=codec.sha256(b"x")), "another claim"),
        "verdict-of-another-key": (lambda: pol_vote(k0, NET, claim, verdict=make_verdict(chains.keys[1],
                                                                                        claim.manifest_hash)),
                                   "another validator's key"),
        "verdict-of-another-manifest": (lambda: pol_vote(k0, NET, claim, verdict=make_verdict(k0, bytes(32))),
                                        "another manifest"),
        "unsorted": (None, "not sorted"),
        "duplicated": (None, "duplicated"),
        "one-rejecting": (lambda: pol_vote(k0, NET, claim, accepted=False, reason="replay"), "only accepting"),
        "one-not-improving": (lambda: pol_vote(k0, NET, claim, new=BASE_LOSS), "only accepting"),
    }[forgery]
    if forgery == "unsorted":
        cert = certify_tx(claim, votes(chains, claim))
        tx = replace(cert, body=replace(cert.body, payload=replace(
            cert.body.payload, certificate=PolCertificate(tuple(reversed(cert.body.payload.certificate.votes))))))
    elif forgery == "duplicated":
        cert = certify_tx(claim, good)
        vs = cert.body.payload.certificate.votes
        tx = replace(cert, body=replace(cert.body, payload=replace(
            cert.body.payload, certificate=PolCertificate((vs[0], *vs)))))
    else:
        tx = certify_tx(claim, [*good, bad()])
    refused(chains, tx, match)


def test_accepting_vote_threshold(chains: LocalChains) -> None:
    ctx = chains.context()
    needed = BASE_LOSS * ctx.params.pol.min_improvement_ppm // 1_000_000
    claim = make_claim(manifest(chains).manifest)
    k = chains.keys[0]
    assert is_accepting_vote(pol_vote(k, NET, claim, new=BASE_LOSS - needed).vote, ctx)
    assert not is_accepting_vote(pol_vote(k, NET, claim, new=BASE_LOSS - needed + 1).vote, ctx)
    assert not is_accepting_vote(pol_vote(k, NET, claim, accepted=False).vote, ctx)


def test_rejection_by_a_third_records_reasons_and_costs_quota(chains: LocalChains) -> None:
    claim = reveal(chains, manifest(chains))
    k0, k1 = chains.keys[:2]
    against = [pol_vote(k0, NET, claim, accepted=False, reason="replay"),
               pol_vote(k1, NET, claim, new=BASE_LOSS + 5)]
    advance(chains, [reject_tx(claim, against)])
    rec = claim_record(chains, claim)
    assert (rec.status, rec.reason) == (CLAIM_REJECTED, "no improvement, replay")
    assert rec.voters == tuple(sorted((k0.address, k1.address)))
    record = contributor(chains)
    assert (record.open, record.accepted, record.rejected) == (0, 0, 1)
    for k in (k0, k1):
        assert earning(chains, claim, k.address, "pol-vote") is not None
    assert earning(chains, claim, TRAINER.address, "delta") is None
    refused(chains, certify_tx(claim, votes(chains, claim)), "not open for votes")


def test_rejection_that_leaves_a_quorum_possible_refused(chains: LocalChains) -> None:
    claim = reveal(chains, manifest(chains))
    refused(chains, reject_tx(claim, [pol_vote(chains.keys[0], NET, claim, accepted=False, reason="replay")]),
            "could still accept")
    refused(chains, reject_tx(claim, [pol_vote(chains.keys[0], NET, claim),
                                      pol_vote(chains.keys[1], NET, claim, accepted=False)]),
            "only rejecting")


def test_votes_on_an_unknown_claim_refused(chains: LocalChains) -> None:
    claim = make_claim(manifest(chains).manifest)
    refused(chains, certify_tx(claim, votes(chains, claim)), "no revealed claim")


def test_certified_claim_is_not_certified_again(chains: LocalChains) -> None:
    claim = reveal(chains, manifest(chains))
    advance(chains, [certify_tx(claim, votes(chains, claim))])
    refused(chains, certify_tx(claim, votes(chains, claim)), "not open for votes")


def test_claim_expires_without_votes_and_frees_its_quota() -> None:
    keys = validator_keys(4)
    defaults = make_chains().pact.params
    params = replace(defaults, pol=replace(defaults.pol, vote_window=5))
    pact = make_pact(keys, [(TRAINER.address, 1_000)], tensors=TENSORS, params=params)
    chains = LocalChains.create(pact, keys)
    claim = reveal(chains, manifest(chains))
    revealed = chains.states[CHAIN_PARAMETER].height
    while chains.states[CHAIN_PARAMETER].height < revealed + 5:
        advance(chains, [])
    rec = claim_record(chains, claim)
    assert rec.status == CLAIM_EXPIRED and "within 5 heights" in rec.reason
    assert contributor(chains).open == 0
    refused(chains, certify_tx(claim, votes(chains, claim)), "not open for votes")


def test_open_claims_limited_and_the_limit_falls_with_rejections(chains: LocalChains) -> None:
    limit = chains.pact.params.pol.max_open_claims
    claims = [make_claim(manifest(chains, tag=b"%d" % i).manifest) for i in range(limit + 1)]
    advance(chains, [commit_tx(TRAINER, NET, i, c) for i, c in enumerate(claims[:limit])])
    refused(chains, commit_tx(TRAINER, NET, limit, claims[limit]), f"may hold {limit}")

    fresh = make_chains()
    claim = reveal(fresh, manifest(fresh))
    advance(fresh, [reject_tx(claim, [pol_vote(k, NET, claim, accepted=False, reason="replay")
                                      for k in fresh.keys[:2]])])
    more = [make_claim(manifest(fresh, tag=b"m%d" % i).manifest) for i in range(limit)]
    start = nonce(fresh)
    advance(fresh, [commit_tx(TRAINER, NET, start + i, c) for i, c in enumerate(more[:limit - 1])])
    refused(fresh, commit_tx(TRAINER, NET, start + limit - 1, more[-1]), f"may hold {limit - 1}")


# --- a round's close: compare-and-swap ---------------------------------------------------------


def test_two_claims_on_one_base_the_best_applied_the_other_rejected_without_cost(chains: LocalChains) -> None:
    weak = reveal(chains, manifest(chains, tag=b"weak"))
    strong = reveal(chains, manifest(chains, key=RIVAL, tag=b"strong"), key=RIVAL)
    advance(chains, [certify_tx(weak, votes(chains, weak, new=1_990_000)),
                     certify_tx(strong, votes(chains, strong, new=1_800_000))])
    advance_to_round_close(chains)
    assert expert(chains).head == codec.hash_of(strong)
    assert claim_record(chains, strong).status == CLAIM_ACCEPTED
    lost = claim_record(chains, weak)
    assert lost.status == CLAIM_REJECTED and "compare-and-swap" in lost.reason
    record = contributor(chains)
    assert (record.open, record.rejected) == (0, 0)  # losing to a better claim costs no quota
    assert earning(chains, weak, TRAINER.address, "delta") is None
    assert earning(chains, weak, chains.keys[0].address, "pol-vote") is not None


def test_claims_on_different_blocks_in_one_round_only_the_best_applied(chains: LocalChains) -> None:
    """A claim's base is the whole model (every block is in its forward pass): two claims of a
    round on different blocks were each measured without the other, so only the best applies."""
    one = reveal(chains, manifest(chains, names=(EXPERT,), tag=b"one"))
    two = reveal(chains, manifest(chains, names=(OTHER,), tag=b"two"))
    advance(chains, [certify_tx(one, votes(chains, one, new=1_990_000)), certify_tx(two, votes(chains, two))])
    advance_to_round_close(chains)
    assert expert(chains, OTHER).head == codec.hash_of(two)
    assert expert(chains).head == codec.hash_of(TENSORS[0])
    lost = claim_record(chains, one)
    assert lost.status == CLAIM_REJECTED and "moved the model" in lost.reason
    assert get_model_head(Overlay(chains.states[CHAIN_PARAMETER])) == codec.hash_of(two)


def test_overlapping_claims_the_best_takes_both_blocks(chains: LocalChains) -> None:
    both = reveal(chains, manifest(chains, names=(EXPERT, OTHER), tag=b"both"))
    one = reveal(chains, manifest(chains, names=(OTHER,), tag=b"one"))
    advance(chains, [certify_tx(both, votes(chains, both, new=1_700_000)), certify_tx(one, votes(chains, one))])
    advance_to_round_close(chains)
    assert expert(chains).head == expert(chains, OTHER).head == codec.hash_of(both)
    assert claim_record(chains, one).status == CLAIM_REJECTED


def test_reveal_after_the_model_moved_refused(chains: LocalChains) -> None:
    """Trained on a model that another claim has since changed (even on another block): its reveal
    is refused, so no validator spends a verification on it."""
    signed = manifest(chains, names=(OTHER,), key=RIVAL, tag=b"late")
    advance(chains, [commit_tx(RIVAL, NET, 0, make_claim(signed.manifest))])
    accept_delta(chains, TRAINER, manifest(chains, names=(EXPERT,), tag=b"first"))
    refused(chains, reveal_tx(RIVAL, NET, 1, signed), "the model moved since the commitment")


def test_claim_certified_after_its_base_moved_rejected_as_stale(chains: LocalChains) -> None:
    early = reveal(chains, manifest(chains, tag=b"early"))
    late = reveal(chains, manifest(chains, tag=b"late"))
    advance(chains, [certify_tx(early, votes(chains, early))])
    advance_to_round_close(chains)
    advance(chains, [certify_tx(late, votes(chains, late))])
    rec = claim_record(chains, late)
    assert rec.status == CLAIM_REJECTED and "stale base" in rec.reason
    assert contributor(chains).rejected == 0


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([(EXPERT,), (OTHER,), (EXPERT, OTHER)]),
                          st.integers(1_500_000, 1_997_000)), min_size=1, max_size=5))
def test_round_close_applies_the_one_best_claim(claims: list) -> None:
    chains = make_chains()
    revealed = []
    for i, (names, new) in enumerate(claims):
        key = (TRAINER, RIVAL)[i % 2]
        revealed.append((reveal(chains, manifest(chains, names=names, key=key, tag=b"p%d" % i), key=key), new))
    advance(chains, [certify_tx(c, votes(chains, c, new=new)) for c, new in revealed])
    advance_to_round_close(chains)
    # The reference: the one claim with the best gain (ties by claim hash) applies, on its blocks.
    best, _ = min(revealed, key=lambda cn: (cn[1], codec.hash_of(cn[0])))
    taken = {b.name: codec.hash_of(best) for b in best.blocks}
    for claim, _ in revealed:
        status = claim_record(chains, claim).status
        assert status == (CLAIM_ACCEPTED if codec.hash_of(claim) in taken.values() else CLAIM_REJECTED)
    for name in (EXPERT, OTHER):
        assert expert(chains, name).head == taken.get(name, codec.hash_of(TENSORS[(EXPERT, OTHER).index(name)]))


def test_round_numbering(chains: LocalChains) -> None:
    ctx = chains.context()
    length = ctx.params.pol.round_length
    assert [compute_round(h, ctx) for h in (0, length - 1, length)] == [1, 1, 2]
    assert [is_round_close(h, ctx) for h in (length - 2, length - 1, length)] == [False, True, False]


def test_commit_payload_is_the_only_thing_a_commit_shows(chains: LocalChains) -> None:
    claim = make_claim(manifest(chains).manifest)
    tx = commit_tx(TRAINER, NET, 0, claim)
    assert tx.body.payload == CommitDelta(compute_commitment(codec.hash_of(claim), TRAINER.address))
    assert claim.delta_blob not in codec.encode(tx)


def test_round_rule_on_sign_tx_with_wrong_chain(chains: LocalChains) -> None:
    claim = make_claim(manifest(chains).manifest)
    tx = sign_tx(TRAINER, NET, CHAIN_REWARD, 0, CommitDelta(compute_commitment(codec.hash_of(claim),
                                                                              TRAINER.address)))
    view = Overlay(Overlay(chains.states[CHAIN_REWARD]))
    with pytest.raises(InvalidTransaction, match="not a reward payload"):
        apply_tx(view, tx, CHAIN_REWARD, 1, chains.context())
