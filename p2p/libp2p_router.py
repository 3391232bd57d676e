"""GossipSub as go-libp2p-pubsub runs its mesh: py-libp2p 0.8.1's router with two rules put back.

What a 16-node devnet showed (every node but the bootstrap knowing only the bootstrap): the
leaves logged "GRAFT flood detected" against the hub on every topic, and a transfer was never
final. The cause is two departures of 0.8.1 from the reference router, which together make any
node with more than D_high peers in a topic churn its mesh on every heartbeat:

1. *Opportunistic grafting every heartbeat, of every peer.* 0.8.1 grafts up to 2 non-mesh peers
   on each heartbeat whose score is `>=` a threshold derived from the mesh's median score.
   Without configured score parameters every score is 0, so every peer qualifies: the mesh
   grows by 2 per heartbeat. go-libp2p-pubsub grafts opportunistically only every 60 heartbeats,
   only when the median mesh score is *below* `opportunistic_graft_threshold`, and only peers
   scoring strictly *above* the median.
2. *No backoff after a heartbeat prune.* When the mesh exceeds D_high the heartbeat prunes it
   back to D, but 0.8.1 does not record a backoff for the pruned peers (go does, in
   `prunePeer`), so they are at once candidates again.

So the hub prunes a leaf, re-grafts it one heartbeat later, and the leaf, which remembers being
pruned less than 10 s before, sees a GRAFT flood: it penalises the hub, answers PRUNE and backs
off the hub for a minute. A leaf whose only peer is the hub then has no mesh at all: its own
votes leave only through IHAVE gossip, a heartbeat at a time, and finality stalls.

`MeshRouter` keeps the backoff after a heartbeat prune, and turns 0.8.1's own peer scorer off:
Blyan scores peers itself (`p2p.network.PeerScores`: a REJECTed message costs its forwarder,
a banned peer is disconnected), while the scorer with its default parameters scores everyone 0
and only adds work on every message and heartbeat (and the opportunistic grafting above). With
no scorer, 0.8.1 grafts opportunistically never, as go does with default parameters.

The rest of this module cuts what 0.8.1 spends per gossip message that a 16-daemon devnet on 2
cores cannot afford (py-spy on an idle node: a third of its time in pubsub bookkeeping):

- *IDONTWANT for every message.* v1.2 tells each mesh peer "don't send me this" for every
  message received, small or not: one more RPC per message per mesh peer. go-libp2p-pubsub sends
  it only for messages of at least 1 KiB (`IDontWantMessageThreshold`); so does `MeshRouter`.
- *The sender's signed peer record, verified twice per RPC.* 0.8.1 attaches its signed peer
  record to every RPC, and the receiver checks its Ed25519 signature in `Pubsub` and again in
  `GossipSub` for each one. `install_record_memo` remembers, per peer, the last record that
  checked out: the same bytes again are accepted without a second signature check (what the
  check would conclude, and what the peer store already holds). The sender side re-reads and
  re-parses its listen addresses for every RPC to decide whether its cached record is current;
  the memo keeps the answer for `LOCAL_RECORD_TTL_S`.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterable
from typing import DefaultDict

import libp2p.peer.peerstore as libp2p_peerstore
import libp2p.pubsub.gossipsub as libp2p_gossipsub
import libp2p.pubsub.pubsub as libp2p_pubsub
import libp2p.pubsub.utils as libp2p_pubsub_utils
from libp2p.abc import IHost
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2

IDONTWANT_MIN_BYTES = 1024
"""Smallest message for which mesh peers are sent IDONTWANT (go-libp2p-pubsub's threshold)."""
LOCAL_RECORD_TTL_S = 5.0
"""Seconds our own signed peer record is reused without looking at the listen addresses."""
MAX_REMEMBERED_RECORDS = 4096


class MeshRouter(GossipSub):
    """`GossipSub` whose heartbeat prunes with backoff, with 0.8.1's scorer off and IDONTWANT
    only for large messages (see the module docstring)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.scorer = None
        self._message_bytes = 0
        self.pruned_by_heartbeat = 0
        """Peers pruned because a mesh was over D_high (for tests and diagnostics)."""

    def mesh_heartbeat(self) -> tuple[DefaultDict[ID, list[str]], DefaultDict[ID, list[str]]]:
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
                self.pruned_by_heartbeat += 1
        return peers_to_graft, peers_to_prune

    async def publish(self, msg_forwarder: ID, pubsub_msg: rpc_pb2.Message) -> None:
        # Read by `_emit_idontwant_for_message`, which 0.8.1 awaits before any other await.
        self._message_bytes = len(pubsub_msg.data)
        await super().publish(msg_forwarder, pubsub_msg)

    async def _emit_idontwant_for_message(self, msg_id: bytes, topic_ids: Iterable[str]) -> None:
        if self._message_bytes >= IDONTWANT_MIN_BYTES:
            await super()._emit_idontwant_for_message(msg_id, topic_ids)


# --- signed peer records ------------------------------------------------------------------------

def _memo_of(host: IHost) -> _RecordMemo:
    """The memo of one host (kept on the host: a process may run several, as the tests do)."""
    memo = getattr(host, "_blyan_record_memo", None)
    if memo is None:
        memo = _RecordMemo()
        host._blyan_record_memo = memo  # type: ignore[attr-defined]
    return memo


class _RecordMemo:
    __slots__ = ("good", "local")

    def __init__(self) -> None:
        self.good: OrderedDict[ID, bytes] = OrderedDict()
        """Per peer, the last signed record of theirs that checked out."""
        self.local: tuple[float, bytes] | None = None
        """Our own record, and until when it is reused as is."""


def _consume_signed_record_once(msg: rpc_pb2.RPC, host: IHost, peer_id: ID) -> bool:
    if not msg.HasField("senderRecord"):
        return True
    record = msg.senderRecord
    good = _memo_of(host).good
    if good.get(peer_id) == record:
        good.move_to_end(peer_id)
        return True
    ok = _consume_signed_record(msg, host, peer_id)
    if ok:
        good[peer_id] = record
        while len(good) > MAX_REMEMBERED_RECORDS:
            good.popitem(last=False)
    return ok


def _local_record(host: IHost) -> tuple[bytes, bool]:
    memo = _memo_of(host)
    now = time.monotonic()
    if memo.local is not None and memo.local[0] > now:
        return memo.local[1], False
    value = _issue_local_record(host)
    memo.local = (now + LOCAL_RECORD_TTL_S, value[0])
    return value


def install_record_memo() -> None:
    """Route 0.8.1's pubsub through the record memos (idempotent; process-wide)."""
    for module in (libp2p_pubsub, libp2p_gossipsub):
        module.maybe_consume_signed_record = _consume_signed_record_once  # type: ignore[attr-defined]
        module.env_to_send_in_RPC = _local_record  # type: ignore[attr-defined]


_consume_signed_record = libp2p_pubsub_utils.maybe_consume_signed_record
_issue_local_record = libp2p_peerstore.env_to_send_in_RPC

__all__ = ["MeshRouter", "install_record_memo"]
