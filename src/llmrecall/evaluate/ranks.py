"""Per-target evaluation detail beside the results JSON: what the HTML report is drawn from.

``llmrecall evaluate -o RESULTS.json`` also writes ``RESULTS.ranks.npz`` (:func:`sidecar_path`),
a compressed NumPy archive; the JSON stays as it was. It holds, for the evaluated users and
their held-out targets (``docs/report.md`` lists every array):

- ``rank.<list>``: each target's 1-based rank in each channel's list and in the fused list,
  -1 when the list does not hold it. Every metric of the JSON (recall, hit rate, NDCG, MRR at
  any K up to the list's length) can be recomputed from these ranks and the target counts;
- the users' history length and last-activity time, each target's train popularity,
  popularity bucket (head / torso / tail) and cold flag (no train interactions);
- the share of head / torso / tail items among each list's top K and the mean train
  popularity of those items (popularity bias), at a few K.

Everything is per target or per user (no full lists), so the file stays small: ml-100k with
the default config is about 30 KB.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from llmrecall.errors import DataError

#: bumped when the arrays change meaning; :func:`load_ranks` refuses other versions
FORMAT = 1
#: popularity buckets, in the order of ``target_bucket``'s codes
BUCKETS = ("head", "torso", "tail")
#: cut-offs at which the popularity bias of every list is summarised
BIAS_KS = (10, 20, 50, 100, 200)


def sidecar_path(results: Path | str) -> Path:
    """Where the sidecar of results file ``results`` lies: ``X.json`` -> ``X.ranks.npz``."""
    results = Path(results)
    stem = results.name[:-5] if results.name.endswith(".json") else results.name
    return results.with_name(f"{stem}.ranks.npz")


def target_ranks(ids: np.ndarray, targets: sp.csr_matrix) -> np.ndarray:
    """Each target's 1-based rank in its user's list.

    Args:
        ids: int[u, K] dense item ids, best first, padded with -1; rows do not repeat items.
        targets: binary CSR [u, n_items] with sorted, deduplicated indices.
    Returns:
        int32[targets.nnz], in the CSR order of ``targets``: the rank (1 = first) of each
        target in its row of ``ids``, or -1 when the row does not hold it.
    """
    n_users = targets.shape[0]
    n_cols = np.int64(targets.shape[1])
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(targets.indptr))
    target_keys = rows * n_cols + targets.indices  # ascending: rows ascend, indices sorted
    out = np.full(len(target_keys), -1, np.int32)
    valid = ids >= 0
    if not len(target_keys) or not valid.any():
        return out
    row, col = np.nonzero(valid)
    keys = row.astype(np.int64) * n_cols + ids[row, col]
    pos = np.minimum(np.searchsorted(target_keys, keys), len(target_keys) - 1)
    match = target_keys[pos] == keys
    out[pos[match]] = col[match] + 1
    return out


def popularity_buckets(counts: np.ndarray) -> np.ndarray:
    """Head / torso / tail code (0 / 1 / 2) of every item by its train interaction count.

    Items are ordered from the most to the least popular (ties by id); an item is *head* when
    the interactions of the items before it are less than a third of all interactions, *torso*
    when less than two thirds, *tail* otherwise. Each bucket therefore holds about a third of
    the train interactions: a few head items, many tail items. Items never interacted with
    are tail.

    Args:
        counts: int[n_items] train interactions per item.
    Returns:
        int8[n_items].
    """
    counts = np.asarray(counts, np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    sorted_counts = counts[order]
    before = np.cumsum(sorted_counts) - sorted_counts
    total = max(int(counts.sum()), 1)
    codes = np.where(3 * before < total, 0, np.where(3 * before < 2 * total, 1, 2)).astype(np.int8)
    codes[sorted_counts == 0] = 2
    out = np.empty(len(counts), np.int8)
    out[order] = codes
    return out


def build_ranks(report: dict, split, lists, fused: np.ndarray) -> dict[str, np.ndarray]:
    """The sidecar's arrays for one evaluation.

    Args:
        report: the results dict of :func:`llmrecall.evaluate.experiment.run_experiment`.
        split: its :class:`~llmrecall.evaluate.protocols.Split`.
        lists: its :class:`~llmrecall.evaluate.experiment.ChannelLists` (the evaluated task
            and every channel's lists).
        fused: int32[u, K] the fused ids the report's ``fused`` metrics were computed from.
    Returns:
        name -> array, as :func:`save_ranks` writes them (``meta`` is a JSON string).
    """
    task = lists.task
    targets = sp.csr_matrix(task.targets, copy=True)
    targets.sum_duplicates()
    targets.eliminate_zeros()
    targets.sort_indices()
    users = np.asarray(task.users, np.int32)
    items = targets.indices.astype(np.int32)
    n_items = task.n_items

    named = {name: c.ids for name, c in lists.lists.items()}
    named["fused"] = fused
    out: dict[str, np.ndarray] = {
        "users": users,
        "target_indptr": targets.indptr.astype(np.int64),
        "target_items": items,
    }
    for name, ids in named.items():
        out[f"rank.{name}"] = target_ranks(np.asarray(ids), targets)

    history = task.history
    lengths = np.diff(history.indptr)[users]
    last = np.full(len(users), np.nan)
    has = lengths > 0
    last[has] = history.times[history.indptr[users[has] + 1] - 1]
    out["history_length"] = lengths.astype(np.int32)
    out["last_time"] = last

    counts = np.bincount(split.train.interactions.item, minlength=n_items)
    buckets = popularity_buckets(counts)
    out["target_popularity"] = counts[items].astype(np.int32)
    out["target_bucket"] = buckets[items]
    out["target_cold"] = counts[items] == 0

    candidates = (np.ones(n_items, bool) if task.candidate_mask is None
                  else np.asarray(task.candidate_mask, bool))
    for name, ids in named.items():
        ids = np.asarray(ids)
        ks = [k for k in BIAS_KS if k <= ids.shape[1]]
        shares = np.zeros((len(ks), len(BUCKETS)))
        mean_pop = np.full(len(ks), np.nan)
        for i, k in enumerate(ks):
            top = ids[:, :k]
            top = top[top >= 0]
            if top.size:
                shares[i] = np.bincount(buckets[top], minlength=len(BUCKETS)) / top.size
                mean_pop[i] = counts[top].mean()
        out[f"bias_ks.{name}"] = np.asarray(ks, np.int32)
        out[f"exposure.{name}"] = shares
        out[f"mean_popularity.{name}"] = mean_pop

    time_meaning = split.dataset.meta.get("time", "seconds")
    meta = {
        "format": FORMAT,
        **{key: report.get(key) for key in ("dataset", "protocol", "seed", "split",
                                            "config_hash", "users_evaluated")},
        "lists": list(named),
        "list_lengths": {name: int(np.asarray(ids).shape[1]) for name, ids in named.items()},
        "n_items": int(n_items),
        "time_unit": "seconds" if time_meaning == "seconds" else "position",
        "reference_time": float(history.times.max()) if len(history.times) else None,
        "catalog_bucket_share": (np.bincount(buckets[candidates], minlength=len(BUCKETS))
                                 / max(int(candidates.sum()), 1)).tolist(),
        "target_mean_popularity": float(counts[items].mean()) if len(items) else None,
    }
    out["meta"] = np.array(json.dumps(meta))
    return out


def save_ranks(path: Path | str, ranks: dict[str, np.ndarray]) -> None:
    """Write ``ranks`` (from :func:`build_ranks`) to ``path`` as a compressed ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:  # a file object: numpy would append .npz to another name
        np.savez_compressed(f, **ranks)  # type: ignore[arg-type]


def load_ranks(path: Path | str) -> tuple[dict, dict[str, np.ndarray]]:
    """Read a sidecar: its meta dict and its arrays. Raises DataError naming the file when it
    is missing, unreadable or of another format."""
    path = Path(path)
    if not path.is_file():
        raise DataError("the per-user ranks file is missing; `llmrecall evaluate -o X.json` "
                        "writes it next to X.json (rerun the evaluation to make it)", path=str(path))
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"not a ranks file written by `llmrecall evaluate` ({exc})",
                        path=str(path)) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"ranks file format {meta.get('format') if isinstance(meta, dict) else '?'}"
                        f", this version reads format {FORMAT}: rerun the evaluation",
                        path=str(path))
    missing = [f"rank.{name}" for name in meta.get("lists", []) if f"rank.{name}" not in arrays]
    if missing or "target_indptr" not in arrays:
        raise DataError(f"ranks file lacks {', '.join(missing) or 'target_indptr'}", path=str(path))
    return meta, arrays
