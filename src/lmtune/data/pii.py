"""PII and secret redaction: replace emails, phones, IPs, card numbers, URLs and secrets.

Patterns run in a fixed order so a broader one never breaks a narrower one: secrets first
(tokens often sit inside URLs and look like random text), then URLs, emails, card numbers,
IPs (v6 before v4) and phone numbers last (the loosest pattern, run once the others are replaced).
Every match is checked where a regex alone would be too eager: card numbers by Luhn, IPv4
octets <= 255, IPv6 by the standard parser, phone numbers by digit count, so years, prices
and version numbers stay as they are.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable

KINDS = ("email", "phone", "ip", "credit_card", "url", "secret")
PLACEHOLDER = {
    "secret": "[SECRET]",
    "url": "[URL]",
    "email": "[EMAIL]",
    "credit_card": "[CREDIT_CARD]",
    "ip": "[IP]",
    "phone": "[PHONE]",
}

# --- secrets --------------------------------------------------------------------------------
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?-----END [A-Z0-9 ]*PRIVATE KEY-----", re.S
)
_TOKENS = re.compile(
    r"\b(?:"
    r"(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key id
    r"|gh[pousr]_[A-Za-z0-9]{30,255}"  # GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_)
    r"|github_pat_[A-Za-z0-9_]{20,255}"  # GitHub fine-grained tokens
    r"|xox[abpr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI-style and Stripe keys
    r"|AIza[0-9A-Za-z_-]{35}"  # Google API key
    r"|eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"  # JWT
    r")"
)
_BEARER = re.compile(r"\b(Bearer\s+)[A-Za-z0-9._~+/=-]{16,}", re.I)
# `api_key = "..."`, `token: ...`, `password=...`: keep the name, hide the value.
_ASSIGN = re.compile(
    r"(?i)\b((?:[a-z0-9]+[_-])*(?:api[_-]?key|apikey|access[_-]?key|secret[_-]?key|"
    r"access[_-]?token|auth[_-]?token|token|secret|password|passwd|pwd)[\"']?\s*[:=]\s*)"
    r"([\"']?)([^\s\"',;`]{6,})\2"
)

# --- URLs, emails ---------------------------------------------------------------------------
_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"'`\[\]{}|\\^]+", re.I)
_EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    r"\.[A-Za-z]{2,}\b"
)

# --- numbers --------------------------------------------------------------------------------
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d|\w)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|"
    r"[0-9A-Fa-f]{1,4})?(?![\w:]|\.\d)"
)
# International: +CC then groups; US/NANP: (555) 123-4567, 555-123-4567, 1-800-555-1234.
_PHONE_INTL = re.compile(r"(?<![\w+])\+[1-9]\d{0,2}(?:[ .-]?\(?\d{1,5}\)?){1,6}(?![\w])")
_PHONE_US = re.compile(
    r"(?<![\w+(-])(?:1[ .-])?(?:\([2-9]\d{2}\)\s?|[2-9]\d{2}[ .-])"
    r"\d{3}[ .-]\d{4}(?![\w-])"
)


def luhn_ok(digits: str) -> bool:
    """True when the digit string passes the Luhn checksum used by payment card numbers."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card(m: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", m.group())
    # A card number is 13-19 digits; one repeated digit passes Luhn but is filler, not a card.
    if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_ok(digits):
        return PLACEHOLDER["credit_card"]
    return None


def _ipv4(m: re.Match[str]) -> str | None:
    parts = m.group().split(".")
    if all(int(p) <= 255 for p in parts):
        return PLACEHOLDER["ip"]
    return None


def _ipv6(m: re.Match[str]) -> str | None:
    s = m.group()
    # "::" alone, C++ "a::b" and times "12:30:45" are not addresses: demand a digit and parse.
    if not re.search(r"\d", s) or s.count(":") < 2:
        return None
    try:
        ipaddress.IPv6Address(s)
    except ValueError:
        return None
    return PLACEHOLDER["ip"]


def _phone(m: re.Match[str]) -> str | None:
    n = len(re.sub(r"\D", "", m.group()))
    # E.164 numbers hold at most 15 digits; fewer than 8 is a short code or a plain number.
    return PLACEHOLDER["phone"] if 8 <= n <= 15 else None


def _url(m: re.Match[str]) -> str:
    s = m.group()
    # Sentence punctuation after a URL is not part of it; nor is an unbalanced ')'.
    trail = ""
    while s and (s[-1] in ".,;:!?'\"" or (s[-1] == ")" and s.count("(") < s.count(")"))):
        trail = s[-1] + trail
        s = s[:-1]
    return PLACEHOLDER["url"] + trail


def _assign(m: re.Match[str]) -> str | None:
    value = m.group(3)
    if value.startswith("[") or value.lower() in ("none", "null", "true", "false"):
        return None
    # Prose like "the secret: patience" has no digits; real values mix letters and digits
    # or are long.
    mixed = re.search(r"\d", value) and re.search(r"[A-Za-z]", value)
    if not (mixed or len(value) >= 20):
        return None
    return m.group(1) + m.group(2) + PLACEHOLDER["secret"] + m.group(2)


def _bearer(m: re.Match[str]) -> str:
    return m.group(1) + PLACEHOLDER["secret"]


Rule = tuple[str, re.Pattern[str], Callable[[re.Match[str]], str | None], Callable[[str], bool]]


def _at_least_digits(n: int) -> Callable[[str], bool]:
    """A pre-check: the text holds n or more ASCII digits (ten C-level counts, no regex)."""
    return lambda text: sum(map(text.count, "0123456789")) >= n


def _may_hold_token(text: str) -> bool:
    # Every _TOKENS alternative holds '_' or '-' or starts with one of these literals.
    return "_" in text or "-" in text or any(s in text for s in ("AKIA", "ASIA", "AIza", "eyJ"))


# Each rule carries a cheap pre-check: most rows hold no '@', '://' or digits, and skipping
# the regex for them is most of the redaction time on large corpora.
_RULES: list[Rule] = [
    ("secret", _PRIVATE_KEY, lambda m: PLACEHOLDER["secret"], lambda t: "-----BEGIN" in t),
    ("secret", _TOKENS, lambda m: PLACEHOLDER["secret"], _may_hold_token),
    ("secret", _BEARER, _bearer, lambda t: "earer" in t or "EARER" in t),
    ("secret", _ASSIGN, _assign, lambda t: ":" in t or "=" in t),
    ("url", _URL, _url, lambda t: "://" in t or "www." in t.lower()),
    ("email", _EMAIL, lambda m: PLACEHOLDER["email"], lambda t: "@" in t),
    ("credit_card", _CARD, _card, _at_least_digits(13)),
    ("ip", _IPV6, _ipv6, lambda t: "::" in t or t.count(":") >= 2),  # v6 before v4
    ("ip", _IPV4, _ipv4, lambda t: "." in t),
    ("phone", _PHONE_INTL, _phone, lambda t: "+" in t),
    ("phone", _PHONE_US, _phone, _at_least_digits(10)),
]


class Redactor:
    """Redacts PII and/or secrets from strings and counts replacements per kind."""

    def __init__(self, pii: bool = True, secrets: bool = True) -> None:
        """pii: emails, phones, IPs, cards, URLs; secrets: keys, tokens, private keys."""
        self.rules = [
            r for r in _RULES if (r[0] == "secret" and secrets) or (r[0] != "secret" and pii)
        ]
        self.counts: Counter[str] = Counter()

    @property
    def enabled(self) -> bool:
        """True when at least one rule is active."""
        return bool(self.rules)

    def __call__(self, text: str) -> str:
        """Text with every match replaced by its placeholder; counts updated."""
        for kind, pattern, fn, may_match in self.rules:
            if may_match(text):
                text = pattern.sub(self._replacer(kind, fn), text)
        return text

    def _replacer(
        self, kind: str, fn: Callable[[re.Match[str]], str | None]
    ) -> Callable[[re.Match[str]], str]:
        def repl(m: re.Match[str]) -> str:
            out = fn(m)
            if out is None:
                return m.group()
            self.counts[kind] += 1
            return out

        return repl

    def report(self) -> dict[str, int]:
        """Replacements per kind (every kind listed, zeros included)."""
        return {k: int(self.counts.get(k, 0)) for k in KINDS}


def redact(text: str, pii: bool = True, secrets: bool = True) -> tuple[str, dict[str, int]]:
    """Convenience: redact one string; returns (text, counts per kind)."""
    r = Redactor(pii=pii, secrets=secrets)
    return r(text), r.report()
