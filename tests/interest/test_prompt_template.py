"""A prompt template text as an interest setting: rendering, validation, cache keys, and the
real SmolLM2 generating from it."""

from __future__ import annotations

import string

import numpy as np
import pytest

from llmrecall.channels.interest import InterestChannel
from llmrecall.errors import ConfigError
from llmrecall.interest.jobs import InterestJob, InterestSettings
from llmrecall.lm.cache import LMCache
from llmrecall.lm.prompts import (
    display_title,
    fewshot_blocks,
    fewshot_prompt,
    fewshot_template,
    history_inline,
)

CHAT = ("A person recently chose these movies:\n$history\n"
        "List $count other movies they would enjoy, one per line.")


@pytest.mark.parametrize("language", ["en", "zh"])
def test_shipped_prompt_as_template_renders_exactly_the_shipped_prompt(language):
    examples = [(["Alien", "Godfather, The"], "Aliens"), (["Toy Story"], "Star Wars")]
    titles = ["Usual Suspects, The", "Fargo", "Price is $5"]
    text = fewshot_template("movies", language)
    rendered = string.Template(text).substitute(
        history=history_inline(titles), examples=fewshot_blocks(examples, language))
    assert rendered.rstrip("\n") == fewshot_prompt(titles, examples, "movies", language)
    assert "The Usual Suspects" in rendered and "$5" in rendered


def test_template_is_validated_and_keys_the_cache():
    with pytest.raises(ConfigError, match="missing \\['history'\\]"):
        InterestChannel(settings={"template": "List $count movies."})
    with pytest.raises(ConfigError, match="unknown \\['user'\\]"):
        InterestChannel(settings={"template": "$history for $user"})
    plain = InterestSettings()
    # no template: the cache key is what it was before templates existed
    assert plain.cache_fields() == plain.model_dump(exclude={"template"})
    a = InterestSettings(template=CHAT)
    b = InterestSettings(template=CHAT + " ")
    assert a.cache_fields()["template"] == a.template_version != b.template_version
    assert len({plain.scope("g"), a.scope("g"), b.scope("g")}) == 3


@pytest.mark.slow
def test_real_generator_follows_the_template(tmp_path):
    from llmrecall.data.builtin import load_builtin
    from llmrecall.evaluate.protocols import make_split
    from llmrecall.lm.generators import get_generator

    train = make_split(load_builtin("ml-100k"), "loo", 0).train
    generator = get_generator("local", threads=1)
    users = np.array([0, 1], np.int32)
    base = dict(noun="movies", n_texts=3, history_length=6, n_examples=1)
    store = LMCache(tmp_path / "g.sqlite")
    # the shipped prompt written out as a template: the same prompt, so the same titles
    # (greedy, trie-constrained), but stored under its own key
    shipped, _ = InterestJob(train, generator, InterestSettings(**base), store).run(users)
    written = InterestSettings(**base, template=fewshot_template("movies"))
    as_template, stats = InterestJob(train, generator, written, store).run(users)
    assert as_template == shipped and stats.generated == 2 and stats.cache_hits == 0
    # a chat template (free text): at most n_texts texts, none of them a history title
    chat = InterestSettings(**{**base, "prompt": "naive", "constrain": "none",
                               "template": CHAT, "max_tokens": 16})
    texts, _ = InterestJob(train, generator, chat, store).run(users)
    for user in users.tolist():
        seen = {display_title(train.catalog.titles[i]).lower()
                for i in train.histories().of(user)}
        assert len(texts[user]) <= 3
        assert not {t.lower() for t in texts[user]} & seen
    assert sum(map(len, texts.values())) > 0
    # a rerun of the chat template is answered from the store
    again, stats = InterestJob(train, generator, chat, store).run(users)
    assert again == texts and stats.reused == 2 and stats.generated == 0
