"""The built-in devnet genesis: dev validators (insecure, public keys), a faucet, the model.

Every machine builds the same pact, byte for byte: fixed time, fixed labels for keys, and
model weights from a fixed seed. `blyan init --network devnet` writes the weight blobs into
the node's blob store.
"""

from __future__ import annotations

from collections.abc import Callable

from chain import crypto
from chain.pact import PACT_VERSION, GenesisAccount, GenesisPact, GenesisValidator
from chain.tensors import KIND_EXPERT, KIND_MODULE, ModelSpec, TensorRecord
from genesis.params import devnet_params

DEVNET_ID = "devnet"
DEVNET_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DEVNET_VALIDATORS = 4
DEVNET_STAKE = 1_000_000
FAUCET_BALANCE = 1_000_000_000
WEIGHTS_VERSION = "0.1.0"

DEVNET_MODEL = ModelSpec(
    name="blyan-devnet-moe",
    version="0.1.0",
    vocab_size=256,   # bytes until the tokenizer block lands with the trained genesis model
    d_model=128,
    n_layers=2,
    n_heads=4,
    n_experts=4,
    top_k=2,
    d_ff=256,
    max_seq_len=128,
    seed=20260101,
)


def dev_validator_key(index: int, network_id: str = DEVNET_ID) -> crypto.PrivateKey:
    """INSECURE: anyone can derive this key. For local dev networks only."""
    return crypto.PrivateKey.from_label(f"{network_id}-validator-{index}")


def faucet_key(network_id: str = DEVNET_ID) -> crypto.PrivateKey:
    """INSECURE: the dev faucet account's key."""
    return crypto.PrivateKey.from_label(f"{network_id}-faucet")


def build_model_tensors(
    spec: ModelSpec, store_blob: Callable[[bytes], object] | None = None
) -> tuple[TensorRecord, ...]:
    """Seeded random weights of `spec`, one tensor block per expert and shared module."""
    from gpu.model import MoEConfig, init_seeded
    from gpu.weights import encode_block, make_tensor_record

    model = init_seeded(MoEConfig.from_spec(spec), spec.seed)
    records = []
    for name in model.block_names():
        data = encode_block(model.block_state_dict(name))
        kind = KIND_EXPERT if ".expert" in name else KIND_MODULE
        records.append(make_tensor_record(name, kind, WEIGHTS_VERSION, data))
        if store_blob is not None:
            store_blob(data)
    return tuple(records)


def build_devnet_pact(
    n_validators: int = DEVNET_VALIDATORS,
    network_id: str = DEVNET_ID,
    store_blob: Callable[[bytes], object] | None = None,
    with_model: bool = True,
) -> GenesisPact:
    validators = tuple(
        GenesisValidator(dev_validator_key(i, network_id).public_key, DEVNET_STAKE, f"dev-{i}")
        for i in range(n_validators)
    )
    tensors = build_model_tensors(DEVNET_MODEL, store_blob) if with_model else ()
    return GenesisPact(
        version=PACT_VERSION,
        network_id=network_id,
        genesis_time_ms=DEVNET_TIME_MS,
        params=devnet_params(),
        validators=validators,
        accounts=(GenesisAccount(faucet_key(network_id).address, FAUCET_BALANCE),),
        model=DEVNET_MODEL,
        tensors=tensors,
        datasets=(),
        bootstrap=(),
    )
