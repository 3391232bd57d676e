"""Finding the running node of a data dir: its RPC URL and cookie."""

from __future__ import annotations

import json
from pathlib import Path

from node.api.config import COOKIE_FILE
from node.app.config import CONFIG_FILE, NODE_INFO_FILE, load_config


def find_rpc(data_dir: Path) -> tuple[str, Path]:
    """The RPC URL and cookie path of the node using `data_dir`.

    The running daemon's `node.json` names the address it bound (needed when the config says
    port 0); otherwise the `[rpc]` section of `config.toml` does."""
    data_dir = Path(data_dir)
    cookie = data_dir / COOKIE_FILE
    try:
        info = json.loads((data_dir / NODE_INFO_FILE).read_text())
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict) and isinstance(info.get("rpc"), str):
        return info["rpc"], cookie
    config = load_config(data_dir / CONFIG_FILE)
    host = f"[{config.rpc.host}]" if ":" in config.rpc.host else config.rpc.host
    return f"http://{host}:{config.rpc.port}", cookie
