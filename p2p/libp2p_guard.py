"""What `Libp2pNetwork` puts around py-libp2p 0.8.1 so that no peer can take the host down.

py-libp2p runs every inbound stream handler in the task that also owns the connection: an
exception that escapes one (a protobuf `DecodeError` from a garbage `/meshsub` frame, a bug in a
handler) cancels the swarm and with it the whole node. This module holds the shims that close
those holes, each as small as the hole:

- `guard_stream_handler`: the catch-all put in front of the swarm's one stream handler, so it
  covers protocol negotiation and every protocol's handler (identify, ping, pubsub, ours);
- `GuardedPubsub`: `Pubsub` whose `/meshsub` handler and per-message task contain their own
  failures (the second runs in pubsub's service manager, where an exception stops pubsub), with
  per-peer outbound queues sized by us (0.8.1 hard-codes 32 RPCs and 1 MiB);
- `PeerNotifee`: connection events from the swarm, handed to plain callbacks.

Each fault calls `on_fault(peer, reason)`: the network penalises the peer for it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.utils.connection_shutdown import is_expected_connection_shutdown
from multiaddr import Multiaddr

from p2p.net_stats import NetCounters

logger = logging.getLogger(__name__)

FaultCallback = Callable[[str, str], None]
"""`on_fault(peer, reason)`: a peer made one of our handlers fail."""

StreamHandler = Callable[[INetStream], Awaitable[None]]

RESET_TIMEOUT_S = 1.0
"""Longest wait for a stream reset to be written (the connection may be wedged)."""


def get_stream_peer(stream: INetStream) -> str:
    """The remote peer of a stream, base58 ("" if the stream does not know it)."""
    peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", None)
    return str(peer) if peer is not None else ""


async def reset_quietly(stream: INetStream) -> None:
    """Reset a stream whatever state it and its connection are in, even while cancelled."""
    with trio.CancelScope(shield=True), trio.move_on_after(RESET_TIMEOUT_S):
        try:
            await stream.reset()
        except Exception as err:  # a broken connection: nothing left to reset
            logger.debug("reset of a stream failed: %r", err)


def guard_stream_handler(handler: StreamHandler, on_fault: FaultCallback) -> StreamHandler:
    """`handler` with a catch-all: a failure resets the stream and reports its peer.

    A peer hanging up mid-stream is not a fault (libp2p's own predicate decides); anything
    else that escapes a handler is, whoever's bug it is: the host stays up either way."""

    async def guarded(stream: INetStream) -> None:
        try:
            await handler(stream)
        except Exception as err:
            peer = get_stream_peer(stream)
            protocol = stream.get_protocol()
            if is_expected_connection_shutdown(err):
                logger.debug("stream %s from %s ended by a hang-up: %r", protocol, peer, err)
            else:
                logger.warning("stream %s from %s failed: %r", protocol, peer, err)
                if peer:
                    on_fault(peer, f"stream {protocol} failed ({type(err).__name__})")
            await reset_quietly(stream)

    return guarded


class _SizedQueues(dict[ID, RpcQueue]):
    """`Pubsub.peer_queues` whose queues get our limits as pubsub stores them (0.8.1 builds
    each `RpcQueue()` with its defaults: 32 RPCs, 1 MiB; a full queue drops silently)."""

    def __init__(self, max_size: int, max_message_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.max_message_size = max_message_size

    def __setitem__(self, peer: ID, queue: RpcQueue) -> None:
        queue.max_message_size = self.max_message_size
        inner = getattr(queue, "_queue", None)
        if inner is not None and hasattr(inner, "max_size"):
            inner.max_size = self.max_size
        else:  # pragma: no cover - a py-libp2p release that reshaped RpcQueue
            logger.warning("pubsub RpcQueue has no _queue.max_size: outbound queue not resized")
        super().__setitem__(peer, queue)


class GuardedPubsub(Pubsub):
    """`Pubsub` that contains the failures a remote peer can cause, and reports them."""

    def __init__(
        self,
        host: Any,
        router: Any,
        *,
        on_fault: FaultCallback,
        queue_size: int,
        max_message_size: int,
        counters: NetCounters | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(host, router, max_inbound_rpc_size=max_message_size, **kwargs)
        self.peer_queues = _SizedQueues(queue_size, max_message_size)
        self._on_fault = on_fault
        self._counters = counters

    async def stream_handler(self, stream: INetStream) -> None:
        """The `/meshsub` handler: a frame that does not parse (or any other failure) drops
        this stream and the peer's pubsub state instead of the host."""
        peer_id = stream.muxed_conn.peer_id
        try:
            await super().stream_handler(stream)
        except Exception as err:
            if is_expected_connection_shutdown(err):
                logger.debug("pubsub stream of %s ended by a hang-up: %r", peer_id, err)
            else:
                logger.warning("pubsub stream of %s failed: %r", peer_id, err)
                self._on_fault(str(peer_id), f"bad pubsub frame ({type(err).__name__})")
            await reset_quietly(stream)
            self._handle_dead_peer(peer_id)

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        """Validate, deliver and relay one message. Runs as a task of pubsub's manager, where
        an exception (e.g. a garbage public key in `msg.key`) would stop pubsub: contain it.
        Counts each copy from a peer on the topics we subscribe to (what a peer names is
        never a counter's key: their number stays bounded)."""
        if self._counters is not None and msg_forwarder != self.my_id:
            for topic in msg.topicIDs:
                if topic in self.topic_ids:
                    self._counters.count_gossip(topic, "messages_in", size=len(msg.data))
        try:
            await super().push_msg(msg_forwarder, msg)
        except Exception as err:
            if msg_forwarder == self.my_id:
                raise  # our own publish: `publish` reports it to its caller
            logger.warning("pubsub message from %s failed: %r", msg_forwarder, err)
            self._on_fault(str(msg_forwarder), f"bad pubsub message ({type(err).__name__})")

    async def write_msg(self, stream: INetStream, rpc_msg: rpc_pb2.RPC) -> bool:
        """Write one RPC to a peer; counts the messages it carries (own publications and
        relays: topics of our choosing) once written."""
        written = await super().write_msg(stream, rpc_msg)
        if written and self._counters is not None:
            for msg in rpc_msg.publish:
                for topic in msg.topicIDs:
                    self._counters.count_gossip(topic, "messages_out", size=len(msg.data))
        return written

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        """Not used: messages are handed to their handler during validation (where the verdict
        can still stop the relay), so the per-topic subscription queues (32 slots in 0.8.1,
        dropping with a warning when full) are never read and need not be filled."""


class PeerNotifee(INotifee):
    """Swarm connection events as two plain callbacks (run in the swarm's task: keep quick)."""

    def __init__(
        self, on_connected: Callable[[str], None], on_disconnected: Callable[[str], None]
    ) -> None:
        self._on_connected = on_connected
        self._on_disconnected = on_disconnected

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        self._on_connected(str(conn.muxed_conn.peer_id))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        self._on_disconnected(str(conn.muxed_conn.peer_id))

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        pass
