"""py-libp2p's log records, routed into ours.

py-libp2p logs on loggers named `libp2p.*`, which it sets not to propagate, and it logs the
ordinary weather of a peer-to-peer network at ERROR: a dial that fails, a stream the peer closes
or resets, a protocol a peer does not speak yet. `route_libp2p_logs` puts one handler on the
`libp2p` logger that hands every record to our root logger's handlers (our format, our
destination), except that a record matching `EXPECTED_LIBP2P_EVENTS` is demoted to a one-line
DEBUG record and counted by kind (`blyan_libp2p_expected_events_total{kind=...}` at /metrics).
Anything else from libp2p at WARNING or above keeps its level: those are worth a look.
"""

from __future__ import annotations

import logging
import os
import re
import threading

LIBP2P_LOGGER = "libp2p"

EXPECTED_LIBP2P_EVENTS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (kind, re.compile(pattern)) for kind, pattern in (
        ("dial_failed", r"Failed to open TCP stream|Unexpected error opening TCP stream|failed to connect to "
                        r"px peer|replacement connection|Error in auto.connect|No known addresses to peer"),
        ("upgrade_failed", r"failed to upgrade security|fail to upgrade mux|MultiselectClient handshake"),
        ("stream_open_failed", r"Failed to open stream to peer"),
        ("stream_reset", r"StreamReset|stream reset|ConnectionResetError|Connection reset"),
        ("stream_closed", r"StreamClosed|StreamEOF|IncompleteRead|Incomplete read|Error reading data for stream|"
                          r"MuxedConnUnavailable|RawConnError"),
        ("connection_closed", r"Yamux connection closed unexpectedly|Error closing (secured_conn|connection)|"
                              r"GO_AWAY|Error checking (health for )?connection"),
        ("identify_failed", r"identify response|identify/push|pushing identify"),
    )
)
"""Kinds of expected libp2p events, each a pattern searched in a record's message (and its
exception, if any); the first kind that matches wins."""


def classify_libp2p_record(record: logging.LogRecord) -> str | None:
    """The expected-event kind of a libp2p record at WARNING or above, or None."""
    if record.levelno < logging.WARNING:
        return None
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        err = record.exc_info[1]
        text += f" {type(err).__name__}: {err}"
    for kind, pattern in EXPECTED_LIBP2P_EVENTS:
        if pattern.search(text):
            return kind
    return None


class Libp2pLogRouter(logging.Handler):
    """The handler on the `libp2p` logger: expected events demoted to DEBUG and counted, every
    record then handed to the root logger's handlers if the root logger's level lets it pass."""

    def __init__(self, threshold: int = logging.WARNING) -> None:
        super().__init__()
        self.threshold = threshold
        """Records below it are dropped: a libp2p module that sets its own logger to INFO (the
        auto-connector does) does not fill our logs with its chatter."""
        self._counts = {kind: 0 for kind, _ in EXPECTED_LIBP2P_EVENTS}
        self._counts_lock = threading.Lock()

    def get_counts(self) -> dict[str, int]:
        """Expected events seen so far, per kind (every kind, zeros included)."""
        with self._counts_lock:
            return dict(self._counts)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.threshold:
            return
        try:
            kind = classify_libp2p_record(record)
            if kind is not None:
                with self._counts_lock:
                    self._counts[kind] += 1
                _demote(record, kind)
        except Exception:  # a record whose message cannot be formatted: logging's own report
            self.handleError(record)
            return
        root = logging.getLogger()
        if record.levelno >= root.getEffectiveLevel():
            root.handle(record)


def _demote(record: logging.LogRecord, kind: str) -> None:
    """Make `record` one DEBUG line: `expected libp2p event (kind): message[: exception]`."""
    text = " ".join(record.getMessage().split())  # libp2p's multi-line reports on one line
    if record.exc_info and record.exc_info[1] is not None:
        err = record.exc_info[1]
        text += f": {type(err).__name__}: {err}"
    record.msg, record.args = "expected libp2p event (%s): %s", (kind, text)
    record.exc_info, record.exc_text, record.stack_info = None, None, None
    record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)


def route_libp2p_logs(level: int | None = None) -> Libp2pLogRouter:
    """Route the `libp2p` loggers through a `Libp2pLogRouter` (installed once; the same router is
    returned on later calls). `level` is the least level of libp2p records we take: WARNING, or
    what LIBP2P_DEBUG asked libp2p for when it is set."""
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER)
    routers = [h for h in libp2p_logger.handlers if isinstance(h, Libp2pLogRouter)]
    router = routers[0] if routers else Libp2pLogRouter()
    libp2p_logger.handlers[:] = [router]
    libp2p_logger.propagate = False  # the router hands records on; propagating would log them twice
    if level is None:
        level = (libp2p_logger.level if os.environ.get("LIBP2P_DEBUG") else 0) or logging.WARNING
    libp2p_logger.setLevel(level)
    router.threshold = level
    return router
