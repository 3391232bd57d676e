"""Hashes, content ids, Ed25519 keys, addresses and domain-separated signatures.

A signature always covers `signing_input(network_id, kind, message)`: the network id and the
message kind are hashed in, so a signature made on one network or for one kind of message never
verifies as another.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import os
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing

from chain.errors import ConfigError, InvalidSignature

ADDRESS_LEN = 20
ADDRESS_PREFIX = "bly1"
ZERO_HASH = bytes(32)

# Message kinds: every signed thing names one. Adding a kind never changes an old one.
KIND_TX = "tx"
KIND_VOTE = "vote"
KIND_PROPOSAL = "proposal"
KIND_POL_VOTE = "pol-vote"
KIND_ATTESTATION = "attestation"
KIND_ANNOUNCE = "announce"
KIND_MANIFEST = "manifest"
"""A contributor's training manifest (`chain.learning.SignedManifest`)."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def cid_raw(data: bytes) -> str:
    """CIDv1, raw codec, sha2-256 multihash, base32 multibase: what IPFS shows for a raw block."""
    return cid_from_digest(sha256(data))


def cid_from_digest(digest: bytes) -> str:
    if len(digest) != 32:
        raise ValueError("a sha2-256 digest has 32 bytes")
    binary = bytes([0x01, 0x55, 0x12, 0x20]) + digest
    return "b" + base64.b32encode(binary).decode().lower().rstrip("=")


def digest_from_cid(cid: str) -> bytes:
    """The SHA-256 digest inside a CIDv1 raw/sha2-256 base32 string; ValueError otherwise."""
    if not cid.startswith("b"):
        raise ValueError("not a base32 CIDv1")
    body = cid[1:].upper()
    try:
        binary = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as err:
        raise ValueError("not base32") from err
    if len(binary) != 36 or binary[:4] != bytes([0x01, 0x55, 0x12, 0x20]):
        raise ValueError("not a CIDv1 raw sha2-256")
    if cid_from_digest(binary[4:]) != cid:
        raise ValueError("not the canonical spelling of the CID")
    return binary[4:]


def signing_input(network_id: str, kind: str, message: bytes) -> bytes:
    """The 32 bytes actually signed: the domain (network, kind) bound to the message."""
    return hashlib.sha256(_domain_prefix(network_id, kind) + message).digest()


@functools.lru_cache(maxsize=256)
def _domain_prefix(network_id: str, kind: str) -> bytes:
    if "/" in network_id or "/" in kind:
        raise ValueError("network ids and message kinds never contain '/'")
    domain = f"blyan/{network_id}/{kind}".encode()
    return len(domain).to_bytes(2, "big") + domain


def address_of(public_key: bytes) -> bytes:
    """An account address: 20 bytes of SHA-256 over a domain tag and the Ed25519 public key."""
    if len(public_key) != 32:
        raise ValueError("an Ed25519 public key has 32 bytes")
    return sha256(b"blyan-address\x00" + public_key)[:ADDRESS_LEN]


def format_address(address: bytes) -> str:
    return ADDRESS_PREFIX + address.hex()


def parse_address(text: str) -> bytes:
    """The 20 address bytes of `bly1<40 hex>` (or bare hex); ValueError when malformed."""
    body = text[len(ADDRESS_PREFIX):] if text.startswith(ADDRESS_PREFIX) else text
    if len(body) != 2 * ADDRESS_LEN or any(c not in "0123456789abcdef" for c in body):
        raise ValueError(f"not an address: {text!r} (want {ADDRESS_PREFIX} and 40 lower-case hex digits)")
    try:
        raw = bytes.fromhex(body)
    except ValueError as err:
        raise ValueError(f"not an address: {text!r}") from err
    if len(raw) != ADDRESS_LEN:
        raise ValueError(f"an address has {ADDRESS_LEN} bytes, {text!r} has {len(raw)}")
    return raw


@functools.lru_cache(maxsize=65_536)
def _is_valid_raw(public_key: bytes, signed: bytes, signature: bytes) -> bool:
    """Ed25519 verification, memoized: it is a pure function of its bytes, and one vote or
    transaction is checked several times (gossip, mempool, block import)."""
    try:  # what VerifyKey(public_key).verify(signed, signature) does, without building the key object
        nacl.bindings.crypto_sign_open(signature + signed, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def verify(public_key: bytes, network_id: str, kind: str, message: bytes, signature: bytes) -> None:
    """Raise `InvalidSignature` unless `signature` signs `message` as `kind` on `network_id`."""
    if len(public_key) != 32 or len(signature) != 64:
        raise InvalidSignature("malformed key or signature")
    if not _is_valid_raw(bytes(public_key), signing_input(network_id, kind, message), bytes(signature)):
        raise InvalidSignature(f"bad {kind} signature")


def is_valid_signature(
    public_key: bytes, network_id: str, kind: str, message: bytes, signature: bytes
) -> bool:
    try:
        verify(public_key, network_id, kind, message, signature)
    except InvalidSignature:
        return False
    return True


class PrivateKey:
    """An Ed25519 signing key. The same key is a node's libp2p identity and validator key."""

    __slots__ = ("_key",)

    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed has 32 bytes")
        self._key = nacl.signing.SigningKey(seed)

    @classmethod
    def generate(cls) -> PrivateKey:
        return cls(os.urandom(32))

    @classmethod
    def from_label(cls, label: str) -> PrivateKey:
        """A deterministic key for tests and dev networks. Never use one for real value."""
        return cls(sha256(b"blyan-insecure-dev-key\x00" + label.encode()))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def address(self) -> bytes:
        return address_of(self.public_key)

    def sign(self, network_id: str, kind: str, message: bytes) -> bytes:
        return self._key.sign(signing_input(network_id, kind, message)).signature

    def __repr__(self) -> str:
        return f"PrivateKey(address={format_address(self.address)})"


KEY_FILE_HEADER = "blyan-ed25519-seed-v1"


def save_key(key: PrivateKey, path: Path) -> None:
    """Write the key to a new file readable by its owner only (0600); never overwrite one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{KEY_FILE_HEADER}\n{key.seed.hex()}\n")
        fh.flush()
        os.fsync(fh.fileno())


def load_key(path: Path) -> PrivateKey:
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o777
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a blyan key file") from err
    except OSError as err:
        raise ConfigError(f"cannot read key file {path}: {err.strerror}") from err
    if mode & 0o077:
        raise ConfigError(f"key file {path} is readable by others (mode {mode:o}); chmod 600 it")
    lines = text.split()
    if len(lines) != 2 or lines[0] != KEY_FILE_HEADER:
        raise ConfigError(f"{path} is not a blyan key file")
    try:
        seed = bytes.fromhex(lines[1])
        return PrivateKey(seed)
    except ValueError as err:
        raise ConfigError(f"{path} holds a malformed key") from err
