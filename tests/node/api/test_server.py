"""`RPCServer` against bodies and clients that misbehave at the transport (complements
test_rpc.py, whose node fixture it uses): a body that is not UTF-8 is a parse error, and a client
that hangs up mid-request is a DEBUG line, not a traceback."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import trio

from node.api.client import METHOD_NOT_FOUND, PARSE_ERROR
from node.api.server import RPCLimits
from tests.node.api.test_rpc import HTTP_TIMEOUT_S, TEST_DEADLINE_S, Node, post, running_node

CALL = {"jsonrpc": "2.0", "id": 1, "method": "blyan_status"}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
        yield n


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le"])
async def test_invalid_body_not_utf8_is_parse_error(node: Node, encoding: str) -> None:
    status, reply = await post(node, json.dumps(CALL).encode(encoding))
    assert status == 200
    assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None, reply


async def test_invalid_body_bytes_not_utf8_is_parse_error(node: Node) -> None:
    for body in (b'{"jsonrpc":"2.0","id":1,"method":"blyan_\xff"}', b"\xef\xbb\xbf" + json.dumps(CALL).encode()):
        status, reply = await post(node, body)
        assert status == 200 and reply["error"]["code"] == PARSE_ERROR, (body, reply)


async def test_utf8_body_with_non_ascii_is_parsed(node: Node) -> None:
    status, reply = await post(node, json.dumps({**CALL, "method": "blyan_é"}, ensure_ascii=False).encode())
    assert status == 200 and reply["error"]["code"] == METHOD_NOT_FOUND and "blyan_é" in reply["error"]["message"]


class Waiter(logging.Handler):
    """Sets a trio event when a record containing `text` is logged (from the trio thread)."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.DEBUG)
        self.text = text
        self.seen = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


def send_half_a_request_and_hang_up(target: Node) -> None:
    parts = urlsplit(target.url)
    with socket.create_connection((parts.hostname, parts.port), timeout=HTTP_TIMEOUT_S) as sock:
        head = (f"POST / HTTP/1.1\r\nHost: {parts.hostname}\r\nAuthorization: {target.auth()}\r\n"
                "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
        sock.sendall(head.encode() + b'{"jsonrpc": "2.0", "id": 1, ')


async def test_client_disconnect_mid_request_is_a_debug_line(node: Node, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="node.api.server")
    waiter = Waiter("disconnected before its request was read")
    logging.getLogger("node.api.server").addHandler(waiter)
    try:
        await trio.to_thread.run_sync(send_half_a_request_and_hang_up, node)
        with trio.fail_after(TEST_DEADLINE_S):
            await waiter.seen.wait()
        status, reply = await post(node, json.dumps(CALL).encode())  # the server goes on serving
        assert status == 200 and "result" in reply
    finally:
        logging.getLogger("node.api.server").removeHandler(waiter)
    [line] = [r for r in caplog.records if "disconnected" in r.getMessage()]
    assert line.levelno == logging.DEBUG and line.exc_info is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING or r.exc_info], caplog.text
    assert "Traceback" not in caplog.text and "ClientDisconnect" not in caplog.text
