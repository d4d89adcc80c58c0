"""The engine checks what a generator hands back, so a generator that breaks its contract fails its prompts with
an error naming the method instead of producing wrong results silently: `select` keeps the rows it is given
(prompt and new candidate id), `preview` / `finish` return float images [n, 3, H, W], one per row asked for."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_bad_input import PROMPTS, make_job, manifest

from ttsvar.jobs import run_job
from ttsvar.models.registry import create_generator


def _broken(method: str, bug):
    gen = create_generator("shapes-tiny")
    orig = getattr(gen, method)
    setattr(gen, method, lambda *a, **k: bug(orig, *a, **k))
    return gen


CASES = {
    "select ignores its index": ("select", lambda f, s, index, ids=None: f(s, np.zeros_like(index), ids),
                                 "InfinityGenerator.select returned"),
    "select drops the new ids": ("select", lambda f, s, index, ids=None: f(s, index, None),
                                 "InfinityGenerator.select returned"),
    "preview ignores rows": ("preview", lambda f, s, size=None, rows=None, cheap=False: f(s, size, None, cheap),
                             "InfinityGenerator.preview returned"),
    "preview channels last": ("preview", lambda f, *a, **k: f(*a, **k).permute(0, 2, 3, 1),
                              "InfinityGenerator.preview returned"),
    "finish one image short": ("finish", lambda f, s, rows=None: f(s, rows)[:-1] if len(s) > 1 else f(s, rows)[:0],
                               "InfinityGenerator.finish returned"),
    "finish uint8": ("finish", lambda f, s, rows=None: (f(s, rows) * 255).byte(), "InfinityGenerator.finish returned"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_generator_that_breaks_its_contract_fails_its_prompts_naming_the_method(tmp_path, case, caplog):
    """Where the bug shows (a unit of two prompts mixed; a decision that duplicated rows, so new ids and fewer
    decodes than rows), the prompt fails naming the method; where the broken call happens to do the right thing
    (no duplicate drawn), the prompt is fine. A `select` that picks the wrong rows of the right prompt is beyond
    any check."""
    method, bug, message = CASES[case]
    # multinomial draws duplicate rows here (the testbed's systematic default would keep them distinct)
    job = make_job(tmp_path, "search.strategy=tts-var", "search.n=1", "runtime.prompts_per_unit=2",
                   "search.options.resampler=multinomial", prompts=PROMPTS[:2])
    run_job(job, generator=_broken(method, bug))
    failed = [r for r in manifest(tmp_path / "out") if r["status"] == "failed"]
    seen = [r["error"] for r in failed] + [m for m in caplog.messages if "failed together" in m]
    assert seen and all(message in m for m in seen), json.dumps(seen)[:600]


def test_results_of_a_prebuilt_generator_are_not_resumed_as_model_names(tmp_path):
    from ttsvar.core.errors import ConfigError, ResumeError
    from ttsvar.models.infinity.builders import tiny_random

    job = make_job(tmp_path, "model.name=shapes-tiny", "search.strategy=random", "search.n=1", prompts=PROMPTS[:1])
    run_job(job, generator=tiny_random(0, vocab=("a", "photo", "of", "red", "circle")))
    with pytest.raises(ResumeError, match="model.prebuilt"):  # the plain job would build shapes-tiny itself
        run_job(job)
    ray_job = make_job(tmp_path, "runtime.kind=ray", out="ray", prompts=PROMPTS[:1])
    with pytest.raises(ConfigError, match="a prebuilt generator runs on the local runtime only"):
        run_job(ray_job, generator=create_generator("shapes-tiny"))


def test_a_registered_builder_is_held_to_the_generator_contract():
    from ttsvar.core.errors import ConfigError
    from ttsvar.core.generator import SamplingConfig
    from ttsvar.models.registry import ModelDefaults, register_generator

    with pytest.raises(TypeError, match=r"must take \(cfg, sampling, \*\*options\)"):
        register_generator("test-one-arg-builder")(lambda cfg: None)

    @register_generator("test-returns-a-module", ModelDefaults())
    def returns_module(cfg, sampling):
        return create_generator("shapes-tiny").model

    with pytest.raises(ConfigError, match="returned Infinity, not a ttsvar Generator"):
        create_generator("test-returns-a-module")

    @register_generator("test-drops-sampling", ModelDefaults())
    def drops_sampling(cfg, sampling):
        return create_generator("shapes-tiny")  # its own defaults, not `sampling`

    gen = create_generator("test-drops-sampling", SamplingConfig(cfg=1.0, tau=1.0))
    assert gen.cfg_list == [1.0] * gen.num_scales  # what job.json records is what runs
    assert ModelDefaults().reward == "clip-score"  # a registered name, not a typo
