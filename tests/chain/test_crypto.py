"""Signatures with domain separation, addresses, content ids and key files."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chain import crypto
from chain.crypto import (
    KEY_FILE_HEADER,
    PrivateKey,
    address_of,
    cid_from_digest,
    cid_raw,
    digest_from_cid,
    format_address,
    is_valid_signature,
    load_key,
    parse_address,
    save_key,
    signing_input,
    verify,
)
from chain.errors import ConfigError, InvalidSignature

ALICE = PrivateKey.from_label("alice")
BOB = PrivateKey.from_label("bob")
KINDS = (
    crypto.KIND_TX,
    crypto.KIND_VOTE,
    crypto.KIND_PROPOSAL,
    crypto.KIND_POL_VOTE,
    crypto.KIND_ATTESTATION,
    crypto.KIND_ANNOUNCE,
)
_SETTINGS = settings(max_examples=40, deadline=None)

# Network ids as `validate_pact` admits them: letters, digits and dashes.
network_ids = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-",
    min_size=1,
    max_size=32,
)


# --- signatures -----------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    sig = ALICE.sign("devnet", crypto.KIND_TX, b"message")
    assert len(sig) == 64
    verify(ALICE.public_key, "devnet", crypto.KIND_TX, b"message", sig)
    assert is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_TX, b"message", sig)


def test_signatures_are_deterministic() -> None:
    assert ALICE.sign("devnet", "tx", b"m") == ALICE.sign("devnet", "tx", b"m")


def test_signing_input_format() -> None:
    domain = b"blyan/devnet/tx"
    expected = hashlib.sha256(len(domain).to_bytes(2, "big") + domain + b"msg").digest()
    assert signing_input("devnet", "tx", b"msg") == expected
    assert len(expected) == 32


@_SETTINGS
@given(a=network_ids, b=network_ids, message=st.binary(max_size=64))
def test_invalid_signature_from_another_network(a: str, b: str, message: bytes) -> None:
    sig = ALICE.sign(a, crypto.KIND_TX, message)
    assert is_valid_signature(ALICE.public_key, a, crypto.KIND_TX, message, sig)
    if a != b:
        assert not is_valid_signature(ALICE.public_key, b, crypto.KIND_TX, message, sig)
        with pytest.raises(InvalidSignature):
            verify(ALICE.public_key, b, crypto.KIND_TX, message, sig)


@pytest.mark.parametrize("signed_as", KINDS)
def test_invalid_signature_for_another_kind(signed_as: str) -> None:
    sig = ALICE.sign("devnet", signed_as, b"payload")
    for kind in KINDS:
        assert is_valid_signature(ALICE.public_key, "devnet", kind, b"payload", sig) == (
            kind == signed_as
        )


def test_invalid_tx_signature_as_vote() -> None:
    sig = ALICE.sign("devnet", crypto.KIND_TX, b"payload")
    with pytest.raises(InvalidSignature):
        verify(ALICE.public_key, "devnet", crypto.KIND_VOTE, b"payload", sig)


@_SETTINGS
@given(message=st.binary(min_size=1, max_size=64), data=st.data())
def test_invalid_tampered_message_or_signature(message: bytes, data: st.DataObject) -> None:
    sig = ALICE.sign("devnet", crypto.KIND_VOTE, message)
    i = data.draw(st.integers(0, len(message) - 1))
    mask = data.draw(st.integers(1, 255))
    tampered = message[:i] + bytes([message[i] ^ mask]) + message[i + 1 :]
    assert not is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_VOTE, tampered, sig)
    j = data.draw(st.integers(0, 63))
    bad_sig = sig[:j] + bytes([sig[j] ^ mask]) + sig[j + 1 :]
    assert not is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_VOTE, message, bad_sig)
    assert not is_valid_signature(BOB.public_key, "devnet", crypto.KIND_VOTE, message, sig)
    longer = message + b"\0"
    assert not is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_VOTE, longer, sig)


@pytest.mark.parametrize(
    ("public_key", "signature"),
    [
        (ALICE.public_key[:31], bytes(64)),
        (ALICE.public_key + b"\0", bytes(64)),
        (ALICE.public_key, bytes(63)),
        (ALICE.public_key, bytes(65)),
        (b"", b""),
        (bytes(32), bytes(64)),  # the all-zero key (small order)
        (b"\xff" * 32, bytes(64)),  # not a curve point
    ],
)
def test_invalid_malformed_key_or_signature(public_key: bytes, signature: bytes) -> None:
    with pytest.raises(InvalidSignature):
        verify(public_key, "devnet", crypto.KIND_TX, b"m", signature)
    assert not is_valid_signature(public_key, "devnet", crypto.KIND_TX, b"m", signature)


# --- keys and addresses ---------------------------------------------------------------------


def test_from_label_is_deterministic() -> None:
    again = PrivateKey.from_label("alice")
    assert again.seed == ALICE.seed
    assert again.public_key == ALICE.public_key
    assert ALICE.seed == hashlib.sha256(b"blyan-insecure-dev-key\x00alice").digest()
    assert PrivateKey.from_label("alice ").seed != ALICE.seed
    assert BOB.public_key != ALICE.public_key


def test_generate_gives_fresh_keys() -> None:
    a, b = PrivateKey.generate(), PrivateKey.generate()
    assert a.seed != b.seed
    assert len(a.seed) == 32
    assert len(a.public_key) == 32


@pytest.mark.parametrize("seed", [b"", bytes(31), bytes(33)])
def test_invalid_seed_length(seed: bytes) -> None:
    with pytest.raises(ValueError):
        PrivateKey(seed)


def test_repr_shows_address_not_seed() -> None:
    text = repr(ALICE)
    assert format_address(ALICE.address) in text
    assert ALICE.seed.hex() not in text


def test_address_derivation() -> None:
    addr = address_of(ALICE.public_key)
    assert len(addr) == crypto.ADDRESS_LEN == 20
    assert addr == hashlib.sha256(b"blyan-address\x00" + ALICE.public_key).digest()[:20]
    assert ALICE.address == addr
    assert BOB.address != addr


@pytest.mark.parametrize("key", [b"", bytes(31), bytes(33), bytes(64)])
def test_invalid_address_of_wrong_key_length(key: bytes) -> None:
    with pytest.raises(ValueError):
        address_of(key)


@_SETTINGS
@given(addr=st.binary(min_size=20, max_size=20))
def test_address_format_parse_round_trip(addr: bytes) -> None:
    text = format_address(addr)
    assert text.startswith("bly1")
    assert len(text) == 4 + 40
    assert text[4:] == text[4:].lower()
    assert parse_address(text) == addr
    assert parse_address(addr.hex()) == addr  # bare hex


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bly1",
        "bly1" + "00" * 19,
        "bly1" + "00" * 21,
        "bly1" + "0" * 39,
        "bly1" + "zz" * 20,
        "bly2" + "00" * 20,
        "BLY1" + "00" * 20,
        "00" * 19,
        "bly1bly1" + "00" * 20,
        "0x" + "00" * 20,
    ],
)
def test_invalid_parse_address(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


# --- content ids ----------------------------------------------------------------------------

_B32 = "abcdefghijklmnopqrstuvwxyz234567"


def _base32_lower_nopad(data: bytes) -> str:
    """RFC 4648 base32, lowercase, no padding, written out bit by bit (not via base64)."""
    bits = "".join(f"{b:08b}" for b in data)
    bits += "0" * (-len(bits) % 5)
    return "".join(_B32[int(bits[i : i + 5], 2)] for i in range(0, len(bits), 5))


def _reference_cid(data: bytes, codec_code: int = 0x55) -> str:
    """CIDv1 per the multiformats specs: varint version 1, varint codec (raw = 0x55),
    multihash (sha2-256 = 0x12, length 0x20, digest), multibase 'b' = base32 lower."""
    binary = bytes([0x01, codec_code, 0x12, 0x20]) + hashlib.sha256(data).digest()
    return "b" + _base32_lower_nopad(binary)


EMPTY_CID = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
HELLO_CID = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"


def test_reference_cid_matches_pinned_values() -> None:
    assert _reference_cid(b"") == EMPTY_CID
    assert _reference_cid(b"hello") == HELLO_CID


def test_cid_raw_known_values() -> None:
    assert cid_raw(b"") == EMPTY_CID
    assert cid_raw(b"hello") == HELLO_CID
    assert len(EMPTY_CID) == 59  # 'b' + ceil(36 * 8 / 5)


@_SETTINGS
@given(data=st.binary(max_size=200))
def test_cid_raw_matches_reference(data: bytes) -> None:
    cid = cid_raw(data)
    assert cid == _reference_cid(data)
    assert cid.startswith("bafkrei")
    assert digest_from_cid(cid) == hashlib.sha256(data).digest()


@_SETTINGS
@given(digest=st.binary(min_size=32, max_size=32))
def test_digest_from_cid_round_trip(digest: bytes) -> None:
    cid = cid_from_digest(digest)
    assert digest_from_cid(cid) == digest
    assert cid_from_digest(digest_from_cid(cid)) == cid


@pytest.mark.parametrize("digest", [b"", bytes(31), bytes(33)])
def test_invalid_cid_from_digest_length(digest: bytes) -> None:
    with pytest.raises(ValueError):
        cid_from_digest(digest)


@pytest.mark.parametrize(
    "cid",
    [
        "",
        "b",
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",  # CIDv0 (base58btc)
        _reference_cid(b"", codec_code=0x70),  # CIDv1 dag-pb, not raw
        "z" + EMPTY_CID[1:],  # another multibase prefix
        EMPTY_CID[:-2],  # truncated: 35 bytes
        EMPTY_CID + "aa",  # 37 bytes
        "b" + "0" * 58,  # '0' and '1' are not in the base32 alphabet
        EMPTY_CID[:10] + "!" + EMPTY_CID[11:],
        "b" + _base32_lower_nopad(bytes([0x01, 0x55, 0x13, 0x20]) + bytes(32)),  # sha2-512 code
        " " + EMPTY_CID,
    ],
)
def test_invalid_digest_from_cid_junk(cid: str) -> None:
    with pytest.raises(ValueError):
        digest_from_cid(cid)


# One digest, one spelling: an upper-case body after the lower-case 'b' prefix, or non-zero
# padding bits in the last base32 character (4 spellings per digest) used to decode too.
@pytest.mark.parametrize(
    "cid",
    [
        "b" + EMPTY_CID[1:].upper(),
        "bAFKREIhdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku",
        EMPTY_CID[:-1] + "v",  # 'u' = 0b10100 -> 'v' = 0b10101: only a padding bit differs
    ],
)
def test_invalid_digest_from_cid_non_canonical(cid: str) -> None:
    with pytest.raises(ValueError):
        digest_from_cid(cid)


@_SETTINGS
@given(digest=st.binary(min_size=32, max_size=32), data=st.data())
def test_digest_from_cid_accepts_only_the_canonical_spelling(
    digest: bytes, data: st.DataObject
) -> None:
    cid = cid_from_digest(digest)
    i = data.draw(st.integers(1, len(cid) - 1))
    char = data.draw(st.sampled_from(_B32 + _B32.upper() + "01=!"))
    spelled = cid[:i] + char + cid[i + 1 :]
    try:
        got = digest_from_cid(spelled)
    except ValueError:
        return
    assert cid_from_digest(got) == spelled


# --- key files ------------------------------------------------------------------------------


def test_save_key_mode_0600_and_load_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "node.key"
    save_key(ALICE, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text() == f"{KEY_FILE_HEADER}\n{ALICE.seed.hex()}\n"
    loaded = load_key(path)
    assert loaded.seed == ALICE.seed
    assert loaded.public_key == ALICE.public_key
    assert load_key(str(path)).seed == ALICE.seed  # type: ignore[arg-type]


def test_save_key_mode_ignores_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        save_key(ALICE, tmp_path / "k")
    finally:
        os.umask(old)
    assert (tmp_path / "k").stat().st_mode & 0o777 == 0o600


def test_invalid_save_key_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_key(ALICE, path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_key(BOB, path)
    assert path.read_bytes() == before
    assert load_key(path).seed == ALICE.seed


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o601])
def test_invalid_load_key_readable_by_others(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "node.key"
    save_key(ALICE, path)
    os.chmod(path, mode)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)


def test_load_key_owner_only_modes_accepted(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    save_key(ALICE, path)
    os.chmod(path, 0o400)
    assert load_key(path).seed == ALICE.seed


def test_invalid_load_key_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_key(tmp_path / "absent.key")
    with pytest.raises(ConfigError):
        load_key(tmp_path)  # a directory


@pytest.mark.parametrize(
    "text",
    [
        "",
        "garbage\n",
        f"{KEY_FILE_HEADER}\n",
        f"{ALICE.seed.hex()}\n",
        f"blyan-ed25519-seed-v2\n{ALICE.seed.hex()}\n",
        f"{KEY_FILE_HEADER}\n{ALICE.seed.hex()[:-2]}\n",
        f"{KEY_FILE_HEADER}\n{ALICE.seed.hex()}00\n",
        f"{KEY_FILE_HEADER}\n{'zz' * 32}\n",
        f"{KEY_FILE_HEADER}\n{ALICE.seed.hex()}\nextra\n",
    ],
)
def test_invalid_load_key_junk_text(tmp_path: Path, text: str) -> None:
    path = tmp_path / "node.key"
    path.write_text(text)
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        load_key(path)


def test_invalid_load_key_binary_junk(tmp_path: Path) -> None:
    path = tmp_path / "node.key"
    path.write_bytes(b"\xff\xfe\x00\x81junk")
    os.chmod(path, 0o600)
    with pytest.raises(ConfigError):
        load_key(path)


def test_memoized_check_never_turns_a_bad_signature_good() -> None:
    """The memo is keyed by the exact key, signed bytes and signature: a good signature checked
    first does not vouch for a tampered one, and a bad one checked first stays bad."""
    sig = ALICE.sign("devnet", crypto.KIND_TX, b"memo")
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    for _ in range(2):
        assert is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_TX, b"memo", sig)
        assert not is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_TX, b"memo", tampered)
        assert not is_valid_signature(BOB.public_key, "devnet", crypto.KIND_TX, b"memo", sig)
        assert not is_valid_signature(ALICE.public_key, "devnet", crypto.KIND_VOTE, b"memo", sig)
        with pytest.raises(InvalidSignature):
            verify(ALICE.public_key, "devnet", crypto.KIND_TX, b"memo", tampered)


def test_invalid_signing_domain_with_slash_every_time() -> None:
    for _ in range(2):  # the domain prefix is remembered; a refused one is never
        with pytest.raises(ValueError):
            signing_input("dev/net", crypto.KIND_TX, b"m")
