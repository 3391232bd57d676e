"""Personal data in a dataset: what kind, how often, and salted hashes of the values, never the values.

Kinds, in the order they claim text (a span one kind found is not counted again by a later one):

    private-key   a PEM `-----BEGIN ... PRIVATE KEY-----` header (with its block up to the
                  matching END line when there is one within MAX_PEM_CHARS)
    api-key       AWS `AKIA`/`ASIA` ids, GitHub `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_`/`github_pat_`,
                  Slack `xox[baprs]-`, Google `AIza`, Stripe `sk_live_`/`rk_live_`, OpenAI-style
                  `sk-` (20+ letters and digits, or `sk-proj-`/`sk-ant-`/`sk-svcacct-`)
    email         local@domain.tld, ASCII; the reserved example domains (example.com/.net/.org,
                  .example, .test, .invalid, .localhost) are not personal and are not counted
    iban          a country code of the IBAN registry, the country's length, mod-97 check
    card          13-19 digits, the first eight as two groups of four (a space or a dash may
                  separate groups), an issuer's first digit (3-6), a valid Luhn digit, not all
                  one digit
    national-id   US SSN `ddd-dd-dddd` outside the never-issued ranges (area 000, 666, 900-999;
                  group 00; serial 0000) and UK National Insurance numbers
    ip            IPv4 outside the private, loopback, link-local, shared, documentation,
                  multicast and reserved ranges (fixed tables here, not `ipaddress.is_global`,
                  whose tables change between Python releases); IPv6 in 2000::/3 (global
                  unicast) outside the documentation prefixes 2001:db8::/32 and 3fff::/20
    phone         `phonenumbers.PhoneNumberMatcher(region "US", leniency VALID)` run only on
                  phone-shaped spans: North American (1) 3-3-4 digit groups, or a "+" and 7-15
                  digits in up to six groups; the matcher is the slow part (about 80 us), so past
                  MAX_PHONE_CHECKS distinct spans a span counts as a phone without it

Values are normalised (lower-case e-mail, E.164 phone, card and IBAN digits without separators,
compressed IP, a PEM block's base64 without whitespace) and hashed as
sha256(salt + kind + b"\\0" + value), salt = sha256(b"blyan-pii-salt/1\\0" + CID): a report carries
counts and at most MAX_PII_HASHES hashes per kind, never a value, and the same value in two
datasets hashes differently. The salt is public (every validator must rebuild the same bytes), so
a hash of a value from a small space (an SSN, a phone number, an IPv4 address) can be found by
trying them all: the hashes are pseudonyms, not secrets. Only `redact` writes text near a value,
and it writes the text without them.

Patterns are ASCII (`re.ASCII`). Each runs on the lines that hold its anchor, a literal or a short
run of character classes that Python's `re` scans fast (see `_lines_with`). Determinism rests on the
pinned `phonenumbers` metadata: another release may judge a number valid that this one does not.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass

from chain.payloads import MAX_PII_HASHES, PiiFinding
from node.data.l0.formats import FORMATS

SALT_DOMAIN = b"blyan-pii-salt/1\x00"
MAX_PEM_CHARS = 65_536
"""Longest PEM block redacted as one finding (a header without its END within this is alone)."""
MAX_PHONE_CHECKS = 20_000
"""Distinct phone-shaped spans a dataset's audit validates (about 80 us each); any further one
counts as a phone unvalidated, so a file dense with numbers costs seconds, not minutes."""
KINDS = ("private-key", "api-key", "email", "iban", "card", "national-id", "ip", "phone")
"""Every kind, in the order they claim text."""

_A = re.ASCII
_PEM_BEGIN = re.compile(r"-----BEGIN ((?:[A-Z0-9]+ ){0,4})PRIVATE KEY-----", _A)
_PEM_END = re.compile(r"-----END ((?:[A-Z0-9]+ ){0,4})PRIVATE KEY-----", _A)
_API_KEY = re.compile(
    r"(?<![A-Za-z0-9_-])(?:(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{50,}"
    r"|xox[baprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}|[sr]k_live_[0-9A-Za-z]{24,}"
    r"|sk-(?:proj-|ant-|svcacct-)[A-Za-z0-9_-]{20,}|sk-[A-Za-z0-9]{20,})(?![A-Za-z0-9_-])", _A)
_EMAIL = re.compile(
    r"(?<![\w.%+-])[\w.%+-]{1,64}@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.){1,8}[A-Za-z]{2,24})(?![\w-])",
    _A)
_RESERVED_DOMAIN = re.compile(r"(?:^|\.)(?:example\.(?:com|net|org)|example|test|invalid|localhost)$", _A)
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})", _A)
_CARD = re.compile(r"(?<![\d.-])[3-6]\d{3}[ -]?\d{4}(?:[ -]?\d){5,11}(?!\d|[.,]\d)", _A)
_SSN = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])", _A)
_NINO = re.compile(
    r"(?<![A-Za-z0-9])(?!BG|GB|NK|KN|TN|NT|ZZ)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]"
    r"(?![A-Za-z0-9])", _A)
_IPV4 = re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
                   r"(?!\w|\.\d)", _A)
_IPV6 = re.compile(r"(?<![\w:.])[23][0-9A-Fa-f]{3}(?::[0-9A-Fa-f]{0,4}){2,7}(?![\w:])", _A)
_PHONE = re.compile(
    r"(?<![\w.+-])(?:\+\d{7,15}|\+\d{1,3}[ .-]?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]\d{1,5}){0,4}"
    r"|(?:1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4})(?!\w|[.-]\d)", _A)
_SEPARATORS = str.maketrans("", "", " -")

# Fast scans that every match of a kind's pattern contains (see _lines_with): Python's `re` runs a
# literal or a short run of classes many times faster than a pattern opening with a lookbehind.
_API_KEY_ANCHORS = tuple(re.compile(re.escape(p)) for p in (
    "AKIA", "ASIA", "AIza", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xoxb-", "xoxa-", "xoxp-",
    "xoxr-", "xoxs-", "sk_live_", "rk_live_", "sk-"))
_EMAIL_ANCHORS = (re.compile("@"),)
_LETTERS_DIGITS_ANCHORS = (re.compile(r"[A-Z][A-Z] ?\d\d", _A),)
_CARD_ANCHORS = (re.compile(r"\d\d\d\d[ -]?\d\d\d\d", _A),)
_SSN_ANCHORS = (re.compile(r"\d\d\d-\d\d-\d\d\d\d", _A),)
_IPV4_ANCHORS = (re.compile(r"\d\.\d", _A),)
_IPV6_ANCHORS = (re.compile(r"[23][0-9A-Fa-f][0-9A-Fa-f][0-9A-Fa-f]:", _A),)
_PHONE_ANCHORS = (re.compile(r"\+\d", _A), re.compile(r"\d\d\d[ .)-] ?\d\d\d", _A))

_IPV4_NOT_PERSONAL = tuple(ipaddress.IPv4Network(n) for n in (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4"))
_IPV6_GLOBAL = ipaddress.IPv6Network("2000::/3")
_IPV6_NOT_PERSONAL = (ipaddress.IPv6Network("2001:db8::/32"), ipaddress.IPv6Network("3fff::/20"))

_IBAN_LENGTHS = dict((entry[:2], int(entry[2:])) for entry in (
    "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 DO28 EE20 EG29 "
    "ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 IQ23 IS26 IT27 JO30 KW30 KZ20 "
    "LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 "
    "RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20").split())


@dataclass(frozen=True, slots=True)
class Finding:
    """One occurrence; internal to the audit and `redact` (its value must not be logged)."""

    kind: str
    """One of KINDS."""
    start: int
    """Offset of its first character in the text."""
    end: int
    """Offset after its last character."""
    value: str
    """The normalised value (hashed for the report, never shown)."""

    def __repr__(self) -> str:
        return f"Finding({self.kind!r}, {self.start}, {self.end})"


class _Claims:
    """Non-overlapping spans already claimed, sorted, for O(log n) overlap checks."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def is_free(self, start: int, end: int) -> bool:
        i = bisect.bisect_right(self.starts, start)
        if i and self.ends[i - 1] > start:
            return False
        return i == len(self.starts) or self.starts[i] >= end

    def claim_all(self, findings: list[Finding]) -> None:
        """Claim the spans of `findings` (free, non-overlapping): one merge, not an insert each."""
        spans = sorted([*zip(self.starts, self.ends, strict=True), *((f.start, f.end) for f in findings)])
        self.starts = [s for s, _ in spans]
        self.ends = [e for _, e in spans]


def find_pii(text: str) -> list[Finding]:
    """Every finding in `text`, in text order."""
    claims = _Claims()
    found: list[Finding] = []
    for scan in _SCANS:
        accepted: list[Finding] = []
        last_end = 0
        for finding in scan(text, claims):   # each scan yields in text order
            if finding.start >= last_end and claims.is_free(finding.start, finding.end):
                accepted.append(finding)
                last_end = finding.end
        claims.claim_all(accepted)
        found.extend(accepted)
    found.sort(key=lambda f: f.start)
    return found


def _lines_with(text: str, anchors: tuple[re.Pattern[str], ...]) -> list[tuple[int, int]]:
    """(start, end) of the runs of lines holding a match of one of `anchors`, in text order.

    Each kind's pattern runs only on these lines: no pattern matches a newline and their
    lookarounds treat a line's end like a newline, so this finds what a scan of the whole text
    would, at the cost of a few fast anchor scans (a literal or a short run of classes)."""
    starts: set[int] = set()
    for anchor in anchors:
        pos = 0
        while (m := anchor.search(text, pos)) is not None:
            start = text.rfind("\n", 0, m.start()) + 1
            starts.add(start)
            end = text.find("\n", m.end())
            if end < 0:
                break
            pos = end + 1
    spans: list[tuple[int, int]] = []
    for start in sorted(starts):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        if spans and spans[-1][1] + 1 >= start:
            spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
        else:
            spans.append((start, end))
    return spans


def _finditer(pattern: re.Pattern[str], text: str, anchors: tuple[re.Pattern[str], ...]) -> Iterator[re.Match[str]]:
    for start, end in _lines_with(text, anchors):
        yield from pattern.finditer(text, start, end)


def _scan_private_keys(text: str, claims: _Claims) -> Iterator[Finding]:
    ends = [(m.start(), m.end(), m.group(1)) for m in _PEM_END.finditer(text)]
    end_starts = [e[0] for e in ends]
    block_end = 0
    for m in _PEM_BEGIN.finditer(text):
        if m.start() < block_end:
            continue
        i = bisect.bisect_left(end_starts, m.end())
        if i < len(ends) and ends[i][2] == m.group(1) and ends[i][1] - m.start() <= MAX_PEM_CHARS:
            body = "".join(text[m.end():ends[i][0]].split())
            block_end = ends[i][1]
            yield Finding("private-key", m.start(), block_end, body)
        else:
            yield Finding("private-key", m.start(), m.end(), "")


def _scan_api_keys(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_API_KEY, text, _API_KEY_ANCHORS):
        yield Finding("api-key", m.start(), m.end(), m.group(0))


def _scan_emails(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_EMAIL, text, _EMAIL_ANCHORS):
        if not _RESERVED_DOMAIN.search(m.group(1).lower()):
            yield Finding("email", m.start(), m.end(), m.group(0).lower())


def _scan_ibans(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_IBAN, text, _LETTERS_DIGITS_ANCHORS):
        length = _IBAN_LENGTHS.get(m.group(1))
        compact = m.group(0).replace(" ", "")
        if length is None or len(compact) < length:
            continue
        iban = compact[:length]
        if _is_iban_checksum_valid(iban):
            end, kept = m.start(), 0
            while kept < length:          # the span of the first `length` characters
                kept += text[end] != " "
                end += 1
            yield Finding("iban", m.start(), end, iban)


def _is_iban_checksum_valid(iban: str) -> bool:
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _scan_cards(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_CARD, text, _CARD_ANCHORS):
        digits = m.group(0).translate(_SEPARATORS)
        if len(set(digits)) > 1 and is_luhn_valid(digits):
            yield Finding("card", m.start(), m.end(), digits)


def is_luhn_valid(digits: str) -> bool:
    """Whether the last digit of `digits` is the Luhn check digit of the others."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _scan_ssns(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_SSN, text, _SSN_ANCHORS):
        yield Finding("national-id", m.start(), m.end(), m.group(0))


def _scan_ninos(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_NINO, text, _LETTERS_DIGITS_ANCHORS):
        yield Finding("national-id", m.start(), m.end(), m.group(0).replace(" ", ""))


def _scan_ipv4s(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_IPV4, text, _IPV4_ANCHORS):
        ip4 = ipaddress.IPv4Address(m.group(0))
        if not any(ip4 in net for net in _IPV4_NOT_PERSONAL):
            yield Finding("ip", m.start(), m.end(), str(ip4))


def _scan_ipv6s(text: str, claims: _Claims) -> Iterator[Finding]:
    for m in _finditer(_IPV6, text, _IPV6_ANCHORS):
        try:
            ip6 = ipaddress.IPv6Address(m.group(0))
        except ValueError:
            continue
        if ip6 in _IPV6_GLOBAL and not any(ip6 in net for net in _IPV6_NOT_PERSONAL):
            yield Finding("ip", m.start(), m.end(), ip6.compressed)


def _scan_phones(text: str, claims: _Claims) -> Iterator[Finding]:
    import phonenumbers

    checked: dict[str, list[tuple[int, int, str]]] = {}
    for cand in _finditer(_PHONE, text, _PHONE_ANCHORS):
        span = cand.group(0)
        if not 7 <= sum(c.isdigit() for c in span) <= 15 or not claims.is_free(cand.start(), cand.end()):
            continue
        found = checked.get(span)
        if found is None:
            if len(checked) < MAX_PHONE_CHECKS:
                found = [(pm.start, pm.end, phonenumbers.format_number(pm.number, phonenumbers.PhoneNumberFormat.E164))
                         for pm in phonenumbers.PhoneNumberMatcher(span, "US", leniency=phonenumbers.Leniency.VALID)]
                checked[span] = found
            else:   # past the budget: counted as a phone unchecked (over-counting, never under-counting)
                found = [(0, len(span), ("+" if span[0] == "+" else "") + "".join(filter(str.isdigit, span)))]
        for start, end, value in found:
            yield Finding("phone", cand.start() + start, cand.start() + end, value)


_SCANS = (_scan_private_keys, _scan_api_keys, _scan_emails, _scan_ibans, _scan_cards, _scan_ssns, _scan_ninos,
          _scan_ipv4s, _scan_ipv6s, _scan_phones)


def compute_salt(cid: str) -> bytes:
    """The per-dataset salt of the PII hashes."""
    return hashlib.sha256(SALT_DOMAIN + cid.encode()).digest()


def summarise_pii(findings: list[Finding], cid: str) -> tuple[PiiFinding, ...]:
    """Counts and salted hashes by kind: kinds sorted, absent when none, the MAX_PII_HASHES smallest hashes."""
    salt = compute_salt(cid)
    counts: dict[str, int] = {}
    hashes: dict[str, set[bytes]] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
        digest = hashlib.sha256(salt + f.kind.encode() + b"\x00" + f.value.encode()).digest()
        hashes.setdefault(f.kind, set()).add(digest)
    return tuple(PiiFinding(kind, counts[kind], tuple(sorted(hashes[kind])[:MAX_PII_HASHES]))
                 for kind in sorted(counts))


def redact_text(text: str) -> str:
    """`text` with each finding replaced by `[REDACTED:<kind>]`."""
    out, pos = [], 0
    for f in find_pii(text):
        out.append(text[pos:f.start])
        out.append(f"[REDACTED:{f.kind}]")
        pos = f.end
    out.append(text[pos:])
    return "".join(out)


def redact(data: bytes, format: str) -> bytes:
    """The redacted copy of a dataset (any format: the audit scans the whole text, so this removes
    exactly what it counted). Bytes that are not UTF-8 pass through unchanged."""
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}")
    text = data.decode("utf-8", errors="surrogateescape")
    return redact_text(text).encode("utf-8", errors="surrogateescape")
