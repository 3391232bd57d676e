"""A node's data directory: keys, config, genesis, chains (LevelDB) and blobs."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from chain import codec, crypto
from chain.blobs import BlobStore
from chain.errors import ConfigError, DecodingError, StoreLocked
from chain.kv import COL_GENESIS
from chain.ledger import LedgerView
from chain.leveldb import LevelDBKV
from chain.pact import GenesisPact, compute_genesis_hash, validate_pact
from chain.store import ChainStore
from chain.tensors import TensorRecord
from genesis.devnet import build_devnet_pact
from node.app.config import (
    BLOBS_DIR,
    CHAINS_DIR,
    CONFIG_FILE,
    HEADS_FILE,
    KEY_FILE,
    PACT_FILE,
    NodeConfig,
    load_config,
    save_config,
)
from node.experts.materialise import Materialiser

logger = logging.getLogger(__name__)

BUILTIN_NETWORKS = ("devnet",)


@dataclass(frozen=True, slots=True)
class InitResult:
    data_dir: Path
    network: str
    genesis_hash: bytes
    address: bytes
    created_key: bool
    created_chains: bool


def load_pact_file(path: Path) -> GenesisPact:
    try:
        pact = codec.decode(GenesisPact, path.read_bytes(), max_size=1 << 30)
    except OSError as err:
        raise ConfigError(f"cannot read genesis {path}: {err.strerror}") from err
    except DecodingError as err:
        raise ConfigError(f"{path} is not a genesis pact: {err}") from err
    try:
        validate_pact(pact)
    except ValueError as err:
        raise ConfigError(f"genesis {path} is invalid: {err}") from err
    return pact


def builtin_pact(network: str, blobs: BlobStore | None) -> GenesisPact:
    if network == "devnet":
        return build_devnet_pact(store_blob=blobs.put if blobs else None)
    raise ConfigError(f"no built-in genesis for network {network!r}; pass --genesis FILE")


def init_data_dir(
    data_dir: Path,
    network: str,
    genesis_file: Path | None = None,
    key: crypto.PrivateKey | None = None,
) -> InitResult:
    """Create or complete a data dir. Never overwrites a key; refuses another network's dir."""
    data_dir = Path(data_dir)
    config_path = data_dir / CONFIG_FILE
    existing = load_config(config_path) if config_path.exists() else None
    if existing is not None and existing.network != network:
        raise ConfigError(
            f"data dir {data_dir} belongs to network {existing.network!r}, not {network!r}; "
            "use another --data-dir"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    blobs = BlobStore(data_dir / BLOBS_DIR)
    pact = load_pact_file(genesis_file) if genesis_file else builtin_pact(network, blobs)
    if pact.network_id != network:
        raise ConfigError(f"genesis is for network {pact.network_id!r}, not {network!r}")
    genesis_hash = compute_genesis_hash(pact)
    if existing is not None and existing.genesis_hash != genesis_hash.hex():
        raise ConfigError(
            f"data dir {data_dir} was initialised with genesis {existing.genesis_hash[:16]}, "
            f"this one is {genesis_hash.hex()[:16]}"
        )

    key_path = data_dir / KEY_FILE
    created_key = not key_path.exists()
    if created_key:
        crypto.save_key(key or crypto.PrivateKey.generate(), key_path)
    node_key = crypto.load_key(key_path)

    pact_path = data_dir / PACT_FILE
    if not pact_path.exists():
        tmp = pact_path.with_suffix(".tmp")
        tmp.write_bytes(codec.encode(pact))
        tmp.replace(pact_path)

    kv = open_kv(data_dir)
    try:
        created_chains = kv.get(COL_GENESIS + b"pact") is None
        ChainStore.open(kv, pact)
    finally:
        kv.close()

    if existing is None:
        save_config(NodeConfig(network=network, genesis_hash=genesis_hash.hex()), config_path)
    return InitResult(data_dir, network, genesis_hash, node_key.address, created_key, created_chains)


def open_kv(data_dir: Path) -> LevelDBKV:
    try:
        return LevelDBKV(Path(data_dir) / CHAINS_DIR)
    except StoreLocked as err:
        raise StoreLocked(
            f"data dir {data_dir} is in use by another process (a running `blyan node run`?); "
            "stop it or ask it over RPC"
        ) from err


def open_store(data_dir: Path) -> tuple[NodeConfig, ChainStore]:
    """Open an initialised data dir's chains, checking the genesis against the config."""
    data_dir = Path(data_dir)
    config = load_config(data_dir / CONFIG_FILE)
    pact = load_pact_file(data_dir / PACT_FILE)
    if compute_genesis_hash(pact).hex() != config.genesis_hash:
        raise ConfigError(f"{data_dir / PACT_FILE} does not match the config's genesis hash")
    kv = open_kv(data_dir)
    try:
        store = ChainStore.open(kv, pact)
    except BaseException:
        kv.close()
        raise
    return config, store


def read_head_records(data_dir: Path, ledger: LedgerView) -> dict[str, TensorRecord]:
    """The records of the blocks with accepted deltas whose weights the data dir's node built
    (`node.experts.materialise`, indexed in `heads.json`) for the heads `ledger` names, each with
    the chain's weights root; a block it has not built is absent (training and verification then
    say so)."""
    heads = Materialiser(BlobStore(Path(data_dir) / BLOBS_DIR), Path(data_dir) / HEADS_FILE)
    out = {}
    for name, block in ledger.blocks.items():
        if block.deltas:
            record = heads.lookup(name, block.head, block.weights_root)
            if record is not None:
                out[name] = record
    return out
