"""The JSON-RPC client of the `blyan` CLI: stdlib only, synchronous, cookie-authenticated.

    status = RPCClient(url, cookie_path).call("blyan_status")

Errors are typed: `RPCError(code, message, data)` for a JSON-RPC error the node answered,
`RPCAuthError` when the cookie is missing or refused, `RPCUnavailable` when no node answers.
The error codes are shared with the server (`node.api.server`).
"""

from __future__ import annotations

import base64
import itertools
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from chain.errors import BlyanError

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
RATE_LIMITED = -32005
"""Too many requests from this client (HTTP 429)."""

# `blyan_sendTransaction` refusals: the transaction cannot be final from the node's state (the
# error's data names the mempool outcome, the reason and the transaction hash).
TX_INVALID = -32020
"""Malformed for its chain: wrong chain or payload, bad signature (or another network's), too large."""
TX_NONCE_TOO_LOW = -32021
"""The nonce is already used in the committed state."""
TX_NONCE_GAP = -32022
"""The nonce is too far ahead of the sender's committed nonce."""
TX_NONCE_TAKEN = -32023
"""Another pending transaction of the sender holds the nonce."""
TX_FAILS_STATE = -32024
"""The payload fails against the committed state: insufficient balance or stake, and the like."""
TX_POOL_FULL = -32025
"""The mempool, or the sender's share of it, is full."""
TX_REFUSED = frozenset({TX_INVALID, TX_NONCE_TOO_LOW, TX_NONCE_GAP, TX_NONCE_TAKEN, TX_FAILS_STATE, TX_POOL_FULL})
"""Every code with which a node refuses a transaction."""

COOKIE_USER = "__cookie__"
NODE_INFO_FILE = "node.json"
"""Written by the running daemon (`node.app.daemon`): holds the RPC URL actually bound."""
DEFAULT_TIMEOUT_S = 30.0
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class RPCError(BlyanError):
    """A JSON-RPC error: raised by methods on the server, re-raised by the client."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        self.code = code
        self.message = message
        self.data = data
        super().__init__(f"{message} (code {code})" if data is None else f"{message}: {data} (code {code})")

    def to_json(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            err["data"] = self.data
        return err


class RPCUnavailable(BlyanError):
    """No node answers at the RPC address (not running, wrong port)."""


class RPCAuthError(BlyanError):
    """The cookie is missing, unreadable or refused by the node (HTTP 401)."""


def load_cookie(path: Path) -> str:
    """The `user:password` line of a cookie file."""
    try:
        text = Path(path).read_text().strip()
    except OSError as err:
        raise RPCAuthError(
            f"cannot read the RPC cookie {path}: {err.strerror} (is the node running with this data dir?)"
        ) from err
    if ":" not in text:
        raise RPCAuthError(f"{path} is not an RPC cookie file")
    return text


class RPCClient:
    """Calls one node's JSON-RPC; each call opens one HTTP request (no connection pool)."""

    def __init__(self, url: str, cookie_path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url
        self.cookie_path = Path(cookie_path)
        self.timeout = timeout
        self._ids = itertools.count(1)

    def call(self, method: str, params: list | dict | None = None) -> Any:
        """The method's result; `RPCError` when the node answers with an error."""
        request_id = next(self._ids)
        payload: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
        if params is not None:
            payload["params"] = params
        reply = self.post(payload)
        if not isinstance(reply, dict) or reply.get("id") != request_id:
            raise RPCError(INTERNAL_ERROR, "malformed response from the node", reply)
        if "error" in reply:
            err = reply["error"]
            if not isinstance(err, dict):
                raise RPCError(INTERNAL_ERROR, "malformed error from the node", err)
            raise RPCError(int(err.get("code", INTERNAL_ERROR)), str(err.get("message", "")), err.get("data"))
        return reply.get("result")

    def post(self, payload: Any) -> Any:
        """POST any JSON (a request or a batch); the decoded reply, None for an empty one."""
        token = base64.b64encode(load_cookie(self.cookie_path).encode()).decode()
        request = urllib.request.Request(
            self.url, data=json.dumps(payload).encode(), method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Basic {token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310 - our own URL
                body = response.read(MAX_RESPONSE_BYTES + 1)
        except urllib.error.HTTPError as err:
            body = self._http_error_body(err)
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise RPCUnavailable(f"no node answers at {self.url}: {reason}") from err
        if len(body) > MAX_RESPONSE_BYTES:
            raise RPCError(INTERNAL_ERROR, "response from the node is too large")
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError as err:
            raise RPCError(PARSE_ERROR, "the node sent malformed JSON") from err

    def _http_error_body(self, err: urllib.error.HTTPError) -> bytes:
        if err.code == 401:
            raise RPCAuthError(f"the node at {self.url} refused the cookie {self.cookie_path}") from err
        body = err.read(MAX_RESPONSE_BYTES + 1)
        try:
            reply = json.loads(body)
        except ValueError:
            reply = None
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict):
            e = reply["error"]
            raise RPCError(int(e.get("code", INTERNAL_ERROR)), str(e.get("message", "")), e.get("data")) from err
        raise RPCError(INTERNAL_ERROR, f"HTTP {err.code} from {self.url}") from err
