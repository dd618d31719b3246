"""Versioned serving artifacts: everything the service needs, written as data (no pickles).

Layout of an artifact root ``OUT`` written by :func:`build`::

    OUT/CURRENT                      name of the live version (replaced atomically)
    OUT/versions/<version>/
        manifest.json                format version, config hash, created time, dataset, sizes
        config.toml                  the pipeline config that produced it
        channels/<name>/params.json  + state.npz, one folder per channel (Channel.save)
        users.json, items.json       vocabularies: raw ids in dense-index order
        catalog.parquet              item metadata, row i = dense item i
        histories.npz                CSR histories (indptr, items, times, weights)
        fusion/params.json           + table.npz: the learned fusion, only for
                                     ``[fusion] method = "learned"`` (LearnedFusion.save)

A version folder is written under a temporary name and renamed into place, then ``CURRENT``
is replaced with ``os.replace``: a reader sees either the old or the new version, never a
partial one.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from llmrecall.channels.registry import load_channel
from llmrecall.config import PipelineConfig, load_config
from llmrecall.data.dataset import Catalog, Dataset, Histories, Interactions
from llmrecall.data.vocab import Vocabulary
from llmrecall.errors import DataError
from llmrecall.fusion import LearnedFusion
from llmrecall.pipeline import RecallPipeline, allowed_mask

#: bumped whenever the layout above changes incompatibly
FORMAT_VERSION = 1


@dataclass
class Artifact:
    """A loaded artifact version: fitted pipeline plus the data it was fitted on.

    ``histories`` has one row per user of ``users`` (dense ids), sorted by time.
    """

    path: Path
    manifest: dict
    config: PipelineConfig
    pipeline: RecallPipeline
    users: Vocabulary
    items: Vocabulary
    catalog: Catalog
    histories: Histories

    @property
    def version(self) -> str:
        return self.manifest["version"]


#: the split whose validation task a learned fusion is fitted on
FUSION_PROTOCOL = "loo"


def fit_pipeline(dataset: Dataset, config: PipelineConfig, progress=None) -> RecallPipeline:
    """``config``'s pipeline fitted on all of ``dataset``, as served.

    With ``[fusion] method = "learned"`` the fusion is fitted first, as ``evaluate`` fits it:
    the channels on the :data:`FUSION_PROTOCOL` split's train part (seed ``config.seed``),
    then :func:`~llmrecall.evaluate.experiment.fit_fusion` on its validation task. The
    channels are then refitted on all data; the fitted table maps (history-length bucket,
    channel, rank) to a score, so it applies unchanged to the refitted channels' lists.
    The pipeline's ``fusion_model_`` holds it (``fusion_seconds_`` its fit time).
    """
    model, fusion_seconds = None, 0.0
    if config.fusion.method == "learned":
        from llmrecall.evaluate.experiment import fit_fusion
        from llmrecall.evaluate.protocols import make_split

        start = time.perf_counter()
        split = make_split(dataset, FUSION_PROTOCOL, config.seed)
        on_train = RecallPipeline(config).fit(split.train)
        model = fit_fusion(on_train, split.valid)
        fusion_seconds = time.perf_counter() - start
    pipeline = RecallPipeline(config).fit(dataset, progress=progress)
    pipeline.fusion_model_ = model
    pipeline.fusion_seconds_ = fusion_seconds
    return pipeline


def build(dataset: Dataset, config: PipelineConfig, out_dir: str | Path,
          progress=None) -> Path:
    """Fit ``config``'s pipeline on ``dataset`` and write a new artifact version under ``out_dir``.

    With ``[fusion] method = "learned"`` the fitted fusion is written under ``fusion/``
    (:func:`fit_pipeline` says how it is fitted). Returns the path of the version folder;
    ``out_dir/CURRENT`` names it afterwards.
    """
    pipeline = fit_pipeline(dataset, config, progress=progress)

    def write_data(folder: Path) -> None:
        (folder / "users.json").write_text(json.dumps(dataset.users.ids))
        (folder / "items.json").write_text(json.dumps(dataset.items.ids))
        dataset.catalog.frame.write_parquet(folder / "catalog.parquet")
        hist = dataset.histories()
        np.savez(folder / "histories.npz", indptr=hist.indptr, items=hist.items,
                 times=hist.times, weights=hist.weights, n_items=np.int64(hist.n_items))

    return write_version(out_dir, config, pipeline, write_data, {
        "dataset": dataset.name, "n_users": dataset.n_users, "n_items": dataset.n_items,
        "n_interactions": len(dataset.interactions),
        "text_fields": list(dataset.catalog.text_fields)})


def write_version(out_dir: str | Path, config: PipelineConfig, pipeline: RecallPipeline,
                  write_data: Callable[[Path], None], about: dict[str, Any]) -> Path:
    """Write a fitted pipeline as a new version under ``out_dir`` and point ``CURRENT`` at
    it. ``write_data(folder)`` writes the data files (``users.json``, ``items.json``,
    ``catalog.parquet``, ``histories.npz``: the layout of the module docstring) into the
    version's temporary folder; ``about`` (``dataset``, ``n_users``, ``n_items``,
    ``n_interactions``, ``text_fields``) goes into the manifest. Returns the version folder."""
    root = Path(out_dir)
    (root / "versions").mkdir(parents=True, exist_ok=True)
    created = time.time()
    version = (time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(created))
               + f"-{config.config_hash()}-{uuid.uuid4().hex[:6]}")
    tmp = root / "versions" / f".tmp-{version}"
    tmp.mkdir()
    for name, channel in pipeline.channels.items():
        channel.save(tmp / "channels" / name)
    if pipeline.fusion_model_ is not None:
        pipeline.fusion_model_.save(tmp / "fusion")
    (tmp / "config.toml").write_text(config.to_toml())
    write_data(tmp)
    manifest = {
        "format_version": FORMAT_VERSION,
        "version": version,
        "created": created,
        "created_iso": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
        "config_hash": config.config_hash(),
        **about,
        "channels": {name: ch.kind for name, ch in pipeline.channels.items()},
        "fit_seconds": pipeline.fit_seconds,
    }
    if pipeline.fusion_model_ is not None:
        report = pipeline.fusion_model_.report
        manifest["fusion"] = {"method": "learned", "protocol": FUSION_PROTOCOL,
                              "reference": report.get("reference"),
                              "prefix": report.get("prefix"),
                              "fit_seconds": pipeline.fusion_seconds_}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
    final = root / "versions" / version
    _fsync_tree(tmp)
    tmp.rename(final)
    pointer = root / ".CURRENT.tmp"
    pointer.write_text(version + "\n")
    with open(pointer, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, root / "CURRENT")
    _fsync_dir(root)
    return final


def resolve(path: str | Path) -> Path:
    """The version folder for ``path``: itself if it holds a manifest, else ``path/CURRENT``."""
    path = Path(path)
    if (path / "manifest.json").is_file():
        return path
    pointer = path / "CURRENT"
    if not pointer.is_file():
        raise DataError("not an artifact: neither manifest.json nor CURRENT found", path=str(path))
    version = pointer.read_text().strip()
    folder = path / "versions" / version
    if not (folder / "manifest.json").is_file():
        raise DataError(f"CURRENT names version {version!r} but it is missing", path=str(path))
    return folder


def check_artifact(path: str | Path) -> Path:
    """The version folder of ``path`` if it looks servable, read-only and cheaply: it
    resolves (:func:`resolve`), its manifest is JSON of this format version, and its config
    file is there. Nothing is written and no channel is loaded; :func:`load_artifact` still
    checks the rest. Raises :class:`DataError` naming the path."""
    folder = resolve(path)
    _manifest(folder)
    if not (folder / "config.toml").is_file():
        raise DataError("not an artifact: config.toml is missing", path=str(folder))
    return folder


def _manifest(folder: Path) -> dict:
    where = str(folder / "manifest.json")
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"not an artifact manifest: {exc}", path=where) from None
    if not isinstance(manifest, dict):
        raise DataError("not an artifact manifest: expected a JSON object", path=where)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(f"artifact format {manifest.get('format_version')!r} is not supported "
                        f"(this build reads format {FORMAT_VERSION}): rebuild it", path=where)
    return manifest


def load_artifact(path: str | Path) -> Artifact:
    """Load an artifact root or version folder fully (channels, vocabularies, histories).

    Refuses artifacts of another format version and ones whose config does not hash to the
    manifest's config hash (a foreign or edited folder).
    """
    folder = resolve(path)
    manifest = _manifest(folder)
    config = load_config(folder / "config.toml")
    if config.config_hash() != manifest["config_hash"]:
        raise DataError(f"config hash {config.config_hash()} differs from the manifest's "
                        f"{manifest['config_hash']}: the artifact was altered",
                        path=str(folder / "config.toml"))
    pipeline = RecallPipeline(config)
    for name in list(pipeline.channels):
        channel = pipeline.channels[name] = load_channel(folder / "channels" / name)
        channel.name = name
        for key, value in vars(channel).items():
            # a Fortran-ordered state array (e.g. from a LAPACK solve) is copied by every
            # sparse @ dense product; serving wants C order once, at load
            if key.endswith("_") and isinstance(value, np.ndarray) and not value.flags.c_contiguous:
                setattr(channel, key, np.ascontiguousarray(value))
    if config.fusion.method == "learned":
        pipeline.fusion_model_ = _load_fusion(folder, list(pipeline.channels))
    users = Vocabulary(json.loads((folder / "users.json").read_text()))
    items = Vocabulary(json.loads((folder / "items.json").read_text()))
    catalog = Catalog(pl.read_parquet(folder / "catalog.parquet"),
                      tuple(manifest.get("text_fields", ())))
    with np.load(folder / "histories.npz", allow_pickle=False) as npz:
        histories = Histories(npz["indptr"], npz["items"], npz["times"], npz["weights"],
                              int(npz["n_items"]))
    if len(items) != len(catalog) or histories.n_users != len(users):
        raise DataError("artifact vocabularies, catalog and histories disagree in size",
                        path=str(folder))
    empty = Interactions.build(np.zeros(0, np.int32), np.zeros(0, np.int32))
    pipeline.dataset_ = Dataset(manifest["dataset"], users, items, empty, catalog)
    pipeline.allowed_ = allowed_mask(pipeline.dataset_, config)
    return Artifact(folder, manifest, config, pipeline, users, items, catalog, histories)


def _load_fusion(folder: Path, channels: list[str]) -> LearnedFusion:
    """The learned fusion saved under ``folder/fusion``; a :class:`DataError` if it is
    missing, unreadable, or fitted on other channels than the artifact's."""
    where = folder / "fusion"
    if not (where / "params.json").is_file() or not (where / "table.npz").is_file():
        raise DataError('[fusion] method = "learned" but the artifact holds no fitted fusion '
                        "(fusion/params.json, fusion/table.npz): rebuild it with "
                        "`llmrecall build`", path=str(where))
    try:
        model = LearnedFusion.load(where)
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the learned fusion: {exc}", path=str(where)) from None
    if sorted(model.channels) != sorted(channels):
        raise DataError(f"the learned fusion was fitted on channels {model.channels}, the "
                        f"artifact has {channels}: rebuild it", path=str(where))
    return model


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` so a rename publishes durable data."""
    for folder, _dirs, files in os.walk(path):
        for name in files:
            with open(Path(folder) / name, "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(folder))
