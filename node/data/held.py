"""The datasets the chain held at a height, as the L0 near-duplicate check sees them.

A report names its anchor height; the set it compared against is the genesis datasets plus
every dataset submitted at or below that height, whatever became of it (records are never
deleted, so the set at a past height is still known). Genesis datasets carry no signature on
the chain: each node computes theirs from the genesis blobs (every node holds them) once, and
keeps them in a file so that a restart does not recompute.

    held = HeldDatasets.from_genesis(pact, get_blob, cache_file)
    index = held.index_at(dataset_state, report.anchor_height)   # NearDuplicateIndex
"""

from __future__ import annotations

import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from chain import codec
from chain.errors import BlyanError
from chain.pact import GenesisPact
from chain.params import AuditParams
from chain.records import DatasetRecord, is_dataset_key
from chain.state import State
from node.data.l0.audit import compute_signature
from node.data.l0.minhash import NearDuplicateIndex

logger = logging.getLogger(__name__)

INDEX_CACHE = 4
"""Indexes kept, by anchor height (the contributors of one period anchor on a few heights)."""

GetBlob = Callable[[bytes], bytes]


class HeldDatasets:
    """Signatures of the genesis datasets, and indexes of what the chain held at a height."""

    def __init__(self, params: AuditParams, genesis: Sequence[tuple[str, tuple[int, ...]]] | None = ()) -> None:
        self.params = params
        self.genesis = tuple(genesis or ())
        self.ready = trio.Event()
        """Set once the genesis signatures are known (`index_at` must wait for it)."""
        if genesis is not None:
            self.ready.set()
        self._indexes: OrderedDict[tuple[int, bytes], NearDuplicateIndex] = OrderedDict()

    async def load_genesis(self, pact: GenesisPact, get_blob: GetBlob, cache_file: Path | None = None) -> None:
        """Compute (or read) the genesis signatures in a worker thread, then set `ready`: a
        daemon starts without waiting for them."""
        loaded = await trio.to_thread.run_sync(lambda: HeldDatasets.from_genesis(pact, get_blob, cache_file))
        self.genesis = loaded.genesis
        self._indexes.clear()
        self.ready.set()

    @classmethod
    def from_genesis(cls, pact: GenesisPact, get_blob: GetBlob, cache_file: Path | None = None) -> HeldDatasets:
        """Signatures of every genesis dataset (read from `cache_file` when it was written for
        these datasets and parameters; a genesis blob that is missing is skipped and logged)."""
        params = pact.params.dataset.audit
        tag = codec.sha256(codec.encode(params) + b"".join(ds.blob_id for ds in pact.datasets)).hex()
        cached = _read_cache(cache_file, tag)
        if cached is not None:
            return cls(params, cached)
        out = []
        for ds in pact.datasets:
            try:
                data = get_blob(ds.blob_id)
            except BlyanError as err:
                logger.warning("genesis dataset %s is not here (%s): near-duplicates of it go unseen", ds.cid, err)
                continue
            out.append((ds.cid, compute_signature(data, ds.format, params)))
        if cache_file is not None:
            _write_cache(cache_file, tag, out)
        return cls(params, out)

    def index_at(self, state: State, anchor_height: int) -> NearDuplicateIndex:
        """The index of the datasets held at `anchor_height` (`state`: the dataset chain at or
        above it). Scans the dataset records once per anchor; cached. Only once `ready`."""
        if not self.ready.is_set():
            raise RuntimeError("the genesis signatures are not loaded yet: await held.ready.wait() first")
        key = (anchor_height, state.root if state.height <= anchor_height else b"")
        index = self._indexes.get(key)
        if index is not None:
            self._indexes.move_to_end(key)
            return index
        index = NearDuplicateIndex(self.params)
        for cid, signature in self.genesis:
            if signature:
                index.add(cid, signature)
        for k, raw in state.items():
            if not is_dataset_key(k):
                continue
            rec = codec.decode(DatasetRecord, raw)
            if 0 < rec.submitted_height <= anchor_height and rec.minhash:
                index.add(rec.cid, tuple(rec.minhash))
        self._indexes[key] = index
        while len(self._indexes) > INDEX_CACHE:
            self._indexes.popitem(last=False)
        return index


def _read_cache(file: Path | None, tag: str) -> list[tuple[str, tuple[int, ...]]] | None:
    if file is None or not file.exists():
        return None
    try:
        doc = json.loads(file.read_text())
        if doc.get("tag") != tag:
            return None
        return [(str(cid), tuple(int(v) for v in sig)) for cid, sig in doc["signatures"]]
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("ignoring %s: %s", file, err)
        return None


def _write_cache(file: Path, tag: str, signatures: list[tuple[str, tuple[int, ...]]]) -> None:
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps({"tag": tag, "signatures": [[cid, list(sig)] for cid, sig in signatures]}))
    os.replace(tmp, file)
