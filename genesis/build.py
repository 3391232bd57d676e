"""`blyan genesis build`: corpus -> tokenizer -> trained MoE -> a genesis artifact directory.

The artifact (`DIR/`):

    manifest.json                 what was built and how: spec, configs, corpus entries by CID
                                  and role, blob ids, losses, the environment it ran in
    tokenizer.json                the tokenizer's canonical JSON
    <block>.safetensors           one canonical tensor block per model block (`gpu.weights`)

A build is a pure function of (stdlib files, BuildConfig) on a given machine kind and torch:
the tokenizer is trained on the training files only, the model starts from `init_seeded(spec)`,
and the training run is deterministic (`gpu.train`). `load_artifact` reads a directory back and
checks every file against the manifest.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import tokenizers
import torch

from chain import crypto
from chain.errors import BlyanError
from chain.tensors import KIND_EXPERT, KIND_MODULE, ModelSpec, TensorRecord
from genesis.corpus import (
    ROLE_TRAIN,
    ROLE_VALIDATION,
    CorpusConfig,
    CorpusFile,
    decode_entries,
    encode_entries,
    get_texts,
    select_corpus,
)
from gpu.model import MoEConfig, init_seeded
from gpu.tokenizer import (
    TokenizerConfig,
    decode_tokenizer,
    encode_texts,
    get_eot_id,
    get_vocab_size,
    make_tokenizer_record,
    train_tokenizer,
)
from gpu.train import TrainConfig, compute_baseline_loss, evaluate_loss, measure_step_seconds, train_model
from gpu.weights import encode_block, make_tensor_record

MANIFEST_FORMAT = "blyan-genesis-build/1"
MANIFEST_FILE = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
BLOCK_SUFFIX = ".safetensors"
WEIGHTS_VERSION = "0.1.0"

DEVNET_SPEC = ModelSpec(
    name="blyan-devnet-moe",
    version="0.2.0",
    vocab_size=2048,  # byte-level BPE, <|endoftext|> included
    d_model=128,
    n_layers=2,
    n_heads=4,
    n_experts=4,
    top_k=2,
    d_ff=256,
    max_seq_len=128,
    seed=20260101,
)


class InvalidArtifact(BlyanError):
    """A genesis artifact directory whose files do not match its manifest."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"genesis artifact {path}: {reason}")


@dataclass(frozen=True, slots=True)
class BuildConfig:
    spec: ModelSpec = DEVNET_SPEC  # architecture; spec.seed seeds the initial weights
    corpus: CorpusConfig = CorpusConfig()  # which stdlib files
    tokenizer: TokenizerConfig = TokenizerConfig()  # vocab_size must equal spec.vocab_size
    train: TrainConfig = TrainConfig()  # the training run


@dataclass(frozen=True, slots=True)
class Artifact:
    manifest: dict
    """The parsed manifest.json."""
    tokenizer_json: bytes
    """Canonical tokenizer JSON."""
    blocks: dict[str, bytes] = field(default_factory=dict)
    """Model block blobs by block name, in block order."""


def compute_block_kind(name: str) -> int:
    return KIND_EXPERT if ".expert" in name else KIND_MODULE


def get_spec(manifest: dict) -> ModelSpec:
    return ModelSpec(**manifest["spec"])


def get_corpus_entries(manifest: dict) -> tuple[CorpusFile, ...]:
    return decode_entries(manifest["corpus"]["entries"])


def build_token_streams(
    root: Path, entries: tuple[CorpusFile, ...], tokenizer_json: bytes
) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and validation streams: each file's tokens then <|endoftext|>, files by path."""
    tok = decode_tokenizer(tokenizer_json)
    eot = get_eot_id(tok)
    streams = []
    for role in (ROLE_TRAIN, ROLE_VALIDATION):
        ids: list[int] = []
        for file_ids in encode_texts(tok, get_texts(root, entries, role)):
            ids.extend(file_ids)
            ids.append(eot)
        streams.append(torch.tensor(ids, dtype=torch.long))  # [n]
    return streams[0], streams[1]


def build_artifact(
    cfg: BuildConfig, root: Path, log: Callable[[str], None] = lambda _: None
) -> Artifact:
    """Select the corpus under `root`, train tokenizer and model, return the artifact."""
    if cfg.tokenizer.vocab_size != cfg.spec.vocab_size:
        raise ValueError(f"tokenizer vocab {cfg.tokenizer.vocab_size} != spec {cfg.spec.vocab_size}")
    entries = select_corpus(root, cfg.corpus)
    train_texts = get_texts(root, entries, ROLE_TRAIN)
    log(f"corpus: {len(entries)} files, {sum(e.size for e in entries)} bytes from {root}")
    tokenizer_json = train_tokenizer(train_texts, cfg.tokenizer)
    vocab = get_vocab_size(decode_tokenizer(tokenizer_json))
    if vocab != cfg.spec.vocab_size:
        raise ValueError(f"the corpus gave a vocabulary of {vocab}, not {cfg.spec.vocab_size}")
    train, val = build_token_streams(root, entries, tokenizer_json)
    log(f"tokenizer: vocab {vocab}; {train.numel()} train / {val.numel()} validation tokens")
    model = init_seeded(MoEConfig.from_spec(cfg.spec), cfg.spec.seed)
    initial_val = evaluate_loss(model, val, cfg.train)
    every = max(1, cfg.train.steps // 20)

    def on_step(step: int, loss: float) -> None:
        if step % every == 0 or step == cfg.train.steps - 1:
            log(f"step {step + 1}/{cfg.train.steps}  train loss {loss:.3f}")

    report = train_model(model, train, cfg.train, on_step)
    val_loss = evaluate_loss(model, val, cfg.train)
    unigram = compute_baseline_loss(train, val, cfg.train, vocab)
    log(f"validation loss {val_loss:.3f} nats/token (initial {initial_val:.3f}, unigram {unigram:.3f})")
    blocks = {name: encode_block(model.block_state_dict(name)) for name in model.block_names()}
    results = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": report.steps,
        "train_tokens_seen": report.tokens,
        "train_tokens": train.numel(),
        "validation_tokens": val.numel(),
        "train_loss": round(report.final_train_loss, 4),
        "initial_validation_loss": round(initial_val, 4),
        "validation_loss": round(val_loss, 4),
        "unigram_validation_loss": round(unigram, 4),
        "train_seconds": round(report.seconds, 1),
    }
    manifest = compute_manifest(cfg, entries, tokenizer_json, blocks, results)
    return Artifact(manifest, tokenizer_json, blocks)


def compute_manifest(
    cfg: BuildConfig,
    entries: tuple[CorpusFile, ...],
    tokenizer_json: bytes,
    blocks: dict[str, bytes],
    results: dict,
) -> dict:
    tokenizer_record, _ = make_tokenizer_record(tokenizer_json, WEIGHTS_VERSION)
    return {
        "format": MANIFEST_FORMAT,
        "spec": asdict(cfg.spec),
        "weights_version": WEIGHTS_VERSION,
        "seed": cfg.spec.seed,
        "train": asdict(cfg.train),
        "tokenizer": {
            "config": asdict(cfg.tokenizer),
            "file": TOKENIZER_FILE,
            "sha256": crypto.sha256(tokenizer_json).hex(),
            "block_id": tokenizer_record.blob_id.hex(),
        },
        "blocks": [
            {"name": name, "file": name + BLOCK_SUFFIX, "blob_id": crypto.sha256(data).hex(),
             "size": len(data)}
            for name, data in blocks.items()
        ],
        "corpus": {
            "source": "cpython-stdlib",
            "python": platform.python_version(),
            "config": asdict(cfg.corpus),
            "entries": encode_entries(entries),
        },
        "results": results,
        "environment": {
            "torch": torch.__version__,
            "tokenizers": tokenizers.__version__,
            "machine": platform.machine(),
            "threads": cfg.train.threads,
        },
    }


def save_artifact(artifact: Artifact, out: Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / TOKENIZER_FILE).write_bytes(artifact.tokenizer_json)
    for name, data in artifact.blocks.items():
        (out / (name + BLOCK_SUFFIX)).write_bytes(data)
    text = json.dumps(artifact.manifest, indent=1, sort_keys=False) + "\n"
    (out / MANIFEST_FILE).write_text(text)


def load_artifact(path: Path) -> Artifact:
    """An artifact directory, every file checked against the manifest's hashes."""
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise InvalidArtifact(path, f"manifest format {manifest.get('format')!r}")
        tokenizer_json = (path / manifest["tokenizer"]["file"]).read_bytes()
        blocks = {b["name"]: (path / b["file"]).read_bytes() for b in manifest["blocks"]}
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidArtifact(path, f"cannot read: {err}") from err
    if crypto.sha256(tokenizer_json).hex() != manifest["tokenizer"]["sha256"]:
        raise InvalidArtifact(path, "tokenizer.json does not match the manifest")
    for entry in manifest["blocks"]:
        if crypto.sha256(blocks[entry["name"]]).hex() != entry["blob_id"]:
            raise InvalidArtifact(path, f"block {entry['name']} does not match the manifest")
    return Artifact(manifest, tokenizer_json, blocks)


def make_records(artifact: Artifact) -> tuple[tuple[TensorRecord, ...], list[bytes]]:
    """The pact's tensor records (model blocks in order, then the tokenizer) and their blobs."""
    version = artifact.manifest["weights_version"]
    records, blobs = [], []
    for name, data in artifact.blocks.items():
        records.append(make_tensor_record(name, compute_block_kind(name), version, data))
        blobs.append(data)
    tokenizer_record, tokenizer_blob = make_tokenizer_record(artifact.tokenizer_json, version)
    if tokenizer_record.blob_id.hex() != artifact.manifest["tokenizer"]["block_id"]:
        raise ValueError("the tokenizer block id differs from the manifest's")
    records.append(tokenizer_record)
    blobs.append(tokenizer_blob)
    return tuple(records), blobs


def make_build_config(
    steps: int | None = None,
    seed: int | None = None,
    threads: int | None = None,
    corpus_bytes: int | None = None,
) -> BuildConfig:
    """The devnet preset with overrides; `seed` seeds both the initial weights and the batches."""
    base = BuildConfig()
    spec = base.spec if seed is None else replace(base.spec, seed=seed)
    train = replace(
        base.train,
        seed=spec.seed,
        steps=base.train.steps if steps is None else steps,
        threads=base.train.threads if threads is None else threads,
    )
    corpus = base.corpus if corpus_bytes is None else replace(base.corpus, max_bytes=corpus_bytes)
    return BuildConfig(spec=spec, corpus=corpus, tokenizer=base.tokenizer, train=train)


def compute_steps_for_minutes(cfg: BuildConfig, minutes: float) -> int:
    """Training steps that take about `minutes` here (measured now; leaves 10% for the rest)."""
    model = init_seeded(MoEConfig.from_spec(cfg.spec), cfg.spec.seed)
    seconds = measure_step_seconds(model, cfg.train)
    return max(1, int(minutes * 60 * 0.9 / seconds))
