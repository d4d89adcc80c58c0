"""Batch jobs: build the components from a `JobConfig`, run the units, write and resume outputs.

`run_job(job)` is what `ttsvar run` and `ttsvar generate` call. The local runtime runs units one after
another in this process; `runtime.kind=ray` hands the same units to `cluster.run_ray_job`, which uses
the same Worker/Coordinator halves and the same `ResultWriter`.

Before any model loads, a job checks what it can without one (`preflight`: the reward and feature names and
options; `open_output`: output.dir is writable, its manifest intact, its results from the same configuration).
Once the models are loaded it checks the memory a work unit needs (`check_memory`) and every prompt against
the job's text models (`ttsvar.prompts.check_prompts`). A unit that raises is re-run prompt by prompt, so a bad prompt
costs only itself; only errors that can be transient are retried (`ttsvar.core.errors.is_transient`).
"""

from __future__ import annotations

import hashlib
import logging
import time
import traceback
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import numpy as np

from search.base import SearchPlan, Strategy

from .config import LEGACY_OPTIONS, JobConfig, ModelConfig, check_strategy_name, ignored_fields, saves_previews
from .core.device import resolve_device
from .core.errors import (
    ConfigError,
    InputError,
    OutputWriteError,
    PromptError,
    TtsvarError,
    is_transient,
    one_line,
)
from .core.files import content_ids
from .core.generator import Generator
from .core.options import accepts_option, check_options
from .engine import (
    Action,
    Coordinator,
    Report,
    UnitImages,
    Worker,
    WorkUnit,
    make_units,
    prompt_seed,
    run_unit,
)
from .models.registry import create_generator, list_generators, model_defaults
from .output import REDO, OutputDir
from .progress import progress_bar
from .prompts import (
    PromptItem,
    check_prompts,
    line_number,
    problems_error,
    prompt_problems,
    read_prompts,
    resolve_prompts,
)
from .value import check_value_fit

log = logging.getLogger("ttsvar")


@dataclass
class Components:
    """What one process of a job builds: the model side (generator, reward, features) and the decision side."""

    generator: Generator
    reward: object  # a rewards.Reward or a function f(images, prompts) -> scores
    features: object | None  # a feature extractor, when the plan clusters
    strategy: Strategy
    plan: SearchPlan
    preview_size: int | None


def reward_config(job: JobConfig):
    """The job's reward config with `auto` resolved to the model's default reward."""
    cfg = job.reward
    if cfg.name == "auto":
        cfg = type(cfg)(**{**asdict(cfg), "name": model_defaults(job.model.name).reward})
    return cfg


def build_reward_for(job: JobConfig):
    """The job's reward. For a class-conditional model, a reward that reads text gets each class's name in place
    of its index (`rewards.base.ClassTextReward`); class rewards read the index itself."""
    from rewards.base import ClassTextReward
    from rewards.config import build_reward
    from rewards.ensemble import EnsembleReward

    reward = build_reward(reward_config(job))
    classes = model_defaults(job.model.name).classes
    if classes is None:
        return reward

    def reads_text(r) -> bool:
        return getattr(r, "conditioning", "text") == "text" and getattr(r, "needs_prompt", True)

    if isinstance(reward, EnsembleReward):  # per member: a class member reads the index, a text member the name
        for m in reward.members:
            if reads_text(m.reward) and not isinstance(m.reward, (EnsembleReward, ClassTextReward)):
                m.reward = ClassTextReward(m.reward, classes())
        return reward
    return ClassTextReward(reward, classes()) if reads_text(reward) else reward


def reward_scale_for(job: JobConfig, plan) -> float:
    """The scale potentials divide rewards by (see `rewards.base.Reward.score_scale`); warns once when a plan
    weighs rewards by a potential and the reward declares no scale."""
    from rewards.config import reward_score_scale

    cfg = reward_config(job)
    scale, declared = reward_score_scale(cfg)
    if not declared and plan.reward_scales:
        log.warning("reward %r declares no scale: potentials use its raw scores (lam * r). Set reward.score_scale to "
                    "the std of its scores over generated images so that lam means what it means for "
                    "ImageReward", cfg.name)
    return scale


def features_name(job: JobConfig) -> str:
    return model_defaults(job.model.name).features if job.search.features == "auto" else job.search.features


def resolve_reward_checked(job: JobConfig):
    """The object `reward.name` names (imported if it is a plugin), or a `ConfigError` naming the field."""
    from rewards.registry import resolve_reward

    name = reward_config(job).name
    try:
        obj = resolve_reward(name)
    except KeyError as e:
        raise ConfigError(f"reward.name={name!r}: {e.args[0] if e.args else e}") from None
    except ImportError as e:
        raise ConfigError(f"reward.name={name!r}: {e}. Check the module name and that it is importable (on "
                          "PYTHONPATH or installed)") from None
    except AttributeError as e:
        raise ConfigError(f"reward.name={name!r}: {e}") from None
    except ValueError as e:
        raise ConfigError(f"reward.name={name!r}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a plugin module that raises while it is imported
        raise ConfigError(f"reward.name={name!r}: importing its module raised {type(e).__name__}: {e}") from None
    from rewards.base import Reward

    # what `create_reward` can build from: a Reward (class or instance) or a function; a class that is not a
    # Reward, or an object with only a `score` method, is refused here, before any model loads
    is_class = isinstance(obj, type)
    if not (issubclass(obj, Reward) if is_class else callable(obj)):  # a Reward instance is callable (a Module)
        raise ConfigError(f"reward.name={name!r} names a {'class' if is_class else type(obj).__name__} that is "
                          "neither a rewards.Reward (subclass or instance) nor a function f(images, prompts) -> scores")
    return obj


def check_names(job: JobConfig) -> None:
    """The model and strategy names, checked against their registries (also for a `JobConfig` built in code,
    which `ttsvar.config.validate` has not seen): `ConfigError` naming the field and the known names."""

    if job.model.name not in list_generators():
        raise ConfigError(f"model.name={job.model.name!r} is unknown; available: {', '.join(list_generators())}")
    check_strategy_name(job.search.strategy)
    if not isinstance(job.reward.name, str):  # a JobConfig built in code can hold anything
        raise ConfigError(f"reward.name={job.reward.name!r} is not a name: a job names its reward by a string (a "
                          "registered name or 'pkg.module:obj'); register the object with rewards.register_reward")


def preflight(job: JobConfig) -> None:
    """What can be checked before a model loads, beyond `ttsvar.config.validate`: every registry name (model,
    strategy, reward, features); the reward takes `reward.options` and the feature extractor
    `search.features_opts`; warns about set fields the job will not read. Raises `ConfigError` naming the
    field (and, for a name, the known ones)."""
    from rewards.base import FunctionReward, Reward
    from rewards.features import features_class, list_features
    from rewards.registry import COMMON_OPTIONS

    check_names(job)
    for f in ignored_fields(job):
        log.warning("%s is ignored", f)
    obj = resolve_reward_checked(job)  # before the features: a plugin's module may register features too
    name = reward_config(job).name
    if job.reward.weights_dir is not None and not accepts_option(obj, "weights_dir"):
        log.warning("reward.weights_dir=%r is ignored (reward %r does not read it)", job.reward.weights_dir, name)
    options = dict(job.reward.options or {})
    if isinstance(obj, Reward):
        factory = None
        if options:
            raise ConfigError(f"reward.options {sorted(options)}: reward {name!r} is an instance; it takes no options")
    elif isinstance(obj, type) or _is_registered(obj):
        factory = obj
    else:
        factory = FunctionReward.__init__
    common = [k for k in COMMON_OPTIONS if k in options]
    if common:  # they are fields of reward: as options they would reach create_reward twice
        raise ConfigError(f"reward.options.{common[0]}: set reward.{common[0]} instead (a field of reward, not one "
                          "of its options)")
    if factory is not None:
        check_options(factory, options, "reward.options", f"reward {name!r}", skip=("fn",))
        if isinstance(obj, type) and issubclass(obj, Reward):
            try:
                obj.check_options(**options)
            except InputError:  # names the option itself
                raise
            except ValueError as e:
                raise ConfigError(f"reward.options: reward {name!r}: {e}") from None
    for field, opts in (("reward.options", options), ("search.features_opts", job.search.features_opts or {})):
        if isinstance(opts.get("device"), str):  # refused here, not as an internal error when the model moves
            resolve_device(opts["device"], f"{field}.device")
    feats = features_name(job)
    try:
        cls = features_class(feats)
    except (ImportError, AttributeError, TypeError, ValueError) as e:
        if feats in list_features() or ":" in feats:  # a plugin that failed: its own reason
            raise ConfigError(f"search.features={feats!r}: {one_line(e)}") from None
        raise ConfigError(f"search.features={feats!r} is unknown; available: {', '.join(list_features())}, or an "
                          "import path 'package.module:Class'") from None
    check_options(cls.__init__, job.search.features_opts or {}, "search.features_opts",
                  f"feature extractor {feats!r}")
    count = model_defaults(job.model.name).num_scales
    try:  # the schedule against the model's scales, before a released model's minutes of loading
        scales = None if count is None else count(dict(job.model.options or {}))
    except (ValueError, TypeError):  # bad model.options: the builder's own check names them
        scales = None
    if scales is not None:
        search_plan(job, scales)


def _is_registered(obj) -> bool:
    from rewards.registry import _REGISTRY

    return any(obj is v for v in _REGISTRY.values())


def job_fingerprint(job: JobConfig, prebuilt: str | None = None) -> dict:
    """The fields that change a job's results, flat (`search.n`, ...), with `auto` resolved. Stored in
    `output.dir/job.json`; a resume with a different fingerprint is refused. Not in it: runtime and output
    fields, the device, `limit` and the prompts file (each prompt's text is matched per line anyway).

    Options that used to be flat fields (`LEGACY_OPTIONS`) keep their flat names, with their old default when
    unset, so a job written before `options` existed (or with the deprecated keys) is the same job; other
    options are `search.options.<key>` / `model.options.<key>`."""
    fp: dict = {"seed": job.seed, "runtime.preview_size": job.runtime.preview_size}
    if job.runtime.preview != "full":  # absent when full, so results written before the option still resume
        fp["runtime.preview"] = job.runtime.preview
    m, reads = job.model, model_defaults(job.model.name).reads
    for k in ("name", "weights", "dtype"):  # a field the model does not read (warned as ignored) changes nothing
        fp[f"model.{k}"] = getattr(m if reads is None or k in reads or k == "name" else ModelConfig(), k)
    fp.update(_flat_options("model", m.options))
    try:
        sampling = asdict(job.sampling.resolve(m.name))
    except Exception:  # noqa: BLE001 - invalid values are reported by the sampler, with the field name
        sampling = asdict(job.sampling)
    fp.update({f"sampling.{k}": v for k, v in sampling.items()})
    fp["search.strategy"], fp["search.n"] = job.search.strategy, job.search.n
    options = search_config(job).options
    fp.update(_flat_options("search", options))  # with the model's default options
    value = (options or {}).get("value")
    if isinstance(value, str) and Path(value).expanduser().is_file():  # a value re-fitted at the same path differs
        fp["search.value_sha256"] = hashlib.sha256(Path(value).expanduser().read_bytes()).hexdigest()[:16]
    fp["search.features"] = features_name(job)
    fp["search.features_opts"] = _without_device(job.search.features_opts)
    if "batch_size" in (job.search.features_opts or {}):  # its own key: results written before it still resume
        fp["search.features_opts.batch_size"] = job.search.features_opts["batch_size"]
    r = reward_config(job)
    for f in fields(r):
        fp[f"reward.{f.name}"] = getattr(r, f.name)  # batch_size too: a forward's batch moves the last bits
    fp["reward.options"] = _without_device(r.options)
    fp.update(content_ids(fp, skip=frozenset({"search.options.value"})))  # what the weights paths hold
    if prebuilt:  # `run_job(job, generator=...)`: not necessarily model.name's model
        fp["model.prebuilt"] = prebuilt
    return fp


def _flat_options(section: str, options: dict | None) -> dict:
    opts = dict(options or {})
    out = {f"{section}.{k}": opts.pop(k, default) for k, default in LEGACY_OPTIONS[section].items()}
    out.update({f"{section}.options.{k}": v for k, v in sorted(opts.items())})
    return out


def _without_device(options: dict | None) -> dict:
    """Options minus where they run (a resume on another machine or device is the same job) and the batch size,
    which has a key of its own in the fingerprint."""
    return {k: v for k, v in (options or {}).items() if k not in ("device", "batch_size")}


def open_output(job: JobConfig, prebuilt: str | None = None) -> OutputDir:
    """output.dir, checked before any model loads: not in use by another job (a lock held until the job ends),
    writable (every folder the job writes to), a manifest whose torn last line is repaired, and results of the
    same configuration (`job.json`), else an error. With `output.overwrite` the earlier results are not touched
    here: `ResultWriter` deletes them just before its first write, once the models loaded and the prompts passed
    their checks, so a job that fails to start loses nothing."""
    out = OutputDir(job.output.dir)
    out.lock()
    try:
        out.check_writable(output_subdirs(job))
        if not job.output.overwrite:
            msg = out.repair_tail()
            if msg:
                log.warning("%s", msg)
            out.check_fingerprint(job_fingerprint(job, prebuilt))
    except BaseException:
        out.unlock()
        raise
    return out


def output_subdirs(job: JobConfig) -> tuple[str, ...]:
    """The folders of output.dir this job writes files into."""
    return ("images",) + (("traces",) if job.output.traces else ()) + \
        (("candidates",) if job.output.save_candidates else ()) + (("previews",) if saves_previews(job) else ()) + \
        (("search_data",) if job.output.save_search_data else ())


def start_over(job: JobConfig, out: OutputDir, prebuilt: str | None = None) -> None:
    """`output.overwrite`: delete what earlier jobs wrote in output.dir (`OutputDir.clear`), then set it up for
    this one (its folders, its `job.json`)."""
    from .geneval_jobs import clear_layout, is_geneval_output

    gone = out.clear()
    if is_geneval_output(out.root):  # a `geneval generate` run: its sample folders, state and scores too
        gone += clear_layout(out.root)
    if gone:
        log.warning("output.overwrite: deleted %s in %s", ", ".join(gone), out.root)
    out.check_writable(output_subdirs(job))
    out.check_fingerprint(job_fingerprint(job, prebuilt))


def search_config(job: JobConfig):
    """`job.search` with the model's default options for the strategy (`ModelDefaults.search`) under the job's
    own `search.options`."""
    defaults = model_defaults(job.model.name).search.get(job.search.strategy)
    if not defaults:
        return job.search
    return replace(job.search, options={**defaults, **dict(job.search.options or {})})


def search_plan(job: JobConfig, num_scales: int) -> tuple[Strategy, SearchPlan]:
    """The job's strategy and its plan for a model with `num_scales` scales (`ConfigError` naming the field)."""
    from search.registry import build_strategy

    search = search_config(job)
    try:
        search.validate(num_scales)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    strategy = build_strategy(search)
    return strategy, strategy.plan(num_scales, job.search.n)


def make_coordinator(job: JobConfig, num_scales: int, next_unit_id: int = 0) -> Coordinator:
    """The decision side of a job, in the process that drives it (local run or Ray driver), with the job's
    retry policy (`runtime.retries`); `next_unit_id`: the first id not handed out (split units start there)."""
    strategy, plan = search_plan(job, num_scales)
    return Coordinator(strategy, plan, reward_scale_for(job, plan), retries=job.runtime.retries,
                       next_unit_id=next_unit_id, save_search_data=job.output.save_search_data)


def build_components(job: JobConfig, generator=None, reward=None, features=None,
                     unit_prompts: int | None = None) -> Components:
    """Everything a Worker needs, built once per process that runs units (the local runtime, each Ray
    generator actor). `generator`: a prebuilt one, set to the job's sampling; `reward` / `features`: stand-ins
    that score elsewhere (the Ray reward pool), so no reward or feature model loads here. `unit_prompts`: the most
    prompts a work unit of this job holds (default `runtime.prompts_per_unit`), for the memory check."""
    from rewards.features import create_features

    if generator is not None:  # it runs with the job's sampling, which job.json records as what ran
        generator.set_sampling(job.sampling.resolve(job.model.name))
    gen = generator or create_generator(job.model, job.sampling.resolve(job.model.name))
    gen.batch_invariant = resolve_batch_invariant(job.runtime.batch_invariant, gen.device)
    strategy, plan = search_plan(job, gen.num_scales)
    if reward is None:
        with _options_error("reward.options", f"reward {reward_config(job).name!r}"):
            reward = build_reward_for(job)  # before the features: a custom reward's module may register features
    feats = None
    if plan.feature_scales or (job.output.save_search_data and plan.decision_scales):
        if features is None:
            with _options_error("search.features_opts", f"feature extractor {features_name(job)!r}"):
                features = create_features(features_name(job), **job.search.features_opts)
        feats = features
    declared = model_defaults(job.model.name).classes
    if generator is None and (gen.classes is not None) != (declared is not None) or \
            gen.classes is not None and declared is not None and len(gen.classes) != len(declared()):
        raise ConfigError(f"model.name={job.model.name!r}: the generator's classes ({gen.conditioning}, "
                          f"{len(gen.classes or ())}) differ from its registered ModelDefaults.classes, which the job "
                          "resolved the prompts with; register the model with the same class list")
    preview = job.runtime.preview_size or model_defaults(job.model.name).preview_size
    from rewards.config import reward_score_scale

    check_value_fit(getattr(strategy, "value_model", None), getattr(feats, "dim", None),
                    {"model": job.model.name, "features": features_name(job), "reward": reward_config(job).name},
                    reward_score_scale(reward_config(job))[0])
    comp = Components(gen, reward, feats, strategy, plan, preview)
    check_memory(job, comp, unit_prompts)
    return comp


@contextmanager
def _options_error(field: str, what: str):
    """A component's constructor refusing its options (a plain ValueError or TypeError: a bad value, a wrong type,
    an option passed on to a callee that does not take it) becomes a `ConfigError` naming the options' field;
    our own errors (missing weights, ...) already say what to fix."""
    try:
        yield
    except TtsvarError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{field}: {what}: {one_line(e)}") from None


def resolve_batch_invariant(value, device) -> bool:
    """`runtime.batch_invariant` for a model on `device`: auto is on for the CPU. The mode pads CPU kernels into
    shape-independent paths (`ttsvar.models.invariant`), which does not make GPU kernels invariant, so true is
    refused there rather than promised."""
    cpu = getattr(device, "type", str(device)) == "cpu"
    if value == "auto":
        return cpu
    if value is True and not cpu:
        raise ConfigError(f"runtime.batch_invariant=true is a CPU mode, but the model runs on {device}; use auto "
                          "(off there) or false")
    return bool(value)


def _free_memory(device) -> tuple[int | None, str]:
    """(bytes free, where) on the generator's device; None when unknown."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(dev)[0]), str(dev)
        except Exception:  # noqa: BLE001 - no CUDA context: unknown
            return None, str(dev)
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = {x.split(":")[0]: int(x.split()[1]) * 1024 for x in f if x.split()[1:2] and x.split()[1].isdigit()}
        return info.get("MemAvailable"), "this machine's RAM"
    except (OSError, ValueError, IndexError):
        return None, "cpu"


def check_memory(job: JobConfig, comp: Components, unit_prompts: int | None = None) -> None:
    """Refuse a job whose work unit cannot fit: a unit holds the state of all its candidate rows at once
    (`runtime.prompts_per_unit` prompts x the rows of the batch schedule at each scale); raises `ConfigError`
    naming search.n and runtime.prompts_per_unit. Generators whose `state_bytes_per_row` is None are not
    checked."""
    per_row = [comp.generator.state_bytes_per_row(k) for k in range(len(comp.plan.batch_sizes))]
    if any(b is None for b in per_row):
        return
    ppu = job.runtime.prompts_per_unit
    prompts = min(ppu, unit_prompts) if unit_prompts else ppu
    need = max(b * prompts * r for b, r in zip(comp.plan.batch_sizes, per_row))
    free, where = _free_memory(comp.generator.device)
    if free is None or need <= 0.8 * free:
        return
    rows = max(comp.plan.batch_sizes) * prompts
    fit_n = int(job.search.n * 0.8 * free / need)
    unit = f"{prompts} prompt{'s' if prompts > 1 else ''} per work unit (runtime.prompts_per_unit={ppu})"
    fix = f"lower search.n (about {fit_n} fits)" if fit_n >= 1 else "lower search.n"
    if prompts > 1:
        fix += " or runtime.prompts_per_unit"
    raise ConfigError(
        f"search.n={job.search.n} with {unit} needs up to {rows} candidate rows in a work unit "
        f"({need / 2**30:.1f} GiB of model state), more than the {free / 2**30:.1f} GiB free on {where}: {fix}")


def make_worker(job: JobConfig, comp: Components) -> Worker:
    rt = job.runtime
    return Worker(comp.generator, comp.reward, comp.features, comp.plan, max_rows_per_forward=rt.max_rows_per_forward,
                  preview_size=comp.preview_size, preview=rt.preview, score_batch=rt.score_batch,
                  save_previews=saves_previews(job), batch_invariant=comp.generator.batch_invariant,
                  save_search_data=job.output.save_search_data, release_memory=rt.release_memory)


def job_items(job: JobConfig) -> list[PromptItem]:
    if not job.prompts:
        raise ConfigError("prompts is not set: give a .txt or .jsonl file (prompts=path)")
    try:
        items, bad = read_prompts(job.prompts), []
    except PromptError as e:
        if not hasattr(e, "problems"):
            raise
        items, bad = e.items, e.problems  # the lines the model would refuse too, all in one message
    items = items[: job.limit] if job.limit and not bad else items
    classes = model_defaults(job.model.name).classes
    try:
        items = resolve_prompts(items, job.prompts, job.model.name, classes() if classes else None)
    except PromptError as e:
        if not bad or not hasattr(e, "problems"):
            raise
        bad = bad + e.problems
    if bad:
        raise problems_error(sorted(bad, key=line_number))
    return items


class ResultWriter:
    """Writes finished prompts (images, trace, manifest line) and keeps the job's totals. One per job.

    Files are written by one background thread, so disk latency (every file is fsynced) overlaps with
    generation; a unit's manifest lines are appended, in one fsynced write, only after its files exist.
    `flush()` waits for the writes and re-raises any error; `summary()` flushes first.
    """

    def __init__(self, job: JobConfig, items: list[PromptItem], out: OutputDir | None = None,
                 prebuilt: str | None = None):
        self.job, self.prebuilt = job, prebuilt
        self.out = out if out is not None else open_output(job, prebuilt)
        self._start_over = bool(job.output.overwrite)  # done before the first write (`start_over`)
        # finished results of earlier runs, whose files a redone (edited) prompt replaces (`replace_results`)
        self._earlier = {} if self._start_over else {r["index"]: r for _, r, _ in self.out.lines() if r is not None}
        self.items = {it.index: it for it in items}
        self.totals: dict[str, float] = {}
        self.ok = self.failed = 0
        self.rewards: list[float] = []
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ttsvar-writer")
        self._futures: list[Future] = []

    def _submit(self, files: list[tuple[str, str, object]], records: list[dict]) -> None:
        self.check()
        if self._start_over:
            start_over(self.job, self.out, self.prebuilt)
            self._start_over = False
        self._futures.append(self._io.submit(self._persist, files, records))

    def _persist(self, files: list[tuple[str, str, object]], records: list[dict]) -> None:
        try:
            self.out.replace_results(self._earlier, files, records)
        except Exception as e:
            lost = sorted(r["index"] for r in records)
            raise OutputWriteError(
                f"writing the results of prompt(s) {lost} to {self.out.root} failed: {type(e).__name__}: {e}. "
                "Prompts recorded in manifest.jsonl before are safe; these (and any the job had not reached) are "
                "not recorded: fix the problem (disk space, permissions) and re-run the same command to redo "
                "exactly them") from e

    def check(self) -> None:
        """Raise the first write error so far (`OutputWriteError`): the job stops instead of computing results
        it cannot store."""
        pending = []
        for f in self._futures:
            if f.done():
                if f.exception() is not None:
                    self._futures = [g for g in self._futures if g is not f]
                    raise f.exception()
            else:
                pending.append(f)
        self._futures = pending

    def flush(self) -> None:
        futures, self._futures = self._futures, []
        for f in futures:
            f.result()

    def close(self) -> None:
        """Wait for the writes already submitted (on any exit: what was computed is kept; errors are logged), then
        release output.dir."""
        for f in self._futures:
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - the job is already stopping on another error
                log.error("%s", e)
        self._futures = []
        self.out.unlock()

    def pending(self) -> list[PromptItem]:
        """Prompts without an ok manifest line for the same index and prompt text (an edited line is redone); all
        of them when the job starts over."""
        done = {} if self._start_over else self.out.done()
        return [it for it in self.items.values()
                if it.index not in done or done[it.index].get("prompt") != it.prompt]

    def write_unit(self, coord: Coordinator, final: Report, picks: dict[int, int], images: UnitImages) -> list[dict]:
        recs, files = [], []
        for ga in final.groups:
            p = ga.prompt_index
            data = coord.search_data(p)
            if data is not None:
                files.append(("search_data", self.out.search_data_path(p), data))
            trace, counters = coord.finish_group(p)
            k = picks[p]
            imgs = images.images[p]
            rel = self.out.image_path(p)
            files.append(("image", rel, imgs[0]))
            cands = []
            if self.job.output.save_candidates:
                for j, pos in enumerate(images.positions[p]):
                    crel = f"candidates/{p:05d}_{pos}.png"
                    files.append(("image", crel, imgs[j]))
                    cands.append(crel)
            for entry_scale, thumbs in images.previews.get(p, []):
                prel = self.out.preview_path(p, entry_scale)
                files.append(("image", prel, np.concatenate(list(thumbs), axis=1)))  # one strip: rows left to right
                _link_preview(trace, entry_scale, prel, thumbs.shape[1:3])
            trace_rel = None
            if self.job.output.traces:
                trace_rel = self.out.trace_path(p)
                files.append(("trace", trace_rel, (p, trace)))
            r = float(ga.rewards[k]) if ga.rewards is not None else None
            it = self.items[p]
            rec = {"index": p, "prompt": it.prompt, "seed": prompt_seed(self.job.seed, p), "status": "ok",
                   "model": self.job.model.name, "strategy": self.job.search.strategy, "n": self.job.search.n,
                   "reward_name": reward_config(self.job).name,
                   "reward": r if r is not None and np.isfinite(r) else None,
                   "image": rel, "trace": trace_rel, "candidates": cands, "row_id": int(ga.row_ids[k]),
                   "compute": counters}
            if it.class_index is not None:
                rec["class"], rec["class_name"] = it.class_index, it.class_name
            if it.metadata:
                rec["metadata"] = it.metadata
            self._count(rec)
            recs.append(rec)
        self._submit(files, recs)
        return recs

    def write_failure(self, unit: WorkUnit, error: str, exc: BaseException | None = None) -> None:
        for p, s in zip(unit.prompt_indices, unit.seeds):
            it = self.items[p]
            rec = {"index": p, "prompt": it.prompt, "seed": s, "status": "failed", "error": error}
            if it.class_index is not None:
                rec["class"], rec["class_name"] = it.class_index, it.class_name
            if exc is not None:
                rec["error_type"] = type(getattr(exc, "cause", None) or exc).__name__  # a Ray error: the remote one
                rec["transient"] = is_transient(exc)
            if it.metadata:
                rec["metadata"] = it.metadata
            self._submit([], [rec])
            self.failed += 1

    def job_totals(self) -> dict:
        """Every prompt of the job by its latest manifest line (for the same prompt text): how many are ok, failed
        or not run yet, the mean reward and the summed compute of the ok ones."""
        latest: dict[int, dict] = {}
        for _, rec, _ in self.out.lines():
            if rec is not None:
                latest[rec["index"]] = rec
        recs = [latest[i] for i, it in self.items.items() if i in latest and latest[i].get("prompt") == it.prompt
                and latest[i].get("status") != REDO]  # a redo line: not run yet
        ok = [r for r in recs if r.get("status") == "ok"]
        rewards = [r["reward"] for r in ok if isinstance(r.get("reward"), (int, float))]
        totals: dict[str, float] = {}
        for r in ok:
            for k, v in (r.get("compute") or {}).items():
                if isinstance(v, (int, float)):
                    totals[k] = totals.get(k, 0) + v
        return {"prompts": len(self.items), "prompts_ok": len(ok), "prompts_failed": len(recs) - len(ok),
                "prompts_not_run": len(self.items) - len(recs),
                "mean_reward": float(np.mean(rewards)) if rewards else None, "compute": _rounded(totals)}

    def _count(self, rec: dict) -> None:
        self.ok += 1
        if rec["reward"] is not None:
            self.rewards.append(rec["reward"])
        for k, v in rec["compute"].items():
            self.totals[k] = self.totals.get(k, 0) + v

    def summary(self, wall: float, extra: dict | None = None) -> dict:
        """This run's numbers (what `run_job` returns), and under `job` the totals over every prompt of the job
        as the manifest holds them (earlier runs of a resumed job included); written to summary.json."""
        if self._start_over:  # nothing was written: the earlier results still go, as asked
            start_over(self.job, self.out, self.prebuilt)
            self._start_over = False
        self.flush()
        s = {"prompts_ok": self.ok, "prompts_failed": self.failed, "wall_time_s": round(wall, 3),
             "prompts_per_s": round(self.ok / wall, 4) if wall > 0 else None,
             "mean_reward": float(np.mean(self.rewards)) if self.rewards else None,
             "compute": _rounded(self.totals)}
        s.update(extra or {})
        s["job"] = self.job_totals()
        from .output import atomic_write_json

        try:
            atomic_write_json(self.out.root / "summary.json", s)
        except OSError as e:
            raise OutputWriteError(f"every result is in {self.out.manifest}, but {self.out.root / 'summary.json'} "
                                   f"could not be written ({e}); re-run the same command to write it") from e
        return s


def _link_preview(trace: dict, scale: int, rel: str, tile: tuple[int, int]) -> None:
    """Name a decision's preview strip in its trace entry: `preview` (the path) and `preview_tile` ([h, w] of one
    row's thumbnail; row i is at x = i * w)."""
    for entry in trace.get("decisions", []):
        if entry.get("scale") == scale and entry.get("info", {}).get("kind") != "final":
            entry["preview"], entry["preview_tile"] = rel, [int(tile[0]), int(tile[1])]


def _rounded(totals: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in totals.items()}


def error_text(e: BaseException) -> str:
    return "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=3))


@dataclass
class PreparedJob:
    """A job checked and its output opened, before any model loads: where both runtimes start."""

    items: list[PromptItem]  # every prompt of the job (after `limit`)
    todo: list[PromptItem]  # those without a result in output.dir
    units: list[WorkUnit]  # `todo` packed into work units (ids 0..len-1)
    writer: ResultWriter
    t0: float  # perf_counter when the job started

    def extra(self, runtime: str) -> dict:
        """The summary fields every runtime writes."""
        return {"runtime": runtime, "skipped_done": len(self.items) - len(self.todo),
                "output_dir": str(self.writer.out.root)}


def prepare_job(job: JobConfig, prebuilt: str | None = None) -> PreparedJob:
    """Validation that needs no model (`preflight`), the prompts, output.dir (writable, same fingerprint) and the
    units still to run. The caller closes `writer` on any exit (`ResultWriter.close`)."""
    t0 = time.perf_counter()
    items = job_items(job)
    preflight(job)
    writer = ResultWriter(job, items, prebuilt=prebuilt)
    todo = writer.pending()
    units = make_units([it.index for it in todo], [it.prompt for it in todo], job.seed, job.runtime.prompts_per_unit)
    return PreparedJob(items, todo, units, writer, t0)


def run_job(job: JobConfig, generator=None) -> dict:
    """Run (or resume) a batch job; returns the summary (also written to output.dir/summary.json)."""
    if job.runtime.kind == "ray":
        if generator is not None:  # the actors build their own from model.name: it would be dropped
            raise ConfigError("run_job(job, generator=...): a prebuilt generator runs on the local runtime only "
                              "(runtime.kind=local); on Ray the actors build model.name's")
        from cluster import run_ray_job

        return run_ray_job(job)
    kind = type(generator)
    prep = prepare_job(job, None if generator is None else f"{kind.__module__}.{kind.__qualname__}")
    try:
        return _run_local(job, generator, prep)
    finally:
        prep.writer.close()


def _run_local(job: JobConfig, generator, prep: PreparedJob) -> dict:
    writer, todo, units, t0 = prep.writer, prep.todo, prep.units, prep.t0
    extra = prep.extra("local")
    if not todo:
        return writer.summary(time.perf_counter() - t0, {**extra, "time_setup": 0.0, "time_decide": 0.0})
    comp = build_components(job, generator, unit_prompts=max(len(u.prompt_indices) for u in units))
    check_prompts(job.prompts, todo, prompt_problems(comp, [it.prompt for it in todo], job.runtime.score_batch,
                                             reward_config(job).name))
    worker = make_worker(job, comp)
    coord = make_coordinator(job, comp.generator.num_scales, next_unit_id=len(units))
    setup = time.perf_counter() - t0
    bar = progress_bar(len(todo), job.runtime.quiet)
    S = comp.generator.num_scales
    worker.on_step = lambda uid, k: bar.set_postfix_str(f"unit {uid + 1}/{len(units)} scale {k + 1}/{S}")
    queue, retried = deque(units), 0
    while queue:
        unit = queue.popleft()
        writer.check()
        try:
            rep, picks, imgs = run_unit(worker, coord, unit, job.output.save_candidates)
            writer.write_unit(coord, rep, picks, imgs)
            bar.update(len(unit.prompt_indices))
            continue
        except OutputWriteError:
            raise
        except Exception as e:  # noqa: BLE001 - recorded in the manifest, the job goes on
            error = e
        worker.drop(unit.unit_id)
        verdict = coord.fail(unit, error)
        if verdict.action is Action.SPLIT:
            log.warning("prompts %s failed together (%s); running them one by one", unit.prompt_indices,
                        one_line(error))
            queue.extendleft(reversed(verdict.units))
        elif verdict.action is Action.RETRY:  # right away: the local runtime runs one unit at a time anyway
            retried += 1
            log.warning("prompt %d failed (attempt %d of %d), retrying: %s", unit.prompt_indices[0],
                        verdict.attempts, job.runtime.retries + 1, one_line(error))
            queue.appendleft(unit)
        else:
            n = verdict.attempts
            log.error("prompt %d failed%s: %s", unit.prompt_indices[0], f" after {n} attempts" if n > 1 else "",
                      one_line(error))
            writer.write_failure(unit, error_text(error), error)
            bar.update(1)
    bar.close()
    writer.flush()
    wall = time.perf_counter() - t0
    return writer.summary(wall, {**extra, "time_setup": round(setup, 4), "units_retried": retried,
                                 "time_decide": round(coord.time_decide, 4)})
