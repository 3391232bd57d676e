"""The address book: every peer this node has heard of, where it can be dialled, and when to
try it next. Pure (no trio, no libp2p): every call takes `now`, so the libp2p discovery and its
tests share it.

The policy follows CometBFT's PEX address book, cut to what a node needs:

- an entry is a peer id, its TCP addresses (multiaddrs without `/p2p/...`), where we learned it
  (`config`: the operator's bootstrap list; `self`: the peer advertised itself in a peer-exchange
  request; otherwise the peer id of the peer that told us) and its dial history;
- a failed dial backs the entry off exponentially (`base_backoff_s` doubling up to
  `max_backoff_s`); a success resets it; an entry that failed `max_failures` times in a row and
  never connected is forgotten, unless the operator configured it;
- what one peer may tell us is bounded (`max_per_source` entries learned from any one source)
  and the book itself is bounded (`max_entries`): a lying peer cannot fill it, and when it is
  full the worst entry (most failures, then oldest) makes room;
- dial candidates are picked round-robin over sources, so that no one peer's list (a hub's)
  decides all of a node's connections.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from chain.errors import BlyanError

SOURCE_CONFIG = "config"
"""Learned from the operator's bootstrap list: never forgotten, always re-dialled when due."""
SOURCE_SELF = "self"
"""The peer advertised its own addresses to us."""

BOOK_VERSION = 1


class AddressBookError(BlyanError):
    """A saved address book that cannot be read."""


@dataclass(slots=True)
class BookEntry:
    """One known peer."""

    peer: str
    addrs: tuple[str, ...]
    """Dialable TCP multiaddrs, without the `/p2p/<peer id>` suffix."""
    source: str
    """`config`, `self`, or the peer id of the peer that told us."""
    failures: int = 0
    """Dials failed in a row since the last success."""
    next_dial: float = 0.0
    """Monotonic time before which this entry is not dialled again."""
    ever_connected: bool = False
    last_seen: float = 0.0
    """Monotonic time the peer was last connected or advertised (0: never)."""


@dataclass(frozen=True, slots=True)
class BookConfig:
    max_entries: int = 1000
    max_per_source: int = 64
    max_addrs_per_peer: int = 4
    base_backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    max_config_backoff_s: float = 5.0
    """Cap on the backoff of a configured (bootstrap) peer: the operator wants it back soon."""
    max_failures: int = 8


@dataclass
class AddressBook:
    """Known peers (see the module docstring)."""

    local_peer: str
    config: BookConfig = field(default_factory=BookConfig)
    entries: dict[str, BookEntry] = field(default_factory=dict)

    # --- learning ---------------------------------------------------------------------------

    def add(self, peer: str, addrs: tuple[str, ...], source: str, now: float) -> bool:
        """Record that `peer` is reachable at `addrs` (already validated by the caller); returns
        whether the book changed. Our own id, empty address lists and sources over their quota
        are ignored; an operator's entry keeps its source and addresses first."""
        addrs = tuple(dict.fromkeys(addrs))[: self.config.max_addrs_per_peer]
        if peer == self.local_peer or not addrs:
            return False
        entry = self.entries.get(peer)
        if entry is not None:
            changed = False
            if source in (SOURCE_CONFIG, SOURCE_SELF) and entry.source != SOURCE_CONFIG:
                # First-hand beats hearsay: the peer's own advertisement replaces a third party's.
                changed = entry.addrs != addrs or entry.source != source
                entry.addrs, entry.source = addrs, source
            elif source == SOURCE_CONFIG:
                entry.addrs = tuple(dict.fromkeys(entry.addrs + addrs))[: self.config.max_addrs_per_peer]
            else:
                merged = tuple(dict.fromkeys(entry.addrs + addrs))[: self.config.max_addrs_per_peer]
                changed = merged != entry.addrs
                entry.addrs = merged
            entry.last_seen = max(entry.last_seen, now)
            return changed
        if source not in (SOURCE_CONFIG, SOURCE_SELF) and self.count_from(source) >= self.config.max_per_source:
            return False
        if len(self.entries) >= self.config.max_entries and not self._evict_one():
            return False
        self.entries[peer] = BookEntry(peer, addrs, source, last_seen=now)
        return True

    def count_from(self, source: str) -> int:
        return sum(1 for entry in self.entries.values() if entry.source == source)

    def _evict_one(self) -> bool:
        """Drop the worst entry that the operator did not configure; False if there is none."""
        victims = [e for e in self.entries.values() if e.source != SOURCE_CONFIG]
        if not victims:
            return False
        worst = max(victims, key=lambda e: (not e.ever_connected, e.failures, -e.last_seen, e.peer))
        del self.entries[worst.peer]
        return True

    # --- dialling ---------------------------------------------------------------------------

    def mark_connected(self, peer: str, now: float) -> None:
        entry = self.entries.get(peer)
        if entry is not None:
            entry.failures = 0
            entry.next_dial = 0.0
            entry.ever_connected = True
            entry.last_seen = now

    def mark_disconnected(self, peer: str, now: float) -> None:
        """The peer hung up (or we did): not dialled again for a while, so that a full peer that
        trims us is not redialled at once, nor a flapping one every round."""
        entry = self.entries.get(peer)
        if entry is not None:
            entry.next_dial = max(entry.next_dial, now + self._cap(entry) / 2)
            entry.last_seen = now

    def _cap(self, entry: BookEntry) -> float:
        if entry.source == SOURCE_CONFIG:
            return self.config.max_config_backoff_s
        return self.config.max_backoff_s

    def mark_failed(self, peer: str, now: float) -> None:
        """One more failed dial: back off, and forget a stranger that never answered."""
        entry = self.entries.get(peer)
        if entry is None:
            return
        entry.failures += 1
        if (
            entry.source != SOURCE_CONFIG
            and not entry.ever_connected
            and entry.failures >= self.config.max_failures
        ):
            del self.entries[peer]
            return
        delay = min(self._cap(entry), self.config.base_backoff_s * 2 ** min(entry.failures - 1, 32))
        entry.next_dial = now + delay

    def backoff_of(self, peer: str, now: float) -> float:
        """Seconds until the peer may be dialled again (0: now)."""
        entry = self.entries.get(peer)
        return max(0.0, entry.next_dial - now) if entry is not None else 0.0

    def candidates(self, now: float, exclude: set[str], limit: int, rng: random.Random) -> list[str]:
        """Up to `limit` peers due for a dial, none of `exclude`: round-robin over sources, in a
        random order within each source; configured peers first."""
        by_source: dict[str, list[str]] = {}
        for entry in sorted(self.entries.values(), key=lambda e: e.peer):
            if entry.peer in exclude or entry.next_dial > now:
                continue
            by_source.setdefault(entry.source, []).append(entry.peer)
        for peers in by_source.values():
            rng.shuffle(peers)
        order = sorted(by_source, key=lambda s: (s != SOURCE_CONFIG, rng.random()))
        picked: list[str] = []
        while len(picked) < limit and any(by_source[s] for s in order):
            for source in order:
                if by_source[source] and len(picked) < limit:
                    picked.append(by_source[source].pop())
        return picked

    def sample(self, limit: int, rng: random.Random, only: set[str] | None = None) -> list[BookEntry]:
        """Up to `limit` entries to tell a peer about, those in `only` if given (the connected
        ones), preferring peers that answered a dial at least once."""
        pool = [e for e in self.entries.values() if only is None or e.peer in only]
        pool.sort(key=lambda e: e.peer)
        rng.shuffle(pool)
        pool.sort(key=lambda e: (not e.ever_connected, e.failures))
        return pool[:limit]

    # --- persistence ------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write the entries that ever connected or were configured (atomically: tmp + rename)."""
        keep = [
            {"peer": e.peer, "addrs": list(e.addrs), "source": e.source}
            for e in sorted(self.entries.values(), key=lambda e: e.peer)
            if e.ever_connected or e.source == SOURCE_CONFIG
        ]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"version": BOOK_VERSION, "peers": keep}, indent=1))
        tmp.replace(path)

    def load(self, path: Path, now: float, check_addr: object = None) -> int:
        """Add the entries saved at `path` (missing file: none); returns how many were added.
        A saved entry is treated as first-hand (`self`): it answered a dial before. Raises
        `AddressBookError` for a file that is not a saved book."""
        if not path.exists():
            return 0
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or data.get("version") != BOOK_VERSION:
                raise ValueError("not a version-1 address book")
            peers = data["peers"]
            if not isinstance(peers, list):
                raise ValueError("peers is not a list")
            added = 0
            for item in peers[: self.config.max_entries]:
                peer, addrs = item["peer"], item["addrs"]
                if not isinstance(peer, str) or not isinstance(addrs, list):
                    raise ValueError("an entry is not {peer, addrs}")
                if not all(isinstance(a, str) for a in addrs):
                    raise ValueError("an address is not a string")
                if callable(check_addr):
                    addrs = [a for a in addrs if check_addr(a)]
                if self.add(peer, tuple(addrs), SOURCE_SELF, now):
                    self.entries[peer].ever_connected = True
                    added += 1
            return added
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise AddressBookError(f"address book {path} is unreadable: {err}") from err
