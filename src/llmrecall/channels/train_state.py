"""Checkpoints of a training run in progress, without pickle, for resuming it exactly.

A checkpoint is a folder of three files:

* ``model.safetensors``: the network's ``state_dict`` (the bare module's keys, never a
  DistributedDataParallel wrapper's ``module.`` ones);
* ``optimizer.safetensors``: the optimizer's per-parameter tensors (``state.<i>.<name>``,
  e.g. AdamW's ``exp_avg``, ``exp_avg_sq`` and ``step``) and torch's CPU generator state
  of each data-parallel rank (``torch_rng.<rank>``, uint8);
* ``train_state.json``: the step count (epochs for SASRec, optimizer steps for textcf),
  the optimizer's parameter groups (learning rate, betas, ...) and the numpy generator's
  ``bit_generator.state`` to resume with.

Restored into freshly built objects (:func:`load_train_state`, then the weights into the
network and :func:`restore` for the rest), the steps that follow draw the same batches,
negatives and dropout masks and apply the same updates as the uninterrupted run: the
result is that run's, bit for bit (on the same world size and thread count). Resumed on
another number of ranks (an elastic run that lost or gained workers), the ranks the
checkpoint has no generator state for start torch's generator from a seed of their own:
the run goes on with the same weights, optimizer state, batches and negatives, and other
dropout masks.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "train_state.json"


@dataclass
class TrainState:
    """A checkpoint read back: ``step`` steps (or epochs) done, the network's ``weights``
    (name -> tensor), the ``optimizer``'s ``state_dict``, the numpy generator's state
    ``rng`` and torch's CPU generator state of each rank, ``torch_rng[rank]``."""

    step: int
    weights: dict[str, Any]
    optimizer: dict[str, Any]
    rng: dict[str, Any]
    torch_rng: list[Any]


def save_train_state(folder: str | Path, module: Any, optimizer: Any, step: int,
                     rng_state: Mapping[str, Any], torch_rng: Sequence[Any]) -> None:
    """Write the checkpoint of ``module`` (the bare network) and ``optimizer`` after
    ``step`` steps, with the numpy generator state a resumed run starts from
    (``rng_state``, a ``bit_generator.state``: the current one, unless the run draws a
    pass's order once and resumes inside it) and the torch generator states ``torch_rng``
    (one uint8 tensor per rank, rank order) into ``folder`` (created)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(weights, str(folder / MODEL_FILE))
    opt = optimizer.state_dict()
    tensors = {f"state.{index}.{name}": value.detach().contiguous()
               for index, slots in opt["state"].items() for name, value in slots.items()}
    tensors.update({f"torch_rng.{rank}": state.contiguous()
                    for rank, state in enumerate(torch_rng)})
    save_file(tensors, str(folder / OPTIMIZER_FILE))
    meta = {"step": int(step), "param_groups": opt["param_groups"],
            "rng": dict(rng_state)}
    (folder / STATE_FILE).write_text(json.dumps(meta))


def load_train_state(folder: str | Path) -> TrainState:
    """The checkpoint :func:`save_train_state` wrote in ``folder``."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = json.loads((folder / STATE_FILE).read_text())
    tensors = load_file(str(folder / OPTIMIZER_FILE))
    slots: dict[int, dict[str, Any]] = {}
    ranks: dict[int, Any] = {}
    for key, value in tensors.items():
        kind, first, *rest = key.split(".")
        if kind == "torch_rng":
            ranks[int(first)] = value
        else:
            slots.setdefault(int(first), {})[".".join(rest)] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()}
              for group in meta["param_groups"]]
    return TrainState(step=int(meta["step"]), weights=load_file(str(folder / MODEL_FILE)),
                      optimizer={"state": dict(sorted(slots.items())), "param_groups": groups},
                      rng=meta["rng"], torch_rng=[ranks[r] for r in sorted(ranks)])


def restore(state: TrainState, optimizer: Any, rng: np.random.Generator, rank: int,
            seed: int = 0) -> bool:
    """Put ``state``'s optimizer state into ``optimizer``, its numpy generator state into
    ``rng`` and rank ``rank``'s torch generator state into torch's CPU generator; a rank
    the checkpoint has no state for (it was written by fewer ranks) seeds torch's
    generator from ``seed``, ``rank`` and ``state.step`` instead. Returns whether the rank's
    own state was restored (the resumed run is then the uninterrupted one's, bit for bit).

    Call it after building the network (its initialisation draws from torch's
    generator) and loading ``state.weights`` into it, right before training resumes."""
    import torch

    optimizer.load_state_dict(state.optimizer)
    rng.bit_generator.state = state.rng
    if rank < len(state.torch_rng):
        torch.set_rng_state(state.torch_rng[rank])
        return True
    torch.manual_seed(int(np.random.SeedSequence([seed, rank, state.step]).generate_state(1)[0]))
    return False
