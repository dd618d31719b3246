"""Remove personal identifiers from text before it leaves the machine.

Remote endpoints only ever see text that went through a :class:`Scrubber` (when ``scrub`` is
on, the default for every remote backend). Each identifier is replaced by a typed placeholder
such as ``[EMAIL]`` so the language model still sees that something was there.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# Order matters: longer / more specific shapes first so a card number is not half-eaten by the
# phone pattern, and an email's digits are gone before phones are searched.
PATTERNS: dict[str, re.Pattern[str]] = {
    "url_credentials": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/@:]+:[^\s/@]+@", re.I),
    "email": re.compile(r"[\w.+%-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){3,7}(?:[ ]?[A-Z0-9]{1,3})?\b"),
    "cn_id": re.compile(r"(?<!\d)\d{17}[\dXx](?!\d)"),
    "card": re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)"),
    "ipv4": re.compile(r"(?<!\d)(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?!\d)"),
    # +country code, optional area code in brackets, groups split by space/dot/dash; Chinese
    # mobile numbers (1[3-9] + 9 digits) and US-style (xxx) xxx-xxxx both match. The
    # boundaries are ASCII-only because CJK characters count as \w and often touch numbers.
    "phone": re.compile(
        r"(?<![A-Za-z0-9_+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){1,4}"
        r"(?![A-Za-z0-9_])"),
}
_YEAR_RANGE = re.compile(r"^(?:1[89]|20)\d\d\s*[-.]\s*(?:1[89]|20)\d\d$")  # "1999-2000"
DEFAULT_KINDS: tuple[str, ...] = ("url_credentials", "email", "iban", "cn_id", "card", "ipv4",
                                  "phone")


class Scrubber:
    """Replace identifiers in text with ``[KIND]`` placeholders.

    Args:
        kinds: which built-in patterns to apply (names from ``PATTERNS``), in that order.
        extra: additional regular expressions (strings), each replaced by ``[REDACTED]``.
        min_phone_digits: a phone-shaped run must hold at least this many digits to be
            removed, so years ("1999"), ratings and short counts are left alone.
    """

    def __init__(self, kinds: Iterable[str] = DEFAULT_KINDS, extra: Iterable[str] = (),
                 min_phone_digits: int = 7):
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in PATTERNS]
        if unknown:
            from llmrecall.errors import ConfigError
            raise ConfigError(f"unknown scrub kinds {unknown}; known: {sorted(PATTERNS)}")
        self.kinds = kinds
        self.extra = tuple(re.compile(p) for p in extra)
        self.min_phone_digits = min_phone_digits

    def _phone(self, match: re.Match[str]) -> str:
        text = match.group(0)
        digits = sum(c.isdigit() for c in text)
        if digits < self.min_phone_digits or _YEAR_RANGE.match(text):
            return text
        return "[PHONE]"

    def __call__(self, text: str) -> str:
        """The text with every configured identifier replaced; other text unchanged."""
        for kind in self.kinds:
            pattern = PATTERNS[kind]
            if kind == "phone":
                text = pattern.sub(self._phone, text)
            elif kind == "url_credentials":
                text = pattern.sub(lambda m: m.group(0).split("://")[0] + "://[CREDENTIALS]@", text)
            else:
                text = pattern.sub(f"[{kind.upper()}]", text)
        for pattern in self.extra:
            text = pattern.sub("[REDACTED]", text)
        return text

    def many(self, texts: Iterable[str]) -> list[str]:
        return [self(t) for t in texts]
