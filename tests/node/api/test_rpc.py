"""JSON-RPC server and client end to end over real HTTP on 127.0.0.1, against a real engine.

The engine is `node.engine.Engine` on a `ChainStore` in memory and a `SimNetworkHub` network; it
is built but not run (the RPC reads the store and admits transactions to the mempools). HTTP
calls are blocking stdlib calls made in a worker thread, each with a socket timeout.
"""

from __future__ import annotations

import base64
import http.client
import json
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import pytest
import trio
from click.testing import CliRunner

from chain import codec
from chain.crypto import PrivateKey, format_address, save_key
from chain.errors import ConfigError
from chain.kv import MemoryKV
from chain.payloads import Stake, Transfer, Unstake
from chain.store import ChainStore
from chain.types import CHAIN_PARAMETER, CHAIN_REWARD, Transaction
from consensus.mempool import Outcome
from genesis.history import ChainHistory
from genesis.testkit import account_keys, make_pact, sign_tx, validator_keys
from node.api.chain_methods import REFUSAL_CODES
from node.api.client import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    RATE_LIMITED,
    TX_FAILS_STATE,
    TX_INVALID,
    TX_NONCE_GAP,
    TX_NONCE_TAKEN,
    TX_NONCE_TOO_LOW,
    TX_REFUSED,
    RPCAuthError,
    RPCClient,
    RPCError,
    RPCUnavailable,
)
from node.api.config import COOKIE_FILE, RPCConfig
from node.api.methods import METHODS
from node.api.server import RPCLimits, RPCServer
from node.app.config import CONFIG_FILE, NODE_INFO_FILE, NodeConfig, save_config
from node.cli.connect import find_rpc
from node.cli.remote import register
from node.engine.config import EngineConfig
from node.engine.engine import Engine
from p2p.sim import SimNetworkHub

HTTP_TIMEOUT_S = 10.0
TEST_DEADLINE_S = 30.0
FUNDED = 1_000_000
UNFUNDED = account_keys(1, "rpc-unfunded")[0]
"""An account the genesis gives nothing."""


@dataclass
class Node:
    url: str
    data_dir: Path
    engine: Engine
    server: RPCServer
    cancel: trio.CancelScope

    @property
    def cookie_path(self) -> Path:
        return self.data_dir / COOKIE_FILE

    def client(self) -> RPCClient:
        return RPCClient(self.url, self.cookie_path, timeout=HTTP_TIMEOUT_S)

    def auth(self) -> str:
        return "Basic " + base64.b64encode(self.cookie_path.read_bytes()).decode()


def http_request(url: str, method: str, path: str, body: bytes = b"",
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_S)
    try:
        conn.request(method, path, body=body if method == "POST" else None, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


async def post(node: Node, body: bytes, auth: str | None = "cookie") -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth == "cookie":
        headers["Authorization"] = node.auth()
    elif auth is not None:
        headers["Authorization"] = auth
    status, raw = await trio.to_thread.run_sync(http_request, node.url, "POST", "/", body, headers)
    return status, (json.loads(raw) if raw and raw[:1] in b"[{" else raw)


async def call(node: Node, method: str, params: Any = None) -> Any:
    client = node.client()
    return await trio.to_thread.run_sync(client.call, method, params)


async def call_error(node: Node, method: str, params: Any = None) -> RPCError:
    with pytest.raises(RPCError) as info:
        await call(node, method, params)
    return info.value


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
        yield n


@asynccontextmanager
async def running_node(tmp_path: Path, limits: RPCLimits) -> AsyncIterator[Node]:
    validators = validator_keys(1)
    sender = account_keys(1)[0]
    pact = make_pact(validators, accounts=[(sender.address, FUNDED)])
    store = ChainStore.open(MemoryKV(), pact)
    async with SimNetworkHub(seed=1) as hub:
        net = hub.add_node("node-0")
        hub.add_node("node-1")
        engine = Engine(store, validators[0], net, net, EngineConfig.for_tests())
        server = RPCServer(engine, tmp_path, RPCConfig(port=0), metrics_text=lambda: b"blyan_up 1\n",
                           limits=limits)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(TEST_DEADLINE_S):
                url = await nursery.start(server.serve)
            with trio.fail_after(TEST_DEADLINE_S):
                yield Node(url, tmp_path, engine, server, nursery.cancel_scope)
            nursery.cancel_scope.cancel()


def transfer_hex(node: Node, nonce: int = 0, amount: int = 5) -> tuple[str, str]:
    sender = account_keys(1)[0]
    to = account_keys(2)[1].address
    tx = sign_tx(sender, node.engine.network_id, CHAIN_REWARD, nonce, Transfer(to, amount))
    return codec.encode(tx).hex(), tx.hash().hex()


# --- authentication and the cookie ------------------------------------------------------------


async def test_cookie_is_private_and_removed_at_shutdown(tmp_path: Path) -> None:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
            mode = stat.S_IMODE(n.cookie_path.stat().st_mode)
            assert mode == 0o600
            user, secret = n.cookie_path.read_text().split(":")
            assert user == "__cookie__" and len(secret) == 64
            n.cancel.cancel()
    assert not (tmp_path / COOKIE_FILE).exists()


async def test_invalid_auth_missing_or_wrong_cookie(node: Node) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"blyan_status"}'
    status, _ = await post(node, body, auth=None)
    assert status == 401
    wrong = "Basic " + base64.b64encode(b"__cookie__:" + b"0" * 64).decode()
    status, _ = await post(node, body, auth=wrong)
    assert status == 401
    status, _ = await post(node, body, auth="Basic !!!")
    assert status == 401
    bad = RPCClient(node.url, node.data_dir / "missing-cookie", timeout=HTTP_TIMEOUT_S)
    with pytest.raises(RPCAuthError):
        await trio.to_thread.run_sync(bad.call, "blyan_status", None)
    (node.data_dir / "other-cookie").write_text("__cookie__:" + "1" * 64)
    bad = RPCClient(node.url, node.data_dir / "other-cookie", timeout=HTTP_TIMEOUT_S)
    with pytest.raises(RPCAuthError):
        await trio.to_thread.run_sync(bad.call, "blyan_status", None)


async def test_client_reports_no_node(tmp_path: Path) -> None:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
            url = n.url
            n.cancel.cancel()
    (tmp_path / COOKIE_FILE).write_text("__cookie__:x")
    client = RPCClient(url, tmp_path / COOKIE_FILE, timeout=HTTP_TIMEOUT_S)
    with pytest.raises(RPCUnavailable):
        await trio.to_thread.run_sync(client.call, "blyan_status", None)


# --- JSON-RPC errors --------------------------------------------------------------------------


async def test_invalid_json_is_parse_error(node: Node) -> None:
    status, reply = await post(node, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert status == 200
    assert reply["error"]["code"] == PARSE_ERROR and reply["id"] is None


async def test_invalid_oversized_body_is_413(node: Node) -> None:
    big = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "blyan_status", "pad": "x" * 70_000}).encode()
    status, reply = await post(node, big)
    assert status == 413
    assert reply["error"]["code"] == INVALID_REQUEST


async def test_invalid_request_shapes(node: Node) -> None:
    for body in (b"1", b'{"id": 1, "method": "blyan_status"}', b'{"jsonrpc":"2.0","id":1,"method":7}',
                 b'{"jsonrpc":"2.0","id":1,"method":"blyan_status","params":"x"}',
                 b'{"jsonrpc":"2.0","id":true,"method":"blyan_status"}', b"[]"):
        status, reply = await post(node, body)
        assert status == 200, body
        assert reply["error"]["code"] == INVALID_REQUEST, body


async def test_unknown_method(node: Node) -> None:
    err = await call_error(node, "blyan_nope")
    assert err.code == METHOD_NOT_FOUND


async def test_invalid_params(node: Node) -> None:
    cases = [
        ("blyan_getBlock", ["moon", 0]),
        ("blyan_getBlock", ["reward", -1]),
        ("blyan_getBlock", ["reward", "zz"]),
        ("blyan_getBlock", {"chain": "reward"}),
        ("blyan_getAccount", ["bly1nothex"]),
        ("blyan_getAccount", {"addr": "x"}),
        ("blyan_status", [1]),
        ("blyan_getTransaction", ["reward", "00" * 31]),
        ("blyan_sendTransaction", ["not hex"]),
    ]
    for method, params in cases:
        err = await call_error(node, method, params)
        assert err.code == INVALID_PARAMS, (method, params, err)


async def test_invalid_transaction_encoding_names_the_field(node: Node) -> None:
    tx_hex, _ = transfer_hex(node)
    err = await call_error(node, "blyan_sendTransaction", [tx_hex + "00"])
    assert err.code == INVALID_PARAMS and "reason" in err.data
    err = await call_error(node, "blyan_sendTransaction", ["9100"])
    assert err.code == INVALID_PARAMS and "field" in err.data


async def test_invalid_deeply_nested_json(node: Node) -> None:
    status, reply = await post(node, b"[" * 30_000 + b"]" * 30_000)
    assert status == 200 and reply["error"]["code"] == PARSE_ERROR


async def test_internal_error_is_32603(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(node.engine.network, "peers", broken)
    err = await call_error(node, "blyan_peers")
    assert err.code == INTERNAL_ERROR and "boom" not in err.message
    assert (await call(node, "rpc.discover"))["methods"], "the server keeps serving"

async def test_notification_gets_no_reply(node: Node) -> None:
    status, reply = await post(node, b'{"jsonrpc":"2.0","method":"blyan_status"}')
    assert status == 204 and reply == b""


# --- methods ----------------------------------------------------------------------------------


async def test_status(node: Node) -> None:
    status = await call(node, "blyan_status")
    assert status["network"] == node.engine.network_id
    assert status["node_id"] == "node-0"
    assert status["address"] == format_address(node.engine.address)
    assert status["is_validator"] is True and status["syncing"] is False
    assert status["peers"] == len(node.engine.network.peers())
    assert set(status["chains"]) == {"parameter", "dataset", "reward"}
    reward = status["chains"]["reward"]
    assert reward["height"] == 0 and reward["head"] == node.engine.store.head(CHAIN_REWARD).hex()


async def test_get_block_of_genesis_by_height_and_hash(node: Node) -> None:
    block = await call(node, "blyan_getBlock", ["reward", 0])
    assert block["hash"] == node.engine.store.head(CHAIN_REWARD).hex()
    assert block["header"]["height"] == 0 and block["header"]["chain_id"] == CHAIN_REWARD
    assert len(block["header"]["state_root"]) == 64 and block["txs"] == []
    same = await call(node, "blyan_getBlock", {"chain": CHAIN_REWARD, "block": block["hash"]})
    assert same == block
    assert await call(node, "blyan_getBlock", ["reward", 5]) is None


async def test_send_transaction_then_pending(node: Node) -> None:
    tx_hex, tx_hash = transfer_hex(node)
    assert await call(node, "blyan_getTransaction", ["reward", tx_hash]) == {"status": "unknown"}
    result = await call(node, "blyan_sendTransaction", [tx_hex])
    assert result == {"accepted": True, "outcome": "added", "reason": "", "tx_hash": tx_hash}
    pending = {"status": "pending", "chain": "reward"}
    assert await call(node, "blyan_getTransaction", {"chain": "reward", "hash": tx_hash}) == pending
    assert await call(node, "blyan_getTransaction", [tx_hash]) == pending
    assert await call(node, "blyan_getTransaction", {"hash": tx_hash}) == pending
    again = await call(node, "blyan_sendTransaction", [tx_hex])
    assert again["accepted"] is False and again["outcome"] == "duplicate"


# --- refusals: a transaction that cannot be final is an error naming why -----------------------


def signed_hex(key: PrivateKey, network: str, nonce: int, payload: object, chain_id: int = CHAIN_REWARD) -> str:
    return codec.encode(sign_tx(key, network, chain_id, nonce, payload)).hex()


async def refusal(node: Node, tx_hex: str) -> RPCError:
    err = await call_error(node, "blyan_sendTransaction", [tx_hex])
    assert err.code in TX_REFUSED and err.message.startswith("transaction refused: "), err
    assert err.data["reason"] in err.message and err.data["outcome"] in err.message
    assert bytes.fromhex(err.data["tx_hash"]) not in node.engine.mempools[CHAIN_REWARD]
    return err


def test_every_refusing_outcome_has_its_own_error_code() -> None:
    answers = {Outcome.ADDED, Outcome.DUPLICATE}
    assert set(REFUSAL_CODES) == set(Outcome) - answers
    assert set(REFUSAL_CODES.values()) == TX_REFUSED


async def test_send_transaction_refused_insufficient_balance(node: Node) -> None:
    to = account_keys(2)[1].address
    err = await refusal(node, signed_hex(UNFUNDED, node.engine.network_id, 0, Transfer(to, 5)))
    assert err.code == TX_FAILS_STATE and "balance 0 below 5" in err.message
    assert err.data["outcome"] == "fails against state"
    assert len(node.engine.mempools[CHAIN_REWARD]) == 0


async def test_send_transaction_refused_insufficient_stake(node: Node) -> None:
    sender = account_keys(1)[0]
    err = await refusal(node, signed_hex(sender, node.engine.network_id, 0, Unstake(1)))
    assert err.code == TX_FAILS_STATE and "stake 0 below 1" in err.message
    err = await refusal(node, signed_hex(sender, node.engine.network_id, 0, Stake(FUNDED + 1)))
    assert err.code == TX_FAILS_STATE and f"balance {FUNDED} below {FUNDED + 1}" in err.message


async def test_send_transaction_refused_nonce_too_low(node: Node) -> None:
    sender = account_keys(1)[0]
    to = account_keys(2)[1].address
    ChainHistory(node.engine.store, validator_keys(1)).advance(
        CHAIN_REWARD, [sign_tx(sender, node.engine.network_id, CHAIN_REWARD, 0, Transfer(to, 1))])
    err = await refusal(node, signed_hex(sender, node.engine.network_id, 0, Transfer(to, 2)))
    assert err.code == TX_NONCE_TOO_LOW and "next nonce is 1" in err.message


async def test_send_transaction_refused_nonce_gap(node: Node) -> None:
    sender = account_keys(1)[0]
    gap = node.engine.config.mempool.max_nonce_gap
    to = account_keys(2)[1].address
    err = await refusal(node, signed_hex(sender, node.engine.network_id, gap, Transfer(to, 1)))
    assert err.code == TX_NONCE_GAP and f"at most {gap - 1}" in err.message
    within = await call(node, "blyan_sendTransaction", [signed_hex(sender, node.engine.network_id, gap - 1,
                                                                   Transfer(to, 1))])
    assert within["accepted"] is True


async def test_send_transaction_refused_nonce_taken(node: Node) -> None:
    tx_hex, tx_hash = transfer_hex(node, nonce=0, amount=5)
    assert (await call(node, "blyan_sendTransaction", [tx_hex]))["accepted"]
    other_hex, _ = transfer_hex(node, nonce=0, amount=6)
    err = await refusal(node, other_hex)
    assert err.code == TX_NONCE_TAKEN and tx_hash in err.message


async def test_send_transaction_refused_bad_signature_or_other_network(node: Node) -> None:
    sender = account_keys(1)[0]
    to = account_keys(2)[1].address
    err = await refusal(node, signed_hex(sender, "another-network", 0, Transfer(to, 1)))
    assert err.code == TX_INVALID and "bad signature" in err.message
    assert repr(node.engine.network_id) in err.message
    tx = sign_tx(sender, node.engine.network_id, CHAIN_REWARD, 0, Transfer(to, 1))
    forged = Transaction(tx.body, bytes(63) + b"\x01")
    err = await refusal(node, codec.encode(forged).hex())
    assert err.code == TX_INVALID and "bad signature" in err.message


async def test_send_transaction_refused_wrong_chain(node: Node) -> None:
    sender = account_keys(1)[0]
    to = account_keys(2)[1].address
    err = await call_error(node, "blyan_sendTransaction",
                           [signed_hex(sender, node.engine.network_id, 0, Transfer(to, 1), CHAIN_PARAMETER)])
    assert err.code == TX_INVALID and "Transfer is not a parameter payload" in err.message
    err = await call_error(node, "blyan_sendTransaction",
                           [signed_hex(sender, node.engine.network_id, 0, Transfer(to, 1), 7)])
    assert err.code == TX_INVALID and "unknown chain 7" in err.message


async def test_get_transaction_by_hash_alone_finds_final_on_its_chain(node: Node) -> None:
    sender = account_keys(1)[0]
    tx = sign_tx(sender, node.engine.network_id, CHAIN_REWARD, 0, Transfer(account_keys(2)[1].address, 1))
    block, _ = ChainHistory(node.engine.store, validator_keys(1)).advance(CHAIN_REWARD, [tx])
    final = {"status": "final", "chain": "reward", "height": block.header.height, "index": 0}
    assert await call(node, "blyan_getTransaction", [tx.hash().hex()]) == final
    assert await call(node, "blyan_getTransaction", ["reward", tx.hash().hex()]) == final  # older order
    assert await call(node, "blyan_getTransaction", [tx.hash().hex(), "reward"]) == final
    assert await call(node, "blyan_getTransaction", {"hash": tx.hash().hex(), "chain": "dataset"}) == {
        "status": "unknown"}
    assert await call(node, "blyan_getTransaction", ["00" * 32]) == {"status": "unknown"}


async def test_get_transaction_invalid_params(node: Node) -> None:
    for params in ([], [None], ["zz"], [5], {"chain": "reward"}, ["00" * 32, "moon"], [["x"], {"y": 1}],
                   ["reward", "reward"]):
        err = await call_error(node, "blyan_getTransaction", params)
        assert err.code == INVALID_PARAMS, (params, err)


async def test_get_account(node: Node) -> None:
    sender = account_keys(1)[0]
    account = await call(node, "blyan_getAccount", [format_address(sender.address)])
    assert account["balance"] == FUNDED and account["stake"] == 0 and account["unbonding"] == 0
    assert account["nonces"]["reward"] == {"nonce": 0, "next_nonce": 0}
    tx_hex, _ = transfer_hex(node)
    await call(node, "blyan_sendTransaction", [tx_hex])
    account = await call(node, "blyan_getAccount", {"address": format_address(sender.address)})
    assert account["nonces"]["reward"] == {"nonce": 0, "next_nonce": 1}
    validator = await call(node, "blyan_getAccount", [format_address(node.engine.address)])
    assert validator["stake"] > 0


async def test_peers(node: Node) -> None:
    peers = await call(node, "blyan_peers")
    assert peers == [{"id": p} for p in node.engine.network.peers()]


async def test_discover_lists_every_method(node: Node) -> None:
    doc = await call(node, "rpc.discover")
    assert doc["openrpc"].startswith("1.2")
    assert {m["name"] for m in doc["methods"]} == set(METHODS)
    get_block = next(m for m in doc["methods"] if m["name"] == "blyan_getBlock")
    assert [p["name"] for p in get_block["params"]] == ["chain", "block"]


async def test_batch(node: Node) -> None:
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "blyan_status"},
        {"jsonrpc": "2.0", "id": "b", "method": "blyan_nope"},
        {"jsonrpc": "2.0", "method": "blyan_peers"},
        5,
    ]
    status, reply = await post(node, json.dumps(batch).encode())
    assert status == 200 and len(reply) == 3
    by_id = {r["id"]: r for r in reply}
    assert by_id[1]["result"]["network"] == node.engine.network_id
    assert by_id["b"]["error"]["code"] == METHOD_NOT_FOUND
    assert by_id[None]["error"]["code"] == INVALID_REQUEST
    too_big = [{"jsonrpc": "2.0", "id": i, "method": "blyan_peers"} for i in range(11)]
    status, reply = await post(node, json.dumps(too_big).encode())
    assert reply["error"]["code"] == INVALID_REQUEST


async def test_rate_limit_is_429(tmp_path: Path) -> None:
    limits = RPCLimits(rate_per_s=0.001, burst=3)
    async with running_node(tmp_path, limits) as n:
        body = b'{"jsonrpc":"2.0","id":1,"method":"blyan_peers"}'
        statuses = [(await post(n, body))[0] for _ in range(3)]
        assert statuses == [200, 200, 200]
        status, reply = await post(n, body)
        assert status == 429 and reply["error"]["code"] == RATE_LIMITED
        with pytest.raises(RPCError) as info:
            await call(n, "blyan_peers")
        assert info.value.code == RATE_LIMITED


async def test_metrics_and_health(node: Node) -> None:
    status, body = await trio.to_thread.run_sync(http_request, node.url, "GET", "/metrics")
    assert status == 200 and body == b"blyan_up 1\n"
    status, body = await trio.to_thread.run_sync(http_request, node.url, "GET", "/health")
    assert status == 200 and body == b"ok\n"
    status, _ = await trio.to_thread.run_sync(http_request, node.url, "GET", "/")
    assert status == 405


async def test_metrics_absent_is_404(tmp_path: Path) -> None:
    async with running_node(tmp_path, RPCLimits.for_tests()) as n:
        n.server.metrics_text = None
        status, _ = await trio.to_thread.run_sync(http_request, n.url, "GET", "/metrics")
        assert status == 404


# --- the CLI verbs over RPC -------------------------------------------------------------------


def make_cli() -> click.Group:
    @click.group()
    def main() -> None:
        """Test group."""

    register(main)
    return main


async def run_cli(*args: str) -> tuple[int, str, str]:
    def invoke() -> tuple[int, str, str]:
        result = CliRunner().invoke(make_cli(), list(args))
        return result.exit_code, result.stdout, result.stderr

    return await trio.to_thread.run_sync(invoke)


def rpc_args(node: Node) -> list[str]:
    return ["--rpc", node.url, "--cookie", str(node.cookie_path)]


async def test_cli_status_and_block(node: Node) -> None:
    code, out, err = await run_cli("status", *rpc_args(node), "--json")
    assert code == 0, err
    assert json.loads(out)["network"] == node.engine.network_id
    code, out, err = await run_cli("status", *rpc_args(node))
    assert code == 0 and "validator" in out and "reward" in out, err
    code, out, err = await run_cli("block", "get", "--chain", "reward", "--height", "0", *rpc_args(node), "--json")
    assert code == 0, err
    assert json.loads(out)["hash"] == node.engine.store.head(CHAIN_REWARD).hex()
    code, out, err = await run_cli("block", "get", "--chain", "reward", "--height", "9", *rpc_args(node))
    assert code == 1 and "no reward block 9" in err


async def test_cli_transfer_stake_and_account(node: Node, tmp_path: Path) -> None:
    sender = account_keys(1)[0]
    key_file = tmp_path / "sender.key"
    save_key(sender, key_file)
    to = format_address(account_keys(2)[1].address)
    code, out, err = await run_cli("tx", "transfer", "--to", to, "--amount", "7", "--key", str(key_file),
                                   *rpc_args(node), "--json")
    assert code == 0, err
    sent = json.loads(out)
    assert sent["accepted"] is True and sent["nonce"] == 0
    assert sent["tx_hash"].encode() and bytes.fromhex(sent["tx_hash"]) in node.engine.mempools[CHAIN_REWARD]
    code, out, err = await run_cli("stake", "--amount", "100", "--key", str(key_file), *rpc_args(node))
    assert code == 0 and "nonce 1" in out, err
    code, out, err = await run_cli("account", format_address(sender.address), *rpc_args(node), "--json")
    assert code == 0, err
    assert json.loads(out)["nonces"]["reward"] == {"nonce": 0, "next_nonce": 2}
    code, out, err = await run_cli("unstake", "--amount", "1", "--key", str(key_file), *rpc_args(node))
    assert code == 0 and "accepted" in out, err


async def test_cli_transfer_refused_exits_nonzero_with_the_reason(node: Node, tmp_path: Path) -> None:
    key_file = tmp_path / "unfunded.key"
    save_key(UNFUNDED, key_file)
    to = format_address(account_keys(2)[1].address)
    code, out, err = await run_cli("tx", "transfer", "--to", to, "--amount", "5", "--key", str(key_file),
                                   *rpc_args(node))
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("error: transaction refused: fails against state: balance 0 below 5") and "nonce 0" in err
    code, out, err = await run_cli("unstake", "--amount", "1", "--key", str(key_file), *rpc_args(node), "--json")
    assert code == 1 and "stake 0 below 1" in err, (code, out, err)
    assert len(node.engine.mempools[CHAIN_REWARD]) == 0


async def test_cli_finds_node_by_data_dir(node: Node) -> None:
    save_config(NodeConfig.for_tests(), node.data_dir / CONFIG_FILE)
    (node.data_dir / NODE_INFO_FILE).write_text(json.dumps({"rpc": node.url}))
    assert find_rpc(node.data_dir) == (node.url, node.cookie_path)
    code, out, err = await run_cli("status", "--data-dir", str(node.data_dir), "--json")
    assert code == 0, err
    (node.data_dir / NODE_INFO_FILE).unlink()
    assert find_rpc(node.data_dir) == ("http://127.0.0.1:0", node.cookie_path)


async def test_cli_invalid_cookie_and_no_node(node: Node, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong.cookie"
    wrong.write_text("__cookie__:" + "2" * 64)
    code, out, err = await run_cli("status", "--rpc", node.url, "--cookie", str(wrong))
    assert code == 1 and err.startswith("error: ") and "refused the cookie" in err
    assert "Traceback" not in err
    code, out, err = await run_cli("status", "--rpc", "http://127.0.0.1:1", "--cookie", str(node.cookie_path))
    assert code == 1 and "no node answers" in err and "Traceback" not in err
    code, out, err = await run_cli("account", "bly1zz", *rpc_args(node))
    assert code == 2 and "not an address" in err


async def test_invalid_port_in_use_is_config_error(node: Node, tmp_path: Path) -> None:
    port = urlsplit(node.url).port
    other = RPCServer(node.engine, tmp_path / "other", RPCConfig(port=port))
    (tmp_path / "other").mkdir()
    async with trio.open_nursery() as nursery:
        with pytest.raises(ConfigError, match="cannot serve RPC on .*Address already in use"):
            await nursery.start(other.serve)
    assert not (tmp_path / "other" / COOKIE_FILE).exists()

