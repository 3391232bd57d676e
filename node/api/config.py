"""Settings of the JSON-RPC server: `[rpc]` in config.toml, and the cookie file it writes."""

from __future__ import annotations

from dataclasses import dataclass

COOKIE_FILE = ".cookie"
"""Under the data dir while the node runs: `__cookie__:<token>`, mode 0600 (as bitcoind does)."""


@dataclass(frozen=True, slots=True)
class RPCConfig:
    host: str = "127.0.0.1"
    """JSON-RPC listen address; keep it on loopback."""
    port: int = 8645
    """JSON-RPC port."""
