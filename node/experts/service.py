"""The expert service of a node: serve experts to peers, announce them, and generate text.

    service = ExpertService(net, key, view, blobs, config.experts, network_id=..., clock=...)
    await nursery.start(service.run)      # loads the served experts, then announces forever
    gen = await service.generate("Hello", max_tokens=16)

Serving: the experts named by the config are loaded and pinned at start; a forward request for
anything else (another expert, or other weights of it) is refused with `ExpertNotServed`; at
most `MAX_INFLIGHT` requests run at once (beyond: `Overloaded`); a malformed request costs its
sender a penalty. Announcements are signed and bound to the sender's peer id (on libp2p), and
expire unless renewed; a peer that disconnects leaves the registry until it announces again.
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
from chain.records import ExpertState
from chain.tensors import TOKENIZER_BLOCK, TensorRecord
from gpu.loader import BlobLoader
from gpu.tokenizer import InvalidTokenizer, decode_ids, encode_text, load_tokenizer_block
from node.experts.config import ExpertsConfig
from node.experts.inference import Compute, Executor, Generation, InferenceConfig, ThreadCompute
from node.experts.registry import ExpertRegistry
from node.experts.tiles import RepairFailed, TileService
from node.experts.weights import (
    ExpertKey,
    LocalExperts,
    ModelView,
    WeightsUnavailable,
    build_shared_model,
    expert_name,
    get_expert_heads,
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
_EXPERT_NAME = re.compile(r"layer(\d+)\.expert(\d+)")


class Overloaded(ExpertError):
    """Too many forward requests in progress here."""


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
    """The experts a node serves, from its config: "auto", "none" or block names."""
    spec = view.spec
    every = [(layer, e) for layer in range(spec.n_layers) for e in range(spec.n_experts)]
    if tuple(serve) == ("none",) or not serve:
        return []
    if tuple(serve) == ("auto",):
        return [k for k in every if is_loadable(view.get_state(expert_name(k)), blobs)]
    keys = []
    for name in serve:
        m = _EXPERT_NAME.fullmatch(name)
        if m is None or (int(m[1]), int(m[2])) not in every:
            raise ConfigError(f"experts.serve: {name!r} is not an expert of this model (layerI.expertJ)")
        keys.append((int(m[1]), int(m[2])))
    return sorted(set(keys))


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
        self.local = LocalExperts(view, blobs, loader, cache_bytes=config.cache_mib << 20)
        self.inference = InferenceConfig(request_timeout_s=config.request_timeout_s,
                                         spot_check=config.spot_check, local_fallback=config.local_fallback)
        self.topic = topic_name(network_id, TOPIC_EXPERTS)
        self.protocol = protocol_name(network_id, PROTOCOL_EXPERT_FORWARD)
        self.inflight = 0
        self.served_requests = 0
        self._shared: _SharedModel | None = None
        self._announce_now = trio.Event()
        self._tokenizer: ByteTokenizer | BlockTokenizer | None = None

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[ExpertService] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the served experts, listen, then announce every interval until cancelled."""
        if self.tiles is not None:
            self.tiles.register(self.net)
        broken = []
        for key in choose_served(self.config.serve, self.view, self.blobs):
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
        self.net.on_peer_event(self._on_peer_event)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._announce_loop)
            if broken:
                nursery.start_soon(self._repair_and_serve, broken)
            task_status.started(self)

    async def _repair_and_serve(self, broken: list[tuple[ExpertKey, TensorRecord]]) -> None:
        """Fetch the bad or missing tiles of experts we should serve from peers, each tile
        checked against the chain's root, then serve them. Retried as peers come and go."""
        delay = 1.0
        while broken:
            peers = self.net.peers()
            still = []
            for key, record in broken:
                try:
                    if not peers:
                        raise RepairFailed(record.name, [])
                    tiles = await self.tiles.repair_from_peers(self.net, peers, record)
                    self.loader.forget(self.blobs.path_of(record.blob_id))
                    await self.compute.run(self.local.serve, key)
                    logger.info("repaired %s (%d tiles from peers); serving it", record.name, len(tiles))
                    self._announce_now.set()
                except (RepairFailed, ExpertError) as err:
                    logger.info("repair of %s not done yet: %s", record.name, err)
                    still.append((key, record))
            broken = still
            if broken:
                await trio.sleep(delay)  # a retry interval, not a wait on a condition: peers may appear
                delay = min(delay * 2, 30.0)

    async def _announce_loop(self) -> None:
        while True:
            await self.announce()
            self.registry.expire(trio.current_time())
            with trio.move_on_after(self.config.announce_interval_s):
                await self._announce_now.wait()
            self._announce_now = trio.Event()

    def _on_peer_event(self, peer: PeerId, connected: bool) -> None:
        if connected:
            self._announce_now.set()  # tell the newcomer what we serve
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
            load=min(self.inflight, 65_535), offers=offers)
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
            outputs = await self.compute.run(self.compute_outputs, req)
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

    async def generate_tokens(self, prompt: list[int], max_tokens: int, temperature: float = 0.0,
                              seed: int = 0) -> Generation:
        model = await self.shared_model()
        executor = Executor(self.net, self.protocol, model, self.local, self.registry, self.inference,
                            self.compute, self.rng)
        return await executor.generate(prompt, max_tokens, get_expert_heads(self.view), temperature, seed)

    async def generate(self, prompt: str, max_tokens: int, temperature: float = 0.0, seed: int = 0) -> dict:
        """Text in, text out, with the trace `blyan_generate` returns."""
        tokenizer = await self.tokenizer()
        gen = await self.generate_tokens(tokenizer.encode(prompt), max_tokens, temperature, seed)
        me = self.net.local_id
        return {
            "prompt_tokens": gen.prompt,
        "tokens": gen.tokens,
            "text": tokenizer.decode(gen.tokens),
            "latency_ms": [round(s * 1000, 3) for s in gen.latency_s],
            "layers": [[{"layer": layer, "experts": {str(e): (n or me) for e, n in sorted(used.items())}}
                        for layer, used in enumerate(step)] for step in gen.layers],
            "round_trips": gen.round_trips, "failovers": gen.failovers,
            "spot_checks": gen.spot_checks, "faults": gen.faults,
        }

    def describe(self) -> dict:
        now = trio.current_time()
        return {
            "node": self.net.local_id, "tier": self.tier, "load": self.inflight,
            "served_requests": self.served_requests,
            "serving": [{"layer": layer, "expert": e, "block_hash": h.hex()}
                        for (layer, e), h in sorted(self.local.served.items())],
            "registry": self.registry.describe(now),
        }
