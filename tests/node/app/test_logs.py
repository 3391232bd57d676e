"""`route_libp2p_logs`: py-libp2p's expected network events (failed dials, closed or reset
streams...) become one-line DEBUG records of ours, counted by kind and shown at /metrics; its
other warnings and errors keep their level."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.api.metrics import NodeMetrics
from node.app.logs import EXPECTED_LIBP2P_EVENTS, LIBP2P_LOGGER, Libp2pLogRouter, route_libp2p_logs


class StreamReset(Exception):
    """Stands for libp2p's exception of the same name (matched by its name)."""


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def router(caplog: pytest.LogCaptureFixture) -> Iterator[Libp2pLogRouter]:
    """A router on the `libp2p` logger, its previous set-up restored afterwards."""
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER)
    saved = (list(libp2p_logger.handlers), libp2p_logger.propagate, libp2p_logger.level)
    libp2p_logger.handlers.clear()
    caplog.set_level(logging.DEBUG)
    try:
        yield route_libp2p_logs()
    finally:
        libp2p_logger.handlers[:], libp2p_logger.propagate, libp2p_logger.level = saved


@pytest.fixture
def ours() -> Iterator[Collect]:
    """What reaches our handlers (the root logger's). Not caplog: pytest also attaches its capture
    handler straight to loggers that do not propagate, as `libp2p` is, past the router."""
    collect = Collect()
    logging.getLogger().addHandler(collect)
    try:
        yield collect
    finally:
        logging.getLogger().removeHandler(collect)


def libp2p_records(collect: Collect) -> list[logging.LogRecord]:
    return [r for r in collect.records if r.name.startswith("libp2p")]


def test_expected_dial_failure_is_debug_and_counted(router: Libp2pLogRouter, ours: Collect) -> None:
    logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: %s", "connection refused")
    [record] = libp2p_records(ours)
    assert record.levelno == logging.DEBUG and record.name == "libp2p.transport.tcp.tcp"
    assert record.getMessage() == "expected libp2p event (dial_failed): Failed to open TCP stream: connection refused"
    assert router.get_counts()["dial_failed"] == 1


def test_expected_multiline_report_becomes_one_line(router: Libp2pLogRouter, ours: Collect) -> None:
    logging.getLogger("libp2p.host.basic_host").error(
        "Failed to open stream to peer 12D3Koo:\n  Error: protocol not supported\n  Timeout: 30s")
    [record] = libp2p_records(ours)
    assert record.levelno == logging.DEBUG and "\n" not in record.getMessage()
    assert "stream_open_failed" in record.getMessage() and "protocol not supported" in record.getMessage()
    assert router.get_counts()["stream_open_failed"] == 1


def test_expected_exception_is_matched_by_its_type_and_loses_the_traceback(
        router: Libp2pLogRouter, ours: Collect) -> None:
    try:
        raise StreamReset("peer reset stream 3")
    except StreamReset:
        logging.getLogger("libp2p.stream_muxer.yamux").exception("Error in stream handler")
    [record] = libp2p_records(ours)
    assert record.levelno == logging.DEBUG and record.exc_info is None
    assert record.getMessage().endswith("Error in stream handler: StreamReset: peer reset stream 3")
    assert router.get_counts()["stream_reset"] == 1


def test_unexpected_libp2p_error_keeps_its_level(router: Libp2pLogRouter, ours: Collect) -> None:
    logging.getLogger("libp2p.network.swarm").error("Notifee %s.%s raised", "Watcher", "connected")
    [record] = libp2p_records(ours)
    assert record.levelno == logging.ERROR and record.getMessage() == "Notifee Watcher.connected raised"
    assert sum(router.get_counts().values()) == 0


def test_libp2p_chatter_below_warning_is_dropped(router: Libp2pLogRouter, ours: Collect) -> None:
    logging.getLogger("libp2p.pubsub.gossipsub").debug("heartbeat")
    logging.getLogger("libp2p.pubsub.gossipsub").info("mesh of 3")
    chatty = logging.getLogger("libp2p.network.auto_connector")
    saved = chatty.level
    chatty.setLevel(logging.INFO)  # as py-libp2p's auto-connector does to its own logger
    try:
        chatty.info("AUTO_CONNECTOR_STATE: num_connections=0")
    finally:
        chatty.setLevel(saved)
    assert libp2p_records(ours) == []


def test_demoted_event_is_hidden_at_info(router: Libp2pLogRouter, ours: Collect,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    logging.getLogger("libp2p.stream_muxer.yamux").error("Error reading data for stream 7: StreamEOF")
    assert libp2p_records(ours) == []
    assert router.get_counts()["stream_closed"] == 1


def test_route_is_installed_once(router: Libp2pLogRouter) -> None:
    assert route_libp2p_logs() is router
    libp2p_logger = logging.getLogger(LIBP2P_LOGGER)
    assert libp2p_logger.handlers == [router] and libp2p_logger.propagate is False
    assert set(router.get_counts()) == {kind for kind, _ in EXPECTED_LIBP2P_EVENTS}


def test_counted_events_appear_at_metrics(router: Libp2pLogRouter) -> None:
    for _ in range(3):
        logging.getLogger("libp2p.transport.tcp.tcp").error("Failed to open TCP stream: refused")
    text = NodeMetrics(libp2p_events=router.get_counts).render().decode()
    samples = {(s.name, s.labels.get("kind")): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("blyan_libp2p_expected_events_total", "dial_failed")] == 3
    assert samples[("blyan_libp2p_expected_events_total", "stream_reset")] == 0
