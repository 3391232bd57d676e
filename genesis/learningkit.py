"""A small learning world, for tests and benchmarks: the shipped devnet model and tokenizer, with
datasets made here (code-like text with a pattern the model has not seen, and a harmful one),
and PoL parameters sized for quick runs.

    world = make_learning_world()
    world.pact, world.blobs, world.train, world.noise, world.validation
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from chain import crypto
from chain.pact import PACT_VERSION, GenesisAccount, GenesisDataset, GenesisPact, GenesisValidator
from chain.params import TIER_GOLD, TIER_SILVER, PolParams
from genesis.devnet import DEVNET_TIME_MS, load_prebuilt
from genesis.params import devnet_params

LEARNING_NETWORK = "pol-test"
LEARNING_CONTRIBUTOR = crypto.PrivateKey.from_label("pol-test-contributor")
LEARNING_VALIDATOR = crypto.PrivateKey.from_label("pol-test-validator")


def make_code_text(rng: random.Random, functions: int) -> str:
    """Code with a regular, learnable pattern the stdlib-trained model has not seen."""
    lines = []
    for _ in range(functions):
        a, b = rng.randrange(100), rng.randrange(100)
        name = rng.choice(["blend", "mix", "fold", "weave", "splice"])
        lines.append(f"def {name}_{a}_{b}(value):\n    return value * {a} + {b}  # {name} {a} {b}\n")
    return "\n".join(lines)


def make_noise_text(rng: random.Random, chars: int) -> str:
    """Four made-up words in random order: training the first layer's router on it makes the model
    worse at the code here (measured: validation loss 4.064 -> 4.106 nats after 16 steps at lr
    1e-2). An expert trained on it gets better instead: any text flattens the predictions of a
    model that meets code it has never seen."""
    return " ".join(rng.choice(["qux", "zed", "vex", "jib"]) for _ in range(chars // 4))


@dataclass(frozen=True, slots=True)
class LearningWorld:
    pact: GenesisPact
    """The devnet model with the datasets below; one validator (`LEARNING_VALIDATOR`)."""
    blobs: dict[bytes, bytes]
    """Model blocks, tokenizer and datasets, by blob id."""
    train: tuple[str, ...]
    """CIDs of the good training datasets."""
    noise: str
    """CID of an approved training dataset of noise (training on it makes the model worse)."""
    validation: tuple[str, ...]
    """CIDs of the validation set."""


def _dataset(data: bytes, role: str, tier: int = TIER_GOLD) -> GenesisDataset:
    return GenesisDataset(crypto.cid_raw(data), crypto.sha256(data), len(data), "text/x-python", "CC0-1.0", tier, role)


def make_learning_world(train_files: int = 4, functions: int = 60, seed: int = 7,
                        **pol_overrides: object) -> LearningWorld:
    """The world; `pol_overrides` replace fields of the PoL parameters (k is 4 by default)."""
    rng = random.Random(seed)
    prebuilt = load_prebuilt()
    train = [make_code_text(rng, functions).encode() for _ in range(train_files)]
    noise = make_noise_text(rng, 6000).encode()
    validation = [make_code_text(rng, 40).encode() for _ in range(2)]
    datasets = ([_dataset(d, "train") for d in train] + [_dataset(noise, "train", TIER_SILVER)]
                + [_dataset(d, "validation") for d in validation])
    params = devnet_params()
    pol: PolParams = replace(params.pol, checkpoint_every=4, eval_windows=8, eval_seq_len=64)
    pact = GenesisPact(
        version=PACT_VERSION, network_id=LEARNING_NETWORK, genesis_time_ms=DEVNET_TIME_MS,
        params=replace(params, pol=replace(pol, **pol_overrides)),
        validators=(GenesisValidator(LEARNING_VALIDATOR.public_key, 1_000_000, "v0"),),
        accounts=(GenesisAccount(LEARNING_CONTRIBUTOR.address, 1_000),), model=prebuilt.spec,
        tensors=prebuilt.tensors, datasets=tuple(datasets), bootstrap=(),
    )
    blobs = {crypto.sha256(b): b for b in (*prebuilt.blobs, *train, noise, *validation)}
    cid = crypto.cid_raw
    return LearningWorld(pact, blobs, tuple(cid(d) for d in train), cid(noise), tuple(cid(d) for d in validation))
