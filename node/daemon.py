"""`blyan node run`: store, libp2p network, engine (and RPC, when present) under one nursery.

SIGINT and SIGTERM cancel the nursery: the engine stops, the libp2p host leaves its topics and
peers, and LevelDB is closed; a block is always written in one batch, so nothing is half
written. A second daemon on the same data dir gets `StoreLocked` with a clear message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from pathlib import Path

import trio

from chain.crypto import load_key
from node.config import KEY_FILE
from node.datadir import open_store
from node.engine import Engine, EngineConfig

logger = logging.getLogger(__name__)

NODE_INFO_FILE = "node.json"
"""Written at start: the peer id and listen addresses (what `blyan devnet` bootstraps from)."""


class WallClock:
    """Block timestamps from the system clock (only `node/` reads it)."""

    def now_ms(self) -> int:
        return int(time.time() * 1000)


def compute_peer_id(seed: bytes) -> str:
    """The libp2p peer id of a node key (Ed25519 identity)."""
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    return ID.from_pubkey(create_new_key_pair(seed).public_key).to_base58()


async def run_node(data_dir: Path, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # noqa: ANN001
    """Run the daemon for `data_dir` until cancelled."""
    from p2p.libp2p_config import Libp2pConfig
    from p2p.libp2p_net import Libp2pNetwork

    data_dir = Path(data_dir)
    # py-libp2p logs expected network events (a failed dial, a refused stream) at ERROR on a logger
    # that does not propagate: route it through ours, at WARNING and above.
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.propagate = True
    libp2p_logger.handlers.clear()
    libp2p_logger.setLevel(logging.WARNING)
    config, store = open_store(data_dir)
    try:
        key = load_key(data_dir / KEY_FILE)
        bootstrap = tuple(dict.fromkeys(config.p2p.bootstrap + store.pact.bootstrap))
        net_config = Libp2pConfig(seed=key.seed, listen=config.p2p.listen, bootstrap=bootstrap)
        async with Libp2pNetwork.open(net_config) as net:
            from chain.types import CHAIN_IDS
            from node.metrics import NodeMetrics

            if config.sync.fast:
                await _fast_sync(store, net, config.sync)
            metrics = NodeMetrics(peers=lambda: len(net.peers()), net_stats=getattr(net, "stats", None))
            metrics.set_heights({c: store.height(c) for c in CHAIN_IDS})
            engine_config = EngineConfig.from_params(store.pact.params, offload_writes=True)
            engine = Engine(store, key, net, WallClock(), engine_config, observer=metrics, name=config.moniker)
            metrics.sync_progress = engine.sync_progress
            async with trio.open_nursery() as nursery:
                await nursery.start(engine.run)
                from node.expert_service import run_expert_service

                experts = await nursery.start(run_expert_service, net, key, store, data_dir, config)
                rpc_url = await _start_rpc(nursery, engine, data_dir, config, metrics.render, experts)
                _write_node_info(data_dir, net.local_id, net.listen_addrs(), rpc_url)
                logger.info("node %s up: %s, rpc %s", config.moniker, net.listen_addrs(), rpc_url)
                task_status.started(engine)
    finally:
        store.close()
        (data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        logger.info("node %s stopped; chains closed", data_dir)


async def _fast_sync(store, net, sync) -> None:  # noqa: ANN001
    """Before the engine starts: install certified snapshots if a peer is far ahead."""
    from chain.reward import get_validator_set
    from chain.types import CHAIN_REWARD
    from node.fastsync import run_fast_sync

    sets = store.load_validator_sets()
    current = get_validator_set(store.state(CHAIN_REWARD))
    sets.setdefault(current.hash(), current)
    known = set(sets)
    await run_fast_sync(store, net, sets, min_gap=sync.fast_min_gap, peer_wait_s=sync.peer_wait_s)
    for vs_hash in set(sets) - known:
        store.save_validator_set(sets[vs_hash])


async def _start_rpc(nursery: trio.Nursery, engine: Engine, data_dir: Path, config, metrics_text,  # noqa: ANN001
                     experts=None) -> str:  # noqa: ANN001
    from node.rpc import RPCServer

    server = RPCServer(engine, data_dir, config.rpc, metrics_text=metrics_text, experts=experts)
    return await nursery.start(server.serve)


def _write_node_info(data_dir: Path, peer_id: str, addrs: list[str], rpc_url: str | None) -> None:
    info = {"peer_id": peer_id, "listen": addrs, "rpc": rpc_url, "pid": os.getpid()}
    tmp = data_dir / (NODE_INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(data_dir / NODE_INFO_FILE)


async def run_until_signal(data_dir: Path) -> None:
    """`blyan node run`: the daemon, stopped cleanly by SIGINT or SIGTERM."""
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await nursery.start(run_node, data_dir)
            async for signum in signals:
                logger.info("signal %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break
