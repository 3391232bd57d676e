"""Dataset content ids exactly as `ipfs add --cid-version 1 --raw-leaves` computes them.

Layout (js-ipfs 0.66 and Kubo defaults): the file is cut into 262,144-byte chunks, each stored as a
raw block (CIDv1, codec raw 0x55, sha2-256). A file of one chunk (0 to 262,144 bytes) *is* that raw
leaf: its CID is `bafk...`. A longer file is a balanced tree: leaves are grouped 174 at a time under
dag-pb nodes (codec 0x70, `bafy...`), those nodes 174 at a time under the next level, until one root
remains. A node is a dag-pb PBNode: its links first (Hash, Name "", Tsize = the child's block plus
everything below it), then its Data, a UnixFS message {Type: File, filesize, blocksizes: the file
bytes below each link}. CIDs are printed in base32 (multibase prefix "b").

Pure and stdlib only: `build_dag` makes the blocks, `assemble` checks and reassembles them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

from chain.errors import BlyanError, DecodingError

CHUNK_SIZE = 262_144
"""Bytes per raw leaf: the default chunker of `ipfs add`."""
MAX_LINKS = 174
"""Links per dag-pb node in the balanced layout."""
MAX_BLOCK_BYTES = 1 << 20
"""The most bytes any one block of a DAG may have (a leaf has at most CHUNK_SIZE)."""
MAX_DEPTH = 8
"""The deepest DAG `assemble` follows; 174**4 leaves already hold 234 TB."""
DEFAULT_MAX_SIZE = 1 << 30
"""The default cap on the file that `assemble` returns."""

CODEC_RAW = 0x55
CODEC_DAG_PB = 0x70
_SHA2_256 = 0x12
_UNIXFS_FILE = 2
_PREFIX = {codec: bytes([0x01, codec, _SHA2_256, 0x20]) for codec in (CODEC_RAW, CODEC_DAG_PB)}
"""The binary CIDv1 prefix (version, codec, sha2-256, 32 bytes) of each codec we accept."""

ByteSource = bytes | bytearray | memoryview


class MalformedBlock(DecodingError, ValueError):
    """A CID, block or DAG that is not a well-formed UnixFS file (also a ValueError, like
    `chain.crypto.digest_from_cid`)."""


class BlockMismatch(BlyanError):
    """A block whose sha2-256 is not the digest in the CID it was asked for."""

    def __init__(self, cid: str) -> None:
        self.cid = cid
        super().__init__(f"block does not hash to its CID {cid}")


class DagTooLarge(BlyanError):
    """A DAG whose file is larger than the caller accepts."""

    def __init__(self, size: int, max_size: int) -> None:
        self.size = size
        self.max_size = max_size
        super().__init__(f"file of {size} bytes is over the cap of {max_size} bytes")


@dataclass(frozen=True, slots=True)
class Link:
    cid: str
    """The child's CID (base32 CIDv1, raw or dag-pb)."""
    tsize: int
    """The child's block size plus everything below it (advisory; never trusted)."""


@dataclass(frozen=True, slots=True)
class PbNode:
    links: tuple[Link, ...]
    """The children in file order."""
    filesize: int
    """The bytes of file below this node."""
    blocksizes: tuple[int, ...]
    """The bytes of file below each link, in link order."""


@dataclass(frozen=True, slots=True)
class Dag:
    root: str
    """The CID of the file."""
    size: int
    """The file's length in bytes."""
    nodes: dict[str, bytes]
    """The dag-pb blocks by CID (empty for a single-leaf file)."""
    leaves: tuple[tuple[str, int, int], ...]
    """Each raw leaf as (CID, offset, length), in file order (a CID repeats for repeated chunks)."""

    def block(self, cid: str, data: bytes) -> bytes | None:
        """The bytes of block `cid` of this DAG (`data` is the file), None if it is not in it."""
        if len(data) != self.size:
            raise ValueError(f"data has {len(data)} bytes, the DAG's file {self.size}")
        node = self.nodes.get(cid)
        if node is not None:
            return node
        for leaf_cid, offset, length in self.leaves:
            if leaf_cid == cid:
                return bytes(memoryview(data)[offset:offset + length])
        return None


# --- CIDs -------------------------------------------------------------------------------------


def encode_cid(codec: int, digest: bytes) -> str:
    """A CIDv1 (sha2-256) in base32, from its codec and digest."""
    if len(digest) != 32:
        raise ValueError("a sha2-256 digest has 32 bytes")
    if codec not in _PREFIX:
        raise ValueError(f"codec {codec:#x} is neither raw (0x55) nor dag-pb (0x70)")
    return "b" + base64.b32encode(_PREFIX[codec] + digest).decode().lower().rstrip("=")


def decode_cid(cid: str) -> tuple[int, bytes]:
    """(codec, digest) of a base32 CIDv1 with a raw or dag-pb codec and a sha2-256 multihash."""
    if not isinstance(cid, str) or not cid.startswith("b") or len(cid) != 59:
        raise MalformedBlock(f"not a base32 CIDv1 sha2-256: {cid!r:.80}", "cid")
    body = cid[1:]
    if body != body.lower():
        raise MalformedBlock(f"not the canonical (lower-case) spelling: {cid}", "cid")
    try:
        binary = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except ValueError as err:
        raise MalformedBlock(f"not base32: {cid}", "cid") from err
    codec = binary[1] if len(binary) == 36 else -1
    if codec not in _PREFIX or binary[:4] != _PREFIX[codec]:
        raise MalformedBlock(f"not a CIDv1 raw or dag-pb with sha2-256: {cid}", "cid")
    if encode_cid(codec, binary[4:]) != cid:
        raise MalformedBlock(f"not the canonical spelling of the CID: {cid}", "cid")
    return codec, binary[4:]


def codec_of(cid: str) -> int:
    """0x55 (raw) or 0x70 (dag-pb); MalformedBlock for anything else."""
    return decode_cid(cid)[0]


def verify_block(cid: str, block: ByteSource) -> None:
    """Raise BlockMismatch unless sha2-256 of `block` is the digest in `cid`."""
    _, digest = decode_cid(cid)
    if hashlib.sha256(block).digest() != digest:
        raise BlockMismatch(cid)


# --- building ---------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _encode_cid_bytes(cid: str) -> bytes:
    codec, digest = decode_cid(cid)
    return _PREFIX[codec] + digest


def encode_node(links: list[tuple[str, int, int]]) -> bytes:
    """The dag-pb block of a UnixFS file node over children given as (CID, tsize, file bytes)."""
    data = bytearray(b"\x08\x02")  # Type: File
    data += b"\x18" + _varint(sum(size for _, _, size in links))
    for _, _, size in links:
        data += b"\x20" + _varint(size)
    out = bytearray()
    for cid, tsize, _ in links:
        link = _field_bytes(1, _encode_cid_bytes(cid)) + b"\x12\x00" + b"\x18" + _varint(tsize)
        out += _field_bytes(2, link)
    out += _field_bytes(1, bytes(data))
    return bytes(out)


def _leaves(data: ByteSource) -> list[tuple[str, int, int]]:
    view = memoryview(data)
    if len(view) <= CHUNK_SIZE:
        return [(encode_cid(CODEC_RAW, hashlib.sha256(view).digest()), 0, len(view))]
    return [
        (encode_cid(CODEC_RAW, hashlib.sha256(view[offset:offset + CHUNK_SIZE]).digest()), offset,
         min(CHUNK_SIZE, len(view) - offset))
        for offset in range(0, len(view), CHUNK_SIZE)
    ]


def _build(data: ByteSource, nodes: dict[str, bytes] | None) -> tuple[str, tuple[tuple[str, int, int], ...]]:
    leaves = _leaves(data)
    if len(leaves) == 1:
        return leaves[0][0], tuple(leaves)
    level = [(cid, length, length) for cid, _, length in leaves]  # (CID, tsize, file bytes)
    while len(level) > 1:
        parents = []
        for start in range(0, len(level), MAX_LINKS):
            group = level[start:start + MAX_LINKS]
            block = encode_node(group)
            cid = encode_cid(CODEC_DAG_PB, hashlib.sha256(block).digest())
            if nodes is not None:
                nodes[cid] = block
            parents.append((cid, len(block) + sum(t for _, t, _ in group), sum(s for _, _, s in group)))
        level = parents
    return level[0][0], tuple(leaves)


def compute_dataset_cid(data: ByteSource) -> str:
    """The CID `ipfs add --cid-version 1 --raw-leaves` gives the file `data` (base32)."""
    return _build(data, None)[0]


def build_dag(data: ByteSource) -> Dag:
    """Every block of the file's DAG: the dag-pb nodes by CID and where each raw leaf lies."""
    nodes: dict[str, bytes] = {}
    root, leaves = _build(data, nodes)
    return Dag(root=root, size=len(data), nodes=nodes, leaves=leaves)


# --- decoding ---------------------------------------------------------------------------------


def _read_varint(buf: memoryview, pos: int, what: str) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(buf):
            raise MalformedBlock(f"truncated varint in {what}", what)
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 64:
                raise MalformedBlock(f"varint over 64 bits in {what}", what)
            return value, pos
    raise MalformedBlock(f"varint longer than 10 bytes in {what}", what)


@dataclass(frozen=True, slots=True)
class _Field:
    number: int
    wire: int
    """0 (varint: `value`) or 2 (bytes: `payload`)."""
    value: int = 0
    payload: memoryview = memoryview(b"")


def _fields(buf: memoryview, what: str) -> list[_Field]:
    """Each protobuf field of `buf`; only the varint and the bytes wire types occur in dag-pb."""
    out: list[_Field] = []
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos, what)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos, what)
            out.append(_Field(number, wire, value=value))
        elif wire == 2:
            length, pos = _read_varint(buf, pos, what)
            if length > len(buf) - pos:
                raise MalformedBlock(f"field {number} runs past the end of {what}", what)
            out.append(_Field(number, wire, payload=buf[pos:pos + length]))
            pos += length
        else:
            raise MalformedBlock(f"field {number} has wire type {wire} in {what}", what)
    return out


def _shape(fields: list[_Field]) -> list[tuple[int, int]]:
    return [(f.number, f.wire) for f in fields]


def _decode_link(buf: memoryview) -> Link:
    fields = _fields(buf, "link")
    if _shape(fields) != [(1, 2), (2, 2), (3, 0)]:
        raise MalformedBlock("a link must hold Hash, Name and Tsize, in that order", "link")
    cid_bytes, name, tsize = fields[0].payload, fields[1].payload, fields[2].value
    if len(name) != 0:
        raise MalformedBlock("a file node's link has a name", "link")
    codec = cid_bytes[1] if len(cid_bytes) == 36 else -1
    if codec not in _PREFIX or bytes(cid_bytes[:4]) != _PREFIX[codec]:
        raise MalformedBlock("a link's Hash is not a CIDv1 raw or dag-pb with sha2-256", "link")
    return Link(cid=encode_cid(codec, bytes(cid_bytes[4:])), tsize=tsize)


def _decode_unixfs(buf: memoryview) -> tuple[int, tuple[int, ...]]:
    fields = _fields(buf, "unixfs")
    shape = _shape(fields)
    if shape[:1] != [(1, 0)] or fields[0].value != _UNIXFS_FILE:
        raise MalformedBlock("UnixFS Data must start with Type = File", "unixfs")
    if shape[1:2] != [(3, 0)]:
        raise MalformedBlock("UnixFS Data must give filesize after Type", "unixfs")
    if any(pair != (4, 0) for pair in shape[2:]):
        raise MalformedBlock("UnixFS Data may hold only Type, filesize and blocksizes", "unixfs")
    return fields[1].value, tuple(f.value for f in fields[2:])


def decode_node(block: ByteSource) -> PbNode:
    """A dag-pb UnixFS file node (links to raw leaves or nodes, no inline data), checked:
    fields in canonical order, sizes consistent, at most MAX_LINKS links. MalformedBlock otherwise."""
    if not isinstance(block, (bytes, bytearray, memoryview)):
        raise MalformedBlock(f"a block is bytes, not {type(block).__name__}", "block")
    if len(block) > MAX_BLOCK_BYTES:
        raise MalformedBlock(f"block of {len(block)} bytes is over {MAX_BLOCK_BYTES}", "block")
    fields = _fields(memoryview(block), "node")
    shape = _shape(fields)
    if shape[-1:] != [(1, 2)] or any(pair != (2, 2) for pair in shape[:-1]):
        raise MalformedBlock("a dag-pb node is its Links, then one Data field", "node")
    if len(fields) - 1 > MAX_LINKS:
        raise MalformedBlock(f"{len(fields) - 1} links, more than {MAX_LINKS}", "node")
    links = tuple(_decode_link(f.payload) for f in fields[:-1])
    filesize, blocksizes = _decode_unixfs(fields[-1].payload)
    if len(blocksizes) != len(links):
        raise MalformedBlock(f"{len(links)} links but {len(blocksizes)} blocksizes", "node")
    if sum(blocksizes) != filesize:
        raise MalformedBlock(f"blocksizes add up to {sum(blocksizes)}, filesize is {filesize}", "node")
    if any(size == 0 for size in blocksizes):
        raise MalformedBlock("a link to no bytes of file", "node")
    return PbNode(links=links, filesize=filesize, blocksizes=blocksizes)


# --- reassembly -------------------------------------------------------------------------------


def _get_verified(cid: str, get_block: Callable[[str], bytes | None]) -> bytes:
    block = get_block(cid)
    if block is None:
        raise MalformedBlock(f"block {cid} is missing", "block")
    if not isinstance(block, (bytes, bytearray, memoryview)):
        raise MalformedBlock(f"block {cid} is {type(block).__name__}, not bytes", "block")
    if len(block) > MAX_BLOCK_BYTES:
        raise MalformedBlock(f"block {cid} has {len(block)} bytes, over {MAX_BLOCK_BYTES}", "block")
    verify_block(cid, block)
    return bytes(block)


def assemble(root: str, get_block: Callable[[str], bytes | None], *, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """The file whose CID is `root`, fetched block by block with `get_block(cid)` (None: missing).

    Every block is checked against its CID before it is read; a node's filesize and blocksizes must
    agree with what lies below it; the file may not pass `max_size` (checked before the leaves are
    fetched) nor the DAG MAX_DEPTH levels. Raises MalformedBlock, BlockMismatch or DagTooLarge."""
    block = _get_verified(root, get_block)
    if codec_of(root) == CODEC_RAW:
        if len(block) > max_size:
            raise DagTooLarge(len(block), max_size)
        return block
    node = decode_node(block)
    if node.filesize > max_size:
        raise DagTooLarge(node.filesize, max_size)
    out = bytearray()
    # Depth-first, in link order: a stack of (CID, file bytes it must give, depth), reversed.
    stack = [(link.cid, size, 1) for link, size in zip(reversed(node.links), reversed(node.blocksizes), strict=True)]
    while stack:
        cid, expected, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise MalformedBlock(f"DAG deeper than {MAX_DEPTH} levels", "dag")
        block = _get_verified(cid, get_block)
        if codec_of(cid) == CODEC_RAW:
            if len(block) != expected:
                raise MalformedBlock(f"leaf {cid} has {len(block)} bytes, its parent says {expected}", "dag")
            out += block
            continue
        child = decode_node(block)
        if child.filesize != expected:
            raise MalformedBlock(f"node {cid} holds {child.filesize} bytes, its parent says {expected}", "dag")
        stack.extend((link.cid, size, depth + 1)
                     for link, size in zip(reversed(child.links), reversed(child.blocksizes), strict=True))
    if len(out) != node.filesize:  # cannot happen once every child agreed; an internal check
        raise MalformedBlock(f"assembled {len(out)} bytes, the root says {node.filesize}", "dag")
    return bytes(out)
