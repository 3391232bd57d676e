"""The genesis build: corpus selection and split, a tiny end-to-end build, the shipped artifact
and the devnet pact made from it."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from chain import codec, crypto
from chain.pact import build_genesis, compute_genesis_hash, validate_pact
from chain.records import KEY_VALIDATION_SET
from chain.tensors import KIND_TOKENIZER, TOKENIZER_BLOCK, ModelSpec
from chain.types import CHAIN_DATASET
from genesis.build import (
    MANIFEST_FILE,
    BuildConfig,
    InvalidArtifact,
    build_artifact,
    get_corpus_entries,
    get_spec,
    load_artifact,
    make_build_config,
    make_records,
    save_artifact,
)
from genesis.corpus import (
    ROLE_TRAIN,
    ROLE_VALIDATION,
    CorpusConfig,
    CorpusMismatch,
    get_stdlib_root,
    is_validation,
    list_candidates,
    read_corpus_file,
    select_corpus,
)
from genesis.devnet import PREBUILT_DIR, build_devnet_pact, load_prebuilt
from gpu.model import MoEConfig, init_seeded
from gpu.tokenizer import TokenizerConfig, get_vocab_size, load_tokenizer_block
from gpu.train import TrainConfig

TINY_SPEC = ModelSpec("tiny", "0.1.0", 300, 16, 2, 2, 4, 2, 32, 16, 5)
TINY_BUILD = BuildConfig(
    spec=TINY_SPEC,
    corpus=CorpusConfig(max_bytes=120_000, max_file_bytes=20_000, validation_percent=20),
    tokenizer=TokenizerConfig(vocab_size=300),
    train=TrainConfig(steps=3, batch_size=2, seq_len=16, warmup_steps=1, threads=1, eval_windows=8),
)


@pytest.fixture(scope="module")
def fake_stdlib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small stdlib: real files, plus ones the selection must leave out."""
    real = get_stdlib_root()
    root = tmp_path_factory.mktemp("stdlib")
    for rel in ["json/decoder.py", "json/encoder.py", "json/scanner.py", "json/__init__.py",
                "colorsys.py", "bisect.py", "heapq.py", "textwrap.py", "shlex.py", "fnmatch.py",
                "glob.py", "keyword.py", "operator.py", "string.py", "this.py", "abc.py"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(real / rel, root / rel)
    for rel, data in [("test/test_x.py", b"x = 1\n"), ("pkg/tests/t.py", b"y = 2\n"),
                      ("site-packages/m.py", b"z = 3\n"), ("empty.py", b""),
                      ("latin.py", b"# \xe9\n"), ("big.py", b"#" * 30_000), ("notes.txt", b"hi"),
                      ("dup1/x.py", b"same = 1\n"), ("dup2/x.py", b"same = 1\n")]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


# --- corpus ------------------------------------------------------------------------------------


def test_corpus_excludes_tests_and_bad_files(fake_stdlib: Path) -> None:
    paths = list_candidates(fake_stdlib)
    assert paths == sorted(paths)
    assert not any(p.startswith(("test/", "pkg/tests/", "site-packages/")) for p in paths)
    chosen = {e.path for e in select_corpus(fake_stdlib, TINY_BUILD.corpus)}
    assert chosen.isdisjoint({"empty.py", "latin.py", "big.py", "notes.txt"})
    assert "json/decoder.py" in chosen
    assert len(chosen & {"dup1/x.py", "dup2/x.py"}) == 1  # one dataset per content id


def test_corpus_selection_deterministic(fake_stdlib: Path) -> None:
    entries = select_corpus(fake_stdlib, TINY_BUILD.corpus)
    assert entries == select_corpus(fake_stdlib, TINY_BUILD.corpus)
    assert [e.path for e in entries] == sorted(e.path for e in entries)
    assert sum(e.size for e in entries) <= TINY_BUILD.corpus.max_bytes
    assert {e.role for e in entries} == {ROLE_TRAIN, ROLE_VALIDATION}
    for e in entries:
        assert e.cid == crypto.cid_raw((fake_stdlib / e.path).read_bytes())


def test_corpus_split_by_path_alone(tmp_path: Path, fake_stdlib: Path) -> None:
    cfg = TINY_BUILD.corpus
    entries = select_corpus(fake_stdlib, cfg)
    assert all((e.role == ROLE_VALIDATION) == is_validation(e.path, cfg) for e in entries)
    held = sum(is_validation(f"m{i}.py", CorpusConfig()) for i in range(2000))
    assert 150 < held < 250  # about 10%


def test_corpus_file_mismatch(tmp_path: Path, fake_stdlib: Path) -> None:
    entry = select_corpus(fake_stdlib, TINY_BUILD.corpus)[0]
    assert read_corpus_file(fake_stdlib, entry) == (fake_stdlib / entry.path).read_bytes()
    (tmp_path / entry.path).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / entry.path).write_bytes(b"# another release\n")
    with pytest.raises(CorpusMismatch, match="differ"):
        read_corpus_file(tmp_path, entry)
    with pytest.raises(CorpusMismatch, match="cannot read"):
        read_corpus_file(tmp_path / "nowhere", entry)


# --- a tiny build, end to end ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_artifact(fake_stdlib: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("artifact")
    save_artifact(build_artifact(TINY_BUILD, fake_stdlib), out)
    return out


def test_build_tiny_round_trip(tiny_artifact: Path, fake_stdlib: Path) -> None:
    artifact = load_artifact(tiny_artifact)
    manifest = artifact.manifest
    assert get_spec(manifest) == TINY_SPEC
    assert manifest["train"]["steps"] == 3
    assert get_corpus_entries(manifest) == select_corpus(fake_stdlib, TINY_BUILD.corpus)
    records, blobs = make_records(artifact)
    assert [r.name for r in records] == [*init_seeded(MoEConfig.from_spec(TINY_SPEC), 0).block_names(),
                                         TOKENIZER_BLOCK]
    assert [r.blob_id for r in records] == [crypto.sha256(b) for b in blobs]
    assert get_vocab_size(load_tokenizer_block(blobs[-1])) == TINY_SPEC.vocab_size
    results = manifest["results"]
    assert results["validation_loss"] < results["initial_validation_loss"]


def test_build_deterministic(tiny_artifact: Path, fake_stdlib: Path) -> None:
    again = build_artifact(TINY_BUILD, fake_stdlib)
    first = load_artifact(tiny_artifact)
    assert again.blocks == first.blocks and again.tokenizer_json == first.tokenizer_json
    assert again.manifest["blocks"] == first.manifest["blocks"]


def test_invalid_artifact_tampered(tiny_artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_artifact, copy)
    target = copy / "layer1.expert2.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with pytest.raises(InvalidArtifact, match="layer1.expert2"):
        load_artifact(copy)
    (copy / MANIFEST_FILE).write_text("{")
    with pytest.raises(InvalidArtifact, match="cannot read"):
        load_artifact(copy)


def test_cli_genesis_build(fake_stdlib: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import genesis.build as build
    from node.cli.main import main

    monkeypatch.setattr(build, "BuildConfig", lambda **kw: replace(TINY_BUILD, **kw))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["genesis", "build", "--out", str(out), "--steps", "2", "--seed", "9",
                                       "--stdlib", str(fake_stdlib), "--threads", "1"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["train"]["steps"] == 2 and manifest["seed"] == 9 and manifest["train"]["seed"] == 9
    assert "unigram" in result.output


def test_build_config_overrides() -> None:
    cfg = make_build_config(steps=5, seed=11, threads=1, corpus_bytes=1000)
    assert (cfg.train.steps, cfg.spec.seed, cfg.train.seed, cfg.train.threads) == (5, 11, 11, 1)
    assert cfg.corpus.max_bytes == 1000 and cfg.tokenizer.vocab_size == cfg.spec.vocab_size


# --- the shipped devnet artifact and pact ------------------------------------------------------


def test_prebuilt_hashes_match_manifest() -> None:
    manifest = json.loads((PREBUILT_DIR / MANIFEST_FILE).read_text())
    for block in manifest["blocks"]:
        data = (PREBUILT_DIR / block["file"]).read_bytes()
        assert crypto.sha256(data).hex() == block["blob_id"] and len(data) == block["size"]
    tokenizer = (PREBUILT_DIR / manifest["tokenizer"]["file"]).read_bytes()
    assert crypto.sha256(tokenizer).hex() == manifest["tokenizer"]["sha256"]
    load_artifact(PREBUILT_DIR)


def test_prebuilt_model_beats_unigram() -> None:
    manifest = load_artifact(PREBUILT_DIR).manifest
    spec = get_spec(manifest)
    assert spec.n_experts >= 4 and spec.n_layers >= 2
    results = manifest["results"]
    assert results["validation_loss"] < results["unigram_validation_loss"] - 1.0
    assert sum(b["size"] for b in manifest["blocks"]) < 8 * 1024 * 1024


def test_devnet_pact_valid() -> None:
    pact = build_devnet_pact()
    validate_pact(pact)
    prebuilt = load_prebuilt()
    assert pact.model == prebuilt.spec
    assert [t.blob_id.hex() for t in pact.tensors[:-1]] == [
        b["blob_id"] for b in load_artifact(PREBUILT_DIR).manifest["blocks"]
    ]
    (tok,) = [t for t in pact.tensors if t.kind == KIND_TOKENIZER]
    assert get_vocab_size(load_tokenizer_block(prebuilt.blobs[-1])) == pact.model.vocab_size
    assert tok.blob_id == crypto.sha256(prebuilt.blobs[-1])
    roles = {d.role for d in pact.datasets}
    assert roles == {ROLE_TRAIN, ROLE_VALIDATION}
    chains = build_genesis(pact)
    n_val = sum(d.role == ROLE_VALIDATION for d in pact.datasets)
    assert len(chains[CHAIN_DATASET].state.get(KEY_VALIDATION_SET)) == 32 * n_val
    assert codec.encode(build_devnet_pact()) == codec.encode(pact)


DEVNET_GENESIS_HASH = "c7847e1ec8acee9263aabf47d4e5c7a1f9c837c507b8f50042297aaf7b7132b4"
"""blyan-pact/6 (data quality: the L0 report, the proof-of-work window, audit parameters, the
data policy, reputation and honeypots; /5 added snapshot compaction, /4 the learning rounds); it
changes only when the devnet genesis does."""


def test_devnet_genesis_hash_pinned() -> None:
    assert compute_genesis_hash(build_devnet_pact()).hex() == DEVNET_GENESIS_HASH


def test_devnet_pact_stores_blobs() -> None:
    stored: list[bytes] = []
    pact = build_devnet_pact(store_blob=stored.append)
    ids = {crypto.sha256(b) for b in stored}
    assert {t.blob_id for t in pact.tensors} <= ids
    local = {d.blob_id for d in pact.datasets} & ids  # corpus files this Python holds unchanged
    assert ids == {t.blob_id for t in pact.tensors} | local


def test_prebuilt_blocks_load_into_model() -> None:
    from gpu.weights import decode_block

    prebuilt = load_prebuilt()
    model = init_seeded(MoEConfig.from_spec(prebuilt.spec), 0)
    for record, blob in zip(prebuilt.tensors[:-1], prebuilt.blobs[:-1], strict=True):
        model.load_block_state_dict(record.name, decode_block(blob))


@pytest.mark.long
def test_rebuild_matches_prebuilt(tmp_path: Path) -> None:
    """`blyan genesis build` with the manifest's settings gives the shipped blobs again."""
    manifest = load_artifact(PREBUILT_DIR).manifest
    root = get_stdlib_root()
    entries = get_corpus_entries(manifest)
    try:
        for entry in entries:
            read_corpus_file(root, entry)
    except CorpusMismatch as err:
        pytest.skip(f"this Python's stdlib differs from the build's: {err}")
    cfg = make_build_config(steps=manifest["train"]["steps"], seed=manifest["seed"],
                            threads=manifest["environment"]["threads"],
                            corpus_bytes=manifest["corpus"]["config"]["max_bytes"])
    again = build_artifact(cfg, root)
    assert again.manifest["tokenizer"] == manifest["tokenizer"]
    assert again.manifest["results"]["validation_loss"] == manifest["results"]["validation_loss"]
    assert again.manifest["blocks"] == manifest["blocks"]


def test_steps_for_minutes(monkeypatch: pytest.MonkeyPatch) -> None:
    import genesis.build
    from genesis.build import compute_steps_for_minutes

    monkeypatch.setattr(genesis.build, "measure_step_seconds", lambda model, cfg: 0.1)
    assert compute_steps_for_minutes(TINY_BUILD, 1.0) == 540  # 90% of 60 s at 0.1 s a step


def test_cli_steps_and_minutes_exclusive(tmp_path: Path) -> None:
    from node.cli.main import main

    result = CliRunner().invoke(main, ["genesis", "build", "--out", str(tmp_path), "--steps", "2",
                                       "--minutes", "1"])
    assert result.exit_code == 1 and "not both" in result.output
