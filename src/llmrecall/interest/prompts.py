"""Prompt text for interest and item-knowledge generation, read from template files.

Templates live in ``llmrecall/lm/prompts/<language>/<name>.txt`` and use ``str.format``
fields. Titles are shown to the model in natural word order ("The Usual Suspects", not the
catalog's "Usual Suspects, The"): small models write titles the way they read them in
pre-training, and constrained decoding can only follow the model if the catalog is spelled
the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

from llmrecall.errors import ConfigError

LANGUAGES = ("en", "zh")
#: the language-model layer's template folder (package data of llmrecall)
PROMPT_DIR = Path(__file__).resolve().parent.parent / "lm" / "prompts"

#: trailing articles MovieLens-style catalogs move to the end ("Godfather, The")
_TRAILING_ARTICLE = re.compile(
    r"^(?P<body>.+?), (?P<article>The|A|An|Il|La|Le|Les|L'|Das|Der|Die|El|Los)"
    r"(?P<rest>\s*\(.*\))?$")


def display_title(title: str) -> str:
    """``"Usual Suspects, The"`` -> ``"The Usual Suspects"``; other titles unchanged.

    A parenthesised alternative title after the article is kept at the end:
    ``"Horseman on the Roof, The (Hussard sur le toit, Le)"`` ->
    ``"The Horseman on the Roof (Hussard sur le toit, Le)"``.
    """
    title = " ".join(str(title).split())
    match = _TRAILING_ARTICLE.match(title)
    if not match:
        return title
    article = match["article"]
    joiner = "" if article.endswith("'") else " "
    return f"{article}{joiner}{match['body']}{match['rest'] or ''}"


def normalise_title(text: str) -> str:
    """Lower-case, articles moved, punctuation and numbering stripped: for equality tests."""
    text = re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", text)
    text = display_title(text).lower()
    return re.sub(r"[^\w]+", " ", text).strip()


@lru_cache(maxsize=64)
def template(name: str, language: str = "en") -> str:
    """Text of template ``name`` in ``language``."""
    if language not in LANGUAGES:
        raise ConfigError(f"prompt language must be one of {LANGUAGES}, got {language!r}")
    path = PROMPT_DIR / language / f"{name}.txt"
    if not path.is_file():
        raise ConfigError(f"no prompt template {name!r} for language {language!r} ({path})")
    return path.read_text(encoding="utf-8")


def history_lines(titles: list[str]) -> str:
    """Titles as a bullet list, one per line."""
    return "\n".join(f"- {display_title(t)}" for t in titles)


def history_inline(titles: list[str]) -> str:
    """Titles on one line separated by semicolons."""
    return "; ".join(display_title(t) for t in titles)


def naive_messages(titles: list[str], noun: str, language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking plainly for five items (the baseline)."""
    text = template("next_naive", language).format(noun=noun, history=history_lines(titles))
    return [{"role": "user", "content": text.strip()}]


def profile_messages(titles: list[str], noun: str, language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking for a one-sentence interest profile."""
    text = template("next_profile", language).format(noun=noun, history=history_lines(titles))
    return [{"role": "user", "content": text.strip()}]


def fewshot_prompt(titles: list[str], examples: list[tuple[list[str], str]], noun: str,
                   language: str = "en") -> str:
    """Completion prompt: example (history -> next) blocks, then the user's history.

    The prompt ends right after "Next:"; the model continues with " <title>\\n".
    """
    text = template("next_fewshot", language).format(
        noun=noun, examples=fewshot_blocks(examples, language), history=history_inline(titles))
    return text.rstrip("\n")


def fewshot_blocks(examples: list[tuple[list[str], str]], language: str = "en") -> str:
    """The example blocks of the few-shot prompt: "Chosen: a; b\\nNext: c\\n\\n" per example."""
    chosen, nxt = ("已选：", "下一个：") if language == "zh" else ("Chosen: ", "Next: ")
    return "".join(f"{chosen}{history_inline(h)}\n{nxt}{display_title(t)}\n\n"
                   for h, t in examples)


def fewshot_template(noun: str, language: str = "en") -> str:
    """The shipped few-shot completion prompt as a ``string.Template`` text (``$examples``,
    ``$history``): rendered by the interest job it gives exactly :func:`fewshot_prompt`."""
    text = template("next_fewshot", language).replace("$", "$$")
    return text.format(noun=noun.replace("$", "$$"), examples="${examples}",
                       history="${history}")


def knowledge_messages(title: str, categories: list[str], noun_one: str,
                       language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking for keywords, themes and audience of one item."""
    text = template("item_keywords", language).format(
        title=display_title(title), categories=", ".join(categories) or "unknown",
        noun_one=noun_one)
    return [{"role": "user", "content": text.strip()}]
