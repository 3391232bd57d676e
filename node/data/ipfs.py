"""A small synchronous client for an IPFS daemon's HTTP RPC API (js-ipfs 0.18 or Kubo).

Only `add`, `cat`, `pin/add` and `block/get` are used, which both daemons serve. Every answer is
checked against the local `chain.unixfs` computation: a daemon that returns another CID or bytes
that do not hash to the CID asked for is an `IpfsError`, never trusted. Blocking: callers run it
in a worker thread (`trio.to_thread.run_sync`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TypeVar

import ipfshttpclient
import ipfshttpclient.exceptions as ipfs_errors

from chain.errors import BlyanError
from chain.unixfs import MAX_BLOCK_BYTES, BlockMismatch, MalformedBlock, codec_of, compute_dataset_cid, verify_block

# js-ipfs 0.18 and recent Kubo are outside the version range ipfshttpclient 0.8.0a2 knows; it only
# warns. Its use of urllib3 warns about a parameter on every connection.
warnings.filterwarnings("ignore", category=ipfs_errors.VersionMismatch)
warnings.filterwarnings("ignore", message="The 'strict' parameter is no longer needed", category=FutureWarning)

DEFAULT_API = "/ip4/127.0.0.1/tcp/5001/http"
DEFAULT_TIMEOUT_S = 60.0
ADD_OPTIONS = {"cid-version": 1, "raw-leaves": True, "cid-base": "base32"}
"""What makes the daemon's CID the one `chain.unixfs.compute_dataset_cid` gives."""

T = TypeVar("T")


class IpfsError(BlyanError):
    """The IPFS daemon failed, or answered something that does not check out."""

    def __init__(self, reason: str, api: str = "") -> None:
        self.reason = reason
        self.api = api
        super().__init__(f"IPFS daemon {api}: {reason}" if api else f"IPFS daemon: {reason}")


class IpfsUnavailable(IpfsError):
    """The daemon is down, unreachable or did not answer in time (not a fault of the data)."""


class IpfsClient:
    """One daemon's HTTP API at `api` (a multiaddr such as `/ip4/127.0.0.1/tcp/5001/http`).

    Every call has the deadline `timeout` (IpfsUnavailable past it). A CID that is not a base32
    CIDv1 (raw or dag-pb, sha2-256) is refused before the daemon is asked, with
    `chain.unixfs.MalformedBlock`."""

    def __init__(self, api: str = DEFAULT_API, *, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.api = api
        self.timeout = timeout
        try:
            # Client(), unlike connect(), asks the daemon nothing: constructing never blocks.
            self._client = ipfshttpclient.Client(api, timeout=timeout)
        except ipfs_errors.AddressError as err:
            raise IpfsError(f"not a usable API address: {err}", api) from err

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except ipfs_errors.TimeoutError as err:
            raise IpfsUnavailable(f"{what} timed out after {self.timeout:g} s", self.api) from err
        except ipfs_errors.ConnectionError as err:
            raise IpfsUnavailable(f"{what}: cannot connect (is the daemon running?)", self.api) from err
        except ipfs_errors.ErrorResponse as err:
            raise IpfsError(f"{what} refused: {err}", self.api) from err
        except ipfs_errors.Error as err:
            raise IpfsError(f"{what} failed: {type(err).__name__}: {err}", self.api) from err

    def is_available(self) -> bool:
        """Whether the daemon answers `version` now."""
        try:
            self._call("version", self._client.version)
        except IpfsError:
            return False
        return True

    def add(self, data: bytes, *, pin: bool = True) -> str:
        """Store `data` as a file; its CID, checked to be `compute_dataset_cid(data)`."""
        expected = compute_dataset_cid(data)
        answer = self._call("add", lambda: self._client.add_bytes(bytes(data), opts={**ADD_OPTIONS, "pin": pin}))
        if answer != expected:
            raise IpfsError(f"add returned CID {answer!r:.80}, the file's CID is {expected}", self.api)
        return expected

    def pin(self, cid: str) -> None:
        """Pin `cid` and everything below it."""
        codec_of(cid)  # MalformedBlock for a CID that is not ours, before asking the daemon
        answer = self._call("pin/add", lambda: self._client.pin.add(cid, opts={"cid-base": "base32"}))
        pins = answer.get("Pins") if hasattr(answer, "get") else None
        if not isinstance(pins, list) or cid not in pins:
            raise IpfsError(f"pin/add of {cid} answered {answer!r:.200}", self.api)

    def pin_content(self, cid: str, data: bytes) -> None:
        """Add `data` and pin it, checked to be the dataset `cid` (IpfsError if it is not)."""
        actual = compute_dataset_cid(data)
        if actual != cid:
            raise IpfsError(f"content to pin as {cid} has the CID {actual}", self.api)
        self.add(data, pin=True)
        self.pin(cid)

    def cat(self, cid: str, max_size: int) -> bytes:
        """The file `cid`, at most `max_size` bytes (the caller checks it with compute_dataset_cid)."""
        if max_size < 0:
            raise ValueError("max_size is a number of bytes")
        codec_of(cid)
        # Ask for one byte more than allowed, and read it as a stream: a longer answer is refused
        # as soon as it passes the cap, whatever the daemon does with `length`.
        return self._call("cat", lambda: self._read_capped(cid, max_size))

    def _read_capped(self, cid: str, max_size: int) -> bytes:
        out = bytearray()
        with self._client.cat(cid, length=max_size + 1, stream=True) as chunks:
            for chunk in chunks:
                if not isinstance(chunk, bytes):
                    raise IpfsError(f"cat of {cid} answered {type(chunk).__name__}, not bytes", self.api)
                out += chunk
                if len(out) > max_size:
                    raise IpfsError(f"file {cid} is over the cap of {max_size} bytes", self.api)
        return bytes(out)

    def block_get(self, cid: str) -> bytes:
        """The block `cid`, checked against its CID."""
        codec_of(cid)
        answer = self._call("block/get", lambda: self._client.block.get(cid))
        if not isinstance(answer, bytes):
            raise IpfsError(f"block/get of {cid} answered {type(answer).__name__}, not bytes", self.api)
        if len(answer) > MAX_BLOCK_BYTES:
            raise IpfsError(f"block {cid} has {len(answer)} bytes, over {MAX_BLOCK_BYTES}", self.api)
        try:
            verify_block(cid, answer)
        except (BlockMismatch, MalformedBlock) as err:
            raise IpfsError(f"block/get of {cid}: {err}", self.api) from err
        return answer
