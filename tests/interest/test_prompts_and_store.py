import pytest

from llmrecall.errors import ConfigError
from llmrecall.lm.cache import LMCache, content_key
from llmrecall.lm.prompts import (
    display_title,
    fewshot_prompt,
    knowledge_messages,
    load_template,
    naive_messages,
    normalise_title,
)


@pytest.mark.parametrize("raw, shown", [
    ("Usual Suspects, The", "The Usual Suspects"),
    ("Fish Called Wanda, A", "A Fish Called Wanda"),
    ("Horseman on the Roof, The (Hussard sur le toit, Le)",
     "The Horseman on the Roof (Hussard sur le toit, Le)"),
    ("Misérables, Les", "Les Misérables"),
    ("Star Wars", "Star Wars"),
    ("Good, The Bad and The Ugly, The", "The Good, The Bad and The Ugly"),
])
def test_display_title_moves_trailing_articles(raw, shown):
    assert display_title(raw) == shown


def test_normalise_title_ignores_case_numbering_and_article_order():
    assert normalise_title("2. Godfather, The") == normalise_title("the godfather")
    assert normalise_title("Alien") != normalise_title("Aliens")


def test_templates_exist_in_both_languages_and_fill():
    for language in ("en", "zh"):
        for name in ("next_naive", "next_fewshot", "next_profile", "item_keywords"):
            assert load_template(name, language).text.strip()
    with pytest.raises(ConfigError, match="language"):
        load_template("next_naive", "fr")
    with pytest.raises(ConfigError, match="no prompt template"):
        load_template("does_not_exist")


def test_fewshot_prompt_ends_where_the_title_goes():
    prompt = fewshot_prompt(["Alien", "Godfather, The"], [(["Star Wars"], "Toy Story")], "movies")
    assert prompt.endswith("Chosen: Alien; The Godfather\nNext:")
    assert "Chosen: Star Wars\nNext: Toy Story\n" in prompt
    message = naive_messages(["Alien"], "movies")[0]["content"]
    assert "- Alien" in message and "movies" in message
    assert "The Godfather" in knowledge_messages("Godfather, The", ["Crime"], "movie")[0]["content"]


def test_store_round_trip_and_subjects(tmp_path):
    path = tmp_path / "gen.sqlite"
    store = LMCache(path)
    key = content_key("a", 1, {"x": [1, 2]})
    assert key == content_key("a", 1, {"x": [1, 2]}) != content_key("a", 2, {"x": [1, 2]})
    store.put_text_lists([(key, ["one", "二"])])
    store.put_subjects("scope", [("u1", [3, 4], ["t"])])
    store.close()
    again = LMCache(path)
    assert again.get_text_lists([key, "missing"]) == {key: ["one", "二"]}
    assert again.get_subjects("scope") == {"u1": ([3, 4], ["t"])}
    assert again.get_subjects("other") == {}
    assert again.size_bytes() > 0
    again.close()
