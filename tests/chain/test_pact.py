"""The Genesis Pact's rules (`validate_pact`): versions, validators, accounts, tensor blocks, the
tokenizer block and the genesis datasets."""

from __future__ import annotations

from dataclasses import replace

import pytest

from chain import crypto
from chain.pact import (
    PACT_VERSION,
    GenesisAccount,
    GenesisDataset,
    GenesisPact,
    GenesisValidator,
    build_genesis,
    validate_pact,
)
from chain.params import TrustLevel
from chain.records import KEY_VALIDATION_SET
from chain.tensors import KIND_MODULE, KIND_TOKENIZER, TOKENIZER_BLOCK, TensorRecord
from chain.types import CHAIN_DATASET
from genesis.params import test_params as make_params
from genesis.testkit import TINY_MODEL, make_pact, validator_keys
from gpu.model import MoEConfig, init_seeded
from gpu.tokenizer import TokenizerConfig, make_tokenizer_record, train_tokenizer
from gpu.weights import encode_block, make_tensor_record

TEXTS = ["def f(x):\n    return x * 2\n", "import os\nprint(os.getcwd())\n"] * 10


def _tokenizer_record() -> TensorRecord:
    return make_tokenizer_record(train_tokenizer(TEXTS, TokenizerConfig(vocab_size=280)), "0.1.0")[0]


def _embed_record() -> TensorRecord:
    model = init_seeded(MoEConfig.from_spec(TINY_MODEL), 0)
    return make_tensor_record("embed", KIND_MODULE, "0.1.0", encode_block(model.block_state_dict("embed")))


def _dataset(data: bytes, role: str = "train") -> GenesisDataset:
    return GenesisDataset(crypto.cid_raw(data), crypto.sha256(data), len(data), "text/x-python",
                          "PSF-2.0", 3, role)


def _pact(**kw: object) -> GenesisPact:
    return replace(make_pact(validator_keys(2)), **kw)


def test_pact_with_tokenizer_and_datasets() -> None:
    data = [b"a = 1\n", b"b = 2\n", b"c = 3\n"]
    datasets = (_dataset(data[0]), _dataset(data[1], "validation"), _dataset(data[2], "validation"))
    pact = _pact(model=replace(TINY_MODEL, vocab_size=280), tensors=(_embed_record(), _tokenizer_record()),
                 datasets=datasets)
    validate_pact(pact)
    state = build_genesis(pact)[CHAIN_DATASET].state
    assert len(state.get(KEY_VALIDATION_SET)) == 64


def test_invalid_vocab_without_tokenizer() -> None:
    with pytest.raises(ValueError, match="needs a tokenizer"):
        validate_pact(_pact(model=replace(TINY_MODEL, vocab_size=280), tensors=(_embed_record(),)))
    validate_pact(_pact(model=replace(TINY_MODEL, vocab_size=280), tensors=()))
    validate_pact(_pact(tensors=(_embed_record(),)))  # 256: bytes, no tokenizer needed


def test_invalid_tokenizer_name_or_kind() -> None:
    tok = _tokenizer_record()
    with pytest.raises(ValueError, match="named"):
        validate_pact(_pact(tensors=(replace(tok, name="tok2"),)))
    with pytest.raises(ValueError, match="named"):
        validate_pact(_pact(tensors=(replace(_embed_record(), name=TOKENIZER_BLOCK),)))
    with pytest.raises(ValueError, match="U8"):
        validate_pact(_pact(tensors=(replace(_embed_record(), name=TOKENIZER_BLOCK, kind=KIND_TOKENIZER),)))


def test_invalid_dataset_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        validate_pact(_pact(datasets=(_dataset(b"x"), _dataset(b"x", "validation"))))


def test_invalid_dataset_role() -> None:
    with pytest.raises(ValueError, match="role"):
        validate_pact(_pact(datasets=(_dataset(b"x", "test"),)))


def test_invalid_dataset_cid_mismatch() -> None:
    with pytest.raises(ValueError, match="does not name"):
        validate_pact(_pact(datasets=(replace(_dataset(b"x"), blob_id=crypto.sha256(b"y")),)))
    with pytest.raises(ValueError, match="CID"):
        validate_pact(_pact(datasets=(replace(_dataset(b"x"), cid="Qmnotacid"),)))


def test_pact_valid() -> None:
    validate_pact(_pact())
    assert _pact().version == PACT_VERSION


KEYS = validator_keys(2)
INVALID_PACTS = {
    "version": (lambda: _pact(version="blyan-pact/1"), "pact version"),
    "network-id": (lambda: _pact(network_id="dev net"), "network id"),
    "validator-twice": (
        lambda: _pact(validators=(GenesisValidator(KEYS[0].public_key, 10_000, "a"),
                                  GenesisValidator(KEYS[0].public_key, 10_000, "b"))),
        "validator appears twice"),
    "stake-below-minimum": (
        lambda: _pact(validators=(GenesisValidator(KEYS[0].public_key, 1, "a"),)), "minimum stake"),
    "account-twice": (
        lambda: _pact(accounts=(GenesisAccount(bytes(20), 1), GenesisAccount(bytes(20), 2))),
        "account appears twice"),
    "tensor-name-twice": (lambda: _pact(tensors=(_embed_record(), _embed_record())), "name appears twice"),
    "tensor-kind": (lambda: _pact(tensors=(replace(_embed_record(), kind="weird"),)), "unknown tensor kind"),
    "epoch-length-zero": (
        lambda: _pact(params=make_params(staking=replace(make_params().staking, epoch_length=0))),
        "epoch length"),
    "first-trust-level": (
        lambda: _pact(params=make_params(dataset=replace(make_params().dataset, trust_levels=(TrustLevel(1, 4),)))),
        "first trust level"),
}


@pytest.mark.parametrize("case", sorted(INVALID_PACTS))
def test_invalid_pact(case: str) -> None:
    make, match = INVALID_PACTS[case]
    with pytest.raises(ValueError, match=match):
        validate_pact(make())
