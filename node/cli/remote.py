"""CLI verbs that talk to a running node over JSON-RPC: status, account, tx, stake, block, chat.

`register(main)` adds them to the `blyan` group. Every verb finds its node with `--data-dir DIR`
(the URL from the running daemon's node.json or config.toml, the cookie from DIR/.cookie) or
with `--rpc URL --cookie FILE`. Signing verbs sign with DIR/node.key or `--key FILE`, take the
next nonce from `blyan_getAccount` and submit with `blyan_sendTransaction`. Failures print one
`error: ...` line and exit 1.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from chain import codec
from chain.crypto import KIND_TX, PrivateKey, format_address, load_key, parse_address
from chain.errors import BlyanError
from chain.payloads import Stake, Transfer, Unstake
from chain.types import CHAIN_NAMES, CHAIN_REWARD, Transaction, TxBody
from node.api.client import TX_REFUSED, RPCClient, RPCError
from node.app.config import KEY_FILE
from node.cli.connect import find_rpc
from node.core.progress import format_progress


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2))


def rpc_options(fn: Callable) -> Callable:
    """`--data-dir` or `--rpc/--cookie`; passes `client` (an RPCClient) and `data_dir`."""

    @click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False),
                  help="Data directory of the node to ask (finds its RPC address and cookie).")
    @click.option("--rpc", "rpc_url", help="RPC URL, e.g. http://127.0.0.1:8645 (with --cookie).")
    @click.option("--cookie", type=click.Path(path_type=Path, dir_okay=False), help="RPC cookie file.")
    @functools.wraps(fn)
    def wrapper(data_dir: Path | None, rpc_url: str | None, cookie: Path | None, **kwargs: Any) -> None:
        try:
            client = make_client(data_dir, rpc_url, cookie)
            fn(client=client, data_dir=data_dir, **kwargs)
        except BlyanError as err:
            _fail(str(err))

    return wrapper


def make_client(data_dir: Path | None, rpc_url: str | None, cookie: Path | None) -> RPCClient:
    if rpc_url is not None:
        if cookie is None and data_dir is None:
            raise click.UsageError("--rpc needs --cookie (or --data-dir for its cookie)")
        return RPCClient(rpc_url, cookie if cookie is not None else find_rpc(data_dir)[1])
    if data_dir is None:
        raise click.UsageError("give --data-dir, or --rpc and --cookie")
    url, default_cookie = find_rpc(data_dir)
    return RPCClient(url, cookie or default_cookie)


def _address(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes | None:
    if value is None:
        return None
    try:
        return parse_address(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from err


def _signing_key(data_dir: Path | None, key_file: Path | None) -> PrivateKey:
    if key_file is None:
        if data_dir is None:
            raise click.UsageError("signing needs --key FILE or --data-dir (for its node.key)")
        key_file = data_dir / KEY_FILE
    return load_key(key_file)


def send_signed(client: RPCClient, key: PrivateKey, payload: object, chain_id: int = CHAIN_REWARD) -> dict:
    """Sign `payload` with the sender's next nonce and submit it; the node's answer. A refusal
    (the transaction cannot be final: insufficient balance, nonce, signature...) exits 1 with
    the node's message."""
    network = client.call("blyan_status")["network"]
    account = client.call("blyan_getAccount", [format_address(key.address)])
    nonce = account["nonces"][CHAIN_NAMES[chain_id]]["next_nonce"]
    body = TxBody(chain_id, key.public_key, nonce, payload)
    tx = Transaction(body, key.sign(network, KIND_TX, codec.encode(body)))
    try:
        result = client.call("blyan_sendTransaction", [codec.encode(tx).hex()])
    except RPCError as err:
        if err.code not in TX_REFUSED:
            raise
        _fail(f"{err.message} (tx {tx.hash().hex()}, nonce {nonce})")
    return {**result, "nonce": nonce}


def _print_sent(result: dict, as_json: bool) -> None:
    if as_json:
        _echo_json(result)
    elif result["accepted"]:
        click.echo(f"accepted {result['tx_hash']} (nonce {result['nonce']})")
    else:
        click.echo(f"not accepted: {result['outcome']}: {result['reason']} (tx {result['tx_hash']})")
    if not result["accepted"]:
        sys.exit(1)


def signing_options(fn: Callable) -> Callable:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the node's answer as JSON.")(fn)
    fn = click.option("--key", "key_file", type=click.Path(path_type=Path, dir_okay=False),
                      help="Key file to sign with (default: DATA_DIR/node.key).")(fn)
    return click.option("--amount", required=True, type=click.IntRange(min=1), help="Amount, > 0.")(fn)


def register(main: click.Group) -> None:
    """Add the RPC verbs to the `blyan` command group."""

    @main.command("status")
    @rpc_options
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    def status(client: RPCClient, data_dir: Path | None, as_json: bool) -> None:
        """The node's network, identity, peers and chain heads."""
        s = client.call("blyan_status")
        if as_json:
            _echo_json(s)
            return
        role = "validator" if s["is_validator"] else "node"
        click.echo(f"network {s['network']}  {role} {s['address']}  peers {s['peers']}"
                   + ("  (syncing)" if s["syncing"] else ""))
        sync = s.get("sync", {})
        for name, c in s["chains"].items():
            line = f"  {name:<10} height {c['height']:>8}  head {c['head'][:16]}"
            progress = sync.get(name)
            if progress and progress["target"] > progress["height"]:
                line += "  sync " + format_progress(progress["height"], progress["target"],
                                                    progress.get("blocks_per_s"))
            click.echo(line)

    @main.command("consensus")
    @rpc_options
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    def consensus(client: RPCClient, data_dir: Path | None, as_json: bool) -> None:
        """Where each chain's consensus stands: height, round, step, proposal, vote stake."""
        state = client.call("blyan_consensusState")
        if as_json:
            _echo_json(state)
            return
        for name, c in state.items():
            if not c["started"]:
                click.echo(f"  {name:<10} height {c['height']:>8}  idle (no work)")
                continue
            total = c["total_power"] or 1
            pv, pc = c["votes"]["prevote"], c["votes"]["precommit"]
            proposal = (c["proposal"] or "none yet")[:16]
            click.echo(f"  {name:<10} height {c['height']:>8}  round {c['round']}  {c['step']:<9}  "
                       f"proposal {proposal}  prevotes {pv['power'] / total:.0%}  "
                       f"precommits {pc['power'] / total:.0%}  ({c['voters_this_round']}/"
                       f"{c['validators']} validators heard this round)")

    @main.command("account")
    @click.argument("address", callback=_address)
    @rpc_options
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    def account(client: RPCClient, data_dir: Path | None, address: bytes, as_json: bool) -> None:
        """Balance, stake, unbonding and nonces of ADDRESS."""
        a = client.call("blyan_getAccount", [format_address(address)])
        if as_json:
            _echo_json(a)
            return
        click.echo(f"{a['address']}\n  balance    {a['balance']}\n  stake      {a['stake']}\n"
                   f"  unbonding  {a['unbonding']}")
        for name, n in a["nonces"].items():
            click.echo(f"  nonce {name:<10} {n['nonce']} (next {n['next_nonce']})")

    @main.group("tx")
    def tx() -> None:
        """Sign and send transactions."""

    @tx.command("transfer")
    @click.option("--to", "to", required=True, callback=_address, help="Recipient address (bly1...).")
    @signing_options
    @rpc_options
    def tx_transfer(client: RPCClient, data_dir: Path | None, to: bytes, amount: int,
                    key_file: Path | None, as_json: bool) -> None:
        """Transfer AMOUNT to an address."""
        _print_sent(send_signed(client, _signing_key(data_dir, key_file), Transfer(to, amount)), as_json)

    @main.command("stake")
    @signing_options
    @rpc_options
    def stake(client: RPCClient, data_dir: Path | None, amount: int, key_file: Path | None, as_json: bool) -> None:
        """Bond AMOUNT of the balance."""
        _print_sent(send_signed(client, _signing_key(data_dir, key_file), Stake(amount)), as_json)

    @main.command("unstake")
    @signing_options
    @rpc_options
    def unstake(client: RPCClient, data_dir: Path | None, amount: int, key_file: Path | None, as_json: bool) -> None:
        """Start unbonding AMOUNT of the stake."""
        _print_sent(send_signed(client, _signing_key(data_dir, key_file), Unstake(amount)), as_json)

    @main.command("chat")
    @click.argument("prompt")
    @click.option("--max-tokens", default=32, show_default=True, type=click.IntRange(1, 256), help="New tokens.")
    @click.option("--temperature", default=0.0, show_default=True, type=click.FloatRange(0, 10),
                  help="0 is greedy.")
    @click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0), help="Sampling seed.")
    @click.option("--cache/--no-cache", "use_cache", default=True, show_default=True,
                  help="KV cache: after the prompt, each token sends the experts one row.")
    @click.option("--plan", default="auto", show_default=True,
                  type=click.Choice(["auto", "dynamic", "static_delegate", "pipeline"]),
                  help="How the network runs it: per layer (dynamic), one delegate for the whole generation "
                       "(static_delegate), a chain of layer-range stages (pipeline); auto: a chain if there "
                       "is one, else per layer (never a delegate: its tokens are only spot-checked).")
    @rpc_options
    @click.option("--json", "as_json", is_flag=True, help="Print the node's answer (with its trace) as JSON.")
    def chat(client: RPCClient, data_dir: Path | None, prompt: str, max_tokens: int, temperature: float,
             seed: int, use_cache: bool, plan: str, as_json: bool) -> None:
        """Complete PROMPT with the network's model (experts run on the nodes that serve them)."""
        r = client.call("blyan_generate", {"prompt": prompt, "max_tokens": max_tokens, "temperature": temperature,
                                           "seed": seed, "cache": use_cache, "plan": plan})
        if as_json:
            _echo_json(r)
            return
        click.echo(prompt + r["text"])
        nodes = sorted({n for step in r["layers"] for layer in step for n in layer["experts"].values()})
        mean = sum(r["latency_ms"]) / max(1, len(r["latency_ms"]))
        rows = r.get("rows_sent", [])[1:]  # after the prompt's step
        sent = f"{sum(rows) / len(rows):.1f} rows/token to other nodes" if rows else "no later tokens"
        used = r.get("plan", {})
        fell = f" after {len(r['fallbacks'])} fallback(s)" if r.get("fallbacks") else ""
        click.echo(f"-- plan {used.get('type', 'dynamic')} on {', '.join(used.get('nodes', [])) or 'this node'}{fell}: "
                   f"{r['round_trips']} round trips here, {r.get('remote_round_trips', 0)} by stages/delegate",
                   err=True)
        click.echo(f"-- {len(r['tokens'])} tokens, {mean:.1f} ms/token, {r['round_trips']} round trips, "
                   f"experts on {len(nodes)} node(s), KV cache {'on' if r.get('cache') else 'off'}, {sent}",
                   err=True)

    @main.group("block")
    def block() -> None:
        """Read blocks from the node."""

    @block.command("get")
    @click.option("--chain", "chain_name", required=True, type=click.Choice(list(CHAIN_NAMES.values())))
    @click.option("--height", type=click.IntRange(min=0), help="Block height.")
    @click.option("--hash", "block_hash", help="Block hash (hex), instead of --height.")
    @rpc_options
    @click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
    def block_get(client: RPCClient, data_dir: Path | None, chain_name: str, height: int | None,
                  block_hash: str | None, as_json: bool) -> None:
        """A block's header and transaction hashes."""
        if (height is None) == (block_hash is None):
            raise click.UsageError("give exactly one of --height and --hash")
        b = client.call("blyan_getBlock", [chain_name, height if height is not None else block_hash])
        if b is None:
            _fail(f"no {chain_name} block {height if height is not None else block_hash}")
        if as_json:
            _echo_json(b)
            return
        h = b["header"]
        click.echo(f"{b['chain']} block {h['height']}  {b['hash']}")
        for name in ("time_ms", "prev_hash", "proposer", "state_root", "tx_root"):
            click.echo(f"  {name:<11} {h[name]}")
        click.echo(f"  txs         {len(b['txs'])}")
        for tx_hash in b["txs"]:
            click.echo(f"    {tx_hash}")
