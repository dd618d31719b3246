"""The search space: which knobs the tuner turns and over which values.

One table (:data:`CHANNEL_SPACES`) lists, per channel kind, the constructor parameters worth
tuning and a small grid of values for each. The defaults stay in the channel constructors:
the grid only says where to look, and the config's current value is always added to it so the
untuned pipeline is one point of the space (the tuner evaluates it first).

Channel parameters take values from grids rather than continuous ranges on purpose: a trial
whose channel parameters all repeat an earlier trial's reuses the cached channel lists and
only re-runs fusion, and with a few values per knob the sampler repeats good values often.
Fusion parameters (weights, ``rrf_k``) are continuous; quotas and guaranteed slots use grids.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

import optuna

from llmrecall.channels.registry import channel_class
from llmrecall.config import ChannelConfig, PipelineConfig
from llmrecall.errors import ConfigError

Space = Literal["all", "fusion"]


def is_space(value: str) -> TypeGuard[Space]:
    """Whether ``value`` names a search space (a :data:`Space`)."""
    return value in get_args(Space)


@dataclass(frozen=True)
class Grid:
    """A constructor parameter and the values the tuner tries for it."""

    param: str
    values: tuple[Any, ...]


#: per channel kind, the parameters worth tuning (kinds not listed keep their parameters)
CHANNEL_SPACES: dict[str, tuple[Grid, ...]] = {
    "itemcf": (
        Grid("neighbors", (50, 100, 200, 400, 800)),
        Grid("shrink", (0.0, 10.0, 50.0, 200.0)),
        Grid("history_length", (10, 20, 50, 100, 200)),
        Grid("position_half_life", (2.0, 5.0, 10.0, 20.0, 50.0, 200.0)),
    ),
    "swing": (
        Grid("alpha", (0.1, 0.5, 1.0, 5.0, 20.0)),
        Grid("user_power", (0.0, 0.25, 0.5, 0.75, 1.0)),
        Grid("neighbors", (50, 100, 200, 400, 800)),
        Grid("position_half_life", (2.0, 5.0, 10.0, 20.0, 50.0, 200.0)),
    ),
    "ease": (
        Grid("regularization", (20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)),
    ),
    "edlae": (
        Grid("l2", (20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)),
        Grid("dropout", (0.0, 0.1, 0.25, 0.4, 0.55)),
    ),
    "als": (
        Grid("factors", (32, 64, 128, 256)),
        Grid("regularization", (0.001, 0.01, 0.1, 1.0, 10.0)),
        Grid("alpha", (1.0, 5.0, 20.0, 50.0)),
    ),
    "bpr": (
        Grid("factors", (32, 64, 128, 256)),
        Grid("learning_rate", (0.005, 0.01, 0.05, 0.1)),
        Grid("regularization", (0.0001, 0.001, 0.01, 0.1)),
    ),
    # textcf: the knobs that moved validation recall on new items (docs/lm_channels.md);
    # every value refits it (400 steps), so the grids are short
    "textcf": (
        Grid("popularity_prior", (0.0, 1.0, 1.5, 2.0)),
        Grid("recency_decay", (0.9, 0.95, 1.0)),
        Grid("lr_schedule", ("constant", "cosine")),
    ),
    # cf_transfer: the grid of docs/benchmarks.md section 3b, where the best text-mapping
    # weight and neighbour softmax differed between datasets; every value refits it (an
    # EASE fit: seconds on ml-1m, under a minute on amazon-games-6k)
    "cf_transfer": (
        Grid("mapping_weight", (0.0, 0.3, 0.5, 0.7, 0.85, 1.0)),
        Grid("neighbors", (20, 50, 100)),
        Grid("temperature", (0.05, 0.1, 0.2)),
        Grid("regularization", (100.0, 500.0, 2000.0)),
    ),
}

#: fusion knobs: weight range per channel, RRF damping range, quota and guarantee grids
WEIGHT_RANGE = (0.0, 3.0)
RRF_K_RANGE = (1.0, 500.0)
QUOTA_GRID = (25, 50, 100, 200, 400, 800, 1600)
MIN_SLOTS_GRID = (0, 5, 10, 20, 50)


def constructor_defaults(kind: str) -> dict[str, Any]:
    """Keyword defaults of channel ``kind``'s constructor (the single source of defaults)."""
    sig = inspect.signature(channel_class(kind).__init__)
    return {name: p.default for name, p in sig.parameters.items()
            if p.default is not inspect.Parameter.empty}


def channel_grids(channel: ChannelConfig) -> list[Grid]:
    """The grids tuned for ``channel``, each with the channel's current value merged in.

    Parameters whose current value is None (a switched-off feature) are left alone: the grid
    has no "off" value, and TOML cannot write None back. Raises ConfigError when the table
    names a parameter the channel's constructor does not take.
    """
    table = CHANNEL_SPACES.get(channel.kind, ())
    defaults = constructor_defaults(channel.kind)
    grids = []
    for grid in table:
        if grid.param not in defaults:
            raise ConfigError(f"search space for channel kind {channel.kind!r} names "
                              f"{grid.param!r}, which its constructor does not take")
        current = channel.params.get(grid.param, defaults[grid.param])
        if current is None:
            continue
        values = grid.values if current in grid.values else tuple(sorted((*grid.values, current)))
        grids.append(Grid(grid.param, values))
    return grids


def _quota_values(channel_k: int, current: int | None) -> tuple[int, ...]:
    # ``channel_k`` itself means "no quota": every candidate the channel returns enters fusion
    values = {q for q in QUOTA_GRID if q < channel_k} | {channel_k}
    if current is not None:
        values.add(min(current, channel_k))
    return tuple(sorted(values))


def _slot_values(k: int, current: int) -> tuple[int, ...]:
    return tuple(sorted({s for s in MIN_SLOTS_GRID if s <= k // 4} | {current}))


def suggest(trial: optuna.trial.BaseTrial, config: PipelineConfig, space: Space = "all"
            ) -> PipelineConfig:
    """The pipeline config of one trial: ``config`` with the trial's values substituted.

    Parameter names are ``<channel name>.<param>`` for channel parameters,
    ``<channel name>.weight|quota|min_slots`` for fusion, and ``fusion.rrf_k``.
    """
    raw = config.model_dump(mode="python")
    k = config.fusion.k
    # ranges stretch to hold the config's own values, so the untuned pipeline is in the space
    low, high = RRF_K_RANGE
    rrf = config.fusion.rrf_k
    raw["fusion"]["rrf_k"] = trial.suggest_float("fusion.rrf_k", min(low, rrf), max(high, rrf),
                                                 log=True)
    for cfg, out in zip(config.channels, raw["channels"]):
        if not cfg.enabled:
            continue
        name = cfg.channel_name
        channel_k = cfg.k or config.fusion.channel_k
        out["weight"] = trial.suggest_float(f"{name}.weight", WEIGHT_RANGE[0],
                                            max(WEIGHT_RANGE[1], cfg.weight))
        quota = trial.suggest_categorical(f"{name}.quota", _quota_values(channel_k, cfg.quota))
        out["quota"] = None if quota >= channel_k else quota
        out["min_slots"] = trial.suggest_categorical(f"{name}.min_slots",
                                                     _slot_values(k, cfg.min_slots))
        if space == "all":
            defaults = constructor_defaults(cfg.kind)
            for grid in channel_grids(cfg):
                value = trial.suggest_categorical(f"{name}.{grid.param}", grid.values)
                # write only what differs, so the tuned file shows what tuning changed
                if value != cfg.params.get(grid.param, defaults[grid.param]):
                    out["params"][grid.param] = value
    return PipelineConfig.model_validate(raw)


def single_channel_values(config: PipelineConfig, name: str,
                          space: Space = "all") -> dict[str, Any]:
    """Trial parameters of ``config`` with every channel but ``name`` switched off (weight 0,
    no guaranteed slots): the fused list is then that channel's own list. Enqueued next to
    the config itself, so tuning can always fall back to the best single channel (a weight
    near 0 for every other channel is a corner a sampler rarely visits)."""
    values = current_values(config, space)
    for cfg in config.enabled_channels:
        other = cfg.channel_name
        if other == name:
            values[f"{other}.weight"] = cfg.weight if cfg.weight > 0 else 1.0
            continue
        values[f"{other}.weight"] = 0.0
        values[f"{other}.min_slots"] = 0
    return values


def current_values(config: PipelineConfig, space: Space = "all") -> dict[str, Any]:
    """The trial parameters that reproduce ``config`` itself (to enqueue it as a trial)."""
    values: dict[str, Any] = {"fusion.rrf_k": config.fusion.rrf_k}
    for cfg in config.enabled_channels:
        name = cfg.channel_name
        channel_k = cfg.k or config.fusion.channel_k
        values[f"{name}.weight"] = cfg.weight
        values[f"{name}.quota"] = channel_k if cfg.quota is None else min(cfg.quota, channel_k)
        values[f"{name}.min_slots"] = cfg.min_slots
        if space == "all":
            defaults = constructor_defaults(cfg.kind)
            for grid in channel_grids(cfg):
                values[f"{name}.{grid.param}"] = cfg.params.get(grid.param, defaults[grid.param])
    return values
