"""Bad input and faults, as a new user would make them: every case gets a clear error (one root class,
`ttsvar.core.errors.TtsvarError`, naming the field, file or line), before any model loads when no model is needed
to judge it, and no result is lost. Through the Python API (seconds); a few CLI subprocess tests on top.

See docs/engine.md, "Bad input and faults".
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import helpers_components  # noqa: F401 - registers the test-pixels features
import pytest
import torch

import ttsvar.jobs
from rewards.base import Reward
from ttsvar.config import load_config
from ttsvar.core.checkpoint import CheckpointError
from ttsvar.core.errors import (
    ConfigError,
    InputError,
    ManifestError,
    MissingFileError,
    OutputError,
    OutputWriteError,
    PromptError,
    ResumeError,
    TtsvarError,
    is_transient,
)
from ttsvar.eval.evaluate import evaluate_output_dir
from ttsvar.jobs import run_job
from ttsvar.output import OutputDir

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
WEIGHTS = ROOT / "ttsvar" / "testbed" / "weights"
PROMPTS = ["a photo of a red circle", "a photo of two squares", "a photo of a blue triangle",
           "a photo of a circle left of a square"]
# shapes-tiny (its text encoder knows the shapes-world words), a weight-free reward, the cheapest search
FAST = ["model.name=shapes-tiny", "reward.name=helpers_components:redness", "search.features=test-pixels",
        "search.strategy=best-of-n", "search.n=2", "runtime.quiet=true"]
THIS = "test_bad_input"  # this module, importable by name (tests/ is on sys.path): reward plugins below


# ----------------------------------------------------------------------------- rewards used as plugins

NOT_CALLABLE = 42


class NotAReward:
    """A class with a score method that does not subclass Reward."""

    def score(self, images, prompts=None):
        return images.mean(dim=(1, 2, 3))


class ScoreOnly:
    def score(self, images, prompts=None):
        return images.mean(dim=(1, 2, 3))


SCORE_ONLY = ScoreOnly()
CALLS: dict[str, int] = {}


def _real(images: torch.Tensor) -> bool:
    """False for the grey probe images of the prompt check (`ttsvar.prompts.prompt_problems`)."""
    return bool(images.std() > 0)


def refuses_triangles(images, prompts):
    """A deterministic error the prompt check cannot see (grey images pass): only generated triangles fail."""
    if _real(images) and any("triangle" in p for p in prompts):
        CALLS["triangle"] = CALLS.get("triangle", 0) + 1
        raise ValueError("this reward cannot score triangles")
    return helpers_components.redness(images, prompts)


def flaky_once(images, prompts):
    """A transient error: the first real call for a prompt with 'square' fails, the retry works."""
    if _real(images) and any("square" in p for p in prompts):
        CALLS["flaky"] = CALLS.get("flaky", 0) + 1
        if CALLS["flaky"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
    return helpers_components.redness(images, prompts)


def short_prompts_only(images, prompts):
    """A reward whose tokenizer refuses prompts longer than 5 words (a ValueError naming the prompt)."""
    for p in prompts:
        if len(p.split()) > 5:
            raise ValueError(f"prompt {p!r} needs {len(p.split()) + 2} tokens, more than context_length=7")
    return helpers_components.redness(images, prompts)


def refuses_everything(images, prompts):
    """A reward broken whatever the prompt: the job blames it, not every prompt line."""
    raise ValueError("this reward is broken")


class SigmaReward(Reward):
    """A reward whose constructor does arithmetic on its option (a str there is a TypeError of its own)."""

    name = "sigma-reward"
    needs_prompt = False

    def __init__(self, sigma: float = 1.0) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError("sigma must be > 0")
        self.sigma = sigma

    def _score(self, images, prompts):
        return images.mean(dim=(1, 2, 3)) * self.sigma


class NanReward(Reward):
    name = "nan-reward"
    needs_prompt = False

    def _score(self, images, prompts):
        return torch.full((len(images),), float("nan"))


# ----------------------------------------------------------------------------- helpers


def write_prompts(tmp: Path, prompts: list[str] = PROMPTS, name: str = "prompts.txt") -> Path:
    p = tmp / name
    p.write_text("\n".join(prompts) + "\n", encoding="utf-8")
    return p


def make_job(tmp: Path, *overrides: str, prompts: list[str] | None = PROMPTS, out: str = "out", yaml=None):
    args = [*FAST]
    if prompts is not None:
        args.append(f"prompts={write_prompts(tmp, prompts)}")
    args.append(f"output.dir={tmp / out}")
    return load_config(yaml, [*args, *overrides])


def manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines() if x.strip()]


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name not in ("job.json", "summary.json", ".ttsvar.lock")}


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if the job builds a generator (the case must be refused before any model loads)."""
    def boom(*a, **k):
        raise AssertionError("a model was loaded: the error should have come before")

    monkeypatch.setattr(ttsvar.jobs, "create_generator", boom)


@pytest.fixture(autouse=True)
def _plugins(tmp_path, monkeypatch):
    """Reward plugin modules that are broken in various ways, importable for the duration of a test."""
    CALLS.clear()
    mods = tmp_path / "plugins"
    mods.mkdir()
    (mods / "ttsvar_boom_plugin.py").write_text("raise RuntimeError('boom while importing')\n")
    (mods / "ttsvar_syntax_plugin.py").write_text("def f(:\n")
    monkeypatch.syspath_prepend(str(mods))
    for m in ("ttsvar_boom_plugin", "ttsvar_syntax_plugin"):
        sys.modules.pop(m, None)


# ----------------------------------------------------------------------------- the table

@dataclass
class Case:
    id: str
    overrides: tuple[str, ...] = ()
    error: type = InputError
    match: str = ""
    before_model: bool = True  # refused before any model loads
    prompts: list[str] | None = field(default_factory=lambda: list(PROMPTS))
    setup: object = None  # f(tmp_path) -> extra overrides (files to point at)
    yaml: str | None = None  # text of a job YAML


def _file(tmp, name, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def _truncated_weights(tmp) -> list[str]:
    w = tmp / "w" / "shapes_tiny.safetensors"
    w.parent.mkdir()
    w.write_bytes((WEIGHTS / "shapes_tiny.safetensors").read_bytes()[:5000])
    shutil.copy(WEIGHTS / "shapes_tiny.json", w.with_suffix(".json"))
    return [f"model.weights={w}"]


def _random_weights(tmp) -> list[str]:
    w = tmp / "r" / "shapes_tiny.safetensors"
    w.parent.mkdir()
    w.write_bytes(os.urandom(4096))
    shutil.copy(WEIGHTS / "shapes_tiny.json", w.with_suffix(".json"))
    return [f"model.weights={w}"]


def _prompt_file(name, data: bytes):
    return lambda tmp: [f"prompts={_file(tmp, name, data)}"]


def _out_is_file(tmp):
    return [f"output.dir={_file(tmp, 'out_file', b'not a folder')}"]


def _images_is_file(tmp):
    (tmp / "o2").mkdir()
    _file(tmp / "o2", "images", b"not a folder")
    return [f"output.dir={tmp / 'o2'}"]


def _tiny_classifier(tmp) -> list[str]:
    from rewards.testing import reward_files

    opts = reward_files("classifier", tmp)
    return ["reward.name=classifier", f"reward.options.weights={opts['weights']}",
            f"reward.options.model={opts['model']}", f"reward.options.num_classes={opts['num_classes']}",
            "reward.options.preprocess_cfg.input_size=32"]


CASES = [
    # reward: names, plugins, options (the before-stop hook's three commands are the first three)
    Case("unknown-reward", ("reward.name=no_such_reward",), ConfigError, r"reward.name='no_such_reward'.*Available"),
    Case("reward-module-missing", ("reward.name=no_such_module_x:fn",), ConfigError,
         r"reward.name='no_such_module_x:fn'.*cannot import module 'no_such_module_x'"),
    Case("reward-option-typo", ("reward.name=shapes-clip", "reward.options.no_such_option=1"), ConfigError,
         r"reward.options.no_such_option: reward 'shapes-clip' has no option"),
    Case("reward-module-raises-on-import", ("reward.name=ttsvar_boom_plugin:f",), ConfigError,
         r"reward.name='ttsvar_boom_plugin:f': importing its module raised RuntimeError: boom while importing"),
    Case("reward-module-syntax-error", ("reward.name=ttsvar_syntax_plugin:f",), ConfigError,
         r"reward.name='ttsvar_syntax_plugin:f': importing its module raised SyntaxError"),
    Case("reward-attribute-missing", (f"reward.name={THIS}:no_such_function",), ConfigError,
         r"has no attribute 'no_such_function'"),
    Case("reward-not-callable", (f"reward.name={THIS}:NOT_CALLABLE",), ConfigError,
         r"names a int that is neither a rewards\.Reward .* nor a function"),
    Case("reward-class-not-a-reward", (f"reward.name={THIS}:NotAReward",), ConfigError,
         r"names a class that is neither a rewards\.Reward"),
    Case("reward-object-with-only-score", (f"reward.name={THIS}:SCORE_ONLY",), ConfigError,
         r"names a ScoreOnly that is neither a rewards\.Reward"),
    Case("reward-function-option-typo", ("reward.options.temprature=2",), ConfigError,
         r"reward.options.temprature: reward 'helpers_components:redness' has no option"),
    Case("reward-nan-policy-word", ("reward.nan_policy=ignore",), ConfigError,
         r"reward.nan_policy='ignore' is invalid; use raise, pass, or a number"),
    Case("reward-batch-size-0", ("reward.batch_size=0",), ConfigError, r"reward.batch_size"),
    Case("reward-empty-name", ("reward.name=",), ConfigError, r"field 'reward.name'"),
    # search
    Case("search-n-huge", ("search.n=1000000000",), ConfigError, r"search.n=1000000000: must be an integer in"),
    Case("search-n-zero", ("search.n=0",), ConfigError, r"search.n=0"),
    Case("search-n-text", ("search.n=lots",), ConfigError, r"'search.n'"),
    Case("search-strategy-unknown", ("search.strategy=nope",), ConfigError, r"search.strategy='nope' is unknown"),
    Case("search-lam-inf", ("search.strategy=tts-var", "search.options.lam=.inf"), ConfigError,
         r"search\.options\.lam: inf must be finite"),
    Case("search-option-of-another-strategy", ("search.strategy=tts-var", "search.options.beam_width=3"),
         ConfigError, r"search\.options\.beam_width: strategy 'tts-var' has no option\(s\) \['beam_width'\]; its "
         r"options are \['batch_schedule', 'cluster_scales', 'lam', 'potential', 'resample_scales', 'resampler', "
         r"'value'\]"),
    Case("search-option-typo", ("search.strategy=fk", "search.options.ess_treshold=0.3"), ConfigError,
         r"search\.options\.ess_treshold: strategy 'fk' has no option"),
    Case("search-options-not-a-mapping", ("search.options=3",), ConfigError, r"search.options"),
    Case("search-legacy-flat-key-still-checked", ("search.strategy=tts-var", "search.lam=-1"), ConfigError,
         r"search\.options\.lam: -1 must be finite"),
    Case("search-features-unknown", ("search.strategy=tts-var", "search.features=nope"), ConfigError,
         r"search.features='nope' is unknown"),
    Case("search-features-option-typo", ("search.features_opts.sise=8",), ConfigError,
         r"search.features_opts.sise: feature extractor 'test-pixels' has no option"),
    Case("search-schedule-vs-model", ("search.strategy=tts-var", "search.options.batch_schedule=[1,2]"),
         ConfigError, r"search\.options\.batch_schedule", before_model=False),
    Case("search-n-beyond-memory", ("search.n=60000", "search.strategy=tts-var"), ConfigError,
         r"search.n=60000 with 4 prompts per work unit \(runtime.prompts_per_unit=4\) needs .* GiB free .*lower "
         r"search.n", before_model=False),
    Case("search-section-given-a-value", ("search=5",), ConfigError, r"search is a section of fields.*search\.KEY"),
    Case("reward-device-not-a-device", ("reward.name=shapes-clip", "reward.options.device=banana"), ConfigError,
         r"reward\.options\.device='banana' is not a device"),
    Case("features-device-not-a-device", ("search.strategy=tts-var", "search.features=shapes-clip",
                                          "search.features_opts.device=banana"), ConfigError,
         r"search\.features_opts\.device='banana' is not a device"),
    Case("features-option-bad-value", ("search.strategy=tts-var", "search.features=shapes-clip",
                                       "search.features_opts.batch_size=0"), ConfigError,
         r"search\.features_opts: feature extractor 'shapes-clip': batch_size", before_model=False),
    Case("reward-option-bad-value", (f"reward.name={THIS}:SigmaReward", "reward.options.sigma=-1"), ConfigError,
         r"reward\.options: reward '.*SigmaReward': sigma must be > 0", before_model=False),
    Case("reward-option-wrong-type", (f"reward.name={THIS}:SigmaReward", "reward.options.sigma=abc"), ConfigError,
         r"reward\.options: reward '.*SigmaReward': '<=' not supported", before_model=False),
    Case("reward-common-option-as-option", ("reward.options.batch_size=2",), ConfigError,
         r"reward\.options\.batch_size: set reward\.batch_size instead"),
    Case("reward-refuses-every-prompt", (f"reward.name={THIS}:refuses_everything",), ConfigError,
         r"every prompt of the job fails the same way \(reward .*this reward is broken\): the reward or the model",
         before_model=False),
    # model
    Case("model-unknown", ("model.name=nope",), ConfigError, r"model.name='nope' is unknown"),
    Case("model-option-unknown", ("model.options.pixels=1M",), ConfigError,
         r"model\.options\.pixels: model 'shapes-tiny' has no option\(s\) \['pixels'\]; its options are none"),
    Case("model-option-out-of-range", ("model.name=infinity-2b", "model.options.h_div_w=-1"), ConfigError,
         r"model\.options\.h_div_w=-1: must be a number > 0"),
    Case("model-option-bad-budget", ("model.name=infinity-2b", "model.options.pixels=3M"), ConfigError,
         r"model\.options\.pixels='3M'"),
    Case("model-dtype-typo", ("model.dtype=float99",), ConfigError, r"model.dtype='float99' is unknown"),
    Case("model-device-typo", ("model.device=gpu0",), ConfigError, r"model.device='gpu0' is unknown"),
    Case("model-weights-missing", ("model.weights=/nonexistent/shapes.safetensors",), MissingFileError,
         r"/nonexistent/shapes.safetensors", before_model=False),
    Case("model-weights-truncated", (), CheckpointError, r"cannot read .*safetensors file.*truncated, corrupt",
         before_model=False, setup=_truncated_weights),
    Case("model-weights-random-bytes", (), CheckpointError, r"not a safetensors file", before_model=False,
         setup=_random_weights),
    # sampling, runtime, top level
    Case("sampling-tau-zero", ("sampling.tau=0",), ConfigError, r"sampling.tau"),
    Case("sampling-top-p", ("sampling.top_p=2",), ConfigError, r"sampling.top_p"),
    Case("runtime-kind", ("runtime.kind=slurm",), ConfigError, r"runtime.kind='slurm'"),
    Case("runtime-prompts-per-unit-0", ("runtime.prompts_per_unit=0",), ConfigError, r"runtime.prompts_per_unit"),
    Case("runtime-actors-0", ("runtime.actors=0",), ConfigError, r"runtime.actors"),
    Case("runtime-gpus-per-actor", ("runtime.gpus_per_actor=1.5",), ConfigError, r"runtime.gpus_per_actor"),
    Case("runtime-preview-mode", ("runtime.preview=half",), ConfigError, r"runtime.preview='half'.*full or cheap"),
    Case("runtime-preview-size-huge", ("runtime.preview_size=100000",), ConfigError, r"runtime.preview_size"),
    Case("seed-negative", ("seed=-1",), ConfigError, r"seed must be"),
    Case("limit-zero", ("limit=0",), ConfigError, r"limit must be >= 1"),
    Case("unknown-key", ("nonsense.key=1",), ConfigError, r"nonsense"),
    Case("override-without-value", ("search.n",), ConfigError, r"key=value"),
    # job YAML
    Case("yaml-malformed", (), ConfigError, r"is not valid YAML \(line \d+, column \d+\)", yaml="search: {n: [1, 2\n"),
    Case("yaml-top-level-list", (), ConfigError, r"must hold a mapping of fields.*got a list", yaml="- a\n- b\n"),
    Case("yaml-unknown-field", (), ConfigError, r"serch", yaml="serch:\n  n: 2\n"),
    # prompt files (before any model) and prompts the job's text models cannot read (after the models load,
    # before any unit runs)
    Case("prompts-unset", (), ConfigError, r"prompts is not set", prompts=None),
    Case("prompts-missing", ("prompts=/nonexistent/prompts.txt",), MissingFileError, r"prompts file not found"),
    Case("prompts-wrong-suffix", (), PromptError, r"must end in .txt", setup=_prompt_file("p.csv", b"a,b\n")),
    Case("prompts-binary", (), PromptError, r"p.txt is not UTF-8 text \(line 1",
         setup=_prompt_file("p.txt", b"\x89PNG\r\n\x1a\n\xff\xfe")),
    Case("prompts-empty", (), PromptError, r"holds no prompts", setup=_prompt_file("p.txt", b"\n \n")),
    Case("prompts-jsonl-bad-lines", (), PromptError, r"2 bad prompt lines(.|\n)*p.jsonl:2: not valid JSON"
         r"(.|\n)*p.jsonl:3: each line must be an object",
         setup=_prompt_file("p.jsonl", b'{"prompt": "a photo of a red circle"}\n{"prompt": \n[1, 2]\n')),
    Case("prompt-nul-byte", (), PromptError, r"p.txt:2: the prompt contains the control character '\\x00'",
         setup=_prompt_file("p.txt", b"a photo of a red circle\na photo of a \x00circle\n")),
    Case("prompt-30k-chars", (), PromptError, r"is 30000 characters long",
         setup=_prompt_file("p.txt", b"a" * 30000 + b"\n")),
    Case("prompt-10k-chars", (), PromptError, r"prompts.txt:2: the generator's text encoder: has 2500 words, "
         r"more than the 10 the text encoder reads", before_model=False, prompts=[PROMPTS[0], "a photo " * 1250]),
    Case("prompt-unknown-word", (), PromptError, r"prompts.txt:3: the generator's text encoder: words the text "
         r"encoder does not know: \['dog'\]", before_model=False,
         prompts=[PROMPTS[0], PROMPTS[1], "a photo of a dog"]),
    Case("prompt-too-long", ("reward.name=shapes-clip",), PromptError,
         r"prompts.txt:1: the generator's text encoder: has 11 words, more than the 10 .*; reward shapes-clip: .*"
         r"needs 13 tokens, more than context_length=12", before_model=False,
         prompts=["a photo of a red circle left of a blue square"]),
    Case("prompt-the-reward-cannot-read", ("reward.name=shapes-clip",), PromptError,
         r"prompts.txt:2: reward shapes-clip: .*'circle.'", before_model=False,
         prompts=[PROMPTS[0], "a photo of a red circle."]),
    Case("prompts-all-bad-lines-at-once", (f"reward.name={THIS}:short_prompts_only",), PromptError,
         r"3 bad prompt lines(.|\n)*prompts.txt:2: .*dog(.|\n)*prompts.txt:4: reward (.|\n)*prompts.txt:5: reward",
         before_model=False, prompts=["a photo of a circle", "a photo of a dog", "a red square",
                                      "a photo of two red squares", "a photo of a blue triangle"]),
    # class-conditional models (var-tiny-random: 10 classes) and their prompts: checked before any model loads
    Case("class-model-text-prompt", ("model.name=var-tiny-random",), PromptError,
         r"prompts.txt:2: 'a photo of a cat' is text but var-tiny-random is class-conditional; give "
         r"\{\"class\": <index in 0..9>\} or a class name", prompts=["goldfish", "a photo of a cat", "3"]),
    Case("class-index-beyond-the-model", ("model.name=var-tiny-random",), PromptError,
         r"p.jsonl:2: class 12 is out of range: the model has 10 classes \(0..9\)",
         setup=_prompt_file("p.jsonl", b'{"class": 1}\n{"class": 12}\n')),
    Case("class-name-ambiguous", ("model.name=var-d16",), PromptError,
         r"prompts.txt:1: 'crane' names 2 classes: 134 \(crane\), 517 \(crane\); give the index",
         prompts=["crane"]),
    Case("class-field-bad-type", ("model.name=var-tiny-random",), PromptError,
         r"p.jsonl:1: 'class' must be a class index \(an integer\) or a class name, got 1.5",
         setup=_prompt_file("p.jsonl", b'{"class": 1.5}\n')),
    Case("class-for-a-text-model", (), PromptError,
         r'p.jsonl:2: \{"class": 3\} is a class but shapes-tiny is text-conditional; give a \'prompt\' field',
         setup=_prompt_file("p.jsonl", b'{"prompt": "a photo of a red circle"}\n{"class": 3}\n')),
    Case("classifier-without-weights", ("model.name=var-tiny-random", "reward.name=classifier"), ConfigError,
         r"reward 'classifier' needs reward.options.weights", prompts=["1"]),
    Case("classifier-weights-missing", ("model.name=var-tiny-random", "reward.name=classifier",
                                        "reward.options.weights=/nonexistent/vit.safetensors"), MissingFileError,
         r"reward.options.weights='/nonexistent/vit.safetensors' does not exist", prompts=["1"]),
    Case("classifier-reward-on-text-prompts", (), PromptError,
         r"prompts.txt:1: reward classifier: .*'a photo of a red circle'.* is not a class index in \[0, 10\)",
         before_model=False, setup=_tiny_classifier),
    # output.dir: checked before any model loads
    Case("output-dir-is-a-file", (), OutputError, r"is a file, not a folder", setup=_out_is_file),
    Case("output-images-is-a-file", (), OutputError, r"images is a file", setup=_images_is_file),
    Case("output-dir-not-writable", ("output.dir=/proc/ttsvar-cannot-write-here",), OutputError,
         r"cannot create output.dir|not writable"),
    Case("output-dir-empty", ("output.dir=",), ConfigError, r"field 'output.dir'"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_clear_error(case: Case, tmp_path, request, monkeypatch):
    if case.before_model:
        request.getfixturevalue("no_model")
    if case.id == "search-n-beyond-memory":  # the same answer on any machine: 1 GiB free
        monkeypatch.setattr(ttsvar.jobs, "_free_memory", lambda device: (2**30, "the test's 1 GiB"))
    extra = list(case.setup(tmp_path)) if case.setup else []
    yaml = None
    if case.yaml is not None:
        yaml = tmp_path / "job.yaml"
        yaml.write_text(case.yaml)
    with pytest.raises(TtsvarError) as info:
        run_job(make_job(tmp_path, *case.overrides, *extra, prompts=case.prompts, yaml=yaml))
    e = info.value
    assert isinstance(e, case.error), f"{type(e).__name__}: {e}"
    msg = str(e)
    assert re.search(case.match, msg), msg
    first = msg.splitlines()[0]
    assert len(first) > 20 and "Traceback" not in msg
    if "bad prompt lines" not in first:
        assert "\n" not in msg, f"not one line: {msg!r}"
    assert e.exit_code == 2
    out = tmp_path / "out"
    assert not (out / "manifest.jsonl").exists(), "a refused job wrote results"


def test_the_table_has_forty_cases_or_more():
    assert len(CASES) >= 40


# ----------------------------------------------------------------------------- no data lost


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-prompt job (its files are copied by the tests that need one)."""
    tmp = tmp_path_factory.mktemp("finished")
    job = make_job(tmp)
    run_job(job)
    return tmp, Path(job.output.dir)


def _copy_finished(finished, tmp_path) -> Path:
    src_tmp, src = finished
    out = tmp_path / "out"
    shutil.copytree(src, out)
    return out


def test_bad_input_on_a_finished_output_dir_loses_nothing(finished, tmp_path):
    out = _copy_finished(finished, tmp_path)
    before = snapshot(out)
    bad = [("reward.name=no_such_reward",), ("search.n=0",), ("model.dtype=float99",), ("seed=7",),
           ("search.strategy=random",), ("reward.name=shapes-clip",), ("runtime.prompts_per_unit=0",)]
    for overrides in bad:
        with pytest.raises(InputError):
            run_job(make_job(tmp_path, *overrides))
        assert snapshot(out) == before, overrides
    with pytest.raises(PromptError):  # a prompt file with a new, bad line: refused before any unit runs
        run_job(make_job(tmp_path, prompts=[*PROMPTS, "a photo of a dog"]))
    assert snapshot(out) == before
    s = run_job(make_job(tmp_path))  # the unchanged job resumes: nothing to do
    assert (s["prompts_ok"], s["skipped_done"]) == (0, 4) and snapshot(out) == before


@pytest.mark.parametrize("overrides, fields", [
    (("seed=1",), ["seed"]),
    (("search.n=3",), ["search.n"]),
    (("search.strategy=random",), ["search.strategy"]),
    (("reward.name=shapes-clip",), ["reward.name"]),
    (("model.name=infinity-tiny-random",), ["model.name"]),
    (("sampling.cfg=2.0", "seed=3"), ["sampling.cfg", "seed"]),
    (("reward.batch_size=1",), ["reward.batch_size"]),  # a forward's batch moves a score's last bits
])
def test_resume_under_a_changed_config_is_refused(finished, tmp_path, overrides, fields):
    out = _copy_finished(finished, tmp_path)
    before = snapshot(out)
    with pytest.raises(ResumeError) as info:
        run_job(make_job(tmp_path, *overrides))
    msg = str(info.value)
    for f in fields:
        assert f"{f}: " in msg, msg
    assert "output.overwrite=true" in msg and "another output.dir" in msg and "\n" not in msg
    assert snapshot(out) == before


def test_results_recorded_before_a_field_was_fingerprinted_still_resume(finished, tmp_path):
    out = _copy_finished(finished, tmp_path)
    meta = json.loads((out / "job.json").read_text())
    del meta["fingerprint"]["reward.batch_size"]  # as an older ttsvar wrote it
    (out / "job.json").write_text(json.dumps(meta))
    assert run_job(make_job(tmp_path))["skipped_done"] == len(PROMPTS)


def test_overwrite_starts_over(finished, tmp_path):
    out = _copy_finished(finished, tmp_path)
    (out / "notes.txt").write_text("mine")
    s = run_job(make_job(tmp_path, "seed=1", "output.overwrite=true", prompts=PROMPTS[:2]))
    recs = manifest(out)
    assert s["prompts_ok"] == 2 and sorted(r["index"] for r in recs) == [0, 1]
    assert sorted(p.name for p in (out / "images").iterdir()) == ["00000.png", "00001.png"]
    assert (out / "notes.txt").read_text() == "mine"  # only what jobs write is deleted
    assert json.loads((out / "job.json").read_text())["fingerprint"]["seed"] == 1


def test_torn_last_manifest_line_is_repaired_and_no_record_is_swallowed(tmp_path, caplog):
    """The issue's reproduction: 8 prompts, the last manifest line cut in half, the same command again."""
    prompts = [f"a photo of {c} {s}" for c in ("a red", "a blue", "a green", "a yellow")
               for s in ("circle", "square")]
    job = make_job(tmp_path, "runtime.prompts_per_unit=8", prompts=prompts)
    run_job(job)
    mf = Path(job.output.dir) / "manifest.jsonl"
    data = mf.read_bytes()
    last = data.rstrip(b"\n").rfind(b"\n") + 1
    mf.write_bytes(data[: last + (len(data) - last) // 2])
    with caplog.at_level("WARNING", logger="ttsvar"):
        s = run_job(job)
    assert "cut off" in caplog.text and (s["prompts_ok"], s["skipped_done"]) == (1, 7)
    recs = manifest(Path(job.output.dir))  # every line parses: nothing was glued onto the torn line
    assert sorted(r["index"] for r in recs) == list(range(8))
    assert evaluate_output_dir(job.output.dir)["summary"]["n_images"] == 8


def test_a_whole_last_record_without_newline_is_kept(tmp_path, caplog):
    job = make_job(tmp_path, prompts=PROMPTS[:2])
    run_job(job)
    mf = Path(job.output.dir) / "manifest.jsonl"
    mf.write_bytes(mf.read_bytes().rstrip(b"\n"))
    with caplog.at_level("WARNING", logger="ttsvar"):
        s = run_job(make_job(tmp_path, prompts=PROMPTS[:3]))
    assert "no newline" in caplog.text and (s["prompts_ok"], s["skipped_done"]) == (1, 2)
    assert sorted(r["index"] for r in manifest(Path(job.output.dir))) == [0, 1, 2]


def test_a_failed_write_stops_the_job_and_says_what_to_redo(tmp_path, monkeypatch):
    job = make_job(tmp_path, "runtime.prompts_per_unit=1")
    real = OutputDir.write_image

    def full_disk(self, rel, image):
        if rel.endswith("00002.png"):
            raise OSError(28, "No space left on device")
        return real(self, rel, image)

    monkeypatch.setattr(OutputDir, "write_image", full_disk)
    with pytest.raises(OutputWriteError, match=r"prompt\(s\) \[2\].*No space left.*re-run the same command"):
        run_job(job)
    done = {r["index"] for r in manifest(Path(job.output.dir))}
    assert {0, 1} <= done and 2 not in done  # what was computed before is kept
    monkeypatch.setattr(OutputDir, "write_image", real)
    s = run_job(job)
    assert s["prompts_failed"] == 0
    assert sorted(r["index"] for r in manifest(Path(job.output.dir))) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- one bad prompt costs only itself


def test_one_bad_prompt_fails_alone_and_is_not_retried(tmp_path):
    job = make_job(tmp_path, f"reward.name={THIS}:refuses_triangles", "runtime.prompts_per_unit=4",
                   "runtime.retries=2")
    s = run_job(job)
    recs = {r["index"]: r for r in manifest(Path(job.output.dir))}
    assert (s["prompts_ok"], s["prompts_failed"]) == (3, 1)
    assert recs[2]["status"] == "failed" and "cannot score triangles" in recs[2]["error"]
    assert recs[2]["error_type"] == "ValueError" and recs[2]["transient"] is False
    assert all(recs[i]["status"] == "ok" for i in (0, 1, 3))
    assert CALLS["triangle"] == 2  # once in the unit of 4, once alone; never retried


def test_a_transient_error_is_retried(tmp_path):
    job = make_job(tmp_path, f"reward.name={THIS}:flaky_once", "runtime.prompts_per_unit=1", "runtime.retries=1")
    s = run_job(job)
    assert (s["prompts_ok"], s["prompts_failed"], s["units_retried"]) == (4, 0, 1)


def test_which_errors_are_transient():
    from rewards.base import RewardOutputError

    assert is_transient(RuntimeError("CUDA out of memory")) and is_transient(OSError(5, "I/O error"))
    assert is_transient(MemoryError()) and is_transient(TimeoutError())
    for e in (ValueError("bad prompt"), KeyError("x"), TypeError("x"), PromptError("x"), ConfigError("x"),
              RewardOutputError("NaN"), ImportError("x")):
        assert not is_transient(e), e


def test_a_reward_that_fails_on_grey_images_does_not_block_the_job(tmp_path, caplog):
    """The prompt check is inconclusive for a reward that returns NaN on its grey probe: a warning, then the
    job's own handling (here: every prompt recorded as failed, not retried)."""
    job = make_job(tmp_path, f"reward.name={THIS}:NanReward", prompts=PROMPTS[:2])
    with caplog.at_level("WARNING", logger="ttsvar"):
        s = run_job(job)
    assert "could not check the prompts" in caplog.text and s["prompts_failed"] == 2


def wrong_length(images, prompts):
    """A reward that returns one score too few, whatever the images."""
    return helpers_components.redness(images, prompts)[:-1]


def test_a_reward_that_breaks_its_output_contract_stops_the_job_before_it_runs(tmp_path, monkeypatch):
    calls = []
    real = ttsvar.jobs.make_worker
    monkeypatch.setattr(ttsvar.jobs, "make_worker", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(ConfigError, match=r"reward\.name: .*wrong_length does not return one score per image"):
        run_job(make_job(tmp_path, f"reward.name={THIS}:wrong_length", prompts=PROMPTS[:2]))
    assert not calls  # refused before any unit was generated


# ----------------------------------------------------------------------------- smaller items


def test_nan_policy_minus_inf_from_the_command_line_is_a_number(tmp_path):
    assert make_job(tmp_path, "reward.nan_policy=-inf").reward.nan_policy == float("-inf")


def test_ignored_options_warn(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="ttsvar"):
        run_job(make_job(tmp_path, "runtime.actors=2", "model.dtype=float16", "reward.weights_dir=/models",
                         prompts=PROMPTS[:1]))
    assert "runtime.actors=2" in caplog.text and "model.dtype='float16'" in caplog.text
    assert "reward.weights_dir='/models' is ignored" in caplog.text


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        out = Path(make_job(tmp_path, prompts=PROMPTS[:1]).output.dir)
        run_job(make_job(tmp_path, prompts=PROMPTS[:1]))
    finally:
        os.umask(old)
    modes = {p.relative_to(out).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*") if p.is_file()}
    assert set(modes) >= {"manifest.jsonl", "summary.json", "job.json", "images/00000.png", "traces/0.json"}
    assert set(modes.values()) == {0o640}, modes


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_dir_is_refused_before_the_model(tmp_path, no_model):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            run_job(make_job(tmp_path, f"output.dir={ro}"))
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("section, field, value, known", [
    ("model", "name", "nope", "shapes-tiny"),
    ("search", "strategy", "nope", "tts-var"),
    ("reward", "name", "nope", "shapes-clip"),
    ("search", "features", "nope", "shapes-clip"),
])
def test_registry_names_of_a_job_built_in_code_are_checked_before_any_model(tmp_path, no_model, section, field,
                                                                           value, known):
    """`run_job` on a `JobConfig` that `load_config` never validated: one ConfigError naming the field and the
    known names, before the generator loads."""
    from ttsvar.config import JobConfig

    job = JobConfig(prompts=str(write_prompts(tmp_path)))
    job.output.dir = str(tmp_path / "out")
    setattr(getattr(job, section), field, value)
    with pytest.raises(ConfigError, match=rf"{section}.{field}={value!r}.*{known}") as info:
        run_job(job)
    assert "\n" not in str(info.value)


def test_cli_evaluate_with_an_unknown_evaluator(finished, tmp_path, capsys):
    from ttsvar.cli import main

    assert main(["evaluate", str(finished), "--evaluator", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["ttsvar: error: --evaluator='nope' is unknown; available: mask2former, shapes"]
    assert main(["evaluate", str(_copy_finished(finished, tmp_path)), "--evaluator", "shapes"]) == 0


# ----------------------------------------------------------------------------- ttsvar evaluate


def _evaluate_case(finished, tmp_path, damage):
    out = _copy_finished(finished, tmp_path)
    damage(out)
    return out


@pytest.mark.parametrize("damage, error, match", [
    (lambda out: None, None, None),
    (lambda out: (out / "manifest.jsonl").open("a").write("[1, 2]\n"), ManifestError,
     r"line 5: a JSON list, not an object"),
    (lambda out: (out / "manifest.jsonl").open("a").write('{"status": "ok", "image": "x.png"}\n'), ManifestError,
     r"line 5: no integer 'index' field"),
    (lambda out: (out / "images" / "00001.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage"), ManifestError,
     r"00001.png \(prompt 1\) cannot be read as an image"),
    (lambda out: (out / "manifest.jsonl").unlink(), OutputError, r"has no manifest.jsonl"),
], ids=["intact", "line-not-an-object", "line-without-index", "corrupt-png", "no-manifest"])
def test_evaluate_errors(finished, tmp_path, damage, error, match):
    out = _evaluate_case(finished, tmp_path, damage)
    if error is None:
        assert evaluate_output_dir(out)["summary"]["n_images"] == 4
        return
    with pytest.raises(error, match=match) as info:
        evaluate_output_dir(out)
    assert "\n" not in str(info.value)


def test_evaluate_on_a_file_or_a_missing_dir(tmp_path):
    f = _file(tmp_path, "x.txt", b"hello")
    with pytest.raises(OutputError, match="is a file"):
        evaluate_output_dir(f)
    with pytest.raises(OutputError, match="does not exist"):
        evaluate_output_dir(tmp_path / "missing")


# ----------------------------------------------------------------------------- the command line


def cli(*args: str, cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)]), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ttsvar.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_bad_reward_names_and_options_print_one_line(tmp_path):
    """The before-stop hook's three commands: exit 2, one `ttsvar: error:` line, no traceback."""
    p = write_prompts(tmp_path)
    for bad in ("reward.name=no_such_reward", "reward.name=no_such_module_x:fn", "reward.options.no_such_option=1"):
        r = cli("run", f"prompts={p}", f"output.dir={tmp_path / 'out'}", bad, cwd=tmp_path)
        assert r.returncode == 2, r.stderr
        assert "Traceback" not in r.stderr and r.stdout == ""
        errors = [x for x in r.stderr.splitlines() if x.startswith("ttsvar: error: ")]
        assert len(errors) == 1 and "reward." in errors[0], r.stderr


def test_cli_generate_with_a_prompt_the_reward_cannot_read(tmp_path):
    r = cli("generate", "a photo of a red circle left of a blue square", "--n", "2", "--out", str(tmp_path / "g"),
            "reward.name=shapes-clip", "runtime.quiet=true", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "KeyError" not in r.stderr
    last = r.stderr.splitlines()[-1]
    assert last.startswith("ttsvar: error: the prompt: ")
    assert "has 11 words, more than the 10" in last and "needs 13 tokens, more than context_length=12" in last


def test_cli_config_checks_search_fields_and_debug_shows_the_traceback(capsys):
    from ttsvar.cli import main

    assert main(["config", "search.n=0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == ("ttsvar: error: search.n=0: must be an integer in [1, 65536] "
                                            "(candidates per prompt)") and "Traceback" not in err
    assert main(["config", "search.n=0", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_cli_fresh_starts_over(finished, tmp_path, capsys):
    from ttsvar.cli import main

    out = _copy_finished(finished, tmp_path)
    p = write_prompts(tmp_path, PROMPTS[:1])
    args = ["run", f"prompts={p}", f"output.dir={out}", *FAST, "seed=5"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "seed: 0 -> 5" in err and "--fresh" in err and "Traceback" not in err
    assert main([*args, "--fresh"]) == 0
    assert [x["index"] for x in manifest(out)] == [0]


def test_a_reward_object_in_a_job_config_is_a_one_line_error(tmp_path, no_model):
    job = make_job(tmp_path)
    job.reward.name = helpers_components.redness  # a JobConfig built in code can hold anything
    with pytest.raises(ConfigError, match=r"reward\.name=.* is not a name: .*register_reward"):
        run_job(job)


@pytest.mark.parametrize("model, scales", [("infinity-2b", 13), ("var-d16", 10), ("var-tiny-random", 4),
                                           ("infinity-tiny-random", 6)])
def test_a_schedule_that_does_not_fit_the_model_is_refused_before_it_loads(no_model, model, scales):
    from ttsvar.jobs import preflight

    job = load_config(None, [f"model.name={model}", "reward.name=helpers_components:redness",
                             "search.features=test-pixels", "search.options.batch_schedule=[8,4,2]"])
    with pytest.raises(ConfigError, match=rf"batch_schedule: has 3 entries but the model has {scales} scales"):
        preflight(job)
    pixels = load_config(None, ["model.name=infinity-2b", "model.options.pixels=0.06M", "search.features=test-pixels",
                                "reward.name=helpers_components:redness"])
    preflight(pixels)  # the count follows model.options: 0.06M has 7 scales, and the default schedule fits them


def test_the_scale_count_known_before_loading_is_the_built_models():
    from ttsvar.models.registry import create_generator, list_generators, model_defaults

    for name in list_generators():
        count = model_defaults(name).num_scales
        if count is not None and "tiny" in name:
            assert count({}) == create_generator(name).num_scales, name
