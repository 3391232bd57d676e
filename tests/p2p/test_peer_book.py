"""The address book of peer discovery (p2p/peer_book.py): learning, quotas, backoff, choice of
dial candidates, persistence. Pure: every call takes `now`."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2p.peer_book import (
    SOURCE_CONFIG,
    SOURCE_SELF,
    AddressBook,
    AddressBookError,
    BookConfig,
)

ADDR = "/ip4/127.0.0.1/tcp/{}"


def addr(n: int) -> tuple[str, ...]:
    return (ADDR.format(1000 + n),)


def book(**kw: float) -> AddressBook:
    return AddressBook("me", BookConfig(**kw))  # type: ignore[arg-type]


def test_add_ignores_self_and_empty() -> None:
    b = book()
    assert not b.add("me", addr(1), SOURCE_SELF, 0)
    assert not b.add("p", (), SOURCE_SELF, 0)
    assert b.add("p", addr(1), "q", 0)
    assert b.entries["p"].source == "q"


def test_first_hand_beats_hearsay_and_config_keeps_its_source() -> None:
    b = book()
    b.add("p", addr(1), "gossiper", 0)
    assert b.add("p", addr(2), SOURCE_SELF, 1)
    assert b.entries["p"].addrs == addr(2) and b.entries["p"].source == SOURCE_SELF
    b.add("c", addr(3), SOURCE_CONFIG, 0)
    b.add("c", addr(4), SOURCE_SELF, 1)
    assert b.entries["c"].source == SOURCE_CONFIG
    assert b.entries["c"].addrs == addr(3) + addr(4)  # the operator's address stays first


def test_one_source_cannot_fill_the_book() -> None:
    b = book(max_per_source=3)
    added = [b.add(f"p{i}", addr(i), "liar", 0) for i in range(10)]
    assert added.count(True) == 3
    assert b.count_from("liar") == 3
    assert b.add("honest", addr(99), "other", 0)


def test_full_book_evicts_worst_never_a_configured_peer() -> None:
    b = book(max_entries=3)
    b.add("c", addr(0), SOURCE_CONFIG, 0)
    b.add("good", addr(1), "s1", 0)
    b.mark_connected("good", 1)
    b.add("bad", addr(2), "s2", 0)
    b.mark_failed("bad", 2)
    assert b.add("new", addr(3), "s3", 3)
    assert set(b.entries) == {"c", "good", "new"}


def test_backoff_doubles_and_is_capped_and_reset_on_success() -> None:
    b = book(base_backoff_s=1.0, max_backoff_s=8.0, max_failures=100)
    b.add("p", addr(1), SOURCE_SELF, 0)
    delays = []
    for _ in range(6):
        b.mark_failed("p", 0)
        delays.append(b.backoff_of("p", 0))
    assert delays == [1, 2, 4, 8, 8, 8]
    b.mark_connected("p", 1)
    assert b.backoff_of("p", 1) == 0


def test_configured_peer_backoff_has_its_own_cap_and_is_never_forgotten() -> None:
    b = book(max_config_backoff_s=2.0, max_failures=3)
    b.add("c", addr(1), SOURCE_CONFIG, 0)
    for _ in range(10):
        b.mark_failed("c", 0)
    assert "c" in b.entries and b.backoff_of("c", 0) == 2.0


def test_stranger_that_never_answered_is_forgotten() -> None:
    b = book(max_failures=3)
    b.add("s", addr(1), "q", 0)
    b.add("known", addr(2), "q", 0)
    b.mark_connected("known", 0)
    for _ in range(3):
        b.mark_failed("s", 0)
        b.mark_failed("known", 0)
    assert "s" not in b.entries and "known" in b.entries


def test_candidates_skip_backed_off_and_excluded_and_put_config_first() -> None:
    b = book()
    b.add("c", addr(0), SOURCE_CONFIG, 0)
    for i in range(5):
        b.add(f"p{i}", addr(i + 1), "hub", 0)
    b.mark_failed("p0", 0)  # due at t=1
    picked = b.candidates(0.5, {"p1"}, 10, random.Random(1))
    assert picked[0] == "c"
    assert set(picked) == {"c", "p2", "p3", "p4"}
    assert "p0" in b.candidates(1.0, set(), 10, random.Random(1))


def test_candidates_round_robin_over_sources() -> None:
    b = book(max_per_source=100)
    for i in range(20):
        b.add(f"h{i}", addr(i), "hub", 0)
    b.add("x", addr(50), "other1", 0)
    b.add("y", addr(51), "other2", 0)
    picked = b.candidates(0, set(), 3, random.Random(7))
    assert {"x", "y"} <= set(picked)  # the hub's twenty do not crowd out the other sources


def test_save_and_load_keep_peers_that_answered(tmp_path: Path) -> None:
    b = book()
    b.add("c", addr(0), SOURCE_CONFIG, 0)
    b.add("ok", addr(1), "q", 0)
    b.mark_connected("ok", 1)
    b.add("never", addr(2), "q", 0)
    path = tmp_path / "peers.json"
    b.save(path)
    fresh = book()
    assert fresh.load(path, 5) == 2
    assert set(fresh.entries) == {"c", "ok"}
    assert fresh.entries["ok"].ever_connected


def test_load_filters_addresses_and_refuses_garbage(tmp_path: Path) -> None:
    path = tmp_path / "peers.json"
    path.write_text(json.dumps({"version": 1, "peers": [
        {"peer": "a", "addrs": ["/ip4/10.0.0.1/tcp/1", "nonsense"]},
        {"peer": "b", "addrs": ["nonsense"]},
    ]}))
    b = book()
    assert b.load(path, 0, lambda a: a.startswith("/ip4/")) == 1
    assert b.entries["a"].addrs == ("/ip4/10.0.0.1/tcp/1",)
    for text in ("{", json.dumps({"version": 2, "peers": []}), json.dumps({"version": 1, "peers": [{"peer": 1}]})):
        path.write_text(text)
        with pytest.raises(AddressBookError, match="unreadable"):
            book().load(path, 0)
    assert book().load(tmp_path / "missing.json", 0) == 0


# --- properties -----------------------------------------------------------------------------

PEERS = st.sampled_from([f"p{i}" for i in range(40)] + ["me"])
SOURCES = st.sampled_from(["s1", "s2", "s3", SOURCE_SELF, SOURCE_CONFIG])
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), PEERS, SOURCES, st.integers(0, 5)),
        st.tuples(st.just("fail"), PEERS, SOURCES, st.integers(0, 5)),
        st.tuples(st.just("ok"), PEERS, SOURCES, st.integers(0, 5)),
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(OPS, st.integers(0, 2**32 - 1))
def test_book_stays_within_its_bounds(ops: list[tuple[str, str, str, int]], seed_: int) -> None:
    cfg = BookConfig(max_entries=12, max_per_source=4, max_addrs_per_peer=2, max_failures=3)
    b = AddressBook("me", cfg)
    now = 0.0
    for op, peer, source, n in ops:
        now += 0.5
        if op == "add":
            b.add(peer, tuple(ADDR.format(k) for k in range(n + 1)), source, now)
        elif op == "fail":
            before = b.backoff_of(peer, now)
            b.mark_failed(peer, now)
            if peer in b.entries:
                assert b.backoff_of(peer, now) >= min(before, cfg.max_config_backoff_s)
        else:
            b.mark_connected(peer, now)
        assert "me" not in b.entries
        assert len(b.entries) <= cfg.max_entries
        for s in ("s1", "s2", "s3"):
            assert b.count_from(s) <= cfg.max_per_source
        for entry in b.entries.values():
            assert 1 <= len(entry.addrs) <= cfg.max_addrs_per_peer
            assert entry.next_dial <= now + cfg.max_backoff_s
    rng = random.Random(seed_)
    exclude = set(list(b.entries)[:3])
    for limit in (0, 1, 5, 50):
        picked = b.candidates(now, exclude, limit, rng)
        assert len(picked) == len(set(picked)) <= limit
        assert not set(picked) & exclude
        assert all(b.entries[p].next_dial <= now for p in picked)
