"""Typed pipeline configuration: one TOML file describes channels, fusion and filters.

Every value is validated by pydantic when the file is read, including each channel's
parameters, which are checked against the channel class's constructor signature (so the
defaults live in one place: the constructor) and against the ranges in
:data:`CHANNEL_PARAM_BOUNDS` (so ``neighbors = -3`` fails when the file is read, not when the
channel is fitted). The config hash stamps results and artifacts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tomllib
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, model_validator

from llmrecall.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"

#: Allowed ranges of the built-in channels' constructor parameters, as pydantic ``Field``
#: constraints (``ge``, ``gt``, ``le``, ``lt``), by channel kind. A parameter whose "off" value
#: is None stays optional: the bound applies to the numbers. A plugin channel class declares
#: its own as a class attribute ``param_bounds`` (same shape, parameter -> constraints).
CHANNEL_PARAM_BOUNDS: dict[str, dict[str, dict[str, float]]] = {
    "popularity": {"half_life": {"gt": 0}},
    "itemcf": {"neighbors": {"ge": 1}, "shrink": {"ge": 0}, "history_length": {"ge": 1},
               "position_half_life": {"gt": 0}, "time_half_life": {"gt": 0}},
    "swing": {"alpha": {"gt": 0}, "user_power": {"ge": 0}, "max_users_per_item": {"ge": 2},
              "neighbors": {"ge": 1}, "history_length": {"ge": 1},
              "position_half_life": {"gt": 0}, "time_half_life": {"gt": 0}},
    "ease": {"regularization": {"gt": 0}, "max_items": {"ge": 1}},
    "cf_transfer": {"regularization": {"gt": 0}, "max_items": {"ge": 1},
                    "neighbors": {"ge": 1}, "temperature": {"gt": 0},
                    "mapping_weight": {"ge": 0, "le": 1}, "mapping_ridge": {"gt": 0}},
    "edlae": {"l2": {"gt": 0}, "dropout": {"ge": 0, "lt": 1}, "max_items": {"ge": 1},
              "user_power": {"ge": 0}},
    "als": {"factors": {"ge": 1}, "regularization": {"ge": 0}, "alpha": {"gt": 0},
            "iterations": {"ge": 1}},
    "bpr": {"factors": {"ge": 1}, "regularization": {"ge": 0}, "learning_rate": {"gt": 0},
            "iterations": {"ge": 1}},
    "semantic_i2i": {"recent": {"ge": 1}, "recency_decay": {"gt": 0, "le": 1},
                     "table_width": {"ge": 0}},
    "semantic_user": {"recent": {"ge": 1}, "recency_decay": {"gt": 0, "le": 1},
                      "n_interests": {"ge": 1}, "kmeans_iters": {"ge": 1}},
    "sasrec": {"dim": {"ge": 1}, "blocks": {"ge": 1}, "heads": {"ge": 1}, "max_len": {"ge": 1},
               "dropout": {"ge": 0, "lt": 1}, "epochs": {"ge": 1}, "batch_size": {"ge": 1},
               "lr": {"gt": 0}, "weight_decay": {"ge": 0}, "negatives": {"ge": 1},
               "patience": {"ge": 0}, "holdout_users": {"ge": 1}, "threads": {"ge": 1}},
    "textcf": {"dim": {"ge": 1}, "hidden": {"ge": 1}, "layers": {"ge": 0}, "tau": {"gt": 0},
               "epochs": {"ge": 1}, "batch_size": {"ge": 1}, "lr": {"gt": 0},
               "max_steps": {"ge": 0}, "recency_decay": {"gt": 0, "le": 1}, "recent": {"ge": 1},
               "threads": {"ge": 1}},
    "search_query": {"recent_queries": {"ge": 1}, "per_text_k": {"ge": 1}, "rrf_k": {"gt": 0}},
    "llm_interest": {"max_users": {"ge": 1}, "per_text_k": {"ge": 1}, "rrf_k": {"gt": 0},
                     "refresh_min_changed": {"ge": 0}},
    "llm_knowledge": {"max_items": {"ge": 1}, "rrf_k": {"gt": 0}, "neighbors": {"ge": 1},
                      "history_length": {"ge": 1}},
}


#: (section, field, default) of settings added after config hashes were published: left
#: out of the hash at their default, so a config that does not use them keeps its hash
#: (and the results and caches filed under it)
HASH_OMITS_AT_DEFAULT = (("fusion", "score_base", False),)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChannelConfig(_Strict):
    """One recall channel in the pipeline."""

    kind: str = Field(description="registered channel kind, e.g. 'itemcf'")
    name: str | None = Field(None, description="unique name; defaults to the kind")
    enabled: bool = True
    weight: float = Field(1.0, ge=0, description="fusion weight (RRF multiplier)")
    k: int | None = Field(None, ge=1, le=5000, description="candidates asked of the channel")
    quota: int | None = Field(None, ge=1, description="at most this many enter fusion")
    min_slots: int = Field(0, ge=0, description="guaranteed places in the fused list")
    params: dict[str, Any] = Field(default_factory=dict, description="constructor arguments")

    @property
    def channel_name(self) -> str:
        return self.name or self.kind

    @model_validator(mode="after")
    def _check_params(self) -> ChannelConfig:
        self.params = validate_channel_params(self.kind, self.params)
        return self


class FusionConfig(_Strict):
    """How channel lists become one list."""

    #: "rrf": weighted reciprocal-rank fusion with the channels' hand-set weights;
    #: "learned": a table learned on the validation split, never below its best channel
    #: there (llmrecall.fusion_learn; the channels' weights are then not used)
    method: Literal["rrf", "learned"] = "rrf"
    #: "learned" only: the guard may also fill from a weighted sum of the channels'
    #: standardised scores, the weights learned on validation (llmrecall.fusion_learn)
    score_base: bool = False
    rrf_k: float = Field(60.0, gt=0)
    k: int = Field(200, ge=1, le=5000, description="length of the fused list")
    channel_k: int = Field(400, ge=1, le=5000, description="default candidates per channel")


class FilterConfig(_Strict):
    """Business filters applied to every channel and to the fused list."""

    include_categories: list[str] = Field(default_factory=list)
    exclude_categories: list[str] = Field(default_factory=list)
    allow_items: list[str] = Field(default_factory=list, description="raw item ids; empty = all")
    deny_items: list[str] = Field(default_factory=list, description="raw item ids never returned")


class EngineConfig(_Strict):
    """Where the offline jobs run (``[engine]``): ``local`` (this process) or ``ray``.
    Not part of the config hash: the engine changes where the work runs, not the result."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = Field(None, description=(
        "Ray cluster: 'auto', 'host:port' or 'ray://host:port'; unset: start one here"))
    train_max_failures: int = Field(2, ge=0, description=(
        "ray: restarts of a Ray Train fit (SASRec, textcf) whose worker died; SASRec "
        "resumes from its last epoch checkpoint. 0: the fit fails at the first death"))
    train_min_workers: int | None = Field(None, ge=1, description=(
        "ray: an elastic Ray Train fit that goes on, from its last checkpoint, on as few as "
        "this many workers after a node is lost (and starts on as many as fit, up to the "
        "cluster's CPUs); unset: a fixed number of workers"))
    log: Literal["driver", "sharded"] = Field("driver", description=(
        "evaluate, build, tune: 'driver' loads the log in this process; 'sharded' shuffles "
        "it into per-user history shards and fits, recalls and scores (or writes the "
        "artifact) shard by shard, never holding "
        "the log in one process (loo; popularity, itemcf and swing; docs/scale-out.md)"))
    work_dir: str | None = Field(None, description=(
        "log = 'sharded': where the history shards and each stage's results are written; "
        "the same evaluate started again (after a killed driver) computes only what is "
        "missing there. Unset: a temporary folder removed after the command. On a cluster: "
        "a path every node reaches"))


class PipelineConfig(_Strict):
    """The whole recall pipeline."""

    #: where the config was read from, for messages (not part of the config or its hash)
    _source: str = PrivateAttr("<config>")

    seed: int = 0
    channels: list[ChannelConfig]
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    lm: dict[str, Any] = Field(default_factory=dict, description="language-model layer settings")
    engine: EngineConfig | None = None

    @model_validator(mode="after")
    def _unique_names(self) -> PipelineConfig:
        names = [c.channel_name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique; repeated: {dupes}")
        if not any(c.enabled for c in self.channels):
            raise ValueError("at least one channel must be enabled")
        return self

    def __eq__(self, other: object) -> bool:
        # equal values, equal configs: where each was read from does not matter
        if not isinstance(other, PipelineConfig):
            return NotImplemented
        return self.model_dump() == other.model_dump()

    __hash__ = None  # type: ignore[assignment]  # mutable, like any pydantic model: unhashable

    @property
    def enabled_channels(self) -> list[ChannelConfig]:
        return [c for c in self.channels if c.enabled]

    def check_cutoffs(self, ks: Iterable[int]) -> None:
        """Raise ConfigError unless every enabled channel returns at least ``max(ks)``
        candidates: evaluation scores each channel's own list at every cut-off, so a list
        shorter than a cut-off cannot be scored. Call it before fitting anything; the
        message names the file and the field (``[fusion] channel_k`` or the channel's ``k``)."""
        longest = max((int(k) for k in ks), default=0)
        for number, c in enumerate(self.channels, start=1):
            if not c.enabled or (c.k or self.fusion.channel_k) >= longest:
                continue
            where = (f"[[channels]] #{number} ({c.channel_name}) k = {c.k}" if c.k is not None
                     else f"[fusion] channel_k = {self.fusion.channel_k}")
            raise ConfigError(
                f"{self._source}: {where}: channel {c.channel_name!r} returns fewer candidates "
                f"than the evaluation cut-off {longest}; set it to at least {longest}")

    def config_hash(self) -> str:
        """sha256 (16 hex chars) of the canonical JSON form: equal configs, equal hash."""
        dumped = self.model_dump(mode="json", exclude={"engine"})
        for section, key, default in HASH_OMITS_AT_DEFAULT:
            if dumped[section].get(key) == default:
                del dumped[section][key]
        canonical = json.dumps(dumped, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_toml())


def packaged_configs() -> list[str]:
    """Names of the configs shipped with the package (``default``, ``full``, ...)."""
    return sorted(p.stem for p in DEFAULT_CONFIG.parent.glob("*.toml"))


def load_config(path: str | Path | None = None) -> PipelineConfig:
    """Read and validate a pipeline TOML file.

    ``path`` may also be the name of a packaged config (``"default"``, ``"full"``); None
    means ``"default"``.
    """
    if path is None:
        path = DEFAULT_CONFIG
    elif not Path(path).exists() and str(path) in packaged_configs():
        path = DEFAULT_CONFIG.parent / f"{path}.toml"
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, source=str(path))


def parse_config(raw: dict[str, Any], source: str = "<config>") -> PipelineConfig:
    """Validate a parsed config; errors name ``source``, the TOML table and the field."""
    try:
        config = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(_problem(e, raw) for e in exc.errors())
        raise ConfigError(f"{source}: invalid config: {problems}") from None
    config._source = source
    return config


def _problem(error: Mapping[str, Any], raw: Any) -> str:
    """One validation error as ``<field path> (<TOML table>): <message>``."""
    loc = list(error["loc"])
    message = error["msg"]
    cause = (error.get("ctx") or {}).get("error")
    if isinstance(cause, ParamsError):  # raised inside a channel: its own field paths
        return "; ".join(_problem({**p, "loc": [*loc, "params", *p["loc"]]}, raw)
                         for p in cause.problems)
    message = _bound_words(message.removeprefix("Value error, "))
    if "input" in error and error.get("type") not in ("missing", "extra_forbidden") and loc:
        message += f" (got {error['input']!r})"
    path = ".".join(str(p) for p in loc) or "(top level)"
    if len(loc) >= 2 and loc[0] == "channels" and isinstance(loc[1], int):
        table = f"[[channels]] #{loc[1] + 1}"
        try:
            table += f" ({raw['channels'][loc[1]]['kind']})"
        except (KeyError, IndexError, TypeError):
            pass
        return f"{path} ({table}): {message}"
    if len(loc) >= 2 and loc[0] in ("fusion", "filters"):
        return f"{path} ([{loc[0]}] {'.'.join(str(p) for p in loc[1:])}): {message}"
    return f"{path}: {message}"


class ParamsError(ValueError):
    """Channel parameters that do not fit the constructor or its bounds; ``problems`` holds
    ``{"loc": (param, ...), "msg": str, "input": value, "type": pydantic error type}`` per
    problem."""

    def __init__(self, kind: str, problems: list[dict[str, Any]]):
        self.kind, self.problems = kind, problems
        super().__init__(f"channel kind {kind!r}: " + "; ".join(
            f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in problems))


@cache
def _params_model(kind: str) -> type[BaseModel]:
    """A pydantic model mirroring the channel constructor's annotated keyword arguments."""
    from llmrecall.channels.registry import channel_class

    cls = channel_class(kind)
    bounds = param_bounds(kind)
    fields: dict[str, Any] = {}
    hints = inspect.get_annotations(cls.__init__, eval_str=True)
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "name") or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        constraints: dict[str, Any] = bounds.get(pname, {})
        fields[pname] = (hints.get(pname, Any), Field(default, **constraints))
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def param_bounds(kind: str) -> dict[str, dict[str, float]]:
    """Parameter -> pydantic constraints of channel ``kind``: :data:`CHANNEL_PARAM_BOUNDS`
    for built-in kinds, then the class's own ``param_bounds`` (a plugin's) over them."""
    from llmrecall.channels.registry import channel_class

    own = getattr(channel_class(kind), "param_bounds", None) or {}
    return {**CHANNEL_PARAM_BOUNDS.get(kind, {}), **own}


def validate_channel_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the constructor of channel ``kind``; returns them coerced.
    A parameter that was renamed is refused with a message naming its new name."""
    from llmrecall.channels.registry import RENAMED_PARAMS

    try:
        model = _params_model(kind)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        renamed = RENAMED_PARAMS.get(kind, {})
        problems = []
        for e in exc.errors():
            message = _bound_words(e["msg"])
            if e["type"] == "extra_forbidden" and len(e["loc"]) == 1 and e["loc"][0] in renamed:
                message = f"renamed: use `{renamed[str(e['loc'][0])]}`"
            problems.append({"loc": e["loc"], "msg": message, "input": e.get("input"),
                             "type": e["type"]})
        raise ParamsError(kind, problems) from None
    return {k: getattr(validated, k) for k in params}


def _bound_words(message: str) -> str:
    """pydantic's "Input should be greater than or equal to 1" as "must be >= 1"."""
    for words, symbol in (("greater than or equal to", ">="), ("less than or equal to", "<="),
                          ("greater than", ">"), ("less than", "<")):
        if message.startswith(f"Input should be {words} "):
            return f"must be {symbol} {message.removeprefix(f'Input should be {words} ')}"
    return message
