"""The gossip router (p2p/libp2p_router.py): a mesh over D_high is pruned with backoff and not
re-grafted on the next heartbeat (the churn behind the "GRAFT flood" of a hub), no
opportunistic grafting with 0.8.1's scorer off, IDONTWANT only for large messages, and each
peer's signed record checked once. The heartbeat's mesh maintenance is driven
directly, with the subscriptions it reads set by hand."""

from __future__ import annotations

from types import SimpleNamespace

from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import PROTOCOL_ID_V12, GossipSub
from libp2p.pubsub.pb import rpc_pb2

from p2p import libp2p_router
from p2p.libp2p_router import IDONTWANT_MIN_BYTES, MeshRouter

TOPIC = "t"
PEERS = [ID.from_pubkey(create_new_key_pair(bytes([i]) * 32).public_key) for i in range(1, 11)]


def router(cls: type[GossipSub], in_mesh: int) -> GossipSub:
    r = cls(
        protocols=[PROTOCOL_ID_V12], degree=3, degree_low=2, degree_high=4,
        adaptive_gossip_enabled=False, spam_protection_enabled=False,
        eclipse_protection_enabled=False,
    )
    r.pubsub = SimpleNamespace(peer_topics={TOPIC: set(PEERS)})
    r.mesh = {TOPIC: set(PEERS[:in_mesh])}
    r.peer_protocol = {p: PROTOCOL_ID_V12 for p in PEERS}
    return r


def churn(r: GossipSub, heartbeats: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(heartbeats):
        graft, prune = r.mesh_heartbeat()
        out.append((len(graft), len(prune)))
    return out


def test_plain_router_churns_its_mesh_every_heartbeat() -> None:
    """What py-libp2p 0.8.1 does on its own (the bug): 2 grafted and 2 pruned on every
    heartbeat, forever, so pruned peers are grafted again within seconds."""
    steps = churn(router(GossipSub, in_mesh=6), 5)
    assert all(graft == 2 and prune >= 2 for graft, prune in steps)


def test_mesh_router_prunes_once_with_backoff_and_then_holds() -> None:
    r = router(MeshRouter, in_mesh=6)
    first, *rest = churn(r, 10)
    assert first == (0, 3)  # 6 > D_high 4: pruned to D 3, nobody grafted
    assert rest == [(0, 0)] * 9
    assert len(r.mesh[TOPIC]) == 3
    pruned = set(PEERS[:6]) - r.mesh[TOPIC]
    assert all(r._check_back_off(peer, TOPIC) for peer in pruned)  # noqa: SLF001
    assert r.pruned_by_heartbeat == 3


def test_mesh_below_degree_low_grafts_but_not_backed_off_peers() -> None:
    r = router(MeshRouter, in_mesh=6)
    churn(r, 1)
    pruned = set(PEERS[:6]) - r.mesh[TOPIC]
    r.mesh[TOPIC] = set(list(r.mesh[TOPIC])[:1])  # two mesh peers left
    graft, _ = r.mesh_heartbeat()
    assert len(graft) == 2 and not set(graft) & pruned


def test_no_opportunistic_grafting_without_a_scorer() -> None:
    """0.8.1's scorer is off: a stable mesh at D stays as it is, heartbeat after heartbeat."""
    r = router(MeshRouter, in_mesh=3)
    assert r.scorer is None
    before = set(r.mesh[TOPIC])
    assert churn(r, 120) == [(0, 0)] * 120
    assert r.mesh[TOPIC] == before


async def test_idontwant_only_for_large_messages() -> None:
    r = router(MeshRouter, in_mesh=3)
    sent: list[bytes] = []

    async def emit(msg_id: bytes, topic_ids: object) -> None:
        sent.append(msg_id)

    # What GossipSub.publish does first: note the size, then announce IDONTWANT.
    r._message_bytes = IDONTWANT_MIN_BYTES - 1  # noqa: SLF001
    original = GossipSub._emit_idontwant_for_message  # noqa: SLF001
    GossipSub._emit_idontwant_for_message = lambda self, m, t: emit(m, t)  # type: ignore[method-assign]  # noqa: SLF001
    try:
        await r._emit_idontwant_for_message(b"small", [TOPIC])  # noqa: SLF001
        r._message_bytes = IDONTWANT_MIN_BYTES  # noqa: SLF001
        await r._emit_idontwant_for_message(b"large", [TOPIC])  # noqa: SLF001
    finally:
        GossipSub._emit_idontwant_for_message = original  # type: ignore[method-assign]  # noqa: SLF001
    assert sent == [b"large"]


def test_a_peer_record_is_checked_once_per_peer_and_bytes(monkeypatch) -> None:
    checks: list[bytes] = []
    verdicts = {b"good": True, b"good2": True, b"forged": False}

    def check(msg: rpc_pb2.RPC, host: object, peer: ID) -> bool:
        checks.append(msg.senderRecord)
        return verdicts[msg.senderRecord]

    monkeypatch.setattr(libp2p_router, "_consume_signed_record", check)
    host = SimpleNamespace()
    consume = lambda msg, _, peer: libp2p_router._consume_signed_record_once(msg, host, peer)  # noqa: E731, SLF001

    def rpc(record: bytes | None) -> rpc_pb2.RPC:
        msg = rpc_pb2.RPC()
        if record is not None:
            msg.senderRecord = record
        return msg

    a, b = PEERS[0], PEERS[1]
    assert all(consume(rpc(b"good"), None, a) for _ in range(5))
    assert checks == [b"good"]
    assert consume(rpc(b"good"), None, b)  # another peer: checked for itself
    assert not consume(rpc(b"forged"), None, a)
    assert not consume(rpc(b"forged"), None, a)  # a failure is never remembered
    assert consume(rpc(b"good2"), None, a)
    assert consume(rpc(None), None, a)  # no record: nothing to check
    assert checks == [b"good", b"good", b"forged", b"forged", b"good2"]


def test_memos_are_per_host() -> None:
    a, b = SimpleNamespace(), SimpleNamespace()
    assert libp2p_router._memo_of(a) is libp2p_router._memo_of(a)  # noqa: SLF001
    assert libp2p_router._memo_of(a) is not libp2p_router._memo_of(b)  # noqa: SLF001
