"""`blyan node run`: store, libp2p network, engine, sync, experts, metrics and RPC under one nursery.

    store ─ Engine ──feed──> SyncService (status, handshake, blocks, snapshots, catch-up)
               │      ├────> NodeMetrics (/metrics)
               │      ├────> PolService (verify revealed claims, vote, pool votes -> certificates)
               │      ├────> SnapshotService (sign snapshots of long delta chains, pool them)
               │      ├────> SubmissionService (this node's claims: commit, then reveal)
               │      └────> DataService (validators: fetch, rerun the L0 audit, score, vote)
               └─ NodeHandle <── RPCServer, ExpertService, PolService, SnapshotService (system txs),
                                 DatasetSubmissions (this node's datasets: audit, work, submit)

SIGINT and SIGTERM cancel the nursery: the services stop, the libp2p host leaves its topics and
peers, and LevelDB is closed; a block is always written in one batch, so nothing is half
written. A daemon started by a supervisor (`blyan devnet`) holds its lifeline
(`node.app.lifeline`) and stops the same way when the supervisor dies. A second daemon on the
same data dir gets `StoreLocked` with a clear message.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from chain.blobs import BlobStore
from chain.crypto import PrivateKey, load_key
from chain.learning import TrainingManifest
from chain.reward import get_validator_set
from chain.rounds import get_model_head
from chain.state import Overlay
from chain.store import ChainStore
from chain.types import CHAIN_IDS, CHAIN_PARAMETER, CHAIN_REWARD
from gpu.devices import compute_memory_budget, compute_tier, discover_devices, get_cpu_device
from gpu.loader import BlobLoader
from node.api.metrics import NodeMetrics
from node.api.server import RPCServer
from node.app.config import (
    BLOBS_DIR,
    DATA_REPORTS_DIR,
    DATASETS_DIR,
    GENESIS_MINHASH_FILE,
    HEADS_FILE,
    KEY_FILE,
    NODE_INFO_FILE,
    PEERS_FILE,
    POL_VOTES_DIR,
    SUBMISSIONS_DIR,
    TILE_HASHES_DIR,
    UPLOADS_DIR,
    NodeConfig,
)
from node.app.datadir import open_store
from node.app.lifeline import arm_orphan_alarm, take_lifeline_fd, watch_lifeline
from node.app.logs import route_libp2p_logs
from node.core.clock import WallClock
from node.core.feed import Feed
from node.data.content import DatasetStore
from node.data.held import HeldDatasets
from node.data.ipfs import IpfsClient
from node.data.quality import load_embedder, make_model_perplexity
from node.data.service import DataService
from node.data.submit import DatasetSubmissions
from node.data.transfer import ContentService, fetch_dataset
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from node.experts.bundle_blobs import bundle_refs, fetch_blob
from node.experts.materialise import Materialiser
from node.experts.service import ExpertService
from node.experts.snapshots import SnapshotService
from node.experts.tiles import TileService
from node.experts.weights import ChainRecords, MaterialisedRecords, StoreModelView
from node.pol.data import blob_getter, load_base_model, load_tokenizer
from node.pol.service import FetchBundle, PolService, make_store_materials
from node.pol.submit import SubmissionService
from node.sync.config import SyncConfig, SyncTiming
from node.sync.fastsync import run_fast_sync
from node.sync.service import SyncService
from p2p.libp2p_config import Libp2pConfig
from p2p.libp2p_identity import is_libp2p_identity
from p2p.libp2p_net import Libp2pNetwork
from p2p.network import Network, protocol_name

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DataServices:
    """What the RPC sees of data quality on this node."""

    store: DatasetStore
    service: DataService
    submissions: DatasetSubmissions
    ipfs: IpfsClient | None


async def run_node(data_dir: Path, *, task_status: trio.TaskStatus[Engine] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the daemon for `data_dir` until cancelled."""

    data_dir = Path(data_dir)
    libp2p_log = route_libp2p_logs()  # its expected events (a failed dial...): DEBUG, and counted
    config, store = open_store(data_dir)
    try:
        key = load_key(data_dir / KEY_FILE)
        bootstrap = tuple(dict.fromkeys(config.p2p.bootstrap + store.pact.bootstrap))
        net_config = Libp2pConfig(
            seed=key.seed, listen=config.p2p.listen, bootstrap=bootstrap,
            target_peers=config.p2p.target_peers, max_peers=config.p2p.max_peers,
            external_addrs=config.p2p.external, peers_file=data_dir / PEERS_FILE,
            pex_protocol=protocol_name(store.pact.network_id, "pex"),
        )
        async with Libp2pNetwork.open(net_config) as net:
            if config.sync.fast:
                await _fast_sync(store, net, config.sync)
            metrics = NodeMetrics(peers=lambda: len(net.peers()), net_stats=getattr(net, "stats", None),
                                  libp2p_events=libp2p_log.get_counts)
            metrics.set_heights({c: store.height(c) for c in CHAIN_IDS})
            engine_config = EngineConfig.from_params(store.pact.params, offload_writes=True)
            engine = Engine(store, key, net, WallClock(), engine_config, name=config.moniker)
            metrics.subscribe(engine.feed)
            sync = SyncService(engine, SyncTiming(), name=config.moniker)
            metrics.sync_progress = sync.sync_progress
            async with trio.open_nursery() as nursery:
                nursery.start_soon(metrics.follow)
                await nursery.start(engine.run)
                await nursery.start(sync.run)
                experts = await nursery.start(run_expert_service, net, key, store, data_dir, config, engine.feed)
                snapshots = await start_snapshots(nursery, engine, key, experts, config)
                pol, submissions = await start_learning(nursery, engine, key, experts, data_dir, config)
                metrics.pol_state = pol.describe
                data = await start_data(nursery, engine, key, experts, data_dir, config)
                server = RPCServer(engine, data_dir, config.rpc, metrics_text=metrics.render, experts=experts,
                                   sync=sync, pol=pol, submissions=submissions, snapshots=snapshots, data=data)
                rpc_url = await nursery.start(server.serve)
                _write_node_info(data_dir, net.local_id, net.listen_addrs(), rpc_url)
                logger.info("node %s up: %s, rpc %s", config.moniker, net.listen_addrs(), rpc_url)
                task_status.started(engine)
    finally:
        store.close()
        (data_dir / NODE_INFO_FILE).unlink(missing_ok=True)
        logger.info("node %s stopped; chains closed", data_dir)


async def _fast_sync(store: ChainStore, net: Network, sync: SyncConfig) -> None:
    """Before the engine starts: install certified snapshots if a peer is far ahead."""
    sets = store.load_validator_sets()
    current = get_validator_set(store.state(CHAIN_REWARD))
    sets.setdefault(current.hash(), current)
    known = set(sets)
    await run_fast_sync(store, net, sets, min_gap=sync.fast_min_gap, peer_wait_s=sync.peer_wait_s)
    for vs_hash in set(sets) - known:
        store.save_validator_set(sets[vs_hash])


async def run_expert_service(net: Network, key: PrivateKey, store: ChainStore, data_dir: Path, config: NodeConfig,
                             feed: Feed | None = None, *,
                             task_status: trio.TaskStatus[ExpertService] = trio.TASK_STATUS_IGNORED) -> None:
    """The daemon's expert service: the chain's model (every head with accepted deltas built
    here: validators verify on it, contributors train on it), the data dir's blobs, libp2p
    identities."""
    devices = await trio.to_thread.run_sync(discover_devices)  # blocking driver calls, best tier first
    tier = max(int(compute_tier(d)) for d in devices)
    budget = compute_memory_budget(devices[0])
    if not devices[0].is_cpu:  # served expert modules are held in RAM today (LocalExperts), wherever they run
        budget = min(budget, compute_memory_budget(await trio.to_thread.run_sync(get_cpu_device)))
    logger.info("devices: %s; serving tier %d, expert budget %d MiB", ", ".join(d.name for d in devices),
                tier, budget >> 20)
    blobs = BlobStore(Path(data_dir) / BLOBS_DIR)
    heads = Materialiser(blobs, Path(data_dir) / HEADS_FILE)
    view = StoreModelView(store, heads)
    loader = BlobLoader(hash_dir=Path(data_dir) / TILE_HASHES_DIR)
    tiles = TileService(store.pact.network_id, blobs, loader, ChainRecords(view))
    service = ExpertService(net, key, view, blobs, config.experts, network_id=store.pact.network_id,
                            clock=WallClock(), peer_binding=is_libp2p_identity, tier=tier, budget_bytes=budget,
                            loader=loader, tiles=tiles, materialiser=heads, feed=feed, materialise_all=True)
    await service.run(task_status=task_status)


async def start_snapshots(nursery: trio.Nursery, engine: Engine, key: PrivateKey, experts: ExpertService,
                          config: NodeConfig) -> SnapshotService:
    """Snapshot compaction: validators sign the snapshot of each head the expert service built
    once its block holds `snapshot_every` deltas; every node pools the signatures."""
    snapshots = SnapshotService(engine, key, experts.view, name=config.moniker)
    await nursery.start(snapshots.run)
    experts.heads_listeners.append(snapshots.wake)
    return snapshots


async def start_learning(nursery: trio.Nursery, engine: Engine, key: PrivateKey, experts: ExpertService,
                         data_dir: Path, config: NodeConfig) -> tuple[PolService, SubmissionService]:
    """Learning rounds: the PoL service (every node pools votes; validators verify) and this
    node's submissions. Bundle blobs travel over the tile protocol, which the expert service
    serves (a node serves every bundle blob it holds)."""
    blobs = experts.blobs
    fetch = make_bundle_fetcher(experts, engine.network)
    materials = make_store_materials(engine, blobs, head_records=MaterialisedRecords(experts.view))
    pol = PolService(engine, key, blobs, Path(data_dir) / POL_VOTES_DIR, materials, fetch=fetch, name=config.moniker)
    await nursery.start(pol.run)
    submissions = SubmissionService(engine, key, blobs, Path(data_dir) / SUBMISSIONS_DIR, name=config.moniker)
    nursery.start_soon(submissions.follow)
    return pol, submissions


async def start_data(nursery: trio.Nursery, engine: Engine, key: PrivateKey, experts: ExpertService,
                     data_dir: Path, config: NodeConfig) -> DataServices:
    """Data quality: this node's datasets (kept, served over the content protocol, pinned on
    IPFS with `[ipfs] api`), its submissions, and, on a validator, the audits and votes."""
    data_dir = Path(data_dir)
    pact = engine.store.pact
    store = DatasetStore(data_dir / DATASETS_DIR)
    content = ContentService(pact.network_id, store)
    content.register(engine.network)
    get_blob = blob_getter(experts.blobs)
    held = HeldDatasets(pact.params.dataset.audit, None)  # audits wait for the genesis signatures
    nursery.start_soon(held.load_genesis, pact, get_blob, data_dir / GENESIS_MINHASH_FILE)
    ipfs = IpfsClient(config.ipfs.api, timeout=config.ipfs.timeout_s) if config.ipfs.api else None
    pin = None if ipfs is None else (lambda cid, data: ipfs.pin_content(cid, data))
    max_size = pact.params.dataset.max_dataset_bytes

    async def fetch(cid: str, size: int) -> bytes:
        await fetch_dataset(engine.network, list(engine.network.peers()), cid, store, network_id=pact.network_id,
                            max_size=min(size, max_size), ipfs=ipfs)
        return store.read(cid)

    embed = await trio.to_thread.run_sync(load_embedder) if config.data.embeddings else None
    perplexity = make_model_perplexity(make_model_loader(engine, experts))
    service = DataService(engine, key if config.data.audit else None, store, held, data_dir / DATA_REPORTS_DIR,
                          fetch=fetch, perplexity=perplexity, embed=embed, pin=pin, name=config.moniker)
    await nursery.start(service.run)
    submissions = DatasetSubmissions(engine, key, store, held, data_dir / UPLOADS_DIR, pin=pin, name=config.moniker)
    await nursery.start(submissions.run)
    return DataServices(store, service, submissions, ipfs)


def make_model_loader(engine: Engine, experts: ExpertService) -> Callable[[], tuple[object, object] | None]:
    """The current model and tokenizer for the L1 score (the model as teacher), loaded again
    only when the model head moved."""
    cache: dict[bytes, tuple[object, object]] = {}

    def load() -> tuple[object, object] | None:
        head = get_model_head(Overlay(engine.store.state(CHAIN_PARAMETER)))
        if head not in cache:
            materials = make_store_materials(engine, experts.blobs, head_records=MaterialisedRecords(experts.view))()
            cache.clear()
            cache[head] = (load_base_model(materials), load_tokenizer(materials))
        return cache[head]

    return load


def make_bundle_fetcher(experts: ExpertService, net: Network) -> FetchBundle:
    """Bring a manifest's blobs into the node's blob store from peers, tile by tile, each tile
    proven against the root the manifest (on the chain) declares: the provider first when it is
    connected, then every other peer (a validator that fetched a blob serves it too)."""

    async def fetch(manifest: TrainingManifest, provider: str) -> None:
        missing = [ref for ref in bundle_refs(manifest) if not experts.blobs.has(ref.blob_id)]
        if not missing:
            return
        connected = net.peers()
        peers = ([provider] if provider in connected else []) + [p for p in connected if p != provider]
        for ref in missing:
            await fetch_blob(experts.tiles, net, peers, ref, experts.blobs)

    return fetch


def _write_node_info(data_dir: Path, peer_id: str, addrs: list[str], rpc_url: str | None) -> None:
    info = {"peer_id": peer_id, "listen": addrs, "rpc": rpc_url, "pid": os.getpid()}
    tmp = data_dir / (NODE_INFO_FILE + ".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(data_dir / NODE_INFO_FILE)


async def run_until_signal(data_dir: Path) -> None:
    """`blyan node run`: the daemon, stopped cleanly by SIGINT, SIGTERM or a broken lifeline."""
    lifeline = take_lifeline_fd()
    async with trio.open_nursery() as nursery:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            if lifeline is not None:
                nursery.start_soon(watch_lifeline, lifeline, partial(_on_orphaned, nursery.cancel_scope))
            await nursery.start(run_node, data_dir)
            async for signum in signals:
                logger.info("signal %s: stopping", signal.Signals(signum).name)
                nursery.cancel_scope.cancel()
                break


def _on_orphaned(scope: trio.CancelScope) -> None:
    logger.warning("supervisor gone (lifeline closed): stopping")
    arm_orphan_alarm()  # should the clean stop hang, the kernel ends this process
    scope.cancel()
