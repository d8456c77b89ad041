"""PII and secret redaction: each kind replaced and counted; look-alikes left alone."""

from __future__ import annotations

import pytest

from lmtune.config import CleanConfig
from lmtune.data.clean import RowCleaner
from lmtune.data.pii import Redactor, luhn_ok, redact

GH = "ghp_" + "a1B2" * 9  # 36 characters after the prefix


@pytest.mark.parametrize(
    ("text", "expected", "kind"),
    [
        ("mail jane.doe+tag@example.co.uk now", "mail [EMAIL] now", "email"),
        ("call +44 20 7946 0958.", "call [PHONE].", "phone"),
        ("call +1-202-555-0143", "call [PHONE]", "phone"),
        ("call (555) 123-4567 today", "call [PHONE] today", "phone"),
        ("call 555.123.4567", "call [PHONE]", "phone"),
        ("call 1-800-555-1234", "call [PHONE]", "phone"),
        ("host 192.168.1.20 is up", "host [IP] is up", "ip"),
        ("host 2001:db8::8a2e:370:7334 is up", "host [IP] is up", "ip"),
        ("loopback ::1.", "loopback [IP].", "ip"),
        ("card 4111 1111 1111 1111 ok", "card [CREDIT_CARD] ok", "credit_card"),
        ("card 5500-0000-0000-0004", "card [CREDIT_CARD]", "credit_card"),
        ("see https://example.com/a?b=1.", "see [URL].", "url"),
        ("see (www.example.org/x)", "see ([URL])", "url"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [SECRET]", "secret"),
        (f"gh {GH}", "gh [SECRET]", "secret"),
        ("gh github_pat_11ABCDEFG0123456789_abcdefghijklmnop", "gh [SECRET]", "secret"),
        ("slack xoxb-123456789012-abcdefABCDEF", "slack [SECRET]", "secret"),
        ("key sk-proj-abcdefghijklmnopqrstuvwx1234", "key [SECRET]", "secret"),
        ("g AIzaSyA1234567890abcdefghijklmnopqrstuv", "g [SECRET]", "secret"),
        (
            "jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVPmB92K27uhbUJU1p1r",
            "jwt [SECRET]",
            "secret",
        ),
        ("Authorization: Bearer abcdef0123456789ghij", "Authorization: Bearer [SECRET]", "secret"),
        ("api_key = 'a8f5f167f44f4964e6c998dee827110c'", "api_key = '[SECRET]'", "secret"),
        ("token: 9f8e7d6c5b4a", "token: [SECRET]", "secret"),
        (
            "x -----BEGIN RSA PRIVATE KEY-----\nMIIEow\nIBAAK\n-----END RSA PRIVATE KEY----- y",
            "x [SECRET] y",
            "secret",
        ),
    ],
)
def test_each_kind_is_redacted_and_counted(text: str, expected: str, kind: str) -> None:
    out, counts = redact(text)
    assert out == expected
    assert counts[kind] == 1
    assert sum(counts.values()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "card 4111 1111 1111 1112 fails Luhn",
        "In 2024 it cost $1,299.99, or 3.14 per unit; version 1.2.3.4.5",
        "order 123456 shipped 2024-01-15 at 10:30:15, zip 90210, call ext 1234",
        "ratio 999.1.1.1 is not an address; std::vector and a::b are code",
        "the secret: patience; the token: expired",
        "tokens like sk-short and desk-top stay",
    ],
)
def test_look_alikes_are_untouched(text: str) -> None:
    out, counts = redact(text)
    assert out == text
    assert sum(counts.values()) == 0


def test_luhn() -> None:
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


def test_switches_and_running_counts() -> None:
    text = "mail a@b.com key AKIAIOSFODNN7EXAMPLE"
    assert redact(text, pii=False)[0] == "mail a@b.com key [SECRET]"
    assert redact(text, secrets=False)[0] == "mail [EMAIL] key AKIAIOSFODNN7EXAMPLE"
    r = Redactor()
    r("a@b.com")
    r("c@d.org and e@f.net")
    assert r.report()["email"] == 3


def test_every_text_field_of_a_row_is_redacted() -> None:
    cleaner = RowCleaner(CleanConfig(pii="redact", secrets="redact"))
    row = {"instruction": "mail a@b.com", "input": "ip 10.0.0.1", "output": "see http://x.io"}
    cleaner(row, "instruction")
    assert row == {"instruction": "mail [EMAIL]", "input": "ip [IP]", "output": "see [URL]"}
    chat = {
        "messages": [
            {"role": "user", "content": "my card 4111111111111111"},
            {"role": "assistant", "content": "call +33 6 12 34 56 78"},
        ]
    }
    cleaner(chat, "chat")
    assert [m["content"] for m in chat["messages"]] == ["my card [CREDIT_CARD]", "call [PHONE]"]
    pair = {"text": "a@b.com", "text_pair": "c@d.com", "label": "x@y.com"}
    cleaner(pair, "pair_classification")
    assert pair == {"text": "[EMAIL]", "text_pair": "[EMAIL]", "label": "x@y.com"}
    assert cleaner.redactions()["email"] == 3
