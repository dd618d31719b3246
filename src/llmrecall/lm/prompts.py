"""Prompt templates shipped as text files, versioned by content hash.

Templates live in ``llmrecall/lm/prompts/<lang>/<name>.txt`` (``en`` and ``zh``) and use
``$variable`` placeholders (:class:`string.Template`; literal dollars are written ``$$``).
A template's ``version`` is the first 16 hex digits of the SHA-256 of its text, and is part of
every generation cache key, so editing a template invalidates exactly the outputs it produced.

Values are inserted as given: untrusted item or user text must be wrapped with
:func:`llmrecall.lm.parse.delimit` / :func:`~llmrecall.lm.parse.delimit_list` first;
:func:`render_history` and :func:`render_item` do that for the shipped templates.

The interest and item-knowledge jobs' templates (``next_naive``, ``next_fewshot``,
``next_profile``, ``item_keywords``) live in the same folders but use ``str.format`` fields
(``{noun}``, ``{history}``); :func:`naive_messages`, :func:`fewshot_prompt`,
:func:`profile_messages` and :func:`knowledge_messages` fill them. Their titles are shown in
natural word order ("The Usual Suspects", not the catalog's "Usual Suspects, The",
:func:`display_title`): small models write titles the way they read them in pre-training, and
constrained decoding can only follow the model if the catalog is spelled the same way.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

from llmrecall.errors import ConfigError
from llmrecall.lm.parse import delimit, delimit_list

LANGUAGES = ("en", "zh")


@dataclass(frozen=True)
class PromptTemplate:
    """One template: ``name``, ``lang``, raw ``text`` and its content ``version`` hash."""

    name: str
    lang: str
    text: str

    @property
    def version(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()[:16]

    @property
    def id(self) -> str:
        """``name/lang@version``: what cache keys and reports record."""
        return f"{self.name}/{self.lang}@{self.version}"

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(string.Template(self.text).get_identifiers())

    def render(self, **values: object) -> str:
        """The prompt with every ``$variable`` replaced.

        Raises:
            ConfigError: a variable is missing or an unknown one is given (names both).
        """
        missing = self.variables - values.keys()
        extra = values.keys() - self.variables
        if missing or extra:
            raise ConfigError(f"template {self.name}/{self.lang}: missing values "
                              f"{sorted(missing)}, unknown values {sorted(extra)}")
        return string.Template(self.text).substitute({k: str(v) for k, v in values.items()})


def _root() -> Path:
    return Path(str(resources.files("llmrecall.lm") / "prompts"))


def available_templates() -> dict[str, tuple[str, ...]]:
    """``{name: languages}`` for every shipped template."""
    out: dict[str, list[str]] = {}
    for lang in LANGUAGES:
        for path in sorted((_root() / lang).glob("*.txt")):
            out.setdefault(path.stem, []).append(lang)
    return {k: tuple(v) for k, v in sorted(out.items())}


@cache
def _load_file(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def load_template(name: str, lang: str = "en", directory: str | Path | None = None) -> PromptTemplate:
    """Load template ``name`` in language ``lang`` from the package (or ``directory``, laid out
    the same way, for prompt variants under test).

    Raises:
        ConfigError: unknown language or template (the message lists what exists).
    """
    if lang not in LANGUAGES:
        raise ConfigError(f"prompt language must be one of {LANGUAGES}, got {lang!r}")
    base = Path(directory) if directory is not None else _root()
    path = base / lang / f"{name}.txt"
    if not path.is_file():
        known = sorted(p.stem for p in (base / lang).glob("*.txt"))
        raise ConfigError(f"no prompt template {name!r} for language {lang!r} in {base}; "
                          f"known: {known}")
    return PromptTemplate(name, lang, _load_file(str(path)))


def render_history(template: PromptTemplate, history_texts: list[str], count: int = 5,
                   max_items: int = 30) -> str:
    """Render a history template (``interest_profile``, ``hypothetical_items``,
    ``search_queries``): the last ``max_items`` texts, each delimited in ``<item>`` tags."""
    return template.render(history=delimit_list(history_texts, "item", max_items=max_items),
                           count=int(count))


def render_item(template: PromptTemplate, item_text: str) -> str:
    """Render an item template (``item_knowledge``) with the text delimited in ``<item>`` tags."""
    return template.render(item=delimit(item_text, "item", max_chars=1000))


# -------------------------------------------------------------------------------------------
# Interest and item-knowledge prompts (``str.format`` templates)
# -------------------------------------------------------------------------------------------
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


def history_lines(titles: list[str]) -> str:
    """Titles as a bullet list, one per line."""
    return "\n".join(f"- {display_title(t)}" for t in titles)


def history_inline(titles: list[str]) -> str:
    """Titles on one line separated by semicolons."""
    return "; ".join(display_title(t) for t in titles)


def naive_messages(titles: list[str], noun: str, language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking plainly for five items (the baseline)."""
    text = load_template("next_naive", language).text.format(
        noun=noun, history=history_lines(titles))
    return [{"role": "user", "content": text.strip()}]


def profile_messages(titles: list[str], noun: str, language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking for a one-sentence interest profile."""
    text = load_template("next_profile", language).text.format(
        noun=noun, history=history_lines(titles))
    return [{"role": "user", "content": text.strip()}]


def fewshot_prompt(titles: list[str], examples: list[tuple[list[str], str]], noun: str,
                   language: str = "en") -> str:
    """Completion prompt: example (history -> next) blocks, then the user's history.

    The prompt ends right after "Next:"; the model continues with " <title>\\n".
    """
    text = load_template("next_fewshot", language).text.format(
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
    text = load_template("next_fewshot", language).text.replace("$", "$$")
    return text.format(noun=noun.replace("$", "$$"), examples="${examples}",
                       history="${history}")


def knowledge_messages(title: str, categories: list[str], noun_one: str,
                       language: str = "en") -> list[dict[str, str]]:
    """Chat prompt asking for keywords, themes and audience of one item."""
    text = load_template("item_keywords", language).text.format(
        title=display_title(title), categories=", ".join(categories) or "unknown",
        noun_one=noun_one)
    return [{"role": "user", "content": text.strip()}]
