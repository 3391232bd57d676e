"""Personal data in a text: where it is, what kind, and salted hashes of the values.

Kinds: email, phone (through `phonenumbers`, region US, leniency VALID), ip (global IPv4, and
global IPv6 in 2000::/3, compressed forms included: private, loopback and documentation ranges
are not personal), card (13-19 digits with an issuer prefix and a valid Luhn digit), iban
(mod-97), national-id (US SSN outside the never-issued ranges), api-key (AWS, GitHub, Slack,
Google, OpenAI-style `sk-`), private-key (PEM headers). A value is normalised (lower-case
e-mail, E.164 phone, digits of a card...) and hashed as sha256(salt, kind, 0, value), the salt
being derived from the dataset's CID: the report carries counts and hashes, never a value.
`redact` replaces each finding by `[REDACTED:<kind>]`.

Regular expressions run over the whole text (not line by line in Python); the phone matcher,
the slow one, only sees spans that hold seven digits or more. Each pattern starts with a character
class (its leading look-behind moved after the first character, an equivalent rewrite), so the
regex engine skips ahead to the characters a match can start with instead of trying every
position; the e-mail pattern runs only in windows around each '@'. The matches are exactly those
of the plain patterns over the whole text (`tests/node/data/test_audit.py` checks both forms).
Claimed spans are kept sorted, so a dataset with many findings is not quadratic in them.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass

from chain.payloads import MAX_PII_HASHES, PiiFinding

SALT_DOMAIN = b"blyan-pii-salt/1\x00"

_EMAIL = re.compile(
    r"(?<![\w.%+-])[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b")
_EMAIL_LOCAL_MAX = 64
"""Longest local part: a match starts at most this far before its (only) '@'."""
_EMAIL_DOMAIN_RUN = re.compile(r"[A-Za-z0-9.-]*")
"""What an e-mail match may hold after its '@': the match ends inside this run."""
# `(?<!X)c...` is written `c(?<!X.)...` (the same condition on the character before the match)
# so that the pattern starts with a character class: see the module docstring.
_IPV4 = re.compile(r"\d(?<![\d.].)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\d.])")
_IPV6 = re.compile(r"[0-9A-Fa-f:](?<![:\w].)[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:]*(?![:\w])")
"""A whole run of hex digits and colons, with a colon in its first six characters (compressed
forms such as 2001:db8::1 included); `ipaddress` decides whether it is an address."""
_IPV6_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")
"""The only IPv6 range handed out for global unicast: `ipaddress` calls 1::2 global too, and
slices such as x[1::2] would count."""
_CARD = re.compile(r"[3-6](?<![\d-].)\d(?:[ -]?\d){11,17}(?![\d-])")
_IBAN = re.compile(r"[A-Z](?<!\w.)[A-Z]\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
# (?!000|666|9\d\d)\d{3}: a first digit other than 9, then neither 000 nor 666 behind.
_SSN = re.compile(r"[^\D9](?<![\d-].)\d\d(?<!000)(?<!666)-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_API_KEYS = re.compile(
    r"(?:A(?<!\w.)KIA[0-9A-Z]{16}|g(?<!\w.)(?:h[pousr]_[A-Za-z0-9]{36}|ithub_pat_[A-Za-z0-9_]{40,})"
    r"|x(?<!\w.)ox[baprs]-[A-Za-z0-9-]{10,}|A(?<!\w.)Iza[0-9A-Za-z_-]{35}|s(?<!\w.)k-[A-Za-z0-9]{20,})\b")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----")
# (?<![\w.])\+?\(?\d...: the first character is '+', '(' or a digit, and decides the branch.
_PHONE_CANDIDATE = re.compile(
    r"[+(\d](?<![\w.].)(?:(?<=\+)\(?\d|(?<=\()\d|(?<=\d))[\d ().-]{5,18}\d(?![\w])")
_DIGITS = re.compile(r"\d")


@dataclass(frozen=True, slots=True)
class Match:
    kind: str
    start: int
    end: int
    value: str
    """Normalised."""


def compute_salt(cid: str) -> bytes:
    return hashlib.sha256(SALT_DOMAIN + cid.encode()).digest()


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _iban_ok(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    moved = iban[4:] + iban[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _global_ip(text: str) -> str | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if ip.version == 6 and ip not in _IPV6_GLOBAL_UNICAST:
        return None
    return ip.compressed if ip.is_global else None


def find_pii(text: str) -> list[Match]:
    """Every finding, in text order; a span claimed by one kind is not counted again by another."""
    found: list[Match] = []
    taken = _Taken()

    def add(kind: str, m: re.Match, value: str) -> None:
        if taken.claim(m.start(), m.end()):
            found.append(Match(kind, m.start(), m.end(), value))

    for m in _PRIVATE_KEY.finditer(text):
        add("private-key", m, m.group(0))
    for m in _API_KEYS.finditer(text):
        add("api-key", m, m.group(0))
    for m in _find_emails(text):
        add("email", m, m.group(0).lower())
    for m in _IBAN.finditer(text):
        iban = m.group(0).replace(" ", "")
        if _iban_ok(iban):
            add("iban", m, iban)
    for m in _CARD.finditer(text):
        digits = re.sub(r"[ -]", "", m.group(0))
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and _luhn_ok(digits):
            add("card", m, digits)
    for m in _SSN.finditer(text):
        add("national-id", m, m.group(0))
    for m in _IPV4.finditer(text):
        value = _global_ip(m.group(0))
        if value is not None:
            add("ip", m, value)
    for m in _IPV6.finditer(text):
        value = _global_ip(m.group(0))
        if value is not None:
            add("ip", m, value)
    _find_phones(text, add, taken.is_free)
    found.sort(key=lambda f: (f.start, f.kind))
    return found


class _Taken:
    """Disjoint spans already claimed, sorted (a lookup is a bisection, not a scan of them all)."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._ends: list[int] = []

    def is_free(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self._starts, start)
        if i > 0 and self._ends[i - 1] > start:
            return False
        return i == len(self._starts) or self._starts[i] >= end

    def claim(self, start: int, end: int) -> bool:
        """Take [start, end) if it overlaps no claimed span; whether it did."""
        if not self.is_free(start, end):
            return False
        i = bisect.bisect_right(self._starts, start)
        self._starts.insert(i, start)
        self._ends.insert(i, end)
        return True


def _find_emails(text: str) -> Iterator[re.Match]:
    """`_EMAIL.finditer(text)`, searching only near each '@' (each match holds exactly one).

    A match starting at p holds one '@' at most _EMAIL_LOCAL_MAX after p and ends inside the run
    of domain characters after it; the search window ends one character past that run (what
    the final `\\b` looks at), so each search sees what a search of the whole text would."""
    if text.count("@") * _EMAIL_LOCAL_MAX > len(text):  # dense: one pass is cheaper
        yield from _EMAIL.finditer(text)
        return
    pos = 0
    at = text.find("@")
    while at != -1:
        if at >= pos:
            end = _EMAIL_DOMAIN_RUN.match(text, at + 1).end()
            m = _EMAIL.search(text, max(pos, at - _EMAIL_LOCAL_MAX), end + 1)
            if m is not None:
                yield m
                pos = m.end()
        at = text.find("@", at + 1)


def _find_phones(text: str, add, free) -> None:  # noqa: ANN001 - local callbacks
    seen: dict[str, list[tuple[int, int, str]]] = {}  # candidate -> its numbers (a repeat is common)
    for cand in _PHONE_CANDIDATE.finditer(text):
        if len(_DIGITS.findall(cand.group(0))) < 7 or not free(cand.start(), cand.end()):
            continue
        numbers = seen.get(cand.group(0))
        if numbers is None:
            numbers = seen[cand.group(0)] = _match_phones(cand.group(0))
        for start, end, value in numbers:
            add("phone", _Span(cand.start() + start, cand.start() + end), value)


def _match_phones(candidate: str) -> list[tuple[int, int, str]]:
    """(start, end, E.164) of the valid US-region numbers in `candidate`."""
    import phonenumbers

    return [(pm.start, pm.end, phonenumbers.format_number(pm.number, phonenumbers.PhoneNumberFormat.E164))
            for pm in phonenumbers.PhoneNumberMatcher(candidate, "US", leniency=phonenumbers.Leniency.VALID)]


class _Span:
    """A match-like span (start(), end()) for a phone number found inside a candidate."""

    def __init__(self, start: int, end: int) -> None:
        self._start, self._end = start, end

    def start(self) -> int:
        return self._start

    def end(self) -> int:
        return self._end


def summarise(matches: list[Match], cid: str) -> tuple[PiiFinding, ...]:
    """Counts and salted hashes by kind (kinds sorted; the MAX_PII_HASHES smallest hashes)."""
    salt = compute_salt(cid)
    by_kind: dict[str, tuple[int, set[bytes]]] = {}
    for m in matches:
        count, hashes = by_kind.get(m.kind, (0, set()))
        hashes.add(hashlib.sha256(salt + m.kind.encode() + b"\x00" + m.value.encode()).digest())
        by_kind[m.kind] = (count + 1, hashes)
    return tuple(PiiFinding(kind, count, tuple(sorted(hashes)[:MAX_PII_HASHES]))
                 for kind, (count, hashes) in sorted(by_kind.items()))


def redact(text: str) -> str:
    """`text` with every finding replaced by `[REDACTED:<kind>]`."""
    out, pos = [], 0
    for m in find_pii(text):
        out.append(text[pos:m.start])
        out.append(f"[REDACTED:{m.kind}]")
        pos = m.end
    out.append(text[pos:])
    return "".join(out)
