"""The built-in devnet genesis: dev validators (insecure, public keys), a faucet, the model.

Every machine builds the same pact, byte for byte: fixed time, fixed labels for keys, and the
model, tokenizer and corpus list of the prebuilt artifact shipped in `genesis/prebuilt/devnet/`
(made by `blyan genesis build`; see its manifest.json). Nothing is trained at run time, and the
pact does not depend on this machine's Python: the corpus datasets are the manifest's CIDs.

`store_blob` receives every model and tokenizer blob, and the corpus files whose bytes on this
machine match their CID (the stdlib of another Python patch release may differ for some files:
those are skipped, and their CIDs stay unresolved on this node until fetched from a peer).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chain import crypto
from chain.pact import PACT_VERSION, GenesisAccount, GenesisPact, GenesisValidator
from chain.tensors import ModelSpec, TensorRecord
from genesis.corpus import CorpusFile, CorpusMismatch, get_stdlib_root, make_dataset, read_corpus_file
from genesis.params import devnet_params

logger = logging.getLogger(__name__)

DEVNET_ID = "devnet"
DEVNET_TIME_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DEVNET_VALIDATORS = 4
DEVNET_STAKE = 1_000_000
FAUCET_BALANCE = 1_000_000_000
PREBUILT_DIR = Path(__file__).resolve().parent / "prebuilt" / "devnet"


@dataclass(frozen=True, slots=True)
class Prebuilt:
    spec: ModelSpec
    """The model architecture."""
    tensors: tuple[TensorRecord, ...]
    """Model blocks in order, then the tokenizer."""
    blobs: tuple[bytes, ...]
    """The blob of each record."""
    corpus: tuple[CorpusFile, ...]
    """The corpus files the model was trained and validated on."""


@functools.cache
def load_prebuilt(path: Path = PREBUILT_DIR) -> Prebuilt:
    """The shipped devnet artifact, every file checked against its manifest."""
    # Lazily: genesis.build imports torch and tokenizers, which a node that never reads the
    # artifact (every `blyan` command but init and genesis) should not pay for at start-up.
    from genesis.build import get_corpus_entries, get_spec, load_artifact, make_records

    artifact = load_artifact(path)
    records, blobs = make_records(artifact)
    return Prebuilt(get_spec(artifact.manifest), records, tuple(blobs), get_corpus_entries(artifact.manifest))


def __getattr__(name: str) -> object:
    if name == "DEVNET_MODEL":  # lazily: importing this module reads no artifact and no torch
        return load_prebuilt().spec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dev_validator_key(index: int, network_id: str = DEVNET_ID) -> crypto.PrivateKey:
    """INSECURE: anyone can derive this key. For local dev networks only."""
    return crypto.PrivateKey.from_label(f"{network_id}-validator-{index}")


def faucet_key(network_id: str = DEVNET_ID) -> crypto.PrivateKey:
    """INSECURE: the dev faucet account's key."""
    return crypto.PrivateKey.from_label(f"{network_id}-faucet")


def store_corpus_blobs(
    corpus: tuple[CorpusFile, ...], store_blob: Callable[[bytes], object], root: Path | None = None
) -> int:
    """Pass each corpus file found under `root` with its recorded bytes to `store_blob`; count."""
    root = get_stdlib_root() if root is None else root
    stored = 0
    for entry in corpus:
        try:
            store_blob(read_corpus_file(root, entry))
            stored += 1
        except CorpusMismatch:
            continue
    if stored < len(corpus):
        logger.info("genesis corpus: %d of %d files differ here, not stored", len(corpus) - stored, len(corpus))
    return stored


def build_devnet_pact(
    n_validators: int = DEVNET_VALIDATORS,
    network_id: str = DEVNET_ID,
    store_blob: Callable[[bytes], object] | None = None,
    with_model: bool = True,
    prebuilt: Prebuilt | None = None,
) -> GenesisPact:
    """The devnet pact; its model, tokenizer and corpus are `prebuilt`'s (default: the shipped
    artifact; `genesis.presets` has others)."""
    validators = tuple(
        GenesisValidator(dev_validator_key(i, network_id).public_key, DEVNET_STAKE, f"dev-{i}")
        for i in range(n_validators)
    )
    prebuilt = prebuilt or load_prebuilt()
    tensors = prebuilt.tensors if with_model else ()
    datasets = tuple(make_dataset(e) for e in prebuilt.corpus) if with_model else ()
    if with_model and store_blob is not None:
        for blob in prebuilt.blobs:
            store_blob(blob)
        store_corpus_blobs(prebuilt.corpus, store_blob)
    return GenesisPact(
        version=PACT_VERSION,
        network_id=network_id,
        genesis_time_ms=DEVNET_TIME_MS,
        params=devnet_params(),
        validators=validators,
        accounts=(GenesisAccount(faucet_key(network_id).address, FAUCET_BALANCE),),
        model=prebuilt.spec,
        tensors=tensors,
        datasets=datasets,
        bootstrap=(),
    )
