"""node.data.l0.pii: each kind found and counted, near misses not, hashes salted, values never shown."""

from __future__ import annotations

import hashlib

import pytest

from chain.payloads import MAX_PII_HASHES
from node.data.l0 import pii
from node.data.l0.pii import compute_salt, find_pii, is_luhn_valid, redact, summarise_pii

CID = "bafkreitestcid"


def kinds(text: str) -> list[tuple[str, str]]:
    return [(f.kind, text[f.start:f.end]) for f in find_pii(text)]


@pytest.mark.parametrize("text, kind, span", [
    ("write to Alice.Smith+tag@Mail.co.uk today", "email", "Alice.Smith+tag@Mail.co.uk"),
    ("call +1 415 555 2671 now", "phone", "+1 415 555 2671"),
    ("call (415) 555-2671.", "phone", "(415) 555-2671"),
    ("from 8.8.8.8:53", "ip", "8.8.8.8"),
    ("host 2a00:1450:4001:81b::200e up", "ip", "2a00:1450:4001:81b::200e"),
    ("visa 4111 1111 1111 1111 ok", "card", "4111 1111 1111 1111"),
    ("amex 3782-822463-10005", "card", "3782-822463-10005"),
    ("mc 5555555555554444", "card", "5555555555554444"),
    ("pay DE89 3704 0044 0532 0130 00 thanks", "iban", "DE89 3704 0044 0532 0130 00"),
    ("pay GB82WEST12345698765432", "iban", "GB82WEST12345698765432"),
    ("ssn 123-45-6789", "national-id", "123-45-6789"),
    ("nino AB 12 34 56 C", "national-id", "AB 12 34 56 C"),
    ("aws AKIAIOSFODNN7EXAMPLE", "api-key", "AKIAIOSFODNN7EXAMPLE"),
    ("gh ghp_" + "a1" * 18, "api-key", "ghp_" + "a1" * 18),
    ("slack xoxb-1234567890-abcdef", "api-key", "xoxb-1234567890-abcdef"),
    ("openai sk-" + "Ab3" * 8, "api-key", "sk-" + "Ab3" * 8),
])
def test_each_kind_found(text: str, kind: str, span: str) -> None:
    assert kinds(text) == [(kind, span)]


def test_private_key_block_is_one_finding() -> None:
    block = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\nx+y/z==\n-----END RSA PRIVATE KEY-----"
    assert kinds(f"key:\n{block}\nafter") == [("private-key", block)]
    assert kinds("-----BEGIN OPENSSH PRIVATE KEY-----\ntruncated") == [
        ("private-key", "-----BEGIN OPENSSH PRIVATE KEY-----")]


@pytest.mark.parametrize("text", [
    "visa 4111 1111 1111 1112",                # Luhn digit wrong
    "zeros 0000000000000000 and 4444444444444444",
    "pi 3.14159265358979323846 and 1234567890123456.5",
    "iban DE00 3704 0044 0532 0130 00",        # mod-97 wrong
    "ssn 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000",
    "private 10.0.0.1 192.168.1.1 127.0.0.1 0.0.0.0 255.255.255.255 192.0.2.7 and 2001:db8::1",
    "version 1.2.3.4.5 and 999.1.1.1 and 01.2.3.4",
    "doc user@example.com admin@example.org x@site.test a@b.invalid",
    "date 2024-01-15 12:30:45 and 12:34:56:78",
    "sk-learn-estimators-are-great and @decorator and a @ b.com",
    "short 555-2671 and id 12345678",
])
def test_near_misses_not_found(text: str) -> None:
    assert kinds(text) == []


def test_luhn() -> None:
    assert is_luhn_valid("4111111111111111") and is_luhn_valid("79927398713")
    assert not is_luhn_valid("4111111111111112") and not is_luhn_valid("79927398710")


def test_a_span_counts_once() -> None:
    # An SSN-shaped or phone-shaped part of a card number is not counted again.
    text = "card 4111-1111-1111-1111, email bob@mail.com"
    assert kinds(text) == [("card", "4111-1111-1111-1111"), ("email", "bob@mail.com")]


def test_summary_counts_and_salted_hashes() -> None:
    text = "a@mail.com b@mail.com A@MAIL.COM 4111111111111111 4111 1111 1111 1111 5555555555554444"
    summary = summarise_pii(find_pii(text), CID)
    assert [(f.kind, f.count, len(f.hashes)) for f in summary] == [("card", 3, 2), ("email", 3, 2)]
    salt = hashlib.sha256(b"blyan-pii-salt/1\x00" + CID.encode()).digest()
    assert compute_salt(CID) == salt
    email = hashlib.sha256(salt + b"email\x00a@mail.com").digest()
    assert email in summary[1].hashes
    assert list(summary[1].hashes) == sorted(summary[1].hashes)
    other = summarise_pii(find_pii(text), "bafkreiothercid")
    assert not set(other[1].hashes) & set(summary[1].hashes)


def test_summary_keeps_the_smallest_hashes() -> None:
    text = " ".join(f"user{i}@mail.com" for i in range(40))
    (finding,) = summarise_pii(find_pii(text), CID)
    salt = compute_salt(CID)
    every = sorted(hashlib.sha256(salt + f"email\x00user{i}@mail.com".encode()).digest() for i in range(40))
    assert finding.count == 40 and finding.hashes == tuple(every[:MAX_PII_HASHES])


def test_redact_removes_every_value() -> None:
    values = ["bob@mail.com", "4111 1111 1111 1111", "+1 415 555 2671", "8.8.8.8", "123-45-6789",
              "AKIAIOSFODNN7EXAMPLE", "GB82WEST12345698765432"]
    data = "\n".join(f"row {i}: {v} end" for i, v in enumerate(values)).encode() + b"\nbad \xff"  # not UTF-8
    out = redact(data, "text")
    for v in values:
        assert v.encode() not in out
    assert b"[REDACTED:email]" in out and b"[REDACTED:card]" in out and out.endswith(b"bad \xff")
    assert find_pii(out.decode("utf-8", "surrogateescape")) == []
    with pytest.raises(ValueError):
        redact(data, "pdf")


def test_finding_repr_hides_the_value() -> None:
    (finding,) = find_pii("bob@mail.com")
    assert "bob" not in repr(finding)


def test_line_scans_equal_whole_text_scans() -> None:
    text = ("x 4111 1111 1111 1111\nAKIAIOSFODNN7EXAMPLE sk-" + "a" * 30 + "\n8.8.8.8\n2a00:1450::1\n"
            "+44 20 7946 0958 (415) 555-2671\nDE89 3704 0044 0532 0130 00 AB123456C 123-45-6789\nq@w.io\n") * 3
    for pattern, anchors in [(pii._CARD, pii._CARD_ANCHORS), (pii._API_KEY, pii._API_KEY_ANCHORS),
                             (pii._IPV4, pii._IPV4_ANCHORS), (pii._IPV6, pii._IPV6_ANCHORS),
                             (pii._PHONE, pii._PHONE_ANCHORS), (pii._IBAN, pii._LETTERS_DIGITS_ANCHORS),
                             (pii._NINO, pii._LETTERS_DIGITS_ANCHORS), (pii._SSN, pii._SSN_ANCHORS),
                             (pii._EMAIL, pii._EMAIL_ANCHORS)]:
        whole = [m.span() for m in pattern.finditer(text)]
        assert whole and [m.span() for m in pii._finditer(pattern, text, anchors)] == whole
