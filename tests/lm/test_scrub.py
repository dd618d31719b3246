"""The scrubber removes identifiers before text leaves the machine, and leaves the rest."""

from __future__ import annotations

import pytest

from llmrecall.errors import ConfigError
from llmrecall.lm.scrub import Scrubber


@pytest.mark.parametrize("text,placeholder,secret", [
    ("write to jane.doe+news@example.co.uk today", "[EMAIL]", "jane.doe"),
    ("call +1 (415) 555-0132 now", "[PHONE]", "555-0132"),
    ("我的手机号是13812345678，请联系", "[PHONE]", "13812345678"),
    ("tel: 020-8765 4321", "[PHONE]", "8765"),
    ("card 4111 1111 1111 1111 expired", "[CARD]", "4111"),
    ("身份证 11010519491231002X 已登记", "[CN_ID]", "11010519491231002X"),
    ("server at 192.168.10.24 failed", "[IPV4]", "192.168.10.24"),
    ("IBAN DE89 3704 0044 0532 0130 00 paid", "[IBAN]", "3704"),
    ("fetch https://bob:hunter2@example.com/x", "[CREDENTIALS]", "hunter2"),
])
def test_identifiers_are_removed(text, placeholder, secret):
    out = Scrubber()(text)
    assert placeholder in out and secret not in out


def test_ordinary_text_is_left_alone():
    scrub = Scrubber()
    for text in ["Toy Story (1995). Categories: Animation", "2001: A Space Odyssey",
                 "rated 4.5 by 1,024 people", "Top 10 films of 1999-2000", "三体 第2部",
                 "Apollo 13", "size 42, 3 pack"]:
        assert scrub(text) == text


def test_configurable():
    only_email = Scrubber(kinds=["email"])
    assert only_email("a@b.io 13812345678") == "[EMAIL] 13812345678"
    custom = Scrubber(kinds=[], extra=[r"ORDER-\d+"])
    assert custom("ref ORDER-99812 shipped") == "ref [REDACTED] shipped"
    with pytest.raises(ConfigError, match="unknown scrub kinds"):
        Scrubber(kinds=["passport"])
    assert Scrubber().many(["x@y.org", "ok"]) == ["[EMAIL]", "ok"]
