"""Job configuration: one dataclass per component, composed into `JobConfig`.

Loaded with `OmegaConf.structured(JobConfig)`, then merged with a YAML file and `key=value` overrides
from the command line; validated early with errors that name the field. Library code receives the
plain dataclasses (`OmegaConf.to_object`), never a DictConfig.
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from rewards.config import RewardConfig
from search.registry import SearchConfig
from ttsvar.core.device import DTYPES as _DTYPE_TABLE

from .core.errors import ConfigError
from .core.generator import SamplingConfig
from .core.options import accepts_option, check_options
from .models.registry import BUILDER_ARGS, ModelConfig, builder, list_generators, model_defaults

# Upper bounds that keep a typo from eating the machine (the memory a job needs is checked once the model is
# loaded, `ttsvar.jobs.check_memory`); far above any useful value.
MAX_SEARCH_N = 65536
MAX_ACTORS = 4096
MAX_PREVIEW_SIZE = 4096
MAX_PROMPTS_PER_UNIT = 65536
DTYPES = ("auto", *_DTYPE_TABLE)
PREVIEW_MODES = ("full", "cheap")  # runtime.preview
BATCH_INVARIANT = ("auto", True, False)  # runtime.batch_invariant
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


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
        return SamplingConfig(**base)


@dataclass
class OutputConfig:
    dir: str = "outputs/run"
    save_candidates: bool = False  # also write every final candidate
    traces: bool = True
    save_previews: bool = False  # small PNGs of every row at each decision scale (for `ttsvar report`; needs traces)
    save_search_data: bool = False  # search_data/<index>.npz: each decision row's features, rewards, outcome (value.md)
    overwrite: bool = False  # delete the results already in `dir` and start over (`ttsvar run --fresh`)


@dataclass
class RuntimeConfig:
    kind: str = "local"  # local | ray
    max_rows_per_forward: int = 64  # memory bound: larger batches run in chunks of this many rows
    prompts_per_unit: int = 4  # prompts packed into one work unit (one forward batch family)
    preview_size: int | None = None  # decode size of intermediate previews; None: the model's default
    # full: decode previews from the final latent grid; cheap: from the decision scale's own grid (fewer decoder
    # pixels; `Generator.preview(cheap=True)`, docs/engine.md). Final images are always full.
    preview: str = "full"
    # a prompt's result bit for bit independent of the prompts and rows that share its batches (so of
    # prompts_per_unit and max_rows_per_forward): auto = on for CPU models, true, false (ttsvar.models.invariant)
    batch_invariant: Any = "auto"
    score_batch: int = 64  # images per reward / feature call; a reward call holds whole prompt groups (rewards.md)
    quiet: bool = False
    # hand freed heap pages back to the OS after every finished unit (glibc malloc_trim): what a job holds between
    # units stays near what it uses (ttsvar.core.memory, benchmarks.md). Results do not change.
    release_memory: bool = True
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


log = logging.getLogger("ttsvar")

# runtime fields only the Ray runtime reads (a local run warns when one is set)
RAY_ONLY = ("address", "actors", "cpus_per_actor", "gpus_per_actor", "units_in_flight", "reward_actors", "dashboard")


# Flat keys of the config layout before per-component options, with the default they had. `load_config` moves
# each into the section's `options` (one DeprecationWarning naming the new key); a moved key left at its old
# default that the chosen component does not take is dropped (it never had an effect). `job_fingerprint` keeps
# their flat names, so results written before the move resume.
LEGACY_OPTIONS: dict[str, dict[str, Any]] = {
    "search": {"batch_schedule": None, "cluster_scales": None, "resample_scales": None, "potential": "value",
               "lam": 10.0, "beam_scales": None, "beam_width": None, "ess_threshold": 0.5, "fk_pick": "weights"},
    "model": {"vae_weights": None, "text_encoder": None, "h_div_w": 1.0, "pixels": "1M"},
}


class ConfigDeprecationWarning(DeprecationWarning):
    """A config key that still works but has moved (the message names the new key); shown by the CLI."""


def _legacy_warning(section: str, key: str) -> None:
    warnings.warn(f"{section}.{key} is deprecated: use {section}.options.{key}", ConfigDeprecationWarning,
                  stacklevel=4)


def _move_legacy_tree(tree: Any, moved: set[tuple[str, str]]) -> Any:
    """`{search: {lam: 2}}` -> `{search: {options: {lam: 2}}}` for every legacy key (a plain container)."""
    if not isinstance(tree, dict):
        return tree
    for section, table in LEGACY_OPTIONS.items():
        sec = tree.get(section)
        if not isinstance(sec, dict):
            continue
        for key in [k for k in sec if k in table]:
            _legacy_warning(section, key)
            value = sec.pop(key)
            opts = sec.get("options")
            if opts is None:
                opts = sec["options"] = {}
            if isinstance(opts, dict):
                if key in opts and opts[key] != value:  # both given: the new key wins, said rather than silent
                    raise ConfigError(f"{section}.{key}={value!r} and {section}.options.{key}={opts[key]!r} are both "
                                      f"set; keep only {section}.options.{key}")
                opts.setdefault(key, value)
            moved.add((section, key))
    return tree


def _move_legacy_override(override: str, moved: set[tuple[str, str]]) -> str:
    """`search.lam=2` -> `search.options.lam=2`."""
    key, sep, value = override.partition("=")
    section, dot, rest = key.strip().partition(".")
    if dot and rest in LEGACY_OPTIONS.get(section, {}):
        _legacy_warning(section, rest)
        moved.add((section, rest))
        return f"{section}.options.{rest}{sep}{value}"
    return override


def _drop_unused_legacy(job: JobConfig, moved: set[tuple[str, str]]) -> None:
    """A moved key at its old default that the chosen component does not take had no effect before: drop it
    (`search.lam: 10.0` in a best-of-n job), instead of failing the job that used to run."""
    from search.registry import list_strategies, strategy_options

    for section, key in moved:
        opts = getattr(job, section).options
        if not isinstance(opts, dict) or key not in opts or opts[key] != LEGACY_OPTIONS[section][key]:
            continue
        if section == "search":
            takes = job.search.strategy in list_strategies() and key in strategy_options(job.search.strategy)
        else:
            takes = job.model.name in list_generators() and \
                accepts_option(builder(job.model.name), key) and key not in BUILDER_ARGS
        if not takes:
            del opts[key]


def read_job_file(path: str | Path) -> dict:
    """A job YAML file as a plain mapping (not yet checked against `JobConfig`), for callers that take keys of
    their own out of it before `load_config` (`ttsvar geneval generate`: n_samples). `ConfigError` if it is
    missing or not a YAML mapping."""
    return OmegaConf.to_container(_load_yaml(Path(path)), resolve=False)


def load_config(yaml_path: str | Path | dict | None = None, overrides: list[str] | None = None,
                **fields) -> JobConfig:
    """Structured defaults <- YAML file (or the mapping `read_job_file` returned) <- `key=value` overrides <-
    keyword fields; validated. Legacy flat keys (`LEGACY_OPTIONS`) are moved into `options` with a
    `ConfigDeprecationWarning`."""
    moved: set[tuple[str, str]] = set()
    try:
        conf = OmegaConf.structured(JobConfig)
        if yaml_path is not None:
            loaded = copy.deepcopy(yaml_path) if isinstance(yaml_path, dict) else read_job_file(yaml_path)
            conf = OmegaConf.merge(conf, OmegaConf.create(_move_legacy_tree(loaded, moved)))
        if overrides:
            bad = [o for o in overrides if "=" not in o or not o.split("=", 1)[0].strip()]
            if bad:
                raise ConfigError(f"overrides must look like key=value (e.g. search.n=4), got {bad}")
            overrides = [_move_legacy_override(o, moved) for o in overrides]
            try:
                dotlist = OmegaConf.from_dotlist(list(overrides))
            except OmegaConfBaseException:
                raise
            except Exception as e:  # noqa: BLE001 - yaml errors in a value: `key=[1,2`
                raise ConfigError(f"cannot parse the overrides {list(overrides)}: {_first_line(e)}; a value with "
                                  "[ ] { } or ': ' is read as YAML: quote it, e.g. 'runtime.address=\"[::1]:6379\"'"
                                  ) from None
            conf = OmegaConf.merge(conf, dotlist)
        if fields:
            plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in fields.items()}
            conf = OmegaConf.merge(conf, OmegaConf.create(_move_legacy_tree(plain, moved)))
        job: JobConfig = OmegaConf.to_object(conf)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        where = f" field {key!r}" if key else ""
        msg = _first_line(getattr(e, "msg", None) or e)
        section = re.search(r"is not a subclass of (\w+)Config\. value: (.*)", msg)
        if section:  # a scalar where a section goes: OmegaConf names the class, not the field
            name = section.group(1).lower()
            msg = (f"{name} is a section of fields, not the value {section.group(2)!r} (set one of its fields: "
                   f"{name}.KEY=VALUE)")
        raise ConfigError(f"invalid config{where}: {msg}") from None
    _drop_unused_legacy(job, moved)
    validate(job)
    return job


def _first_line(e: object) -> str:
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    return lines[0] if lines else type(e).__name__


def _load_yaml(path: Path) -> DictConfig:
    if not path.exists():
        raise ConfigError(f"job file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"job file {path} is not a file")
    if path.suffix.lower() in (".txt", ".jsonl"):  # the prompts, given where the job YAML goes
        raise ConfigError(f"{path} looks like a prompts file, not a job YAML; pass it as prompts={path}")
    try:
        loaded = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml's scanner/parser errors, undecodable bytes
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        what = getattr(e, "problem", None) or _first_line(e)
        raise ConfigError(f"job file {path} is not valid YAML{at}: {what}") from None
    if not isinstance(loaded, DictConfig):
        raise ConfigError(f"job file {path} must hold a mapping of fields (prompts:, model:, search:, ...), "
                          f"got a {type(loaded).__name__.replace('Config', '').lower()}")
    return loaded


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate(job: JobConfig) -> None:
    """Checks that need no model: names, ranges. Scale-dependent checks run when the model is known."""
    if job.model.name not in list_generators():
        raise ConfigError(f"model.name={job.model.name!r} is unknown; available: {', '.join(list_generators())}")
    _validate_model(job)
    _validate_search(job)
    _validate_reward(job)
    if not str(job.output.dir or "").strip():
        raise ConfigError("output.dir is empty: give the folder to write the results to")
    if job.prompts is not None and not str(job.prompts).strip():
        raise ConfigError("prompts is empty: give a .txt or .jsonl file (prompts=path)")
    rt = job.runtime
    if rt.kind not in ("local", "ray"):
        raise ConfigError(f"runtime.kind={rt.kind!r}; use local or ray")
    for name in ("max_rows_per_forward", "prompts_per_unit", "score_batch", "units_in_flight"):
        if getattr(rt, name) < 1:
            raise ConfigError(f"runtime.{name} must be >= 1, got {getattr(rt, name)}")
    if rt.actors is not None and not 1 <= rt.actors <= MAX_ACTORS:
        raise ConfigError(f"runtime.actors must be in [1, {MAX_ACTORS}], got {rt.actors}")
    if rt.prompts_per_unit > MAX_PROMPTS_PER_UNIT:
        raise ConfigError(f"runtime.prompts_per_unit must be <= {MAX_PROMPTS_PER_UNIT}, got {rt.prompts_per_unit}")
    if not _number(rt.cpus_per_actor) or rt.cpus_per_actor <= 0:
        raise ConfigError(f"runtime.cpus_per_actor must be a number > 0, got {rt.cpus_per_actor}")
    gpa = rt.gpus_per_actor
    if not _number(gpa) or not (0 < gpa <= 1 or (gpa > 1 and float(gpa).is_integer())):
        raise ConfigError(f"runtime.gpus_per_actor must be in (0, 1] or a whole number, got {gpa}")
    if rt.reward_actors < 0:
        raise ConfigError(f"runtime.reward_actors must be >= 0, got {rt.reward_actors}")
    if rt.retries < 0:
        raise ConfigError(f"runtime.retries must be >= 0, got {rt.retries}")
    _validate_address(rt.address)
    if rt.preview not in PREVIEW_MODES:
        raise ConfigError(f"runtime.preview={rt.preview!r} is unknown; use {' or '.join(PREVIEW_MODES)}")
    if rt.batch_invariant not in BATCH_INVARIANT:
        raise ConfigError(f"runtime.batch_invariant={rt.batch_invariant!r} is unknown; use auto, true or false")
    if rt.preview_size is not None and not 8 <= rt.preview_size <= MAX_PREVIEW_SIZE:
        raise ConfigError(f"runtime.preview_size must be in [8, {MAX_PREVIEW_SIZE}] pixels, got {rt.preview_size}")
    if job.limit is not None and job.limit < 1:
        raise ConfigError(f"limit must be >= 1, got {job.limit}")
    if not 0 <= job.seed < 2**63:
        raise ConfigError(f"seed must be in [0, 2**63), got {job.seed}")
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


def _validate_model(job: JobConfig) -> None:
    m = job.model
    if m.dtype not in DTYPES:
        raise ConfigError(f"model.dtype={m.dtype!r} is unknown; use one of {', '.join(DTYPES)}")
    if not isinstance(m.device, str) or not _DEVICE.match(m.device):
        raise ConfigError(f"model.device={m.device!r} is unknown; use auto, cpu, cuda or cuda:N")
    check_options(builder(m.name), m.options, "model.options", f"model {m.name!r}", skip=BUILDER_ARGS)
    check = model_defaults(m.name).check_options
    if check is not None:
        try:
            check(dict(m.options))
        except (ValueError, TypeError) as e:
            raise ConfigError(f"model.options.{_first_line(e)}") from None


_ADDRESS = re.compile(r"(ray://)?(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(\d+)")


def _validate_address(address: object) -> None:
    """`runtime.address`: None (start a local Ray), `auto`, `host:port` (the head's GCS port) or
    `ray://host:port` (Ray Client); an IPv6 host in brackets."""
    if address is None or address == "auto":
        return
    forms = ("use auto, host:port (the head node's GCS port, 6379 by default) or ray://host:port (Ray Client, "
             "10001 by default)")
    if not isinstance(address, str):
        raise ConfigError(f"runtime.address={address!r} is not an address: {forms}; quote an IPv6 host, "
                          "'runtime.address=\"[::1]:6379\"'")
    m = _ADDRESS.fullmatch(address.strip())
    if m is None:
        web = " (an http:// URL is the dashboard's, not the cluster's)" if "://" in address else ""
        raise ConfigError(f"runtime.address={address!r} is not an address{web}: {forms}")
    if not 1 <= int(m.group(3)) <= 65535:
        raise ConfigError(f"runtime.address={address!r}: port {m.group(3)} is not in [1, 65535]")


def check_strategy_name(name: object) -> None:
    """`search.strategy` names a registered strategy, or an import path `package.module:Class` that imports (and
    is registered under that path); else `ConfigError` naming the field and the known names."""
    from search.registry import list_strategies, strategy_factory

    if isinstance(name, str) and name in list_strategies():
        return
    if isinstance(name, str) and ":" in name:
        try:
            strategy_factory(name)
            return
        except ValueError as e:
            raise ConfigError(f"search.strategy={name!r}: {_first_line(e)}") from None
    raise ConfigError(f"search.strategy={name!r} is unknown; available: {', '.join(list_strategies())}, or an "
                      "import path 'package.module:Class'")


def _validate_search(job: JobConfig) -> None:
    """The search fields a strategy can check without a model (the batch schedule against the model's scales is
    checked when the model is loaded)."""
    from search.base import is_int
    from search.registry import build_strategy, option_error, strategy_factory, strategy_options

    s = job.search
    check_strategy_name(s.strategy)
    if not is_int(s.n) or not 1 <= s.n <= MAX_SEARCH_N:
        raise ConfigError(f"search.n={s.n!r}: must be an integer in [1, {MAX_SEARCH_N}] (candidates per prompt)")
    if not isinstance(s.features, str) or not s.features.strip():
        raise ConfigError(f"search.features={s.features!r}: must be a feature extractor name (or auto)")
    check_options(strategy_factory(s.strategy), s.options, "search.options", f"strategy {s.strategy!r}")
    try:
        build_strategy(s)
    except (ValueError, TypeError) as e:
        raise ConfigError(option_error(_first_line(e), strategy_options(s.strategy), s.strategy)) from None


def _validate_reward(job: JobConfig) -> None:
    """Names and values of the reward section (whether the name resolves is checked when the job starts:
    resolving imports the reward's module)."""
    from rewards.base import check_nan_policy

    r = job.reward
    if not isinstance(r.name, str) or not r.name.strip():
        raise ConfigError(f"reward.name={r.name!r}: give a registered reward name, 'package.module:object', or auto")
    policy = r.nan_policy
    if isinstance(policy, str) and policy not in ("raise", "pass"):
        try:  # `reward.nan_policy=-inf` arrives from the command line as the string '-inf'
            policy = float(policy)
        except ValueError:
            pass
    try:
        r.nan_policy = check_nan_policy(policy)
    except ValueError:
        raise ConfigError(f"reward.nan_policy={r.nan_policy!r} is invalid; use raise, pass, or a number that "
                          "replaces non-finite scores (e.g. -inf or -10)") from None
    if r.batch_size is not None and (not isinstance(r.batch_size, int) or r.batch_size < 1):
        raise ConfigError(f"reward.batch_size must be an integer >= 1 or null, got {r.batch_size!r}")
    scale = getattr(r, "score_scale", None)
    if scale is not None and (not _number(scale) or scale <= 0):
        raise ConfigError(f"reward.score_scale={scale!r}: must be a finite number > 0, or null")
    if not isinstance(r.options, dict):
        raise ConfigError(f"reward.options must be a mapping of option: value, got {r.options!r}")


def ignored_fields(job: JobConfig) -> list[str]:
    """Set fields the job will not read (model fields its model ignores, Ray-only runtime fields on a local run,
    previews without traces);
    `ttsvar.jobs.preflight` warns about each."""
    out = []
    reads = model_defaults(job.model.name).reads
    if reads is not None:
        base = ModelConfig()
        out += [f"model.{f}={getattr(job.model, f)!r} (model {job.model.name} does not read it)"
                for f in ("weights", "device", "dtype")
                if f not in reads and getattr(job.model, f) != getattr(base, f)]
    if job.output.save_previews and not job.output.traces:
        out.append("output.save_previews=true (output.traces=false: previews are named by the traces)")
    if job.runtime.kind == "local":
        defaults = RuntimeConfig()
        out += [f"runtime.{k}={getattr(job.runtime, k)!r} (a Ray option; runtime.kind=local)" for k in RAY_ONLY
                if getattr(job.runtime, k) != getattr(defaults, k)]
    return out


def saves_previews(job: JobConfig) -> bool:
    """Whether the job writes `previews/`: `output.save_previews`, with traces to name them."""
    return bool(job.output.save_previews and job.output.traces)


def to_yaml(job: JobConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(job))
