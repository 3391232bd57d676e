"""The node's JSON-RPC 2.0 server: HTTP on loopback, authenticated by a cookie file (as bitcoind).

At start the server writes `DATA_DIR/.cookie` (mode 0600) holding `__cookie__:<random token>`;
a client proves it may read the data dir by sending that line as HTTP Basic credentials. The
file is removed at shutdown. Routes:

    POST /         JSON-RPC (single call or batch); Basic auth; rate-limited per client address
    GET  /metrics  Prometheus text (no auth); 404 when the node has no metrics
    GET  /health   "ok" (no auth)

Transport failures get HTTP codes with a JSON-RPC error body: 401 (no or wrong cookie), 413
(body over `max_body_bytes`), 429 (rate limit, code -32005). Everything else answers 200 with
JSON-RPC errors: -32700 malformed JSON or a body that is not UTF-8 (RFC 8259 §8.1), -32600
invalid request (or batch empty / too big), -32601 unknown method, -32602 bad params, -32603
internal error. The methods live in `node.api.methods` (declared with `node.api.params`, grouped
by domain in `chain_methods` and `expert_methods`). A client that goes away before its request
is read is logged at DEBUG.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import inspect
import json
import logging
import os
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import hypercorn.trio
import trio
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from chain.errors import ConfigError
from node.api.client import (
    COOKIE_USER,
    INTERNAL_ERROR,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RATE_LIMITED,
    RPCError,
)
from node.api.config import COOKIE_FILE, RPCConfig
from node.api.methods import METHODS
from node.api.params import SERVICE_UNAVAILABLE, bind_params
from node.api.services import DataAPI, ExpertsAPI, PolAPI, Services, SnapshotsAPI, SubmissionsAPI, SyncStatus
from node.core.ports import NodeHandle

logger = logging.getLogger(__name__)

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class RPCLimits:
    """Bounds on what one client can make the server do."""

    max_body_bytes: int = 1024 * 1024
    """Largest request body; beyond it HTTP 413."""
    max_batch: int = 100
    """Most calls in one batch."""
    rate_per_s: float = 50.0
    """Calls per second a client address earns (token bucket refill)."""
    burst: float = 200.0
    """Calls a client address may make at once (token bucket size)."""
    max_clients: int = 1024
    """Client addresses tracked by the rate limiter; the oldest is forgotten beyond."""
    read_timeout_s: float = 10.0
    """A connection that sends nothing for this long is closed."""

    @classmethod
    def for_tests(cls) -> RPCLimits:
        return cls(max_body_bytes=64 * 1024, max_batch=10, rate_per_s=1.0, burst=1000.0)


class TokenBucket:
    """Per-key token buckets on `trio.current_time()`; bounded in the number of keys."""

    def __init__(self, rate_per_s: float, burst: float, max_keys: int) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, cost: float, now: float) -> bool:
        """Spend `cost` tokens of `key` if it has them."""
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate_per_s)
        allowed = tokens >= cost
        if allowed:
            tokens -= cost
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed


def error_response(code: int, message: str, request_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "error": {"code": code, "message": message}}


def _is_valid_id(value: Any) -> bool:
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def write_cookie(path: Path, secret: str) -> None:
    """Write `__cookie__:<secret>` to `path`, mode 0600, atomically (temp file, fsync, rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{COOKIE_USER}:{secret}")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class RPCServer:
    """JSON-RPC for one node; `await nursery.start(server.serve)` returns the bound URL."""

    def __init__(
        self,
        node: NodeHandle,
        data_dir: Path,
        config: RPCConfig,
        metrics_text: Callable[[], bytes] | None = None,
        limits: RPCLimits | None = None,
        experts: ExpertsAPI | None = None,
        sync: SyncStatus | None = None,
        pol: PolAPI | None = None,
        submissions: SubmissionsAPI | None = None,
        snapshots: SnapshotsAPI | None = None,
        data: DataAPI | None = None,
    ) -> None:
        self.services = Services(node, experts, sync, pol, submissions, snapshots, data)
        """What the methods' handlers are given; `Method.target` names the one each needs."""
        self.cookie_path = Path(data_dir) / COOKIE_FILE
        self.config = config
        self.metrics_text = metrics_text
        self.limits = limits or RPCLimits()
        self.url: str | None = None
        self._secret = secrets.token_hex(32)
        self._expected = f"{COOKIE_USER}:{self._secret}".encode()
        self._rate = TokenBucket(self.limits.rate_per_s, self.limits.burst, self.limits.max_clients)
        self.app = Starlette(routes=[
            Route("/", self._on_rpc, methods=["POST"]),
            Route("/metrics", self._on_metrics, methods=["GET"]),
            Route("/health", self._on_health, methods=["GET"]),
        ])

    # --- running ----------------------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Write the cookie, listen, report the URL; on exit (cancellation) remove the cookie."""
        host, port = self.config.host, self.config.port
        if host not in LOOPBACK_HOSTS:
            logger.warning("RPC listens on %s, not loopback: anyone who can reach it may try the cookie", host)
        hconfig = HypercornConfig()
        hconfig.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
        hconfig.accesslog = None
        hconfig.errorlog = logging.getLogger("hypercorn.error")
        hconfig.read_timeout = int(self.limits.read_timeout_s)
        write_cookie(self.cookie_path, self._secret)
        try:
            async with trio.open_nursery() as nursery:
                binds = await nursery.start(partial(hypercorn.trio.serve, self.app, hconfig))
                self.url = binds[0]
                logger.info("RPC on %s, cookie %s", self.url, self.cookie_path)
                task_status.started(self.url)
        except* OSError as group:
            first = group
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            raise ConfigError(f"cannot serve RPC on {host}:{port}: {first}") from group
        finally:
            self._remove_cookie()

    def _remove_cookie(self) -> None:
        try:
            if self.cookie_path.read_bytes() == self._expected:
                self.cookie_path.unlink()
        except OSError:
            pass

    # --- HTTP -------------------------------------------------------------------------------

    def _is_authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            given = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(given, self._expected)

    def _json(self, body: Any, status: int = 200) -> Response:
        return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json")

    async def _read_body(self, request: Request) -> bytes | None:
        """The body, or None when it is over the limit (the rest is not read)."""
        limit = self.limits.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def _client(self, request: Request) -> str:
        return request.client.host if request.client else "unknown"

    async def _on_rpc(self, request: Request) -> Response:
        client = self._client(request)
        if not self._rate.take(client, 1, trio.current_time()):
            return self._json(error_response(RATE_LIMITED, "rate limit exceeded"), 429)
        if not self._is_authorized(request.headers.get("authorization")):
            return Response("unauthorized\n", status_code=401, headers={"WWW-Authenticate": 'Basic realm="jsonrpc"'})
        try:
            body = await self._read_body(request)
        except ClientDisconnect:  # it cannot read an answer: nothing to report but the fact
            logger.debug("RPC client %s disconnected before its request was read", client)
            return Response(status_code=400)
        if body is None:
            message = f"request body over {self.limits.max_body_bytes} bytes"
            return self._json(error_response(INVALID_REQUEST, message), 413)
        try:
            text = body.decode("utf-8")  # json.loads(bytes) would also take UTF-16 and UTF-32
        except UnicodeDecodeError:
            return self._json(error_response(PARSE_ERROR, "parse error: the body is not UTF-8"))
        try:
            payload = json.loads(text)
        except (ValueError, RecursionError):
            return self._json(error_response(PARSE_ERROR, "parse error: malformed JSON"))
        if not isinstance(payload, list):
            reply = await self._call(payload)
            return Response(status_code=204) if reply is None else self._json(reply)
        if not payload or len(payload) > self.limits.max_batch:
            return self._json(error_response(INVALID_REQUEST, f"a batch holds 1 to {self.limits.max_batch} calls"))
        if len(payload) > 1 and not self._rate.take(client, len(payload) - 1, trio.current_time()):
            return self._json(error_response(RATE_LIMITED, "rate limit exceeded"), 429)
        replies = [r for r in [await self._call(item) for item in payload] if r is not None]
        return self._json(replies) if replies else Response(status_code=204)

    async def _call(self, req: Any) -> dict[str, Any] | None:
        """One call's response; None for a valid notification (no id)."""
        if not isinstance(req, dict):
            return error_response(INVALID_REQUEST, "invalid request: not an object")
        request_id = req.get("id")
        if not _is_valid_id(request_id):
            return error_response(INVALID_REQUEST, "invalid request: id must be a string, an integer or null")
        if req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
            return error_response(INVALID_REQUEST, 'invalid request: needs "jsonrpc": "2.0" and a method', request_id)
        params = req.get("params")
        if params is not None and not isinstance(params, (list, dict)):
            return error_response(INVALID_REQUEST, "invalid request: params must be an array or an object", request_id)
        try:
            result = await self._dispatch(req["method"], params)
        except RPCError as err:
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "error": err.to_json()}
        except Exception:  # top of a request: log it, answer -32603, keep serving
            logger.exception("RPC %s failed", req["method"])
            reply = error_response(INTERNAL_ERROR, "internal error", request_id)
        else:
            reply = {"jsonrpc": "2.0", "id": request_id, "result": result}
        return None if "id" not in req else reply

    async def _dispatch(self, name: str, params: Any) -> Any:
        """Run a method's handler; an async handler (one that waits on the network) is awaited."""
        method = METHODS.get(name)
        if method is None:
            raise RPCError(METHOD_NOT_FOUND, f"method not found: {name}")
        args = bind_params(method, params)
        if self.services.get(method.target) is None:
            raise RPCError(SERVICE_UNAVAILABLE, f"{name}: the {method.target} service is not running on this node")
        result = method.handler(self.services, args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _on_metrics(self, request: Request) -> Response:
        if self.metrics_text is None:
            return PlainTextResponse("no metrics\n", status_code=404)
        return Response(self.metrics_text(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def _on_health(self, request: Request) -> Response:
        return PlainTextResponse("ok\n")
