"""The expert service of a node: serve experts to peers, announce them, and generate text.

    heads = Materialiser(blobs, data_dir / "heads.json")
    view = StoreModelView(store, heads)
    service = ExpertService(net, key, view, blobs, config.experts, network_id=..., clock=...,
                            tiles=tiles, materialiser=heads, feed=engine.feed)
    await nursery.start(service.run)      # loads the served experts, then announces forever
    gen = await service.generate("Hello", max_tokens=16)

Serving: the experts named by the config are loaded and pinned at start (with "auto", those
`node.experts.placement` chooses, re-evaluated every `placement_interval_s`); a forward request for
anything else (another expert, or other weights of it) is refused with `ExpertNotServed`; at
most `MAX_INFLIGHT` requests run at once (beyond: `Overloaded`); a malformed request costs its
sender a penalty. Announcements are signed and bound to the sender's peer id (on libp2p), and
expire unless renewed; a peer that disconnects leaves the registry until it announces again.

Generating: `generate_tokens` runs a plan type (`node.experts.plans`: dynamic, static_delegate,
pipeline, or auto); the service also serves the other side of them, pipeline stages
(`node.experts.stage`, protocol `expert_stage`) and delegated generations
(`node.experts.delegate`, protocol `expert_delegate`).

Heads that move: when the parameter chain accepts deltas of blocks this node uses (the shared
blocks, the experts it serves), `on_heads_moved` (called for each parameter block the engine
commits when the service is given the engine's `feed`, or by the daemon) materialises their new
weights (`node.experts.materialise`, fetching delta blobs from peers over the tile protocol),
then serves the new versions and rebuilds the shared model; generations and forwards already
running finish on the version they started with (models are replaced, never changed). A head
that is a snapshot (`node.experts.snapshots`) names one blob: a node that materialised the head
has it already, any other fetches it from peers over the tile protocol. `heads_listeners` are
called after each pass (the snapshot service signs the heads just built).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio
from tokenizers import Tokenizer

from chain import codec
from chain.blobs import BlobStore
from chain.crypto import PrivateKey
from chain.errors import ConfigError, StoreError
from chain.records import ExpertState, is_expert_key
from chain.tensors import TOKENIZER_BLOCK, TensorRecord
from chain.types import CHAIN_PARAMETER
from gpu.devices import Tier
from gpu.loader import BlobLoader
from gpu.tokenizer import InvalidTokenizer, decode_ids, encode_text, load_tokenizer_block
from node.core.feed import Committed, Feed, Subscription
from node.experts.batching import ForwardPool, Overloaded, RequestBatcher
from node.experts.bundle_blobs import BlobRef, BlobUnavailable, fetch_blob
from node.experts.config import ExpertsConfig
from node.experts.delegate import DelegateServer
from node.experts.inference import Compute, Executor, Generation, InferenceConfig, ThreadCompute
from node.experts.lockstep import LockstepDecoder
from node.experts.materialise import DeltaBlobMissing, MaterialiseError, Materialiser
from node.experts.placement import UNBOUNDED_BUDGET, Placer
from node.experts.plan_select import AUTO, DYNAMIC, PlanCache
from node.experts.plan_wire import (
    DELEGATE_HANDLER_TIMEOUT_S,
    MAX_DELEGATE_BYTES,
    MAX_STAGE_BYTES,
    PROTOCOL_EXPERT_DELEGATE,
    PROTOCOL_EXPERT_STAGE,
    PlanUnsupported,
)
from node.experts.plans import generate_planned
from node.experts.registry import ExpertRegistry
from node.experts.stage import StageServer
from node.experts.tiles import RepairFailed, TileService
from node.experts.weights import (
    ExpertKey,
    LocalExperts,
    ModelView,
    WeightsUnavailable,
    block_names,
    build_shared_model,
    expert_name,
    is_loadable,
)
from node.experts.wire import (
    MAX_ANNOUNCEMENT_BYTES,
    MAX_FORWARD_BYTES,
    PROTOCOL_EXPERT_FORWARD,
    TOPIC_EXPERTS,
    AnnouncementBody,
    ExpertAnnouncement,
    ExpertError,
    ExpertNotServed,
    ExpertOffer,
    ForwardOutput,
    ForwardRequest,
    ForwardResponse,
    InvalidExpertMessage,
    decode_message,
    decode_rows,
    encode_rows,
    sign_announcement,
    validate_announcement,
    validate_request,
)
from p2p.network import Clock, Network, PeerId, Verdict, protocol_name, topic_name

logger = logging.getLogger(__name__)

MAX_INFLIGHT = 16
"""Forward requests served at once; more are refused (the requester tries a replica)."""
MAX_FUTURE_MS = 60_000
"""An announcement dated further ahead of our clock is ignored."""
MALFORMED_PENALTY = 1.0
FETCH_ATTEMPTS = 5
"""Tries to fetch a missing delta blob from peers per head move, with backoff between them."""
FEED_QUEUE = 256
_EXPERT_NAME = re.compile(r"layer(\d+)\.expert(\d+)")


class ByteTokenizer:
    """Bytes as tokens: the model's tokenizer when the genesis has none."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def encode(self, text: str) -> list[int]:
        tokens = list(text.encode("utf-8"))
        if any(t >= self.vocab_size for t in tokens):
            raise ValueError(f"a byte of the prompt is outside the vocabulary of {self.vocab_size}")
        return tokens

    def decode(self, tokens: list[int]) -> str:
        return bytes(t for t in tokens if t < 256).decode("utf-8", errors="replace")


class BlockTokenizer:
    """The tokenizer a parameter-chain tokenizer block carries (`gpu.tokenizer`)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    @classmethod
    def load(cls, blobs: BlobStore | None, state: ExpertState) -> BlockTokenizer:
        if blobs is None:
            raise WeightsUnavailable(TOKENIZER_BLOCK, "no blob store")
        try:
            return cls(load_tokenizer_block(blobs.get(state.record.blob_id, verify=True)))
        except (StoreError, InvalidTokenizer) as err:
            raise WeightsUnavailable(TOKENIZER_BLOCK, str(err)) from err

    def encode(self, text: str) -> list[int]:
        return encode_text(self.tok, text)

    def decode(self, tokens: list[int]) -> str:
        return decode_ids(self.tok, tokens)


def choose_served(serve: tuple[str, ...], view: ModelView, blobs: BlobStore | None) -> list[ExpertKey]:
    """The experts a node serves, from its config: "none", block names, or for "auto" the
    candidates here (weights here, or buildable here), which `Placer.choose_initial` narrows."""
    spec = view.spec
    every = [(layer, e) for layer in range(spec.n_layers) for e in range(spec.n_experts)]
    if tuple(serve) == ("none",) or not serve:
        return []
    if tuple(serve) == ("auto",):  # the experts whose weights are here, or can be built here
        return [k for k in every if is_loadable(view, expert_name(k), blobs) or _is_buildable(view, k, blobs)]
    keys = []
    for name in serve:
        m = _EXPERT_NAME.fullmatch(name)
        if m is None or (int(m[1]), int(m[2])) not in every:
            raise ConfigError(f"experts.serve: {name!r} is not an expert of this model (layerI.expertJ)")
        keys.append((int(m[1]), int(m[2])))
    return sorted(set(keys))


def _is_buildable(view: ModelView, key: ExpertKey, blobs: BlobStore | None) -> bool:
    """A head with deltas whose base blob is here (its deltas can be fetched and applied)."""
    state = view.get_state(expert_name(key))
    return state is not None and bool(state.deltas) and blobs is not None and blobs.has(state.record.blob_id)


@dataclass(slots=True)
class _SharedModel:
    heads: tuple[bytes, ...]
    model: Any


class ExpertService:
    def __init__(
        self, net: Network, key: PrivateKey, view: ModelView, blobs: BlobStore | None,
        config: ExpertsConfig, *, network_id: str, clock: Clock, compute: Compute | None = None,
        rng: random.Random | None = None, peer_binding: Callable[[PeerId, bytes], bool] | None = None,
        tier: int = 0, loader: BlobLoader | None = None, tiles: TileService | None = None,
        materialiser: Materialiser | None = None, feed: Feed | None = None, materialise_all: bool = False,
        budget_bytes: int | None = None,
    ) -> None:
        self.net, self.key, self.view, self.blobs, self.config = net, key, view, blobs, config
        self.network_id, self.clock, self.tier = network_id, clock, tier
        self.compute = compute or ThreadCompute(trio.CapacityLimiter(config.max_concurrent))
        self.rng = rng or random.Random()
        self.peer_binding = peer_binding
        self.registry = ExpertRegistry()
        self.loader = loader
        self.tiles = tiles
        """Serves this node's verified tiles and repairs its blobs from peers (daemon only)."""
        self.materialiser = materialiser
        """Builds the weights of heads with deltas (the same object as the view's `heads`)."""
        self.feed = feed
        """The engine's commit feed: parameter blocks trigger `on_heads_moved`."""
        self.materialise_all = materialise_all
        """Materialise every block's head, not only those used here (validators and contributors
        load the whole model: `node.pol.data.Materials.head_records`)."""
        self.heads_listeners: list[Callable[[], None]] = []
        """Called after each pass of `on_heads_moved` (the snapshot service signs what it built)."""
        self.wanted: list[ExpertKey] = []
        """The experts this node means to serve (the config's, or placement's with "auto")."""
        self.heads_lock = trio.Lock()
        """Held while the served experts or their versions change."""
        self.placer: Placer | None = None
        """Chooses the served experts with "auto" (`node.experts.placement`)."""
        if tuple(config.serve) == ("auto",):
            budget = config.budget_mib << 20 if config.budget_mib else budget_bytes
            self.placer = Placer(self, Tier(min(max(tier, 0), Tier.TIER_3)),
                                 UNBOUNDED_BUDGET if budget is None else budget)
        self.local = LocalExperts(view, blobs, loader, cache_bytes=config.cache_mib << 20)
        self.inference = InferenceConfig(request_timeout_s=config.request_timeout_s,
                                         spot_check=config.spot_check, local_fallback=config.local_fallback)
        self.topic = topic_name(network_id, TOPIC_EXPERTS)
        self.protocol = protocol_name(network_id, PROTOCOL_EXPERT_FORWARD)
        self.stage_protocol = protocol_name(network_id, PROTOCOL_EXPERT_STAGE)
        self.delegate_protocol = protocol_name(network_id, PROTOCOL_EXPERT_DELEGATE)
        self.stages = StageServer(self)
        """Runs layer ranges for pipeline requesters (`node.experts.stage`)."""
        self.delegates = DelegateServer(self)
        """Runs whole generations for delegating requesters (`node.experts.delegate`)."""
        self.plan_cache = PlanCache()
        self.inflight = 0
        self.served_requests = 0
        self.pool = ForwardPool(self.compute.run, self.compute_outputs)
        """Concurrent forward requests of a layer computed as one (`node.experts.batching`)."""
        self.batcher = RequestBatcher(net, self.protocol, penalty=self.inference.wrong_output_penalty)
        """Concurrent generations' requests to a peer for a layer sent as one."""
        self.lockstep = LockstepDecoder(self.batcher, max_delay_s=self.batcher.config.max_delay_s)
        """Concurrent generations' steps run as one forward (`node.experts.lockstep`)."""
        self._shared: _SharedModel | None = None
        self._announce_now = trio.Event()
        self._tokenizer: ByteTokenizer | BlockTokenizer | None = None

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ExpertService] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the served experts, listen, then announce every interval until cancelled."""
        if self.tiles is not None:
            self.tiles.register(self.net)
        broken = []
        self.wanted = choose_served(self.config.serve, self.view, self.blobs)
        if self.placer is not None:
            self.wanted = self.placer.choose_initial(self.wanted)
        for key in self.wanted:
            try:
                await self.compute.run(self.local.serve, key)
            except WeightsUnavailable as err:
                logger.warning("cannot serve %s yet: %s", expert_name(key), err)
                if err.record is not None and self.tiles is not None:
                    broken.append((key, err.record))
            except ExpertError as err:
                logger.warning("cannot serve %s: %s", expert_name(key), err)
        logger.info("serving %d experts: %s", len(self.local.served),
                    ", ".join(expert_name(k) for k in sorted(self.local.served)) or "none")
        self.net.subscribe(self.topic, self.on_announcement, max_bytes=MAX_ANNOUNCEMENT_BYTES)
        self.net.set_request_handler(self.protocol, self.on_forward, MAX_FORWARD_BYTES)
        self.net.set_request_handler(self.stage_protocol, self.stages.on_stage, MAX_STAGE_BYTES)
        self.net.set_request_handler(self.delegate_protocol, self.delegates.on_delegate, MAX_DELEGATE_BYTES,
                                     timeout_s=DELEGATE_HANDLER_TIMEOUT_S)
        self.net.on_peer_event(self._on_peer_event)
        heads_feed = self.feed.subscribe("experts", (Committed,), maxlen=FEED_QUEUE) if self.feed else None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._announce_loop)
                if self.placer is not None:
                    nursery.start_soon(self.placer.run)
                if broken:
                    nursery.start_soon(self._repair_and_serve, broken)
                if self.materialiser is not None:
                    nursery.start_soon(self._heads_moved_task)  # heads may have moved while we were away
                if heads_feed is not None:
                    nursery.start_soon(self._follow_heads, heads_feed)
                task_status.started(self)
        finally:
            if heads_feed is not None:
                self.feed.unsubscribe(heads_feed)

    async def _repair_and_serve(self, broken: list[tuple[ExpertKey, TensorRecord]]) -> None:
        """Fetch the bad or missing tiles of experts we should serve from peers, each tile
        checked against the chain's root, then serve them. Retried as peers come and go."""
        delay = 1.0
        while broken:
            peers = self.net.peers()
            still = []
            for key, record in broken:
                if key not in self.wanted:  # placement dropped it meanwhile
                    continue
                try:
                    if not peers:
                        raise RepairFailed(record.name, [])
                    tiles = await self.tiles.repair_from_peers(self.net, peers, record)
                    self.loader.forget(self.blobs.path_of(record.blob_id))
                    await self.compute.run(self.local.serve, key)
                    logger.info("repaired %s (%d tiles from peers); serving it", record.name, len(tiles))
                    self.announce_soon()
                except (RepairFailed, ExpertError) as err:
                    logger.info("repair of %s not done yet: %s", record.name, err)
                    still.append((key, record))
            broken = still
            if broken:
                await trio.sleep(delay)  # a retry interval, not a wait on a condition: peers may appear
                delay = min(delay * 2, 30.0)

    # --- heads that move ---------------------------------------------------------------

    def used_blocks(self) -> list[str]:
        """The blocks whose weights this node loads: the shared ones and the experts it serves
        (every block with `materialise_all`)."""
        if self.materialise_all:
            return block_names(self.view.spec)
        names = ["embed", "head"] + [f"layer{i}.{p}" for i in range(self.view.spec.n_layers)
                                     for p in ("attn", "router")]
        return names + [expert_name(k) for k in sorted(set(self.wanted) | set(self.local.served))]

    async def _follow_heads(self, feed: Subscription) -> None:
        async for event in feed:
            if event.chain_id != CHAIN_PARAMETER or not any(is_expert_key(k) for k in event.changes):
                continue
            for _ in feed.drain():  # a burst of blocks: one pass over the newest heads
                pass
            await self._heads_moved_task()

    async def _heads_moved_task(self) -> None:
        try:
            await self.on_heads_moved()
        except Exception:  # the top of a task: a failed pass must not stop serving
            logger.exception("materialising the new heads failed; retried at the next move")

    async def on_heads_moved(self) -> None:
        """Materialise the new heads of the blocks this node uses, then serve them: each served
        expert whose head moved is loaded at its new weights, the shared model rebuilt, and an
        announcement sent. One pass at a time; a head that cannot be built is logged and left
        unserved until the next move."""
        if self.materialiser is None:
            return
        async with self.heads_lock:
            built = 0
            for name in self.used_blocks():
                state = self.view.get_state(name)
                if state is not None and not state.deltas:
                    await self._fetch_snapshot(name, state)
                if state is None or not state.deltas or self.view.get_record(name, state) is not None:
                    continue
                if await self._materialise(name, state):
                    built += 1
            switched = []
            for key in self.wanted:
                state = self.view.get_state(expert_name(key))
                if state is None or self.local.served.get(key) == state.head:
                    continue
                try:
                    await self.compute.run(self.local.serve, key)
                    switched.append(expert_name(key))
                except ExpertError as err:
                    logger.info("not serving %s at %s yet: %s", expert_name(key), state.head.hex()[:16], err)
            if self._shared is not None:
                try:
                    await self.shared_model()
                except ExpertError as err:
                    logger.warning("the shared model stays at its old heads: %s", err)
            if switched:
                logger.info("heads moved: %d versions materialised; now serving %s", built, ", ".join(switched))
                self.announce_soon()
            self._collect_garbage()
        for listener in self.heads_listeners:
            listener()

    async def _fetch_snapshot(self, name: str, state: ExpertState) -> None:
        """A head that is a snapshot whose blob is not here (this node did not build it): fetch
        it from peers over the tile protocol, each tile proven against the chain's root. One
        try per pass; the next move or a served expert's repair tries again."""
        record = state.record
        if (self.tiles is None or self.blobs is None or self.blobs.has(record.blob_id)
                or state.head == codec.hash_of(record)):  # the genesis record: not a snapshot
            return
        ref = BlobRef(record.blob_id, record.size, record.merkle_root, f"snapshot {name}")
        try:
            await fetch_blob(self.tiles, self.net, self.net.peers(), ref, self.blobs)
            logger.info("fetched the snapshot of %s (blob %s)", name, record.blob_id.hex()[:16])
        except BlobUnavailable as err:
            logger.info("snapshot of %s not fetched yet: %s", name, err)

    async def _materialise(self, name: str, state: ExpertState) -> bool:
        """Build one head, fetching missing delta blobs from peers (bounded tries with backoff)."""
        delay = 1.0
        for attempt in range(FETCH_ATTEMPTS):
            try:
                await self.compute.run(self.materialiser.materialise, name, state, self.view.get_accepted)
                return True
            except DeltaBlobMissing as err:
                if self.tiles is None:
                    logger.warning("cannot materialise %s: %s (no tile service to fetch it)", name, err)
                    return False
                claim = err.claim
                ref = BlobRef(claim.delta_blob, claim.delta_size, claim.delta_root,
                              f"delta {err.claim_hash.hex()[:16]}")
                try:
                    await fetch_blob(self.tiles, self.net, self.net.peers(), ref, self.materialiser.blobs)
                    continue
                except BlobUnavailable as fetch_err:
                    logger.info("materialising %s: try %d of %d: %s", name, attempt + 1, FETCH_ATTEMPTS, fetch_err)
            except MaterialiseError as err:
                logger.error("refusing the new weights of %s: %s", name, err)
                return False
            if attempt + 1 < FETCH_ATTEMPTS:
                await trio.sleep(delay)  # a retry interval: peers holding the blob may appear
                delay = min(delay * 2, 30.0)
        logger.warning("%s at %s not materialised: its delta blob is on no reachable peer", name,
                       state.head.hex()[:16])
        return False

    def _collect_garbage(self) -> None:
        """Drop materialised versions no block's head or served expert names any more."""
        keep = set(self.local.served.values())
        protect = set()
        for name in block_names(self.view.spec):
            state = self.view.get_state(name)
            if state is not None:
                keep.add(state.head)
                protect.add(state.record.blob_id)
        if self._shared is not None:
            keep.update(self._shared.heads)
        try:
            self.materialiser.collect_garbage(keep, protect)
        except StoreError as err:
            logger.warning("materialised heads not collected: %s", err)

    async def _announce_loop(self) -> None:
        while True:
            await self.announce()
            self.registry.expire(trio.current_time())
            with trio.move_on_after(self.config.announce_interval_s):
                await self._announce_now.wait()
            self._announce_now = trio.Event()

    def announce_soon(self) -> None:
        """Announce now rather than at the next interval (what this node serves changed)."""
        self._announce_now.set()

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        if connected:
            self.announce_soon()  # tell the newcomer what we serve
        else:
            self.registry.remove(peer)

    async def announce(self) -> None:
        """Gossip a signed announcement of what this node serves (nothing when it serves nothing)."""
        if not self.local.served:
            return
        offers = tuple(ExpertOffer(layer, e, h) for (layer, e), h in sorted(self.local.served.items()))
        body = AnnouncementBody(
            node=self.net.local_id, public_key=self.key.public_key, time_ms=self.clock.now_ms(),
            ttl_ms=int(self.config.announce_interval_s * 3000), tier=self.tier,
            load=min(self.inflight + self.stages.inflight + self.delegates.inflight, 65_535), offers=offers)
        await self.net.publish(self.topic, codec.encode(sign_announcement(body, self.key, self.network_id)))

    # --- peers' input -------------------------------------------------------------------

    async def on_announcement(self, sender: PeerId, data: bytes) -> Verdict:
        try:
            ann = decode_message(ExpertAnnouncement, data, MAX_ANNOUNCEMENT_BYTES)
            validate_announcement(ann, self.network_id)
        except InvalidExpertMessage as err:
            logger.debug("announcement from %s rejected: %s", sender, err)
            return Verdict.REJECT
        body, spec = ann.body, self.view.spec
        if self.peer_binding is not None and not self.peer_binding(body.node, body.public_key):
            return Verdict.REJECT
        if any(o.layer >= spec.n_layers or o.expert >= spec.n_experts for o in body.offers):
            return Verdict.REJECT
        now_ms = self.clock.now_ms()
        if body.node == self.net.local_id or body.time_ms > now_ms + MAX_FUTURE_MS:
            return Verdict.IGNORE
        if body.time_ms + body.ttl_ms <= now_ms:
            return Verdict.IGNORE  # stale
        return Verdict.ACCEPT if self.registry.on_announcement(ann, trio.current_time()) else Verdict.IGNORE

    async def on_forward(self, requester: PeerId, data: bytes) -> bytes:
        spec = self.view.spec
        try:
            req = decode_message(ForwardRequest, data, MAX_FORWARD_BYTES)
            validate_request(req, spec.n_layers, spec.n_experts, spec.d_model)
        except InvalidExpertMessage:
            self.net.penalize(requester, "malformed expert-forward request", MALFORMED_PENALTY)
            raise
        for it in req.items:
            if not self.local.is_served((req.layer, it.expert), it.block_hash):
                raise ExpertNotServed(req.layer, it.expert, it.block_hash)
        if self.inflight >= MAX_INFLIGHT:
            raise Overloaded(f"{self.inflight} expert requests in progress")
        self.inflight += 1
        try:
            outputs = await self.pool.forward(req)
        finally:
            self.inflight -= 1
        self.served_requests += 1
        return codec.encode(ForwardResponse(tuple(outputs)))

    def compute_outputs(self, req: ForwardRequest) -> list[ForwardOutput]:
        """Each item's expert on its rows (in a worker thread)."""
        out = []
        for it in req.items:
            x = decode_rows(it.data, it.rows, req.d_model)  # [n, D]
            y = self.local.forward((req.layer, it.expert), it.block_hash, x)  # [n, D]
            out.append(ForwardOutput(it.expert, it.block_hash, it.rows, encode_rows(y)))
        return out

    # --- inference ----------------------------------------------------------------------

    async def tokenizer(self) -> ByteTokenizer | BlockTokenizer:
        """The model's tokenizer: the chain's tokenizer block, or bytes when the genesis has none."""
        if self._tokenizer is None:
            state = self.view.get_state(TOKENIZER_BLOCK)
            if state is None:
                self._tokenizer = ByteTokenizer(self.view.spec.vocab_size)
            else:
                self._tokenizer = await self.compute.run(BlockTokenizer.load, self.blobs, state)
        return self._tokenizer

    async def shared_model(self) -> Any:
        """The shared modules at the chain's current heads, loaded once per version."""
        names = ["embed", "head"] + [f"layer{i}.{p}" for i in range(self.view.spec.n_layers)
                                     for p in ("attn", "router")]
        heads = tuple(getattr(self.view.get_state(n), "head", b"") for n in names)
        if self._shared is None or self._shared.heads != heads:
            model = await self.compute.run(build_shared_model, self.view, self.blobs, self.loader)
            self._shared = _SharedModel(heads, model)
        return self._shared.model

    def executor(self, model: Any) -> Executor:
        """An executor of the shared `model` with this node's experts, registry and network."""
        return Executor(self.net, self.protocol, model, self.local, self.registry, self.inference,
                        self.compute, self.rng, batcher=self.batcher)

    async def generate_tokens(self, prompt: list[int], max_tokens: int, temperature: float = 0.0,
                              seed: int = 0, use_cache: bool = True, plan: str = DYNAMIC,
                              allow_delegate: bool = True, heads_digest: bytes | None = None) -> Generation:
        """One generation under plan type `plan` (`node.experts.plans`), at `heads_digest` when given."""
        return await generate_planned(self, prompt, max_tokens, temperature, seed, use_cache, plan, allow_delegate,
                                      heads_digest)

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0,
                       use_cache: bool = True, plan: str = AUTO) -> dict:
        """Text in, text out, with the trace `blyan_generate` returns; `ValueError` for a prompt
        the tokenizer cannot encode or a plan type the network cannot run (`PlanUnsupported`)."""
        tokenizer = await self.tokenizer()
        try:
            gen = await self.generate_tokens(tokenizer.encode(prompt), max_tokens, temperature, seed, use_cache, plan)
        except PlanUnsupported as err:  # the caller's choice, not a failure of the network
            raise ValueError(str(err)) from err
        me = self.net.local_id
        return {
            "prompt_tokens": gen.prompt,
        "tokens": gen.tokens,
            "text": tokenizer.decode(gen.tokens),
            "latency_ms": [round(s * 1000, 3) for s in gen.latency_s],
            "layers": [[{"layer": layer, "experts": {str(e): (n or me) for e, n in sorted(used.items())}}
                        for layer, used in enumerate(step)] for step in gen.layers],
            "plan": {**gen.plan, "nodes": [n or me for n in gen.plan.get("nodes", [])],
                     "stages": [{**s, "node": s["node"] or me} for s in gen.plan.get("stages", [])]},
            "fallbacks": gen.fallbacks,
            "round_trips": gen.round_trips, "remote_round_trips": gen.remote_round_trips,
            "failovers": gen.failovers,
            "spot_checks": gen.spot_checks, "faults": gen.faults,
            "cache": gen.cache, "positions": gen.positions,
            "rows_sent": gen.rows_sent, "bytes_sent": gen.bytes_sent,
        }

    def describe(self) -> dict:
        now = trio.current_time()
        return {
            "node": self.net.local_id, "tier": self.tier, "load": self.inflight,
            "served_requests": self.served_requests,
            "stages": self.stages.describe(), "delegated_generations": self.delegates.served,
            "batching": {"pool_batches": self.pool.batches_run, "pool_merged": self.pool.requests_merged,
                         "sent_requests": self.batcher.batches_run, "sent_merged": self.batcher.requests_merged,
                         "lockstep_forwards": self.lockstep.steps_run, "lockstep_steps": self.lockstep.rows_run},
            "serving": [{"layer": layer, "expert": e, "block_hash": h.hex()}
                        for (layer, e), h in sorted(self.local.served.items())],
            "registry": self.registry.describe(now),
        }
