"""The one error hierarchy of Blyan. Every package raises subclasses of `BlyanError`."""

from __future__ import annotations


class BlyanError(Exception):
    """Root of every error Blyan raises on purpose."""


class DecodingError(BlyanError):
    """Bytes that are not the canonical encoding of the expected type."""

    def __init__(self, reason: str, field: str = "") -> None:
        self.reason = reason
        self.field = field
        super().__init__(f"{field}: {reason}" if field else reason)


class InvalidSignature(BlyanError):
    """A signature that does not verify for the given key, domain and message."""


class InvalidTransaction(BlyanError):
    """A transaction that breaks a rule of its chain; state is left unchanged."""

    def __init__(self, reason: str, tx_hash: bytes = b"") -> None:
        self.reason = reason
        self.tx_hash = tx_hash
        where = f" (tx {tx_hash.hex()[:16]})" if tx_hash else ""
        super().__init__(f"invalid transaction{where}: {reason}")


class InvalidBlock(BlyanError):
    """A block that breaks a rule of its chain; state is left unchanged."""

    def __init__(self, reason: str, height: int = -1, chain: str = "") -> None:
        self.reason = reason
        self.height = height
        self.chain = chain
        where = f"{chain} " if chain else ""
        super().__init__(f"invalid {where}block at height {height}: {reason}")


class MissingDependency(BlyanError):
    """A block or transaction that refers to something this node does not have yet.

    Not a fault of the sender: a peer gets no penalty for it (the verdict is *ignore*)."""


class StoreError(BlyanError):
    """The store or blob store failed or holds something inconsistent."""


class StoreLocked(StoreError):
    """Another process holds the data directory."""


class CorruptBlob(StoreError):
    """A blob whose bytes do not hash to its id."""


class ConfigError(BlyanError):
    """A configuration or data directory that cannot be used as it is."""
