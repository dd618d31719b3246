"""Artifacts: versioned, data-only (no pickles), loaded back into the same recall."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llmrecall.errors import DataError
from llmrecall.serve.artifacts import FORMAT_VERSION, load_artifact, resolve


def test_layout_manifest_and_no_pickles(artifact, ml100k):
    folder = resolve(artifact)
    assert (artifact / "CURRENT").read_text().strip() == folder.name
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format_version"] == FORMAT_VERSION and manifest["dataset"] == "ml-100k"
    assert manifest["n_items"] == ml100k.n_items and manifest["n_users"] == ml100k.n_users
    assert len(manifest["config_hash"]) == 16 and manifest["created"] > 0
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert {p.suffix for p in files} <= {".json", ".npz", ".parquet", ".toml"}
    for p in files:
        if p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as npz:
                for key in npz.files:
                    assert npz[key].dtype != object


def test_loaded_pipeline_recalls_like_the_fitted_one(artifact, ml100k):
    from llmrecall.pipeline import RecallPipeline

    loaded = load_artifact(artifact)
    fitted = RecallPipeline(loaded.config).fit(ml100k)
    users = np.arange(0, 50, dtype=np.int32)
    hist = ml100k.histories()
    a = loaded.pipeline.recall(users, loaded.histories, 50)
    b = fitted.recall(users, hist, 50)
    assert np.array_equal(a.fused.ids, b.fused.ids)
    assert loaded.items == ml100k.items and loaded.users == ml100k.users
    assert loaded.catalog.titles == ml100k.catalog.titles


def test_refuses_altered_or_foreign_artifacts(artifact, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(resolve(artifact), copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "format_version": 999}))
    with pytest.raises(DataError, match="format"):
        load_artifact(copy)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    config = (copy / "config.toml").read_text()
    (copy / "config.toml").write_text(config.replace("weight = 1.5", "weight = 1.25"))
    with pytest.raises(DataError, match="config hash"):
        load_artifact(copy)
    with pytest.raises(DataError, match="not an artifact"):
        load_artifact(tmp_path)
