"""Reward chain rules: transfers, stake, unstake with unbonding, rewards paid once, slashing.

Every movement is a double entry on `Supply`; `validate_supply` checks the equation
balances + stakes + unbonding = genesis + minted - burned at the end of every block.
"""

from __future__ import annotations

from dataclasses import replace

from chain import commit
from chain.codec import decode
from chain.context import Context, TxEnv
from chain.errors import InvalidTransaction, MissingDependency
from chain.params import ChainParams
from chain.payloads import Reward, Slash, Stake, Transfer, Unstake
from chain.records import (
    EMPTY_ACCOUNT,
    KEY_STAKERS,
    KEY_SUPPLY,
    KEY_VALIDATORS,
    MAX_STAKERS,
    MAX_UNBONDING_PER_HEIGHT,
    Account,
    Stakers,
    Supply,
    UnbondingEntry,
    UnbondingQueue,
    account_key,
    is_account_key,
    paid_key,
    slashed_key,
    tombstone_key,
    unbonding_key,
)
from chain.rules import ChainRules
from chain.state import Overlay, State
from chain.types import CHAIN_DATASET, CHAIN_PARAMETER, CHAIN_REWARD, MAX_VALIDATORS, ValidatorSet, make_validator_set

U64_MAX = 2**64 - 1


def get_account(view: Overlay | State, address: bytes) -> Account:
    raw = view.get(account_key(address))
    if raw is None:
        return EMPTY_ACCOUNT
    return decode(Account, raw)


def get_supply(view: Overlay | State) -> Supply:
    raw = view.get(KEY_SUPPLY)
    if raw is None:
        raise InvalidTransaction("reward state has no supply record")
    return decode(Supply, raw)


def get_validator_set(view: Overlay | State) -> ValidatorSet:
    """The validator set in a reward state (KEY_VALIDATORS): the one in force from this block on.
    The only reader of that record."""
    raw = view.get(KEY_VALIDATORS)
    if raw is None:
        raise InvalidTransaction("reward state has no validator set")
    return decode(ValidatorSet, raw)


def _put_account(view: Overlay, address: bytes, account: Account) -> None:
    if account == EMPTY_ACCOUNT:
        view.delete(account_key(address))
    else:
        view.put_record(account_key(address), account)


def _move(view: Overlay, **deltas: int) -> None:
    """Adjust the supply totals; raises if a total would leave the U64 range."""
    s = get_supply(view)
    fields = {f: getattr(s, f) + deltas.get(f, 0) for f in Supply.__dataclass_fields__}
    if any(not 0 <= v <= U64_MAX for v in fields.values()):
        raise InvalidTransaction("supply total out of range")
    view.put_record(KEY_SUPPLY, Supply(**fields))


def _update_stakers(view: Overlay, address: bytes, has_stake: bool) -> None:
    raw = view.get(KEY_STAKERS)
    current = set(decode(Stakers, raw).addresses) if raw is not None else set()
    if has_stake:
        current.add(address)
    else:
        current.discard(address)
    if len(current) > MAX_STAKERS:
        raise InvalidTransaction(f"more than {MAX_STAKERS} staking accounts")
    view.put_record(KEY_STAKERS, Stakers(tuple(sorted(current))))


def apply_transfer(view: Overlay, env: TxEnv, p: Transfer) -> None:
    if p.amount == 0:
        raise InvalidTransaction("transfer of zero")
    sender = get_account(view, env.sender)
    if sender.balance < p.amount:
        raise InvalidTransaction(f"balance {sender.balance} below {p.amount}")
    _put_account(view, env.sender, _replace(sender, balance=sender.balance - p.amount))
    recipient = get_account(view, p.to)
    if recipient.balance + p.amount > U64_MAX:
        raise InvalidTransaction("recipient balance overflows")
    _put_account(view, p.to, _replace(recipient, balance=recipient.balance + p.amount))


def apply_stake(view: Overlay, env: TxEnv, p: Stake) -> None:
    if p.amount == 0:
        raise InvalidTransaction("stake of zero")
    acct = get_account(view, env.sender)
    if acct.balance < p.amount:
        raise InvalidTransaction(f"balance {acct.balance} below {p.amount}")
    acct = _replace(
        acct, balance=acct.balance - p.amount, stake=acct.stake + p.amount,
        public_key=env.tx.body.sender,
    )
    _put_account(view, env.sender, acct)
    _move(view, balances=-p.amount, stakes=p.amount)
    _update_stakers(view, env.sender, True)


def apply_unstake(view: Overlay, env: TxEnv, p: Unstake) -> None:
    if p.amount == 0:
        raise InvalidTransaction("unstake of zero")
    acct = get_account(view, env.sender)
    if acct.stake < p.amount:
        raise InvalidTransaction(f"stake {acct.stake} below {p.amount}")
    acct = _replace(acct, stake=acct.stake - p.amount, unbonding=acct.unbonding + p.amount)
    _put_account(view, env.sender, acct)
    _move(view, stakes=-p.amount, unbonding=p.amount)
    _update_stakers(view, env.sender, acct.stake > 0)
    release = env.height + env.ctx.params.staking.unbonding_period
    queue = view.get_record(unbonding_key(release), UnbondingQueue) or UnbondingQueue(())
    if len(queue.entries) >= MAX_UNBONDING_PER_HEIGHT:
        raise InvalidTransaction("unbonding queue for that height is full")
    view.put_record(
        unbonding_key(release), UnbondingQueue((*queue.entries, UnbondingEntry(env.sender, p.amount)))
    )


def apply_reward(view: Overlay, env: TxEnv, p: Reward) -> None:
    if p.source_chain not in (CHAIN_PARAMETER, CHAIN_DATASET):
        raise InvalidTransaction(f"chain {p.source_chain} records no earnings")
    if view.get(paid_key(p.source_chain, p.source_tx)) is not None:
        raise InvalidTransaction("earning already paid")
    if env.ctx.earnings is None:
        raise MissingDependency("no view of earnings to check a reward against")
    earning = env.ctx.earnings(p.source_chain, p.source_tx)
    if earning is None:
        raise MissingDependency(f"earning {p.source_tx.hex()[:16]} is not known here")
    if (earning.recipient, earning.amount) != (p.recipient, p.amount):
        raise InvalidTransaction("reward does not match the recorded earning")
    acct = get_account(view, p.recipient)
    _put_account(view, p.recipient, _replace(acct, balance=acct.balance + p.amount))
    _move(view, minted=p.amount, balances=p.amount)
    view.put(paid_key(p.source_chain, p.source_tx), b"\x01")


def apply_slash(view: Overlay, env: TxEnv, p: Slash) -> None:
    try:
        commit.validate_evidence(p.evidence, env.ctx.network_id, env.ctx.validators)
    except commit.InvalidEvidence as err:
        raise InvalidTransaction(f"evidence: {err}") from err
    key = slashed_key(commit.evidence_key(p.evidence))
    if view.get(key) is not None:
        raise InvalidTransaction("offence already slashed")
    offender = p.evidence.vote_a.vote.validator
    if view.get(tombstone_key(offender)) is not None:
        raise InvalidTransaction("validator already slashed and tombstoned")
    view.put(tombstone_key(offender), env.height.to_bytes(8, "big"))
    acct = get_account(view, offender)
    # Bonded power includes what the offender started unbonding: it escapes nothing.
    amount = (acct.stake + acct.unbonding) * env.ctx.params.staking.slash_ppm // 1_000_000
    from_stake = min(amount, acct.stake)
    from_unbonding = amount - from_stake
    acct = _replace(acct, stake=acct.stake - from_stake, unbonding=acct.unbonding - from_unbonding)
    _put_account(view, offender, acct)
    _move(view, stakes=-from_stake, unbonding=-from_unbonding, burned=amount)
    _update_stakers(view, offender, acct.stake > 0)
    view.put(key, amount.to_bytes(8, "big"))


def end_block(view: Overlay, height: int, ctx: Context) -> None:
    release_unbonding(view, height)
    if height % ctx.params.staking.epoch_length == 0:
        view.put_record(KEY_VALIDATORS, compute_next_validator_set(view, height, ctx.params))
    supply = get_supply(view)
    if not supply.is_balanced():
        raise InvalidTransaction(f"supply equation broken: {supply}")


def release_unbonding(view: Overlay, height: int) -> None:
    queue = view.get_record(unbonding_key(height), UnbondingQueue)
    if queue is None:
        return
    for entry in queue.entries:
        acct = get_account(view, entry.address)
        amount = min(entry.amount, acct.unbonding)  # less if slashed while unbonding
        acct = _replace(acct, balance=acct.balance + amount, unbonding=acct.unbonding - amount)
        _put_account(view, entry.address, acct)
        _move(view, unbonding=-amount, balances=amount)
    view.delete(unbonding_key(height))


def compute_next_validator_set(view: Overlay | State, height: int, params: ChainParams) -> ValidatorSet:
    """The stakers with at least the minimum stake, top MAX_VALIDATORS by stake."""
    raw = view.get(KEY_STAKERS)
    stakers = decode(Stakers, raw).addresses if raw is not None else ()
    members = []
    for address in stakers:
        acct = get_account(view, address)
        tombstoned = view.get(tombstone_key(address)) is not None
        if acct.stake >= params.staking.min_validator_stake and acct.public_key != bytes(32) and not tombstoned:
            members.append((acct.stake, address, acct.public_key))
    members.sort(key=lambda m: (-m[0], m[1]))
    chosen = members[:MAX_VALIDATORS]
    if not chosen:  # an empty set would halt every chain: keep the current one
        current = get_validator_set(view)
        return replace(current, epoch=height // params.staking.epoch_length)
    return make_validator_set(height // params.staking.epoch_length, [(pk, stake) for stake, _, pk in chosen])


def validate_supply(state: State) -> None:
    """Full audit: sum every account and compare with the supply record (raises on mismatch)."""
    balances = stakes = unbonding = 0
    for key, value in state.items():
        if is_account_key(key):
            acct = decode(Account, value)
            balances += acct.balance
            stakes += acct.stake
            unbonding += acct.unbonding
    supply = get_supply(state)
    if (balances, stakes, unbonding) != (supply.balances, supply.stakes, supply.unbonding):
        raise InvalidTransaction(
            f"accounts sum to {(balances, stakes, unbonding)}, supply says "
            f"{(supply.balances, supply.stakes, supply.unbonding)}"
        )
    if not supply.is_balanced():
        raise InvalidTransaction(f"supply equation broken: {supply}")


_ACCOUNT_FIELDS = frozenset({"balance", "stake", "unbonding", "public_key"})


def _replace(acct: Account, **changes: object) -> Account:
    # The constructor, not dataclasses.replace: this runs for every account a transfer touches,
    # and replace() inspects the fields on every call (about 5x slower).
    return Account(changes.get("balance", acct.balance), changes.get("stake", acct.stake),
                   changes.get("unbonding", acct.unbonding), changes.get("public_key", acct.public_key))


RULES = ChainRules(
    chain_id=CHAIN_REWARD,
    apply={
        Transfer: apply_transfer,
        Stake: apply_stake,
        Unstake: apply_unstake,
        Reward: apply_reward,
        Slash: apply_slash,
    },
    end_block=end_block,
    system=frozenset({Reward, Slash}),
)
