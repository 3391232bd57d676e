"""chain.unixfs: dataset CIDs as `ipfs add --cid-version 1 --raw-leaves` gives them.

The golden CIDs come from a real daemon (js-ipfs 0.66.1, daemon 0.18.1; tests/node/data/test_ipfs.py
checks them against it again): `add` with cid-version=1, raw-leaves=true, cid-base=base32, on the
content `golden_content(size)`, the first `size` bytes of SHAKE-256 over b"blyan unixfs golden".
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chain.crypto import cid_raw
from chain.errors import BlyanError, DecodingError
from chain.unixfs import (
    CHUNK_SIZE,
    CODEC_DAG_PB,
    CODEC_RAW,
    MAX_LINKS,
    BlockMismatch,
    DagTooLarge,
    Link,
    MalformedBlock,
    assemble,
    build_dag,
    codec_of,
    compute_dataset_cid,
    decode_node,
    encode_cid,
    encode_node,
    verify_block,
)

TWO_LEVELS = MAX_LINKS * CHUNK_SIZE + 1
"""The smallest file whose DAG needs a second level of nodes (175 leaves)."""

GOLDEN = {
    0: "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
    1: "bafkreibg4w76jmdimft6hzhavlcazoxagukrohjxl6i6uvr4tqce5hc4y4",
    CHUNK_SIZE: "bafkreicp6vhxocynjzbxfhmc6qn4d4lv24xja3w44dcykw65vm2kzaaicq",
    CHUNK_SIZE + 1: "bafybeif3bor5xwj6koskxmvkivvjpn5offugrglyr4neuuk6wsqaefdhrq",
    3_000_000: "bafybeieijxiis7rouvntwh5konycidwmcaeld24kovbujrwwholrtkr2gi",
    TWO_LEVELS: "bafybeiewpyzttnerhwxdfocl36jawaksautwhjkinjvbjwui5efhdafsc4",
}
"""CID by file size of `golden_content(size)`, as the daemon printed it."""
GOLDEN_ZEROS = (3_000_000, "bafybeiaqnrlwozmazagmjk2uuz63wkp76o2by4rnzq55jaleeznx6gh76i")
"""3,000,000 zero bytes: eleven identical full leaves and a short one."""


def golden_content(size: int) -> bytes:
    return hashlib.shake_256(b"blyan unixfs golden").digest(size)


def blocks_of(data: bytes) -> dict[str, bytes]:
    dag = build_dag(data)
    blocks = dict(dag.nodes)
    for cid, offset, length in dag.leaves:
        blocks[cid] = data[offset:offset + length]
    return blocks


@pytest.mark.parametrize("size", sorted(GOLDEN))
def test_compute_dataset_cid_golden(size):
    data = golden_content(size)
    assert compute_dataset_cid(data) == GOLDEN[size]
    assert build_dag(data).root == GOLDEN[size]


def test_compute_dataset_cid_golden_repeated_chunks():
    size, cid = GOLDEN_ZEROS
    data = bytes(size)
    dag = build_dag(data)
    assert dag.root == compute_dataset_cid(data) == cid
    assert len({leaf for leaf, _, _ in dag.leaves}) == 2
    assert dag.block(dag.leaves[5][0], data) == bytes(CHUNK_SIZE)
    assert assemble(cid, blocks_of(data).__getitem__) == data


@pytest.mark.parametrize("size", [0, 1, 1000, CHUNK_SIZE])
def test_single_chunk_is_a_raw_leaf(size):
    data = golden_content(size)
    dag = build_dag(data)
    assert dag.root == cid_raw(data)
    assert dag.root.startswith("bafk") and codec_of(dag.root) == CODEC_RAW
    assert dag.nodes == {} and dag.leaves == ((dag.root, 0, size),)
    assert dag.block(dag.root, data) == data


def test_two_chunks_under_one_node():
    data = golden_content(CHUNK_SIZE + 1)
    dag = build_dag(data)
    assert dag.root.startswith("bafy") and codec_of(dag.root) == CODEC_DAG_PB
    node = decode_node(dag.nodes[dag.root])
    assert node.filesize == CHUNK_SIZE + 1 and node.blocksizes == (CHUNK_SIZE, 1)
    assert node.links == (Link(dag.leaves[0][0], CHUNK_SIZE), Link(dag.leaves[1][0], 1))
    assert dag.leaves[1] == (cid_raw(data[CHUNK_SIZE:]), CHUNK_SIZE, 1)


def test_full_first_level_has_no_second():
    dag = build_dag(bytes(MAX_LINKS * CHUNK_SIZE))
    assert len(dag.nodes) == 1
    assert len(decode_node(dag.nodes[dag.root]).links) == MAX_LINKS


def test_more_than_max_links_leaves_has_a_second_level():
    data = golden_content(TWO_LEVELS)
    dag = build_dag(data)
    assert len(dag.leaves) == MAX_LINKS + 1 and len(dag.nodes) == 3
    root = decode_node(dag.nodes[dag.root])
    assert root.blocksizes == (MAX_LINKS * CHUNK_SIZE, 1)
    assert all(codec_of(link.cid) == CODEC_DAG_PB for link in root.links)
    full, last = (decode_node(dag.nodes[link.cid]) for link in root.links)
    assert len(full.links) == MAX_LINKS and last.links == (Link(dag.leaves[-1][0], 1),)
    # Tsize counts the child's block and everything below it.
    assert root.links[0].tsize == len(dag.nodes[root.links[0].cid]) + MAX_LINKS * CHUNK_SIZE
    assert assemble(dag.root, blocks_of(data).__getitem__) == data


def test_dag_block_serves_every_block_and_nothing_else():
    data = golden_content(3_000_000)
    dag = build_dag(data)
    for cid, block in blocks_of(data).items():
        assert dag.block(cid, data) == block
        verify_block(cid, block)
    assert dag.block(cid_raw(b"elsewhere"), data) is None
    with pytest.raises(ValueError):
        dag.block(dag.root, data[:-1])


@given(size=st.integers(0, 3 * CHUNK_SIZE), seed=st.binary(max_size=8))
def test_build_dag_assemble_round_trip(size, seed):
    data = hashlib.shake_256(seed).digest(size)
    dag = build_dag(data)
    assert dag.root == compute_dataset_cid(data)
    assert dag.size == size and sum(length for _, _, length in dag.leaves) == size
    assert assemble(dag.root, blocks_of(data).__getitem__) == data


@given(st.binary(max_size=600))
def test_decode_node_random_bytes_raise_only_malformed(block):
    try:
        decode_node(block)
    except MalformedBlock as err:
        assert str(err)


@given(cut=st.integers(0, 10_000), flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_decode_node_altered_node_raises_only_malformed(cut, flip, bit):
    block = bytearray(build_dag(golden_content(3 * CHUNK_SIZE + 5)).nodes.popitem()[1])
    block[flip % len(block)] ^= 1 << bit
    for candidate in (bytes(block), bytes(block[:cut % len(block)])):
        try:
            node = decode_node(candidate)
        except MalformedBlock:
            continue
        assert sum(node.blocksizes) == node.filesize


@given(flip=st.integers(0, 10_000), bit=st.integers(0, 7))
def test_verify_block_rejects_altered_blocks(flip, bit):
    for cid, block in blocks_of(golden_content(CHUNK_SIZE + 100)).items():
        altered = bytearray(block)
        altered[flip % len(altered)] ^= 1 << bit
        with pytest.raises(BlockMismatch):
            verify_block(cid, bytes(altered))
        with pytest.raises(BlockMismatch):
            verify_block(cid, block + b"\x00")


def test_malformed_block_is_a_typed_decoding_error():
    assert issubclass(MalformedBlock, DecodingError) and issubclass(MalformedBlock, ValueError)
    assert issubclass(BlockMismatch, BlyanError) and issubclass(DagTooLarge, BlyanError)


@pytest.mark.parametrize("cid", [
    "",
    "QmRaaUwTNfwgFZpeUy8qrZwrp2dY4kCKmmB5xEqvH3vtD1",  # CIDv0
    "zb2rhmy65F3REf8SZp7De11gxtECBGgUKaLdiDj7MCGCHxbDW",  # base58btc
    GOLDEN[0].upper(),
    GOLDEN[0][:-1],
    GOLDEN[0][:-1] + "1",  # not base32
    "bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",  # dag-cbor
])
def test_invalid_cid(cid):
    with pytest.raises(MalformedBlock):
        codec_of(cid)
    with pytest.raises(MalformedBlock):
        verify_block(cid, b"")


@given(st.one_of(st.text(max_size=70), st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=58, max_size=58)
                 .map(lambda body: "b" + body)))
def test_codec_of_random_text_raises_only_malformed(cid):
    try:
        assert codec_of(cid) in (CODEC_RAW, CODEC_DAG_PB)
    except MalformedBlock:
        pass


@pytest.mark.parametrize(("block", "reason"), [
    (b"", "Links, then one Data"),
    (b"\x0a\x02\x08\x02", "filesize"),  # Data with a Type but no filesize
    (b"\x0a\x04\x08\x01\x18\x00", "Type = File"),  # a directory
    (b"\x0a\x07\x08\x02\x12\x01x\x18\x01", "filesize after Type"),  # inline data
    (b"\x0a\x05\x08\x02\x18\x01\x20", "truncated varint"),
    (b"\x0a\x05\x08\x02\x18\x01", "runs past the end"),
    (b"\x0b", "wire type 3"),
    (b"\x0a\x0e\x08\x02\x18" + b"\xff" * 10 + b"\x01", "longer than 10 bytes"),
    (b"\x0a\x0d\x08\x02\x18" + b"\xff" * 9 + b"\x7f", "over 64 bits"),
])
def test_invalid_node(block, reason):
    with pytest.raises(MalformedBlock, match=reason):
        decode_node(block)


def test_invalid_node_sizes_disagree():
    leaf = cid_raw(b"x")
    bad = encode_node([(leaf, 1, 1)]).replace(b"\x08\x02\x18\x01\x20\x01", b"\x08\x02\x18\x02\x20\x01")
    with pytest.raises(MalformedBlock, match="add up"):
        decode_node(bad)
    with pytest.raises(MalformedBlock, match="no bytes"):
        decode_node(encode_node([(leaf, 0, 0)]))
    with pytest.raises(MalformedBlock, match="more than 174"):
        decode_node(encode_node([(leaf, 1, 1)] * (MAX_LINKS + 1)))


def test_assemble_rejects_a_block_that_does_not_hash_to_its_cid():
    data = golden_content(CHUNK_SIZE + 1)
    blocks = blocks_of(data)
    leaf = build_dag(data).leaves[1][0]
    blocks[leaf] = b"y"
    with pytest.raises(BlockMismatch, match=leaf):
        assemble(compute_dataset_cid(data), blocks.__getitem__)


def test_assemble_rejects_sizes_that_disagree_with_the_leaves():
    short, full = cid_raw(b"x"), cid_raw(b"yy")
    lying = encode_node([(short, 1, 1), (full, 1, 1)])  # says 1 byte under `full`, which has 2
    root = compute_cid_of_node(lying)
    blocks = {root: lying, short: b"x", full: b"yy"}
    with pytest.raises(MalformedBlock, match="parent says 1"):
        assemble(root, blocks.__getitem__)
    inner = encode_node([(short, 1, 1)])
    outer = encode_node([(compute_cid_of_node(inner), len(inner) + 1, 2)])
    blocks = {compute_cid_of_node(outer): outer, compute_cid_of_node(inner): inner, short: b"x"}
    with pytest.raises(MalformedBlock, match="holds 1 bytes, its parent says 2"):
        assemble(compute_cid_of_node(outer), blocks.__getitem__)


def test_assemble_caps_the_size_before_fetching_leaves():
    data = golden_content(3_000_000)
    dag = build_dag(data)
    asked: list[str] = []

    def get_block(cid):
        asked.append(cid)
        return blocks_of(data)[cid]

    with pytest.raises(DagTooLarge, match="over the cap of 2999999"):
        assemble(dag.root, get_block, max_size=len(data) - 1)
    assert asked == [dag.root]
    with pytest.raises(DagTooLarge):
        assemble(cid_raw(b"abc"), {cid_raw(b"abc"): b"abc"}.__getitem__, max_size=2)
    assert assemble(dag.root, blocks_of(data).__getitem__, max_size=len(data)) == data


def test_assemble_rejects_an_oversized_block():
    big = bytes(2 << 20)
    with pytest.raises(MalformedBlock, match="over"):
        assemble(cid_raw(big), {cid_raw(big): big}.__getitem__)


def compute_cid_of_node(block: bytes) -> str:
    """The dag-pb CID of a hand-made node (build_dag of a file never makes these)."""
    return encode_cid(CODEC_DAG_PB, hashlib.sha256(block).digest())
