"""Typed pipeline configuration: one TOML file describes channels, fusion and filters.

Every value is validated by pydantic when the file is read, including each channel's
parameters, which are checked against the channel class's constructor signature (so the
defaults live in one place: the constructor). The config hash stamps results and artifacts.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from llmrecall.errors import ConfigError

DEFAULT_CONFIG = Path(__file__).parent / "configs" / "default.toml"


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
    def _check_params(self) -> "ChannelConfig":
        self.params = validate_channel_params(self.kind, self.params)
        return self


class FusionConfig(_Strict):
    """How channel lists become one list."""

    method: Literal["rrf"] = "rrf"
    rrf_k: float = Field(60.0, gt=0)
    k: int = Field(200, ge=1, le=5000, description="length of the fused list")
    channel_k: int = Field(400, ge=1, le=5000, description="default candidates per channel")


class FilterConfig(_Strict):
    """Business filters applied to every channel and to the fused list."""

    include_categories: list[str] = Field(default_factory=list)
    exclude_categories: list[str] = Field(default_factory=list)
    allow_items: list[str] = Field(default_factory=list, description="raw item ids; empty = all")
    deny_items: list[str] = Field(default_factory=list, description="raw item ids never returned")


class PipelineConfig(_Strict):
    """The whole recall pipeline."""

    seed: int = 0
    channels: list[ChannelConfig]
    fusion: FusionConfig = Field(default_factory=FusionConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    lm: dict[str, Any] = Field(default_factory=dict, description="language-model layer settings")

    @model_validator(mode="after")
    def _unique_names(self) -> "PipelineConfig":
        names = [c.channel_name for c in self.channels]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"channel names must be unique; repeated: {dupes}")
        if not any(c.enabled for c in self.channels):
            raise ValueError("at least one channel must be enabled")
        return self

    @property
    def enabled_channels(self) -> list[ChannelConfig]:
        return [c for c in self.channels if c.enabled]

    def config_hash(self) -> str:
        """sha256 (16 hex chars) of the canonical JSON form: equal configs, equal hash."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
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
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{source}: invalid config: {problems}") from None


@lru_cache(maxsize=None)
def _params_model(kind: str) -> type[BaseModel]:
    """A pydantic model mirroring the channel constructor's annotated keyword arguments."""
    from llmrecall.channels.registry import channel_class

    cls = channel_class(kind)
    fields: dict[str, Any] = {}
    hints = inspect.get_annotations(cls.__init__, eval_str=True)
    for pname, param in inspect.signature(cls.__init__).parameters.items():
        if pname in ("self", "name") or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (hints.get(pname, Any), default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def validate_channel_params(kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Check ``params`` against the constructor of channel ``kind``; returns them coerced."""
    try:
        model = _params_model(kind)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    try:
        validated = model.model_validate(params)
    except ValidationError as exc:
        problems = "; ".join(f"params.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise ValueError(f"channel kind {kind!r}: {problems}") from None
    return {k: getattr(validated, k) for k in params}
