"""Job configuration: one dataclass per component, composed into `JobConfig`.

Loaded with `OmegaConf.structured(JobConfig)`, then merged with a YAML file and `key=value` overrides
from the command line; validated early with errors that name the field. Library code receives the
plain dataclasses (`OmegaConf.to_object`), never a DictConfig.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rewards.config import RewardConfig
from search.registry import SearchConfig

from .generator import SamplingConfig
from .models.registry import ModelConfig, list_generators, model_defaults


@dataclass
class SamplingOptions:
    """Sampling overrides; None means the model's default (then the library default)."""

    cfg: Any = None  # guidance weight: a float, or a list with one value per scale
    tau: Any = None  # temperature: a float, or a list with one value per scale
    top_k: int | None = None
    top_p: float | None = None

    def resolve(self, model_name: str) -> SamplingConfig:
        base = {**SamplingConfig().__dict__, **model_defaults(model_name).sampling}
        for k in ("cfg", "tau", "top_k", "top_p"):
            v = getattr(self, k)
            if v is not None:
                base[k] = list(v) if isinstance(v, (list, tuple)) else v
        base.pop("extra", None)
        return SamplingConfig(**base)


@dataclass
class OutputConfig:
    dir: str = "outputs/run"
    save_candidates: bool = False  # also write every final candidate
    traces: bool = True


@dataclass
class RuntimeConfig:
    kind: str = "local"  # local | ray
    max_rows_per_forward: int = 64  # memory bound: larger batches run in chunks of this many rows
    prompts_per_unit: int = 4  # prompts packed into one work unit (one forward batch family)
    preview_size: int | None = None  # decode size of intermediate previews; None: the model's default
    score_batch: int = 64  # images per reward / feature call
    quiet: bool = False
    # ray only
    address: str | None = None  # None: start a local Ray; "auto" or "ray://host:port": join a cluster
    actors: int | None = None  # generator actors; None: one per GPU, or one on a CPU-only machine
    cpus_per_actor: float = 1.0  # also the torch thread count inside each actor
    gpus_per_actor: float = 1.0  # < 1 packs several generator actors onto one GPU (e.g. 0.5: two per GPU)
    units_in_flight: int = 2  # work units kept in flight per actor
    retries: int = 2  # re-runs of a unit that failed before its prompts are recorded as failed
    reward_actors: int = 0  # >0: score in a shared pool of reward actors instead of in each generator actor
    dashboard: bool = False  # if true, bound to 127.0.0.1 only


@dataclass
class JobConfig:
    prompts: str | None = None  # .txt (one per line) or .jsonl with a "prompt" field (GenEval metadata works)
    seed: int = 0
    limit: int | None = None  # only the first `limit` prompts
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    search: SearchConfig = field(default_factory=SearchConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)


class ConfigError(ValueError):
    pass


def load_config(yaml_path: str | Path | None = None, overrides: list[str] | None = None, **fields) -> JobConfig:
    """Structured defaults <- YAML file <- `key=value` overrides <- keyword fields; validated."""
    try:
        conf = OmegaConf.structured(JobConfig)
        if yaml_path is not None:
            path = Path(yaml_path)
            if not path.is_file():
                raise ConfigError(f"job file not found: {path}")
            conf = OmegaConf.merge(conf, OmegaConf.load(path))
        if overrides:
            bad = [o for o in overrides if "=" not in o]
            if bad:
                raise ConfigError(f"overrides must look like key=value, got {bad}")
            conf = OmegaConf.merge(conf, OmegaConf.from_dotlist(list(overrides)))
        if fields:
            conf = OmegaConf.merge(conf, OmegaConf.create(fields))
        job: JobConfig = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" field {key!r}" if key else ""
        raise ConfigError(f"invalid config{where}: {getattr(e, 'msg', e)}") from e
    validate(job)
    return job


def validate(job: JobConfig) -> None:
    """Checks that need no model: names, ranges. Scale-dependent checks run when the model is known."""
    if job.model.name not in list_generators():
        raise ConfigError(f"model.name={job.model.name!r} is unknown; available: {', '.join(list_generators())}")
    rt = job.runtime
    if rt.kind not in ("local", "ray"):
        raise ConfigError(f"runtime.kind={rt.kind!r}; use local or ray")
    for name in ("max_rows_per_forward", "prompts_per_unit", "score_batch", "units_in_flight"):
        if getattr(rt, name) < 1:
            raise ConfigError(f"runtime.{name} must be >= 1, got {getattr(rt, name)}")
    if rt.actors is not None and rt.actors < 1:
        raise ConfigError(f"runtime.actors must be >= 1, got {rt.actors}")
    if rt.retries < 0:
        raise ConfigError(f"runtime.retries must be >= 0, got {rt.retries}")
    if rt.preview_size is not None and rt.preview_size < 8:
        raise ConfigError(f"runtime.preview_size must be >= 8 pixels, got {rt.preview_size}")
    if job.limit is not None and job.limit < 1:
        raise ConfigError(f"limit must be >= 1, got {job.limit}")
    if job.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {job.seed}")
    s = job.sampling
    for name in ("cfg", "tau"):
        v = getattr(s, name)
        vals = v if isinstance(v, (list, tuple)) else [v]
        if v is not None and not all(isinstance(x, (int, float)) and math.isfinite(x) for x in vals):
            raise ConfigError(f"sampling.{name} must be a number or a list of numbers, got {v!r}")
    if s.tau is not None and any(t <= 0 for t in (s.tau if isinstance(s.tau, (list, tuple)) else [s.tau])):
        raise ConfigError(f"sampling.tau must be > 0, got {s.tau!r}")
    if s.top_p is not None and not 0 <= s.top_p <= 1:
        raise ConfigError(f"sampling.top_p must be in [0, 1], got {s.top_p}")
    if s.top_k is not None and s.top_k < 0:
        raise ConfigError(f"sampling.top_k must be >= 0, got {s.top_k}")


def to_yaml(job: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(job))
