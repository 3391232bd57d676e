"""Verified zero-copy loading: tensors equal to the encoder's, one hash pass per file version,
corrupt tiles named and never returned, repair from verified tiles, headers checked."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from chain.errors import CorruptBlob, DecodingError
from chain.tensors import KIND_EXPERT, TensorRecord
from gpu.loader import BlobLoader, FileStamp, decode_header, repair_tile, repair_tiles
from gpu.model import MoEConfig, init_seeded
from gpu.tiles import CorruptTile, compute_tile_count, compute_tile_proofs, get_tile
from gpu.weights import encode_block, make_tensor_record

TILE, SUBTILE = 2048, 256
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: GPU path")


def tensors_of(seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "w1.weight": torch.randn(32, 48, generator=gen),
        "w1.bias": torch.randn(32, generator=gen).to(torch.bfloat16),
        "steps": torch.arange(7, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4, dtype=torch.float16),
    }


def write_blob(tmp_path: Path, tensors: dict[str, torch.Tensor] | None = None,
               tile: int = TILE, subtile: int = SUBTILE) -> tuple[Path, bytes, TensorRecord]:
    data = encode_block(tensors if tensors is not None else tensors_of())
    record = make_tensor_record("layer0.expert0", KIND_EXPERT, "1.0.0", data, tile, subtile)
    path = tmp_path / record.blob_id.hex()
    path.write_bytes(data)
    return path, data, record


def rewrite_in_place(path: Path, raw: bytes) -> None:
    """Overwrite the file's bytes (same inode) and give it a new mtime."""
    st = os.stat(path)
    path.write_bytes(raw)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    rewrite_in_place(path, bytes(raw))


# --- honest loads ---------------------------------------------------------------------------


def test_load_equals_the_encoded_tensors(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    loaded = BlobLoader().load(path, record)
    expected = tensors_of()
    assert set(loaded) == set(expected)
    for name, tensor in expected.items():
        assert loaded[name].dtype == tensor.dtype and torch.equal(loaded[name], tensor), name


def test_load_is_zero_copy_and_private(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    a = BlobLoader().load(path, record)
    b = BlobLoader().load(path, record)
    a["w1.weight"].add_(1.0)  # writes stay in this mapping (copy-on-write), never in the file
    assert path.read_bytes() == data
    assert torch.equal(b["w1.weight"], tensors_of()["w1.weight"])
    spans = {s.name: s for s in decode_header(memoryview(data), record)}
    for name in ("w1.weight", "mask"):  # views of one mapping, at their offsets in the file
        gap = a[name].data_ptr() - a["steps"].data_ptr()
        assert gap == spans[name].start - spans["steps"].start


def test_verified_once_per_file_version(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    loader = BlobLoader()
    for _ in range(3):
        loader.load(path, record)
    assert loader.verifications == 1 and loader.is_verified(path, record)
    rewrite_in_place(path, data)  # same bytes, new stamp: verified again
    assert not loader.is_verified(path, record)
    loader.load(path, record)
    loader.forget(path)
    loader.load(path, record)
    loader.verify(path, record, force=True)
    other = dataclasses.replace(record, merkle_root=bytes(32))
    assert not loader.is_verified(path, other)
    assert loader.verifications == 4


def test_file_stamp_changes_with_replacement(tmp_path: Path) -> None:
    path, data, _ = write_blob(tmp_path)
    before = FileStamp.of(os.stat(path))
    tmp = tmp_path / "new"
    tmp.write_bytes(data)
    os.replace(tmp, path)
    assert FileStamp.of(os.stat(path)) != before


def test_loaded_block_fits_the_model(tmp_path: Path) -> None:
    model = init_seeded(MoEConfig(d_model=32, n_heads=2, d_ff=64, n_layers=1, n_experts=2), 1)
    path, _, record = write_blob(tmp_path, model.block_state_dict("layer0.expert1"))
    fresh = init_seeded(MoEConfig(d_model=32, n_heads=2, d_ff=64, n_layers=1, n_experts=2), 2)
    fresh.load_block_state_dict("layer0.expert1", BlobLoader().load(path, record))
    for key, value in model.block_state_dict("layer0.expert1").items():
        assert torch.equal(fresh.block_state_dict("layer0.expert1")[key], value)


def test_invalid_device(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    with pytest.raises(ValueError):
        BlobLoader().load(path, record, device="meta")


def test_missing_file(tmp_path: Path) -> None:
    _, _, record = write_blob(tmp_path)
    with pytest.raises(FileNotFoundError):
        BlobLoader().load(tmp_path / "absent", record)
    assert BlobLoader().compute_corrupt_tiles(tmp_path / "absent", record) == list(
        range(compute_tile_count(record.size, TILE)))


# --- corruption -----------------------------------------------------------------------------


def test_corrupt_tile_named_and_never_returned(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    loader = BlobLoader(tmp_path / "hashes")
    loader.load(path, record)
    flip(path, 2 * TILE + 5)
    with pytest.raises(CorruptTile) as info:
        loader.load(path, record)
    assert info.value.tile_index == 2 and isinstance(info.value, CorruptBlob)
    with pytest.raises(CorruptTile):  # still refused: a failed check is not remembered as good
        loader.load(path, record)
    assert loader.compute_corrupt_tiles(path, record) == [2]


def test_subtile_hashes_survive_a_restart(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    BlobLoader(tmp_path / "hashes").load(path, record)
    flip(path, TILE + 1)
    with pytest.raises(CorruptTile) as info:
        BlobLoader(tmp_path / "hashes").load(path, record)  # a new process names the tile
    assert info.value.tile_index == 1


def test_bad_hash_file_is_ignored(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    (tmp_path / "hashes").mkdir()
    (tmp_path / "hashes" / record.merkle_root.hex()).write_bytes(os.urandom(64))
    loader = BlobLoader(tmp_path / "hashes")
    loader.load(path, record)  # the junk does not hash to the root: the file is hashed instead
    assert loader.verifications == 1
    flip(path, 3)
    with pytest.raises(CorruptTile) as info:  # and the good hashes replaced the junk
        BlobLoader(tmp_path / "hashes").load(path, record)
    assert info.value.tile_index == 0


def test_corruption_without_good_hashes_is_unlocated(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    flip(path, TILE + 1)
    loader = BlobLoader()
    with pytest.raises(CorruptBlob) as info:
        loader.load(path, record)
    assert not isinstance(info.value, CorruptTile)
    assert loader.compute_corrupt_tiles(path, record) == list(range(compute_tile_count(record.size, TILE)))


@pytest.mark.parametrize("cut", [1, TILE, TILE + 3])
def test_truncated_file_names_the_cut_tile(tmp_path: Path, cut: int) -> None:
    path, data, record = write_blob(tmp_path)
    rewrite_in_place(path, data[: len(data) - cut])
    first_bad = (len(data) - cut) // TILE
    for loader in (BlobLoader(), _knowing(path, data, record, tmp_path)):
        with pytest.raises(CorruptTile) as info:
            loader.load(path, record)
        assert info.value.tile_index == first_bad


def test_longer_file_names_the_last_tile(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    rewrite_in_place(path, data + b"\0")
    with pytest.raises(CorruptTile) as info:
        BlobLoader().load(path, record)
    assert info.value.tile_index == compute_tile_count(record.size, TILE) - 1


def _knowing(path: Path, data: bytes, record: TensorRecord, tmp_path: Path) -> BlobLoader:
    """A loader that has seen the good blob (from a copy), so it knows its subtile hashes."""
    good = tmp_path / "good-copy"
    good.write_bytes(data)
    loader = BlobLoader()
    loader.verify(good, record)
    return loader


@settings(max_examples=40, deadline=None)
@given(size_kib=st.integers(1, 24), tile_sub=st.sampled_from([(1024, 256), (2048, 512), (4096, 4096)]),
       data=st.data())
def test_any_corruption_is_named_at_load(size_kib: int, tile_sub: tuple[int, int], data: st.DataObject) -> None:
    """Over blob sizes, tile geometries and corrupted bytes: the loader names the first bad
    tile, lists them all, and a repair with honest tiles makes the blob load again."""
    import tempfile

    tile, subtile = tile_sub
    tensors = {"w": torch.arange(size_kib * 256, dtype=torch.float32)}
    with tempfile.TemporaryDirectory() as d:
        path, raw, record = write_blob(Path(d), tensors, tile, subtile)
        loader = _knowing(path, raw, record, Path(d))
        positions = data.draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4, unique=True))
        broken = bytearray(raw)
        for pos in positions:
            broken[pos] ^= data.draw(st.integers(1, 255))
        rewrite_in_place(path, bytes(broken))
        bad = sorted({pos // tile for pos in positions})
        with pytest.raises(CorruptTile) as info:
            loader.load(path, record)
        assert info.value.tile_index == bad[0]
        assert loader.compute_corrupt_tiles(path, record) == bad
        proofs = compute_tile_proofs(raw, tile, subtile)
        repair_tiles(path, record, {i: (bytes(get_tile(raw, i, tile)), proofs[i]) for i in bad})
        assert torch.equal(loader.load(path, record)["w"], tensors["w"])


# --- repair ---------------------------------------------------------------------------------


def test_repair_tile_restores_the_blob(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    loader = _knowing(path, data, record, tmp_path)
    held = loader.load(path, record)  # a reader with the old mapping
    inode = os.stat(path).st_ino
    flip(path, TILE + 9)
    proofs = compute_tile_proofs(data, TILE, SUBTILE)
    repair_tile(path, record, 1, bytes(get_tile(data, 1, TILE)), proofs[1])
    assert path.read_bytes() == data and os.stat(path).st_ino != inode  # renamed into place
    assert torch.equal(loader.load(path, record)["w1.weight"], tensors_of()["w1.weight"])
    assert held["steps"].tolist() == list(range(7))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_repair_refuses_a_bad_tile_and_writes_nothing(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    flip(path, 10)
    before = path.read_bytes()
    proofs = compute_tile_proofs(data, TILE, SUBTILE)
    wrong = bytearray(get_tile(data, 0, TILE))
    wrong[0] ^= 1
    with pytest.raises(CorruptTile):
        repair_tiles(path, record, {1: (bytes(get_tile(data, 1, TILE)), proofs[1]),
                                    0: (bytes(wrong), proofs[0])})
    with pytest.raises(CorruptTile):  # a good tile under the wrong index
        repair_tile(path, record, 1, bytes(get_tile(data, 0, TILE)), proofs[0])
    assert path.read_bytes() == before


def test_repair_rebuilds_a_missing_blob(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    path.unlink()
    proofs = compute_tile_proofs(data, TILE, SUBTILE)
    repair_tiles(path, record, {i: (bytes(get_tile(data, i, TILE)), p) for i, p in enumerate(proofs)})
    assert path.read_bytes() == data


# --- header ---------------------------------------------------------------------------------


def _with_header(data: bytes, header: dict) -> bytes:
    length = int.from_bytes(data[:8], "little")
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text))
    assert len(text) == length
    return data[:8] + text + data[8 + length :]


def test_header_matches_record(tmp_path: Path) -> None:
    _, data, record = write_blob(tmp_path)
    spans = decode_header(memoryview(data), record)
    assert [s.name for s in spans] == sorted(tensors_of())


@pytest.mark.parametrize("change", ["dtype", "shape", "offsets", "unaligned", "missing", "not json"])
def test_invalid_header(tmp_path: Path, change: str) -> None:
    _, data, record = write_blob(tmp_path)
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    entry = header["w1.weight"]
    if change == "dtype":
        entry["dtype"] = "F64"
    elif change == "shape":
        entry["shape"] = [48, 32]
    elif change == "offsets":
        entry["data_offsets"][1] += 4
    elif change == "unaligned":
        header["w1.bias"]["data_offsets"] = [o + 1 for o in header["w1.bias"]["data_offsets"]]
    elif change == "missing":
        del header["mask"]
    raw = data[:8] + b"x" + data[9:] if change == "not json" else _with_header(data, header)
    with pytest.raises(DecodingError):
        decode_header(memoryview(raw), record)


def test_invalid_header_length(tmp_path: Path) -> None:
    _, data, record = write_blob(tmp_path)
    with pytest.raises(DecodingError):
        decode_header(memoryview((len(data)).to_bytes(8, "little") + data[8:]), record)
    with pytest.raises(DecodingError):
        decode_header(memoryview(data[:5]), record)


# --- CUDA -----------------------------------------------------------------------------------


@needs_cuda
def test_load_to_cuda(tmp_path: Path) -> None:
    path, _, record = write_blob(tmp_path)
    loaded = BlobLoader().load(path, record, device="cuda")
    for name, tensor in tensors_of().items():
        assert loaded[name].device.type == "cuda"
        assert torch.equal(loaded[name].cpu(), tensor), name


def test_cuda_refused_without_a_gpu(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    path, _, record = write_blob(tmp_path)
    with pytest.raises(ValueError, match="CUDA"):
        BlobLoader().load(path, record, device="cuda")


@needs_cuda
def test_load_to_cuda_is_verified_and_private(tmp_path: Path) -> None:
    path, data, record = write_blob(tmp_path)
    loader = _knowing(path, data, record, tmp_path)
    flip(path, 5)
    with pytest.raises(CorruptTile):
        loader.load(path, record, device="cuda")
    rewrite_in_place(path, data)
    loaded = loader.load(path, record, device="cuda", synchronize=False)
    loaded["w1.weight"].add_(1)
    torch.cuda.synchronize()
    assert path.read_bytes() == data


def test_block_of_empty_tensors(tmp_path: Path) -> None:
    tensors = {"a": torch.zeros(0, 3), "b": torch.zeros(2, 0, dtype=torch.int8)}
    path, _, record = write_blob(tmp_path, tensors)
    loaded = BlobLoader().load(path, record)
    assert {k: (v.shape, v.dtype) for k, v in loaded.items()} == {
        k: (v.shape, v.dtype) for k, v in tensors.items()}
