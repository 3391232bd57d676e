"""Operator settings from DATA_DIR/config.toml (protocol constants come from genesis, not here).

Each wing declares its own section (`node.api.config.RPCConfig`, `node.sync.config.SyncConfig`,
`node.experts.config.ExpertsConfig`); this module assembles them and reads and writes the file.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import tomli_w

from chain.errors import ConfigError
from node.api.config import RPCConfig
from node.data.config import DataConfig, IpfsConfig
from node.experts.config import ExpertsConfig
from node.sync.config import SyncConfig

CONFIG_FILE = "config.toml"
KEY_FILE = "node.key"
PACT_FILE = "genesis.pact"
CHAINS_DIR = "chains"
BLOBS_DIR = "blobs"
PEERS_FILE = "peers.json"
"""The address book of peer discovery, kept across restarts (`p2p.peer_book`)."""
NODE_INFO_FILE = "node.json"
"""Written by the running daemon: peer id, listen addresses and the RPC URL actually bound (what
`blyan devnet` bootstraps from, and where the CLI finds the node)."""
TILE_HASHES_DIR = "tile-hashes"
HEADS_FILE = "heads.json"
"""Index of the blobs of heads with accepted deltas, built here (`node.experts.materialise`)."""
POL_VOTES_DIR = "pol-votes"
"""This validator's own PoL votes on open claims (`node.pol.service`)."""
SUBMISSIONS_DIR = "submissions"
"""This contributor's delta submissions between commit and reveal (`node.pol.submit`)."""
DATASETS_DIR = "datasets"
"""Dataset contents by CID that this node holds and serves (`node.data.content`)."""
DATA_REPORTS_DIR = "data-reports"
"""This validator's L0 reports, verdicts and L1 scores (`node.data.service`)."""
UPLOADS_DIR = "uploads"
"""Dataset uploads in progress (`node.data.submit`), emptied at start."""
GENESIS_MINHASH_FILE = "genesis-minhash.json"
"""MinHash signatures of the genesis datasets, computed once (`node.data.held`)."""
"""Subtile hashes of blobs once verified, so a later corruption is located to its tiles (and
only those are fetched again)."""


@dataclass(frozen=True, slots=True)
class P2PConfig:
    listen: str = "/ip4/127.0.0.1/tcp/30333"
    """libp2p listen multiaddr."""
    bootstrap: tuple[str, ...] = ()
    """Extra bootstrap multiaddrs (genesis may list more)."""
    target_peers: int = 8
    """Connections kept: below it the node dials peers learned by peer exchange (at least 2)."""
    max_peers: int = 40
    """Connections above which the newest inbound peers are hung up on."""
    external: tuple[str, ...] = ()
    """Addresses advertised to peers besides `listen` (`/ip4/<public ip>/tcp/<port>`, no /p2p/):
    for a node behind NAT or listening on 0.0.0.0."""


@dataclass(frozen=True, slots=True)
class NodeConfig:
    network: str
    """Network id; must match the genesis pact."""
    genesis_hash: str
    """Hex genesis hash this data dir was initialised with."""
    moniker: str = "blyan-node"
    """Human name of this node."""
    log_level: str = "info"
    """debug, info, warning, error."""
    p2p: P2PConfig = field(default_factory=P2PConfig)
    rpc: RPCConfig = field(default_factory=RPCConfig)
    sync: SyncConfig = field(default_factory=SyncConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    ipfs: IpfsConfig = field(default_factory=IpfsConfig)

    @classmethod
    def for_tests(cls, network: str = "testnet-unit") -> NodeConfig:
        return cls(network=network, genesis_hash="00" * 32, p2p=P2PConfig(listen="/ip4/127.0.0.1/tcp/0"),
                   rpc=RPCConfig(port=0))


def save_config(config: NodeConfig, path: Path) -> None:
    data = asdict(config)
    data["p2p"]["bootstrap"] = list(config.p2p.bootstrap)
    data["p2p"]["external"] = list(config.p2p.external)
    data["experts"]["serve"] = list(config.experts.serve)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(tomli_w.dumps(data).encode())
    tmp.replace(path)


def _section(cls: type, raw: object, where: str) -> object:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"unknown setting(s) in {where}: {', '.join(sorted(unknown))}")
    values = {}
    for name, value in raw.items():
        default = getattr(cls(), name) if name not in ("network", "genesis_hash") else ""
        if isinstance(default, tuple):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}.{name} must be a list of strings")
            value = tuple(value)
        elif isinstance(default, float) and type(value) is int:
            value = float(value)
        elif type(default) is float and type(value) is int:
            value = float(value)
        elif type(default) is not type(value):
            raise ConfigError(f"{where}.{name} must be a {type(default).__name__}")
        values[name] = value
    return values


def load_config(path: Path) -> NodeConfig:
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ConfigError(f"no config at {path}: run `blyan init` first") from err
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"cannot read {path}: {err}") from err
    p2p = P2PConfig(**_section(P2PConfig, raw.pop("p2p", {}), "p2p"))
    rpc = RPCConfig(**_section(RPCConfig, raw.pop("rpc", {}), "rpc"))
    raw_experts = raw.pop("experts", {})
    if isinstance(raw_experts, dict) and isinstance(raw_experts.get("serve"), str):
        raw_experts = {**raw_experts, "serve": [raw_experts["serve"]]}
    experts = ExpertsConfig(**_section(ExpertsConfig, raw_experts, "experts"))
    sync = SyncConfig(**_section(SyncConfig, raw.pop("sync", {}), "sync"))
    data = DataConfig(**_section(DataConfig, raw.pop("data", {}), "data"))
    ipfs = IpfsConfig(**_section(IpfsConfig, raw.pop("ipfs", {}), "ipfs"))
    for required in ("network", "genesis_hash"):
        if not isinstance(raw.get(required), str):
            raise ConfigError(f"{path}: missing or malformed {required!r}")
    top = {k: raw.pop(k) for k in ("network", "genesis_hash")}
    rest = _section(_TopDefaults, raw, "config")
    config = NodeConfig(**top, p2p=p2p, rpc=rpc, sync=sync, experts=experts, data=data, ipfs=ipfs)
    return replace(config, **rest)


@dataclass(frozen=True, slots=True)
class _TopDefaults:
    moniker: str = "blyan-node"
    log_level: str = "info"
