"""Local GGUF models: one load per process per model file and load settings, whichever path
builds the generator, and one error class when llama-cpp-python is missing.

Regressions: ``llmrecall tune-prompts --rounds N`` loaded SmolLM2 twice in one process (the
interest jobs' generator and the template proposer each had their own model cache), and a
missing ``llama_cpp`` surfaced as ``BackendUnavailableError`` on one path and as a raw
``ImportError`` on the other.
"""

from __future__ import annotations

import sys

import pytest

from llmrecall.lm import generators
from llmrecall.lm.errors import BackendUnavailableError
from llmrecall.lm.generators import LlamaCppGenerator, get_generator, make_generator, smollm2_path


@pytest.fixture
def fresh_models(monkeypatch):
    """An empty model cache for this test (as in a new process); its models freed after."""
    monkeypatch.setattr(generators, "_MODELS", {})
    yield
    generators.close_models()


@pytest.fixture
def llama_loads(monkeypatch, fresh_models):
    """Model paths passed to llama_cpp.Llama, which still loads the real model."""
    import llama_cpp

    loads: list[str] = []
    real = llama_cpp.Llama

    class CountingLlama(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            loads.append(kwargs["model_path"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(llama_cpp, "Llama", CountingLlama)
    return loads


def test_every_generator_on_one_model_file_shares_one_load(llama_loads):
    built = [
        make_generator({"backend": "local", "threads": 1}),  # a channel's generator table
        get_generator("default", threads=1),                 # tune-prompts, lm-serve
        get_generator("smollm2", threads=1, seed=3),         # another seed: per-call, no reload
        LlamaCppGenerator(smollm2_path(), threads=1),        # built directly, path given
        make_generator({"backend": "local", "n_ctx": 2048}),  # the old spelling of the context
    ]
    assert llama_loads == [str(smollm2_path())]
    assert len({id(g._llama) for g in built}) == 1 and len({id(g._lock) for g in built}) == 1
    # the shared model answers each generator as it answered alone: greedy is deterministic
    first, second = built[0], built[1]
    assert first.generate(["Name a fruit."], max_tokens=6) == \
        second.generate(["Name a fruit."], max_tokens=6)
    # other load settings are another model in llama.cpp: loaded once more
    get_generator("default", threads=1, context_tokens=1024)
    get_generator("default", threads=1, context_tokens=1024)
    assert len(llama_loads) == 2


def test_tune_prompts_builds_one_generator_for_jobs_and_proposals(llama_loads, monkeypatch,
                                                                   tmp_path):
    """``tune-prompts --rounds 2``: the interest jobs and the proposer use one model."""
    import json

    from typer.testing import CliRunner

    import llmrecall.tune.interest_prompts as interest_prompts
    from llmrecall.cli import app
    from llmrecall.tune.prompts import PromptSearch, ScoredVariant

    used = {}

    def search(train, valid, starting, generator, *, proposer=None, **_):
        used["generator"], used["proposer"] = generator, proposer
        return PromptSearch([ScoredVariant(starting[0], 0.5, 0.0, 0)], saved=False, path=None)

    monkeypatch.setattr(interest_prompts, "search_interest_prompts", search)
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["tune-prompts", "--dataset", "ml-100k", "--users", "4",
                                      "--rounds", "2", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert used["proposer"].generator is used["generator"]
    assert len(llama_loads) == 1
    summary = json.loads(out.with_name("p.search.json").read_text())
    assert summary["best"]["name"] == "default" and summary["users"] == 4


def test_missing_llama_cpp_is_backend_unavailable_on_every_path(monkeypatch, fresh_models):
    # a model already loaded must not hide the missing runtime on a later path
    generators._MODELS[(str(smollm2_path().resolve()), 2048, 1)] = generators.SharedModel(
        object(), generators.threading.Lock())  # type: ignore[arg-type]
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp now fails
    paths = {
        "get_generator": lambda: get_generator("default", threads=1),
        "make_generator": lambda: make_generator({"backend": "local"}),
        "LlamaCppGenerator": lambda: LlamaCppGenerator(threads=1),
        "load_llama": lambda: generators.load_llama(smollm2_path()),
    }
    for build in paths.values():
        with pytest.raises(BackendUnavailableError, match="llama-cpp-python"):
            build()
    generators._MODELS.clear()  # the placeholder is no model: nothing to close


def test_missing_llama_cpp_reaches_the_interest_channel_as_backend_unavailable(monkeypatch,
                                                                               fresh_models):
    from llmrecall.channels.interest import InterestChannel
    from llmrecall.data.builtin import load_builtin

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    channel = InterestChannel(embedder=None, max_users=1)
    with pytest.raises(BackendUnavailableError, match="llama-cpp-python"):
        channel.fit(load_builtin("ml-100k"))


def test_a_missing_model_file_is_a_config_error(tmp_path, fresh_models):
    from llmrecall.errors import ConfigError

    with pytest.raises(ConfigError, match="GGUF model file not found"):
        make_generator({"backend": "local", "model_path": str(tmp_path / "none.gguf")})
