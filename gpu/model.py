"""A compact decoder-only Mixture-of-Experts language model, in the style of nanoGPT.

The model is a set of named blocks; each block is the unit one tensor blob holds on the chain.
In `block_names()` order:

    "embed"               token and position embeddings
    "layer{i}.attn"       pre-RMSNorm causal self-attention, residual included
    "layer{i}.router"     pre-RMSNorm of the MoE input and its gate, Linear(d_model -> n_experts)
    "layer{i}.expert{j}"  FFN: w1 (d_model -> d_ff), GELU, w2 (d_ff -> d_model)
    "head"                final RMSNorm and the LM head (not tied to the embedding)

One layer is `x = attn(x); r = route(x); x = x + combine(r, {j: expert_j(r.hidden[rows_j])})`.
The pieces are public so that an executor can run experts on other nodes; `forward` is exactly
their composition, operation for operation. There is no dropout, so train and eval modes agree.

Generation can keep a `KVCache`: the keys and values of positions already run, so that each new
token runs one row through the model instead of the whole context. Positions are absolute and
learned, so the cache holds only positions 0..max_seq_len-1; the rule for what a step runs is
`select_step_input`, shared with the distributed executor.

Several sequences, each with its own cache and its own number of new rows, can take a step in
one pass (`embed_seqs`, `attn_forward_seqs`: the steps of concurrent generations, prompts and
single tokens alike): every projection runs once over all their rows, attention per sequence
over its own keys. A row's
values are those of its sequence run alone up to float rounding (a matmul over M rows may round
differently in the last bit from one over a single row).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from chain.errors import BlyanError
from chain.tensors import ModelSpec

NORM_EPS = 1e-5
INIT_STD = 0.02


class InvalidBlockTensors(BlyanError):
    """Tensors that do not fit a block of this model (missing, extra, wrong shape or dtype)."""

    def __init__(self, block: str, reason: str) -> None:
        self.block = block
        self.reason = reason
        super().__init__(f"block {block}: {reason}")


@dataclass(frozen=True, slots=True)
class MoEConfig:
    vocab_size: int = 256  # byte-level until a tokenizer block exists
    d_model: int = 128  # hidden size
    n_layers: int = 2  # decoder layers
    n_heads: int = 4  # attention heads; must divide d_model
    n_experts: int = 4  # experts per layer
    top_k: int = 2  # experts each token is routed to, 1 <= top_k <= n_experts
    d_ff: int = 256  # hidden size inside an expert
    max_seq_len: int = 128  # context length

    def __post_init__(self) -> None:
        sizes = (self.vocab_size, self.d_model, self.n_layers, self.n_heads, self.n_experts)
        if min(*sizes, self.d_ff, self.max_seq_len) <= 0:
            raise ValueError(f"model sizes must be positive: {self}")
        if self.d_model % self.n_heads:
            raise ValueError(f"n_heads {self.n_heads} does not divide d_model {self.d_model}")
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"top_k {self.top_k} outside [1, n_experts={self.n_experts}]")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> MoEConfig:
        return cls(
            vocab_size=spec.vocab_size,
            d_model=spec.d_model,
            n_layers=spec.n_layers,
            n_heads=spec.n_heads,
            n_experts=spec.n_experts,
            top_k=spec.top_k,
            d_ff=spec.d_ff,
            max_seq_len=spec.max_seq_len,
        )


@dataclass(frozen=True, slots=True)
class Routing:
    """One layer's routing of N = B*T tokens."""

    hidden: Tensor  # [N, D] normalized MoE input: what the experts receive
    weights: Tensor  # [N, k] gate of each chosen expert; sums to 1 per token
    experts: Tensor  # [N, k] chosen expert ids (long), highest gate first
    aux_loss: Tensor  # [] Switch load-balancing loss, 1.0 when perfectly balanced

    def select(self, expert: int) -> tuple[Tensor, Tensor]:
        """Rows of the tokens routed to `expert`, and the slot it holds in each."""
        rows, slots = (self.experts == expert).nonzero(as_tuple=True)  # [n_e], [n_e]
        return rows, slots

    def active_experts(self) -> list[int]:
        """Experts that received at least one token, ascending."""
        return [int(e) for e in torch.unique(self.experts)]


def combine_expert_outputs(routing: Routing, outputs: Mapping[int, Tensor]) -> Tensor:
    """Gate-weighted sum of expert outputs; `outputs[j]` is expert j on `hidden[select(j)[0]]`."""
    missing = set(routing.active_experts()) - set(outputs)
    if missing:
        raise ValueError(f"no output for routed experts {sorted(missing)}")
    out = torch.zeros_like(routing.hidden)  # [N, D]
    for expert in sorted(outputs):
        rows, slots = routing.select(expert)  # [n_e], [n_e]
        gate = routing.weights[rows, slots].unsqueeze(-1)  # [n_e, 1]
        out = out.index_add(0, rows, outputs[expert] * gate)  # [N, D]
    return out


class Embed(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_seq_len, cfg.d_model)

    def forward(self, idx: Tensor, start: int = 0) -> Tensor:
        pos = torch.arange(start, start + idx.shape[1], device=idx.device)  # [T]
        return self.tok(idx) + self.pos(pos)  # [B, T, D]


class KVCache:
    """Per layer, the keys and values of the positions a batch of sequences has run so far.

    Capacity is `max_seq_len` positions, 0..max_seq_len-1: the window of absolute positions whose
    embeddings do not change while a sequence grows. Buffers are allocated on first use.
    """

    def __init__(self, cfg: MoEConfig) -> None:
        self.capacity = cfg.max_seq_len
        self.keys: list[Tensor | None] = [None] * cfg.n_layers  # each [B, H, S, Dh]
        self.values: list[Tensor | None] = [None] * cfg.n_layers  # each [B, H, S, Dh]
        self.lengths = [0] * cfg.n_layers  # positions held, per layer

    @property
    def length(self) -> int:
        """Positions that every layer holds: the absolute position of the next token."""
        return min(self.lengths)

    def append(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store new keys and values [B, H, T, Dh]; return all of the layer's [B, H, P+T, Dh]."""
        past, end = self.lengths[layer], self.lengths[layer] + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache of {self.capacity} positions cannot take position {end - 1}")
        keys, values = self.keys[layer], self.values[layer]
        if keys is None or values is None:
            B, H, _, Dh = k.shape
            keys = self.keys[layer] = k.new_empty(B, H, self.capacity, Dh)  # [B, H, S, Dh]
            values = self.values[layer] = v.new_empty(B, H, self.capacity, Dh)  # [B, H, S, Dh]
        elif keys.shape[:2] != k.shape[:2]:
            raise ValueError(f"KV cache holds [B, H] = {list(keys.shape[:2])}, got {list(k.shape[:2])}")
        keys[:, :, past:end] = k
        values[:, :, past:end] = v
        self.lengths[layer] = end
        return keys[:, :, :end], values[:, :, :end]  # 2 x [B, H, P+T, Dh]


def select_step_input(idx: Tensor, cache: KVCache | None, max_seq_len: int) -> tuple[Tensor, KVCache | None]:
    """What one generation step of sequences `idx` [B, L] runs: (tokens, cache to run them with).

    While the sequence fits in the window (L <= max_seq_len) and a cache is given: the tokens the
    cache has not seen (the prompt at the first step, then the last token), with the cache. Past
    the window the positions of every token slide by one per step, so no cached key stays valid:
    each step runs the last max_seq_len tokens without a cache, exactly as uncached generation.
    """
    if cache is not None and idx.shape[1] <= cache.capacity:
        return idx[:, cache.length :], cache  # [B, L-P]
    return idx[:, -max_seq_len:], None  # [B, <=S]


class Attention(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cache: KVCache | None = None, layer: int = 0) -> Tensor:
        """Causal self-attention of `x` [B, T, D]; with a cache, over its positions and then `x`'s."""
        B, T, D = x.shape
        q, k, v = self.qkv(self.norm(x)).split(D, dim=-1)  # 3 x [B, T, D]
        H = self.n_heads
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # [B, H, T, Dh]
        y = _attend(q, k, v, cache, layer)  # [B, H, T, Dh]
        y = y.transpose(1, 2).reshape(B, T, D)  # [B, T, D]
        return x + self.proj(y)  # [B, T, D]

    def forward_seqs(self, x: Tensor, lengths: Sequence[int], caches: Sequence[KVCache | None],
                     layer: int = 0) -> Tensor:
        """One step of each of M sequences at once: `x` [1, N, D] holds their rows one sequence
        after another (`lengths`, summing to N), sequence i after the positions of `caches[i]`
        (single-sequence caches, appended; None: no cache). Projections run over all N rows;
        each sequence attends over its own keys, as `forward` does for it alone."""
        _, N, D = x.shape
        if x.shape[0] != 1 or sum(lengths) != N or len(caches) != len(lengths) or min(lengths, default=0) < 1:
            raise ValueError(f"forward_seqs takes [1, N, D] and M lengths summing to N, M caches: got "
                             f"{list(x.shape)}, {list(lengths)}, {len(caches)} caches")
        for T, c in zip(lengths, caches, strict=True):  # all checked before any cache is appended
            if c is not None and (c.lengths[layer] + T > c.capacity or (c.keys[layer] is not None
                                                                         and c.keys[layer].shape[0] != 1)):
                raise ValueError(f"a cache of {c.lengths[layer]} positions cannot take {T} more of one sequence")
        H = self.n_heads
        q, k, v = self.qkv(self.norm(x)).split(D, dim=-1)  # 3 x [1, N, D]
        ys, at = [], 0
        for T, cache in zip(lengths, caches, strict=True):
            qi, ki, vi = (t[:, at : at + T].view(1, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # [1, H, T, Dh]
            ys.append(_attend(qi, ki, vi, cache, layer).transpose(1, 2).reshape(1, T, D))  # [1, T, D]
            at += T
        return x + self.proj(torch.cat(ys, dim=1))  # [1, N, D]


def _attend(q: Tensor, k: Tensor, v: Tensor, cache: KVCache | None, layer: int) -> Tensor:
    """Causal attention of new rows `q`, `k`, `v` [B, H, T, Dh]; with a cache, over its positions
    and then theirs (they are appended)."""
    T = q.shape[2]
    past = 0 if cache is None else cache.lengths[layer]
    k_all, v_all = (k, v) if cache is None else cache.append(layer, k, v)  # [B, H, P+T, Dh]
    if past == 0:  # nothing before: as without a cache, operation for operation
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, Dh]
    if T == 1:  # one new row sees every key
        return F.scaled_dot_product_attention(q, k_all, v_all)  # [B, H, 1, Dh]
    mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(past)  # [T, P+T]: row i sees 0..past+i
    return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # [B, H, T, Dh]


class Router(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.n_experts = cfg.n_experts
        self.top_k = cfg.top_k
        self.norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.gate = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)

    def forward(self, x: Tensor) -> Routing:
        hidden = self.norm(x).reshape(-1, x.shape[-1])  # [N, D]
        logits = self.gate(hidden)  # [N, E]
        top_logits, experts = logits.topk(self.top_k, dim=-1)  # [N, k], [N, k]
        weights = F.softmax(top_logits, dim=-1)  # [N, k]
        # Switch Transformer: E * sum_e (share of assignments to e) * (mean router prob of e)
        probs = F.softmax(logits, dim=-1)  # [N, E]
        share = F.one_hot(experts, self.n_experts).sum(1).float().mean(0) / self.top_k  # [E]
        aux_loss = self.n_experts * (share * probs.mean(0)).sum()  # []
        return Routing(hidden=hidden, weights=weights, experts=experts, aux_loss=aux_loss)


class Expert(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.w2 = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.gelu(self.w1(x)))  # [n, D] -> [n, F] -> [n, D]


class Head(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(cfg.d_model, eps=NORM_EPS)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.lm_head(self.norm(x))  # [B, T, V]


class Layer(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.router = Router(cfg)
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts))


class MoEModel(nn.Module):
    def __init__(self, cfg: MoEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embed(cfg)
        self.layers = nn.ModuleList(Layer(cfg) for _ in range(cfg.n_layers))
        self.head = Head(cfg)
        blocks: dict[str, nn.Module] = {"embed": self.embed}
        for i, layer in enumerate(self.layers):
            blocks[f"layer{i}.attn"] = layer.attn
            blocks[f"layer{i}.router"] = layer.router
            for j, expert in enumerate(layer.experts):
                blocks[f"layer{i}.expert{j}"] = expert
        blocks["head"] = self.head
        self._blocks = blocks  # a plain dict: the modules are registered above

    # --- blocks ------------------------------------------------------------------------

    def block_names(self) -> list[str]:
        """Every block, in a fixed order: embed, per layer attn, router, experts; head."""
        return list(self._blocks)

    def get_block(self, name: str) -> nn.Module:
        block = self._blocks.get(name)
        if block is None:
            raise KeyError(f"no block {name!r} in this model")
        return block

    def block_state_dict(self, name: str) -> dict[str, Tensor]:
        """The block's tensors by name ("w1.weight", ...), detached views of the live weights."""
        return dict(self.get_block(name).state_dict())

    def load_block_state_dict(self, name: str, tensors: Mapping[str, Tensor]) -> None:
        """Copy `tensors` into the block; `InvalidBlockTensors` unless names, shapes, dtypes fit."""
        block = self.get_block(name)
        expected = block.state_dict()
        if set(tensors) != set(expected):
            raise InvalidBlockTensors(name, f"has {sorted(tensors)}, expected {sorted(expected)}")
        for key, want in expected.items():
            got = tensors[key]
            if got.shape != want.shape or got.dtype != want.dtype:
                have, need = f"{got.dtype}{list(got.shape)}", f"{want.dtype}{list(want.shape)}"
                raise InvalidBlockTensors(name, f"{key} is {have}, expected {need}")
        block.load_state_dict(dict(tensors), strict=True)

    # --- the pieces of a forward pass --------------------------------------------------

    def embed_tokens(self, idx: Tensor, start: int = 0) -> Tensor:
        """Embeddings of `idx` [B, T] at positions start..start+T-1."""
        if start < 0 or start + idx.shape[1] > self.cfg.max_seq_len:
            end, size = start + idx.shape[1], self.cfg.max_seq_len
            raise ValueError(f"positions {start}..{end - 1} do not fit in max_seq_len {size}")
        return self.embed(idx, start)  # [B, T, D]

    def attn_forward(self, layer: int, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """Attention of `x` [B, T, D]; with a cache, `x` follows its positions and is appended."""
        return self.layers[layer].attn(x, cache, layer)  # [B, T, D]

    def embed_seqs(self, idxs: Sequence[Tensor], starts: Sequence[int]) -> Tensor:
        """Embeddings of M sequences' tokens one sequence after another, [1, N, D]: `idxs[i]`
        [1, T_i] at positions starts[i]..starts[i]+T_i-1."""
        return torch.cat([self.embed_tokens(idx, start) for idx, start in zip(idxs, starts, strict=True)], dim=1)

    def attn_forward_seqs(self, layer: int, x: Tensor, lengths: Sequence[int],
                          caches: Sequence[KVCache | None]) -> Tensor:
        """Attention of M sequences' rows `x` [1, N, D], each after its own cache (`Attention.forward_seqs`)."""
        return self.layers[layer].attn.forward_seqs(x, lengths, caches, layer)  # [1, N, D]

    def route(self, layer: int, x: Tensor) -> Routing:
        """The top-k experts and gates for each token of hidden states `x` [B, T, D]."""
        return self.layers[layer].router(x)

    def expert_forward(self, layer: int, expert: int, x: Tensor) -> Tensor:
        return self.layers[layer].experts[expert](x)  # [n, D]

    def moe_forward(self, layer: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """The MoE half of a layer with local experts: (new hidden states, aux loss)."""
        routing = self.route(layer, x)
        outputs = {}
        for expert in routing.active_experts():
            rows, _ = routing.select(expert)  # [n_e]
            outputs[expert] = self.expert_forward(layer, expert, routing.hidden[rows])  # [n_e, D]
        x = x + combine_expert_outputs(routing, outputs).view_as(x)  # [B, T, D]
        return x, routing.aux_loss

    def head_forward(self, x: Tensor) -> Tensor:
        return self.head(x)  # [B, T, V]

    def forward(
        self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None, Tensor]:
        """(logits [B, T, V], mean cross-entropy or None, mean load-balancing loss over layers).

        With a cache, `idx` is the tokens that follow the cached positions, and is appended.
        """
        x = self.embed_tokens(idx, 0 if cache is None else cache.length)  # [B, T, D]
        aux_loss = x.new_zeros(())  # []
        for layer in range(self.cfg.n_layers):
            x = self.attn_forward(layer, x, cache)  # [B, T, D]
            x, layer_aux = self.moe_forward(layer, x)  # [B, T, D], []
            aux_loss = aux_loss + layer_aux
        logits = self.head_forward(x)  # [B, T, V]
        loss = None
        if targets is not None:
            flat = logits.reshape(-1, logits.shape[-1])  # [B*T, V]
            loss = F.cross_entropy(flat, targets.reshape(-1), ignore_index=-1)  # []
        return logits, loss, aux_loss / self.cfg.n_layers

    @torch.no_grad()
    def generate(
        self,
        idx: Tensor,
        max_new_tokens: int,
        temperature: float = 0.0,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> Tensor:
        """Append `max_new_tokens` tokens to `idx` [B, T]; temperature 0 is greedy.

        With `use_cache` the prompt runs once and each later token one row, while the sequence
        fits in `max_seq_len`; past it, each token recomputes the last `max_seq_len` tokens, as
        without the cache (`select_step_input`). Tokens are those of uncached generation up to
        float rounding (a row's matmuls may round differently in a batch of another length).
        """
        cache = KVCache(self.cfg) if use_cache else None
        for _ in range(max_new_tokens):
            step, cache = select_step_input(idx, cache, self.cfg.max_seq_len)  # [B, T_step]
            logits, _, _ = self(step, cache=cache)
            last = logits[:, -1, :]  # [B, V]
            if temperature == 0:
                token = last.argmax(dim=-1, keepdim=True)  # [B, 1]
            else:
                probs = F.softmax(last / temperature, dim=-1)  # [B, V]
                token = torch.multinomial(probs, 1, generator=generator)  # [B, 1]
            idx = torch.cat([idx, token], dim=1)  # [B, T+1]
        return idx


def compute_block_seed(seed: int, name: str) -> int:
    """The RNG seed of one block: a block's initial weights depend on (seed, name) only."""
    digest = hashlib.sha256(f"blyan-init/{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def init_seeded(cfg: MoEConfig, seed: int) -> MoEModel:
    """A model on CPU whose weights are a function of (cfg, seed) alone, byte for byte.

    Built on the meta device, so the global RNG is neither used nor disturbed; every
    parameter is then written from its block's own generator.
    """
    with torch.device("meta"):
        model = MoEModel(cfg)
    model.to_empty(device="cpu")
    residual_std = INIT_STD / math.sqrt(2 * cfg.n_layers)  # nanoGPT: scale residual projections
    with torch.no_grad():
        for name in model.block_names():
            gen = torch.Generator().manual_seed(compute_block_seed(seed, name))
            for pname, param in model.get_block(name).named_parameters():
                if pname.startswith("norm."):
                    param.fill_(1.0)
                elif pname in ("proj.weight", "w2.weight"):
                    nn.init.normal_(param, 0.0, residual_std, generator=gen)
                else:
                    nn.init.normal_(param, 0.0, INIT_STD, generator=gen)
    return model
