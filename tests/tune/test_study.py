"""The study: resumable from SQLite (also after a kill), blind to test data, never worse
than the config it starts from on validation."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
import scipy.sparse as sp
from optuna.trial import TrialState

from llmrecall.errors import ConfigError
from llmrecall.tune import study as study_module
from llmrecall.tune.study import tune

pytestmark = pytest.mark.slow
SRC = Path(__file__).resolve().parents[2] / "src"


def _finished(storage: Path, name: str) -> int:
    s = optuna.load_study(study_name=name, storage=f"sqlite:///{storage}")
    return len(s.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _finished_read_only(storage: Path, name: str) -> int:
    """Finished trials of study ``name``, read without creating anything (0 while the study
    or its tables do not exist yet, or the file is locked)."""
    if not storage.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{storage}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute(
                "SELECT COUNT(*) FROM trials JOIN studies USING (study_id) "
                "WHERE studies.study_name = ? AND trials.state IN ('COMPLETE', 'PRUNED')",
                (name,)).fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0


def test_resume_adds_trials_and_keeps_the_best(ml100k, small_config, tmp_path):
    db = tmp_path / "study.sqlite"
    best1, rep1 = tune(ml100k, "loo", small_config, 4, "recall@50", storage=db,
                       study_name="s", progress=False)
    assert rep1["trials_this_run"] == 4
    assert rep1["baseline_value"] is not None
    assert rep1["best_value"] >= rep1["baseline_value"]
    best2, rep2 = tune(ml100k, "loo", small_config, 4, "recall@50", storage=db,
                       study_name="s", progress=False)
    assert _finished(db, "s") == 8
    assert rep2["trials_this_run"] == 4
    assert rep2["best_value"] >= rep1["best_value"]
    assert rep2["baseline_value"] == rep1["baseline_value"]  # the baseline was not re-run


def test_study_survives_a_kill(ml100k, small_config, tmp_path):
    db = tmp_path / "study.sqlite"
    cfg_path = tmp_path / "small.toml"
    small_config.save(cfg_path)
    script = textwrap.dedent(f"""
        from llmrecall.config import load_config
        from llmrecall.data.builtin import load_builtin
        from llmrecall.tune.study import tune
        tune(load_builtin("ml-100k"), "loo", load_config({str(cfg_path)!r}), 500, "recall@50",
             storage={str(db)!r}, study_name="k", space="fusion", progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            # read the file as it is, read-only: optuna.load_study would create and stamp
            # the schema itself while the tuning process does too (a UNIQUE-constraint race
            # that killed the tuner before it could be killed)
            if _finished_read_only(db, "k") >= 3:
                break
        assert proc.poll() is None, "the tuning process ended before it could be killed"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    before = _finished(db, "k")
    assert before >= 3
    _, report = tune(ml100k, "loo", small_config, 3, "recall@50", storage=db, study_name="k",
                     space="fusion", progress=False)
    assert _finished(db, "k") == before + 3
    assert report["trials_this_run"] == 3


def test_other_settings_cannot_reuse_a_study(ml100k, small_config, tmp_path):
    db = tmp_path / "study.sqlite"
    tune(ml100k, "loo", small_config, 1, "recall@50", storage=db, study_name="x",
         progress=False)
    with pytest.raises(ConfigError, match="another --study-name"):
        tune(ml100k, "loo", small_config, 1, "recall@20", storage=db, study_name="x",
             progress=False)


def _other_data(ml100k):
    """ml-100k without every tenth interaction, under the same name: what two `--data`
    specs called data.toml in two folders looked like to the tuner."""
    log = ml100k.interactions
    return ml100k.with_interactions(log.take(np.arange(len(log)) % 10 != 0))


def test_a_study_is_keyed_by_its_data(ml100k, small_config, tmp_path):
    # regression: tuning another dataset of the same name resumed the first one's study,
    # printed its validation numbers and wrote its tuned config
    db = tmp_path / "study.sqlite"
    other = _other_data(ml100k)
    assert other.name == ml100k.name
    _, first = tune(ml100k, "loo", small_config, 1, "recall@50", storage=db, progress=False,
                    space="fusion")
    _, second = tune(other, "loo", small_config, 1, "recall@50", storage=db, progress=False,
                     space="fusion")
    assert second["study_name"] != first["study_name"]  # a study of its own
    assert second["identity"]["data"] != first["identity"]["data"]
    assert second["trials"]["complete"] + second["trials"]["pruned"] == 1  # not 2
    assert second["baseline_value"] != first["baseline_value"]
    # the same name given explicitly: refused, saying why
    with pytest.raises(ConfigError, match="other data") as info:
        tune(other, "loo", small_config, 1, "recall@50", storage=db, progress=False,
             space="fusion", study_name=first["study_name"])
    assert "another --study-name" in str(info.value)
    # the same data resumes
    _, again = tune(ml100k, "loo", small_config, 1, "recall@50", storage=db, progress=False,
                    space="fusion")
    assert again["study_name"] == first["study_name"] and again["trials_this_run"] == 1


def test_the_data_fingerprint_follows_data_split_and_seed(ml100k):
    from llmrecall.evaluate.protocols import make_split
    from llmrecall.tune.study import data_fingerprint

    loo = make_split(ml100k, "loo", 0)
    assert data_fingerprint(loo.train, loo.valid) == data_fingerprint(
        make_split(ml100k, "loo", 0).train, make_split(ml100k, "loo", 0).valid)
    other = make_split(_other_data(ml100k), "loo", 0)
    cold0, cold1 = (make_split(ml100k, "cold-items", s) for s in (0, 1))
    prints = {data_fingerprint(s.train, s.valid) for s in (loo, other, cold0, cold1)}
    assert len(prints) == 4


class _Untouchable:
    """Stands in for the test task: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the tuner read the test task ({name})")


def test_tuning_never_reads_test_data(ml100k, small_config, monkeypatch):
    real_split = study_module.make_split
    honest = tune(ml100k, "loo", small_config, 5, "recall@50", progress=False)

    def corrupted(dataset, protocol, seed):
        split = real_split(dataset, protocol, seed)
        rng = np.random.default_rng(1)
        t = split.test.targets
        noise = sp.random(t.shape[0], t.shape[1], density=0.01, format="csr", random_state=rng)
        noise.data[:] = 1
        return replace(split, test=replace(split.test, targets=(noise + t).tocsr()))

    monkeypatch.setattr(study_module, "make_split", corrupted)
    assert tune(ml100k, "loo", small_config, 5, "recall@50", progress=False)[0] == honest[0]

    monkeypatch.setattr(study_module, "make_split",
                        lambda d, p, s: replace(real_split(d, p, s), test=_Untouchable()))
    best, report = tune(ml100k, "loo", small_config, 5, "recall@50", progress=False)
    assert best == honest[0]
    assert report["best_value"] == honest[1]["best_value"]


def test_ctrl_c_keeps_finished_trials_and_returns_the_best(ml100k, small_config, tmp_path,
                                                           monkeypatch):
    from llmrecall.tune.objective import ValidationObjective

    real = ValidationObjective.evaluate
    calls = {"n": 0}

    def interrupted_on_third(self, config, report=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, config, report)

    monkeypatch.setattr(ValidationObjective, "evaluate", interrupted_on_third)
    db = tmp_path / "study.sqlite"
    best, report = tune(ml100k, "loo", small_config, 10, "recall@50", storage=db,
                        study_name="c", progress=False)
    assert report["interrupted"] is True
    assert report["trials_this_run"] == 2
    assert report["trials"]["fail"] == 1  # the interrupted trial
    assert report["best_value"] >= report["baseline_value"]
    assert best.config_hash() == report["tuned_config_hash"]


def test_a_gain_below_min_gain_keeps_the_untuned_config(ml100k, small_config):
    kept, report = tune(ml100k, "loo", small_config, 4, "recall@50", space="fusion",
                        progress=False, min_gain=1.0)  # no trial can gain a whole unit
    assert report["kept_baseline"] is True
    assert kept.config_hash() == small_config.config_hash()
    any_gain, report0 = tune(ml100k, "loo", small_config, 4, "recall@50", space="fusion",
                             progress=False, min_gain=0.0)
    if report0["best_value"] > report0["baseline_value"]:
        assert any_gain.config_hash() != small_config.config_hash()
    assert report["min_gain"] == 1.0 and report0["min_gain"] == 0.0


def test_the_default_min_gain_is_the_noise_floor(ml100k, small_config):
    _, report = tune(ml100k, "loo", small_config, 1, "recall@50", space="fusion", progress=False)
    p, n = report["baseline_value"], report["validation_users"]
    assert report["min_gain"] == pytest.approx((p * (1 - p) / n) ** 0.5)
    with pytest.raises(ConfigError, match="min_gain"):
        tune(ml100k, "loo", small_config, 1, "recall@50", progress=False, min_gain=-0.1)


def test_each_channel_alone_is_among_the_first_trials(ml100k, small_config, tmp_path):
    """Tuning can always fall back to the best single channel: each channel alone (every
    other weight 0) is enqueued after the config itself, and scores as that channel's list."""
    from llmrecall.evaluate.experiment import recall_task
    from llmrecall.evaluate.metrics import ranking_metrics
    from llmrecall.evaluate.protocols import make_split
    from llmrecall.pipeline import RecallPipeline

    db = tmp_path / "single.sqlite"
    _, report = tune(ml100k, "loo", small_config, 4, "recall@50", storage=db, study_name="s",
                     space="fusion", progress=False, min_gain=0.0)
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    alone = {t.user_attrs["single_channel"]: t.value for t in trials
             if "single_channel" in t.user_attrs}
    assert set(alone) == {"popularity", "itemcf", "ease"}
    split = make_split(ml100k, "loo", 0)
    lists = recall_task(RecallPipeline(small_config).fit(split.train), split.valid).lists
    for name, value in alone.items():
        own = ranking_metrics(lists[name].ids[:, :50], split.valid.targets, [50],
                              split.valid.n_items)["recall@50"]
        assert value == pytest.approx(own, abs=1e-9)
    assert report["best_value"] >= max(alone.values())
