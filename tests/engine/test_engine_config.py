"""The engine setting: parsed from [engine], left out of the config hash, chosen by name;
the package imports no cluster library unless the Ray engine is asked for."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llmrecall.config import parse_config
from llmrecall.engine import Engine, current_engine, engine_for, make_engine, use_engine
from llmrecall.errors import ConfigError

BASE = {"channels": [{"kind": "itemcf"}]}


def test_engine_table_parses_and_leaves_the_hash_alone():
    with_engine = parse_config({**BASE, "engine": {"kind": "ray", "address": "auto"}})
    assert with_engine.engine is not None and with_engine.engine.kind == "ray"
    assert with_engine.config_hash() == parse_config(BASE).config_hash()
    with pytest.raises(ConfigError):
        parse_config({**BASE, "engine": {"kind": "spark"}})


def test_unknown_engine_is_a_config_error():
    with pytest.raises(ConfigError, match="local, ray"):
        make_engine("spark")


def test_use_engine_restores_the_previous_engine():
    before = current_engine()
    inner = Engine()
    with use_engine(inner):
        assert current_engine() is inner
    assert current_engine() is before
    with engine_for("local", parse_config(BASE)) as engine:
        assert current_engine() is engine and engine.kind == "local"


def test_importing_the_package_does_not_import_ray():
    code = ("import sys, llmrecall, llmrecall.cli, llmrecall.pipeline, llmrecall.engine, "
            "llmrecall.engine.cooccurrence, llmrecall.engine.embed, llmrecall.engine.histories, "
            "llmrecall.evaluate.experiment; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_train_max_failures_is_validated_and_reaches_the_ray_engine():
    """``[engine] train_max_failures``: 2 unless set, never negative (refused when the
    file is read, and by the engine before it starts Ray), an argument of the Ray engine;
    the local engine takes none."""
    from llmrecall.engine import engine_options
    from llmrecall.engine.ray_engine import RayEngine

    assert parse_config({**BASE, "engine": {"kind": "ray"}}).engine.train_max_failures == 2
    with pytest.raises(ConfigError, match="train_max_failures"):
        parse_config({**BASE, "engine": {"kind": "ray", "train_max_failures": -1}})
    section = parse_config({**BASE, "engine": {"kind": "ray", "train_max_failures": 5,
                                               "train_min_workers": 1}}).engine
    assert engine_options("ray", section) == {"train_max_failures": 5, "train_min_workers": 1}
    assert engine_options("ray", None) == {} and engine_options("local", section) == {}
    with pytest.raises(ConfigError, match="train_max_failures"):
        RayEngine(train_max_failures=-1)
    with pytest.raises(ConfigError, match="train_min_workers"):
        parse_config({**BASE, "engine": {"kind": "ray", "train_min_workers": 0}})


def test_a_checkpoint_of_fewer_ranks_resumes_every_rank():
    """An elastic run resumed on more ranks than wrote its checkpoint: the ranks it has a
    generator state for get theirs back, the others a seed of their own (distinct, and
    the same on every resume); the optimizer and numpy generator are restored alike."""
    import numpy as np
    import torch

    from llmrecall.channels.train_state import TrainState, restore

    torch.manual_seed(3)
    saved = torch.get_rng_state()
    net = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(net.parameters())
    state = TrainState(step=4, weights={}, optimizer=optimizer.state_dict(),
                       rng=np.random.default_rng(9).bit_generator.state, torch_rng=[saved])

    def draws(rank):
        rng = np.random.default_rng(0)
        own = restore(state, torch.optim.AdamW(net.parameters()), rng, rank, seed=7)
        return own, torch.rand(3).tolist(), rng.random()

    own0, first0, numpy0 = draws(0)
    own1, first1, numpy1 = draws(1)
    own2, first2, _ = draws(2)
    assert (own0, own1, own2) == (True, False, False)
    torch.set_rng_state(saved)
    assert first0 == torch.rand(3).tolist()  # rank 0: its own state, bit for bit
    assert first1 != first2 and first1 != first0  # the new ranks: their own masks
    assert draws(1)[1] == first1  # and the same on every resume
    assert numpy0 == numpy1 == np.random.default_rng(9).random()
