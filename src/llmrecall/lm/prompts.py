"""Prompt templates shipped as text files, versioned by content hash.

Templates live in ``llmrecall/lm/prompts/<lang>/<name>.txt`` (``en`` and ``zh``) and use
``$variable`` placeholders (:class:`string.Template`; literal dollars are written ``$$``).
A template's ``version`` is the first 16 hex digits of the SHA-256 of its text, and is part of
every generation cache key, so editing a template invalidates exactly the outputs it produced.

Values are inserted as given: untrusted item or user text must be wrapped with
:func:`llmrecall.lm.parse.delimit` / :func:`~llmrecall.lm.parse.delimit_list` first;
:func:`render_history` and :func:`render_item` do that for the shipped templates.
"""

from __future__ import annotations

import hashlib
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
