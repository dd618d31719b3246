import numpy as np
import pytest
from interest_toydata import TITLES, make_dataset
from pydantic import ValidationError

from llmrecall.errors import ConfigError
from llmrecall.interest.constrain import TitleTrie, title_grammar
from llmrecall.interest.jobs import InterestSettings, fewshot_examples, needs_refresh
from llmrecall.lm.generators import (
    ConstrainedDecoding,
    Generator,
    LlamaCppGenerator,
    OpenAIChatGenerator,
    constrained_decoder,
)
from llmrecall.lm.parse import first_title, parse_lines


def char_tokenize(text: str) -> list[int]:
    """A toy tokenizer: one id per character (id = code point)."""
    return [ord(c) for c in text]


END = 10  # "\n"


def test_trie_masks_everything_but_title_continuations():
    trie = TitleTrie(["Alien", "Aliens", "Alien", "Titanic"], char_tokenize, END)
    assert trie.titles == ["Alien", "Aliens", "Titanic"]  # duplicate dropped
    prompt = np.array([1, 2, 3])
    proc = trie.processor()
    scores = np.zeros(200, np.float32)
    first = proc(prompt, scores)
    assert set(np.flatnonzero(np.isfinite(first))) == {ord(" ")}
    after = proc(np.concatenate([prompt, char_tokenize(" Alien")]), scores)
    # after "Alien": either stop (Alien) or continue with "s" (Aliens)
    assert set(np.flatnonzero(np.isfinite(after))) == {END, ord("s")}
    assert trie.decode(char_tokenize(" Aliens") + [END]) == "Aliens"
    assert trie.decode(char_tokenize(" Ali")) is None


def test_trie_bans_titles_and_their_private_prefixes():
    trie = TitleTrie(["Alien", "Aliens", "Titanic"], char_tokenize, END)
    banned = {trie.title_id("Alien"), trie.title_id("Titanic")}
    proc = trie.processor(banned)
    prompt = np.array([1])
    scores = np.zeros(200, np.float32)
    proc(prompt, scores)
    at_t = proc(np.concatenate([prompt, char_tokenize(" ")]), scores)
    assert set(np.flatnonzero(np.isfinite(at_t))) == {ord("A")}  # "Titanic" is gone
    at_end = proc(np.concatenate([prompt, char_tokenize(" Alien")]), scores)
    assert set(np.flatnonzero(np.isfinite(at_end))) == {ord("s")}  # "Alien" cannot end here
    with pytest.raises(ConfigError, match="banned"):
        trie.processor({0, 1, 2})


def test_grammar_text_compiles_in_llama_cpp():
    from llama_cpp import LlamaGrammar

    text = title_grammar(['Say "Hi"', "Back\\slash", "Plain"])
    assert text.startswith('root ::= " " title')
    LlamaGrammar.from_string(text, verbose=False)


@pytest.mark.parametrize("old, new, expected", [
    ([], [1], True),
    ([1, 2, 3], [], False),
    ([1, 2, 3], [1, 2, 3, 4], False),
    ([1, 2, 3], [1, 2, 3, 4, 5, 6], True),
    ([1], [1, 2], False),
    ([1], [2], True),  # the whole (one-item) window changed
])
def test_needs_refresh(old, new, expected):
    assert needs_refresh(old, new, window=10, min_changed=3) is expected


def test_needs_refresh_looks_at_the_recent_window_only():
    old = list(range(20))
    assert needs_refresh(old, old + [100, 101, 102], window=5, min_changed=3)
    assert not needs_refresh(old, old + [100], window=5, min_changed=3)
    with pytest.raises(ConfigError):
        needs_refresh(old, old, window=0)


def test_parsers():
    answer = "Here are five:\n1. Alien\n2) \"Titanic\"\n- Heat\n\n"
    assert parse_lines(answer) == ["Alien", "Titanic", "Heat"]
    assert first_title(" The Big Boss; The Big Boss\nmore") == "The Big Boss"


def test_fewshot_examples_come_from_training_histories():
    ds = make_dataset([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]])
    examples = fewshot_examples(ds.histories(), TITLES, n=2, length=2, seed=0)
    assert len(examples) == 3
    for hist, nxt in examples:
        assert len(hist) == 2 and nxt == hist[-1] + 1
    with pytest.raises(ConfigError, match="few-shot"):
        fewshot_examples(ds.histories(), TITLES, n=5, length=2, seed=0)


def test_settings_validate():
    with pytest.raises(ValidationError, match="n_texts"):
        InterestSettings(n_texts=0)
    with pytest.raises(ValidationError, match="unknown"):
        InterestSettings(unknown=1)
    assert InterestSettings().scope("a") != InterestSettings(n_texts=3).scope("a")


def test_avoided_prefixes_steer_away_unless_nothing_else_is_left():
    trie = TitleTrie(["Big Fish", "Big Sleep", "Heat"], char_tokenize, END)
    assert trie.title_tokens(trie.title_id("Heat")) == char_tokenize(" Heat")
    scores = np.zeros(200, np.float32)
    proc = trie.processor(avoid_prefixes=[char_tokenize(" B")])
    proc(np.array([1]), scores)
    at_start = proc(np.concatenate([[1], char_tokenize(" ")]), scores)
    assert set(np.flatnonzero(np.isfinite(at_start))) == {ord("H")}
    # with Heat banned, the avoided prefix is the only way forward and stays open
    proc = trie.processor({trie.title_id("Heat")}, avoid_prefixes=[char_tokenize(" B")])
    proc(np.array([1]), scores)
    at_start = proc(np.concatenate([[1], char_tokenize(" ")]), scores)
    assert set(np.flatnonzero(np.isfinite(at_start))) == {ord("B")}


def test_training_pairs_come_from_training_sequences():
    from llmrecall.interest.finetune import training_pairs

    ds = make_dataset([[0, 1, 2], [4, 5], [8]])
    pairs = training_pairs(ds, 10, history_length=2, noun="movies", seed=0)
    # user 0 gives positions 1, 2; user 1 gives position 1; user 2 (one item) none
    assert len(pairs) == 3
    targets = sorted(t for _, t in pairs)
    assert targets == sorted([" Return of the Jedi\n", " The Empire Strikes Back\n",
                              " The Godfather: Part II\n"])
    for prompt, target in pairs:
        assert prompt.endswith("Next:") and "Chosen: " in prompt
        assert target.strip() not in prompt  # the answer is never shown
    with pytest.raises(ConfigError):
        training_pairs(make_dataset([[0], [1]]), 5)


class _EchoGenerator(Generator):
    """A chat-only generator: answers every request with the same two titles."""

    name, model = "echo", "echo"

    def complete(self, prompt, **_):
        raise AssertionError("the naive prompt only chats")

    def _chat(self, conversations, max_tokens, temperature, json_schema, **_):
        return ["1. Alien\n2. Titanic" for _ in conversations]


@pytest.mark.parametrize("user", [-1, 4])
def test_job_refuses_users_outside_the_dataset(toy, user):
    """Regression: a dense id outside the user vocabulary reached the store as subject
    None (-1: sqlite's NOT NULL error after generating) or failed indexing the histories
    (n_users: IndexError); it is now named as a ConfigError before any generation."""
    from llmrecall.interest.jobs import InterestJob

    settings = InterestSettings(prompt="naive", constrain="none", n_examples=0)
    job = InterestJob(toy, _EchoGenerator(), settings)
    texts, _ = job.run(np.array([0]))  # a known user goes through
    assert texts[0]
    with pytest.raises(ConfigError, match=f"user {user} is not a dense user id"):
        job.run(np.array([user]))


class _ChatOnly(Generator):
    """A generator without a tokenizer, like a remote chat endpoint."""

    name, model = "chat-only", "chat-only"

    def _chat(self, conversations, max_tokens, temperature, json_schema, **_):
        return ["" for _ in conversations]


@pytest.mark.parametrize("constrain", ["trie", "grammar"])
def test_constraints_on_a_generator_without_a_tokenizer_are_a_config_error(toy, constrain):
    from llmrecall.interest.jobs import InterestJob

    generator = _ChatOnly()
    assert not isinstance(generator, ConstrainedDecoding)
    with pytest.raises(ConfigError, match="cannot constrain decoding.*constrain = 'none'"):
        constrained_decoder(generator)
    with pytest.raises(ConfigError, match="title-constrained decoding"):
        InterestJob(toy, generator, InterestSettings(constrain=constrain, n_examples=0))
    # without constraints the same generator drives the job
    InterestJob(toy, generator, InterestSettings(constrain="none", n_examples=0))


def test_constrained_decoding_is_declared_by_the_backends_that_have_it():
    assert issubclass(LlamaCppGenerator, ConstrainedDecoding)
    assert not issubclass(OpenAIChatGenerator, ConstrainedDecoding)
