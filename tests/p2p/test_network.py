"""Names, errors and peer scores of the `Network` interface (p2p/network.py)."""

from __future__ import annotations

import pytest

from chain.errors import BlyanError
from p2p.network import (
    MessageTooLarge,
    PeerScores,
    PeerUnreachable,
    RemoteError,
    RequestFailed,
    RequestTimeout,
    ResponseTooLarge,
    ScoreConfig,
    protocol_name,
    topic_name,
)
from p2p.sim import SimError

# --- names, errors, scores ----------------------------------------------------------------


def test_topic_name_namespaces_by_network() -> None:
    assert topic_name("devnet", "votes") == "/blyan/devnet/votes/1"
    assert topic_name("main", "blocks_parameter", 2) == "/blyan/main/blocks_parameter/2"
    assert protocol_name("devnet", "blocks_by_range") == "/blyan/devnet/req/blocks_by_range/1"


@pytest.mark.parametrize("network_id, name", [("", "votes"), ("dev/net", "votes"), ("dev", "a b")])
def test_invalid_topic_name(network_id: str, name: str) -> None:
    with pytest.raises(ValueError):
        topic_name(network_id, name)


def test_errors_share_the_root() -> None:
    for cls in (RequestTimeout, PeerUnreachable, ResponseTooLarge, RemoteError):
        assert issubclass(cls, RequestFailed) and issubclass(cls, BlyanError)
    assert issubclass(MessageTooLarge, BlyanError) and issubclass(SimError, BlyanError)


def test_peer_scores_decay_and_ban() -> None:
    scores = PeerScores(ScoreConfig(half_life_s=10.0, ban_threshold=-4.0))
    assert scores.score("p", 0.0) == 0.0
    assert not scores.penalize("p", 2.0, now=0.0)
    assert scores.score("p", 10.0) == pytest.approx(-1.0)
    assert scores.score("p", 20.0) == pytest.approx(-0.5)
    assert scores.penalize("p", 7.5, now=20.0)  # -8: banned until it decays back to -4
    assert scores.is_banned("p", 29.9)
    assert scores.get_banned_until("p") == pytest.approx(30.0)
    assert not scores.is_banned("p", 30.0)
    assert not scores.is_banned("q", 0.0)
    with pytest.raises(ValueError):
        scores.penalize("p", -1.0, now=0.0)
