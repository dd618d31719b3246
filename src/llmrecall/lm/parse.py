"""Treat language-model text as untrusted: delimit it going in, validate it coming out.

Going in (:func:`delimit`, :func:`delimit_list`): item titles, descriptions and user text are
placed inside tagged blocks such as ``<item>…</item>``. Angle brackets inside the text are
replaced by look-alike characters, so the text can neither close its block nor open a new
instruction block; control characters are removed and length is capped. Templates tell the
model that tagged blocks are data, never instructions.

Coming out (:func:`parse_list` and the typed wrappers): small models answer with numbered
lists, bullets, JSON wrapped in code fences or followed by chatter, duplicates, and sometimes
garbage. The parser repairs the common shapes, rejects what is not usable, caps length and
count, and dedupes (case- and width-insensitive), or raises :class:`GenerationParseError`.
:func:`parse_lines` and :func:`first_title` are the plain readers of the interest job's
shipped prompts (every line of a chat answer; the first title of a completion), kept as they
are so what those prompts produce does not change.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from llmrecall.lm.errors import GenerationParseError

# -------------------------------------------------------------------------------------------
# Going in
# -------------------------------------------------------------------------------------------
_TAG = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_ESCAPES = str.maketrans({"<": "‹", ">": "›"})
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def clean_text(text: str, max_chars: int = 500) -> str:
    """NFC-normalised text without control/bidi characters, whitespace collapsed, capped."""
    text = unicodedata.normalize("NFC", str(text))
    text = _CONTROL.sub(" ", text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1].rstrip() + "…"
    return text


def delimit(text: str, tag: str = "item", max_chars: int = 500) -> str:
    """``<tag>text</tag>`` with the text cleaned and its angle brackets neutralised.

    The result can be pasted into a prompt: nothing inside can end the block or start another.
    """
    if not _TAG.match(tag):
        raise ValueError(f"tag must match {_TAG.pattern}, got {tag!r}")
    return f"<{tag}>{clean_text(text, max_chars).translate(_ESCAPES)}</{tag}>"


def delimit_list(texts: Iterable[str], tag: str = "item", max_chars: int = 300,
                 max_items: int = 50) -> str:
    """One delimited block per line, at most ``max_items`` (the most recent last, as given)."""
    texts = list(texts)[-max_items:] if max_items else list(texts)
    return "\n".join(delimit(t, tag, max_chars) for t in texts)


# -------------------------------------------------------------------------------------------
# Coming out
# -------------------------------------------------------------------------------------------
_FENCE = re.compile(r"```[a-zA-Z0-9_-]*\s*\n?(.*?)```", re.S)
_BULLET = re.compile(
    r"^\s*(?:[-*•·●▪►+–—]|\(?\d{1,3}[.)、:：]|\d{1,3}\s+-|[a-zA-Z][.)]\s|[①-⑳]|"
    r"[一二三四五六七八九十]+[、.．])\s*")
_LABEL = re.compile(r"^\s*(?:\*\*)?[\w\s]{1,24}?(?:\*\*)?\s*[:：]\s+(?=\S)")
_QUOTES = "\"'“”‘’「」『』`*_"
_REFUSAL = re.compile(r"(?i)\b(as an ai|language model|i cannot|i can't|i'm sorry|sorry, but)\b|"
                      r"抱歉|作为一个?(?:AI|人工智能)")
_PROMPT_ECHO = re.compile(r"(?i)(<\|[a-z_]+\|>|</?(?:item|history|user|system|profile|query)>|"
                          r"\bignore (?:all |the )?(?:previous|above) instructions\b)")
_LIST_KEYS = ("items", "interests", "queries", "titles", "keywords", "themes", "list",
              "results", "answer")
_ITEM_KEYS = ("title", "name", "query", "interest", "text", "keyword", "value")
_INTRO = re.compile(r"(?i)^(?:here (?:are|is)|sure|certainly|okay|ok|the following|"
                    r"based on|以下是|好的|当然)\b.*[:：]?$|.*[:：]$")


@dataclass(frozen=True)
class ListRules:
    """Bounds for one kind of generated list."""

    max_items: int = 10
    max_chars: int = 80
    min_chars: int = 2
    max_words: int = 16


INTERESTS = ListRules(max_items=8, max_chars=80, max_words=12)
QUERIES = ListRules(max_items=8, max_chars=100, max_words=16)
TITLES = ListRules(max_items=10, max_chars=120, max_words=20)
KEYWORDS = ListRules(max_items=12, max_chars=40, max_words=5)


def _strip_fences(text: str) -> str:
    fenced = _FENCE.findall(text)
    if fenced:
        return "\n".join(fenced)
    return text.replace("```", "")


def _first_json(text: str):
    """The first JSON array or object in ``text``, tolerating text before and after it."""
    decoder = json.JSONDecoder()
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        return value
    return None


_QUOTED = re.compile(r'"(?:[^"\\\n]|\\.)*"')  # one JSON string literal on one line


def _json_like_strings(text: str) -> list[str] | None:
    """Strings from JSON, repairing output cut off by the token limit.

    If the first bracket starts valid JSON, its strings are used. If it does not (typically
    truncated: ``["a", "b", "c`` or an object cut mid-way), the complete quoted strings after
    it that are not object keys are used, so a truncated answer still yields its finished
    elements instead of falling back to line splitting over JSON syntax.
    """
    first = re.search(r"[\[{]", text)
    if first is None:
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text, first.start())
        return _json_strings(value)
    except ValueError:
        pass
    out = []
    # strings matched left to right, so an opening quote is never mistaken for a closing one
    for match in _QUOTED.finditer(text, first.start()):
        if re.match(r"\s*:", text[match.end():]):
            continue  # an object key
        try:
            out.append(json.loads(match.group(0)))
        except ValueError:
            out.append(match.group(0)[1:-1])
    if out:
        return out
    value = _first_json(text[first.start() + 1:])
    return _json_strings(value) if value is not None else None


def _json_strings(value, keys: tuple[str, ...] = _LIST_KEYS) -> list[str] | None:
    """Strings from a JSON value: a list of strings/objects, or an object holding such a list."""
    if isinstance(value, dict):
        for key in keys:
            if key in value:
                return _json_strings(value[key], keys)
        lists = [v for v in value.values() if isinstance(v, list)]
        if lists:
            return _json_strings(lists[0], keys)
        strings = [v for v in value.values() if isinstance(v, str)]
        return strings or None
    if isinstance(value, list):
        out = []
        for element in value:
            if isinstance(element, str):
                out.append(element)
            elif isinstance(element, (int, float)) and not isinstance(element, bool):
                out.append(str(element))
            elif isinstance(element, dict):
                for key in _ITEM_KEYS:
                    if isinstance(element.get(key), str):
                        out.append(element[key])
                        break
        return out
    if isinstance(value, str):
        return [value]
    return None


def _line_candidates(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) == 1:
        # one line: a comma/semicolon/、 separated list, unless it reads like a sentence
        line = lines[0]
        parts = re.split(r"\s*[;；、|]\s*|\s*[,，]\s*", line)
        if len(parts) > 1 and all(len(p.split()) <= 8 for p in parts):
            return parts
        return [line]
    return [ln for ln in lines if not _INTRO.match(ln.strip()) or _BULLET.match(ln)]


def _clean_candidate(raw: str, rules: ListRules) -> str | None:
    s = unicodedata.normalize("NFKC", raw)
    s = _CONTROL.sub(" ", s).strip().strip("[]{}").strip()  # JSON brackets left by line splits
    for _ in range(2):  # "1. - foo", "**1.** foo"
        s = _BULLET.sub("", s.strip(" *")).strip()
    s = re.sub(r"\s+", " ", s).strip(_QUOTES + " ").rstrip(",;，；").strip(_QUOTES + " ")
    if _LABEL.match(s) and len(s.split(":")[0].split()) <= 3 and ":" in s[:26]:
        # "Interest: space operas" -> "space operas"; keep titles like "Star Wars: A New Hope"
        head = s.split(":", 1)[0].strip(" *").lower()
        if head in {"interest", "query", "title", "keyword", "theme", "item", "search",
                    "answer", "topic"}:
            s = s.split(":", 1)[1].strip()
    if len(s) < rules.min_chars:
        return None
    if not any(c.isalpha() for c in s):  # numbers, punctuation, emoji only
        return None
    if _REFUSAL.search(s) or _PROMPT_ECHO.search(s):
        return None
    letters = sum(c.isalnum() or c.isspace() for c in s)
    if letters / len(s) < 0.6:  # mostly symbols: markup residue, mojibake
        return None
    words = s.split()
    if len(words) > rules.max_words:
        s = " ".join(words[: rules.max_words])
    if len(s) > rules.max_chars:
        cut = s[: rules.max_chars]
        s = cut.rsplit(" ", 1)[0] if " " in cut[rules.max_chars // 2:] else cut
    s = s.strip(" ,.;:-–—")
    return s if len(s) >= rules.min_chars and any(c.isalpha() for c in s) else None


def _dedupe_key(s: str) -> str:
    return re.sub(r"[\W_]+", " ", unicodedata.normalize("NFKC", s).casefold()).strip()


def parse_list(text: str, rules: ListRules = ListRules(), *, what: str = "items") -> list[str]:
    """Parse a generated list of short strings.

    Accepts JSON (array, or object with a list under a usual key such as ``"interests"``),
    possibly inside a code fence or with chatter before/after; numbered or bulleted lines;
    or one comma-separated line. Every element is cleaned (bullets, quotes and labels removed,
    NFKC), garbage is rejected (no letters, mostly symbols, refusals, echoed prompt markup),
    long elements are cut at a word boundary, duplicates dropped (first kept), and at most
    ``rules.max_items`` returned.

    Raises:
        GenerationParseError: nothing usable was found; the message quotes the start of the text.
    """
    if not isinstance(text, str):
        raise GenerationParseError(f"{what}: expected generated text, got {type(text).__name__}")
    body = _strip_fences(text)
    out: list[str] = []
    # JSON first; if it held nothing usable (e.g. "[1]" in chatter), read the lines instead
    for candidates in (_json_like_strings(body), _line_candidates(body)):
        seen: set[str] = set()
        for raw in candidates or ():
            cleaned = _clean_candidate(raw, rules)
            if not cleaned:
                continue
            key = _dedupe_key(cleaned)
            if key and key not in seen:
                seen.add(key)
                out.append(cleaned)
            if len(out) >= rules.max_items:
                break
        if out:
            break
    if not out:
        raise GenerationParseError(f"no usable {what} in generated text: {text[:120]!r}")
    return out


_NUMBERING = re.compile(r"^\s*(\d+[.)]|[-*•])\s*")


def parse_lines(text: str) -> list[str]:
    """Lines of a free-text answer, numbering and bullets removed, headers (``...:``) dropped.

    No repair, no caps, no dedupe (unlike :func:`parse_list`): the reader of the interest
    job's shipped chat prompt, whose caller cleans and dedupes the titles itself.
    """
    out = []
    for line in text.splitlines():
        line = _NUMBERING.sub("", line).strip().strip('"').strip()
        if line and not line.endswith(":"):
            out.append(line)
    return out


def first_title(text: str) -> str:
    """The first title in a completion (up to a newline or semicolon), quotes stripped."""
    return re.split(r"[\n;]", text, maxsplit=1)[0].strip().strip('"').strip()


def parse_interests(text: str) -> list[str]:
    """Short interest phrases ("space operas", "90s French comedies")."""
    return parse_list(text, INTERESTS, what="interests")


def parse_queries(text: str) -> list[str]:
    """Search queries a user might type next."""
    return parse_list(text, QUERIES, what="queries")


def parse_titles(text: str) -> list[str]:
    """Hypothetical item titles."""
    return parse_list(text, TITLES, what="titles")


def parse_knowledge(text: str) -> dict[str, list[str]]:
    """Item knowledge: ``{"keywords": [...], "themes": [...], "audience": [...]}``.

    Accepts the JSON object (repaired as in :func:`parse_list`), or labelled lines such as
    ``Keywords: a, b``. Missing fields become empty lists; at least one must be non-empty.
    """
    fields = ("keywords", "themes", "audience")
    body = _strip_fences(text)
    value = _first_json(body)
    out: dict[str, list[str]] = {f: [] for f in fields}
    if isinstance(value, dict):
        lowered = {str(k).lower(): v for k, v in value.items()}
        for field in fields:
            raw = lowered.get(field)
            if isinstance(raw, str):
                raw = [raw]
            strings = _json_strings(raw) if raw is not None else None
            if strings:
                try:
                    out[field] = parse_list("\n".join(strings), KEYWORDS, what=field)
                except GenerationParseError:
                    pass
    else:
        for line in body.splitlines():
            m = re.match(r"^\W*(keywords|themes|audience|关键词|主题|受众)\W*[:：]\s*(.+)$",
                         line.strip(), re.I)
            if m:
                field = {"关键词": "keywords", "主题": "themes", "受众": "audience"}.get(
                    m.group(1), m.group(1).lower())
                try:
                    out[field] = parse_list(m.group(2), KEYWORDS, what=field)
                except GenerationParseError:
                    pass
    if not any(out.values()):
        raise GenerationParseError(f"no usable item knowledge in generated text: {text[:120]!r}")
    return out


def list_schema(rules: ListRules = INTERESTS, min_items: int = 1) -> dict:
    """JSON Schema for a list of short phrases, to pass as ``json_schema`` to a generator.

    Each string must start with a letter (Latin or CJK) and hold only letters, digits, spaces
    and ``' , & -``. The character pattern matters for small local models under grammar-
    constrained decoding: with a bare ``{"type": "string"}`` SmolLM2-135M filled 4 of 8
    strings with JSON syntax and newlines (``[ "]\\n\\n{" ,…``); with this pattern 12 of 12
    English and Chinese interest prompts parsed (see docs/lm.md). Use :func:`parse_list` on
    the result all the same: a schema bounds the shape, not the content.
    """
    return {
        "type": "array",
        "items": {"type": "string",
                  # real CJK characters, not \\u escapes: the grammar converter reads them as is
                  "pattern": "^[A-Za-z\u4e00-\u9fff][A-Za-z0-9\u4e00-\u9fff ',&-]"
                             f"{{{max(rules.min_chars - 1, 1)},{rules.max_chars - 1}}}$"},
        "minItems": min_items,
        "maxItems": rules.max_items,
    }
