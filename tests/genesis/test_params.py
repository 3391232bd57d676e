"""The built-in networks' protocol constants and their encoding."""

from __future__ import annotations

from dataclasses import replace

from chain import codec
from chain.params import ChainParams
from genesis.params import devnet_params
from genesis.params import test_params as make_test_params  # not collected as a test

# [consensus, staking, dataset, pol, rewards], each an array of its fields in order.
DEVNET_PARAMS_HEX = (
    "95"
    "97cd03e8cd05dccd01f4cd01f4cd07d0ce00800000ce00040000"  # consensus
    "946414cd03e8ce000186a0"  # staking
    # dataset: pow bits, window, trust levels, audit version, max bytes; audit parameters, policy,
    # reputation, honeypots
    "99124093920004920310920a40aa626c79616e2d6c302f31ce0400000096"
    "ce00100000cc8005ce0007a120cd07d0ce0007a1209404cdc350ce000493e0ce000c35009300ce000186a00490"
    "dc0012cd03e8cd2710cd2710ce000f3e58100101cd4e2040cc80ce0007a120ce000f1b3002"  # pol
    "0820cd02580404"  # pol: round_length, reveal_window, vote_window, max_open_claims, snapshot_every
    "9664ce000186a0cd03e80594000a193202"  # rewards
)


def test_devnet_params_golden() -> None:
    assert codec.encode(devnet_params()).hex() == DEVNET_PARAMS_HEX
    assert codec.decode(ChainParams, bytes.fromhex(DEVNET_PARAMS_HEX)) == devnet_params()


def test_devnet_params_groups() -> None:
    assert codec.to_wire(devnet_params()) == [
        [1000, 1500, 500, 500, 2000, 8388608, 262144],
        [100, 20, 1000, 100000],
        [18, 64, [[0, 4], [3, 16], [10, 64]], "blyan-l0/1", 67108864, [1048576, 128, 5, 500000, 2000, 500000],
         [4, 50000, 300000, 800000], [0, 100000, 4], []],
        [1000, 10000, 10000, 999000, 16, 1, 1, 20000, 64, 128, 500000, 990000, 2, 8, 32, 600, 4, 4],
        [100, 100000, 1000, 5, [0, 10, 25, 50], 2],
    ]


def test_test_params_overrides_whole_groups() -> None:
    base = make_test_params()
    assert (base.staking.epoch_length, base.staking.unbonding_period, base.dataset.pow_difficulty_bits) == (10, 3, 4)
    staking = replace(base.staking, epoch_length=5)
    assert make_test_params(staking=staking).staking.epoch_length == 5
    assert make_test_params(staking=staking).dataset == base.dataset


def test_quota_for_levels() -> None:
    dataset = devnet_params().dataset
    assert [dataset.quota_for(n) for n in (0, 2, 3, 9, 10, 1_000)] == [4, 4, 16, 16, 64, 64]
