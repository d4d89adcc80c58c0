"""SearchConfig validation and the strategy registry: every bad input names what is wrong."""

from __future__ import annotations

import subprocess
import sys

import pytest

from search import SearchConfig, build_strategy, create_strategy, list_strategies
from search.base import SearchPlan
from search.registry import strategy_options

CLI_NAMES = {"tts-var", "best-of-n", "random", "importance", "beam", "fk", "cluster-only", "resample-only"}


def test_registry_has_every_cli_name():
    assert CLI_NAMES <= set(list_strategies())


def test_unknown_names_and_options_list_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown search strategy 'bon'; available: \['beam'"):
        create_strategy("bon")
    with pytest.raises(ValueError, match=r"no option\(s\) \['lambda'\]; its options are .*'lam'"):
        create_strategy("tts-var", **{"lambda": 3.0})


def test_default_config_gives_the_paper_plan():
    plan = SearchConfig().validate(13)
    assert plan.batch_sizes == (8, 8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1)


@pytest.mark.parametrize("changes,message", [
    (dict(batch_schedule=[8, 8, 6]), "batch_schedule: has 3 entries but the model has 13 scales"),
    (dict(batch_schedule=[8, 8, 6, 6, 6, 4, 2, 4, 2, 1, 1, 1, 1]), "batch_schedule: increases from 2 to 4"),
    (dict(batch_schedule=[8, 8, 6, 6, 6, 4, 2, 2, 2, 0, 0, 0, 0]), r"batch_schedule\[9\] = 0"),
    (dict(cluster_scales=[2, 12]), "cluster_scales: scale 12 is out of range"),
    (dict(resample_scales=[6, 6]), "resample_scales: .* lists a scale twice"),
    (dict(cluster_scales=[2, 6]), r"both contain \[6\]"),
    (dict(lam=float("nan")), "search.options.lam: nan must be finite"),
    (dict(lam=-2.0), "lam: -2.0 must be finite and >= 0"),
    (dict(potential="exp"), "potential: 'exp' is not one of"),
    (dict(n=0), "search.n = 0: must be an integer >= 1"),
    (dict(strategy="bon"), "unknown search strategy 'bon'"),
    (dict(beam_width=2), r"search.options.beam_width = 2 has no effect for strategy 'tts-var' \(used by: \['beam'\]\)"),
    (dict(strategy="fk", ess_threshold=1.5), r"ess_threshold: 1.5 must be in \(0, 1\]"),
    (dict(strategy="fk", fk_pick="max"), "fk_pick: 'max' is not one of"),
    (dict(strategy="beam", n=2, beam_width=3), "beam_width: 3 is larger than the batch n = 2"),
    (dict(strategy="importance", resample_scales=[-1]), "resample_scales: scale -1 is out of range"),
])
def test_validate_names_the_bad_field(changes, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**changes).validate(13)


def _cfg(strategy: str = "tts-var", n: int = 1, **options) -> SearchConfig:
    return SearchConfig(strategy=strategy, n=n, options=options)


@pytest.mark.parametrize("changes,message", [
    (dict(lam=-2.0), "search.options.lam: -2.0 must be finite and >= 0"),
    (dict(strategy="fk", ess_threshold=1.5), r"search.options.ess_threshold: 1.5 must be in \(0, 1\]"),
    (dict(batch_schedule=[8, 8, 6]), "search.options.batch_schedule: has 3 entries"),
])
def test_a_strategy_option_error_names_its_search_options_field(changes, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**changes).validate(13)


LIST_OPTIONS = [(s, o) for s in list_strategies() for o in ("batch_schedule", "cluster_scales", "resample_scales",
                                                            "beam_scales", "density_scales", "prune_scales",
                                                            "tree_scales")
                if o in strategy_options(s)]


@pytest.mark.parametrize("strategy, option", LIST_OPTIONS)
@pytest.mark.parametrize("bad", [1, "abc", {"a": 1}])
def test_a_scalar_string_or_mapping_for_a_list_option_names_the_option(strategy, option, bad):
    """Before any model loads, from the job config: `search.options.cluster_scales=1` used to say
    "search.'int' object is not iterable", and `batch_schedule=abc` passed until the model had loaded."""
    from ttsvar.config import load_config
    from ttsvar.core.errors import ConfigError

    extra = ["search.options.value=v.safetensors"] if strategy == "value" else []
    value = {1: "1", "abc": "abc", "a": "{a: 1}"}[next(iter(bad)) if isinstance(bad, dict) else bad]
    with pytest.raises((ConfigError, ValueError), match=rf"search.options.{option}: expected a list"):
        load_config(None, [f"search.strategy={strategy}", f"search.options.{option}={value}", *extra])


def test_a_value_that_is_not_a_path_names_the_option():
    with pytest.raises(ValueError, match=r"search.options.value: expected the path of a value file"):
        _cfg("value", value=3).validate(13)


def test_beam_with_its_defaults_plans_any_model_length():
    for num_scales in (2, 3, 4, 5, 6, 13):
        plan = _cfg("beam", n=4).validate(num_scales)
        assert plan.decision_scales and max(plan.decision_scales) <= num_scales - 2
    assert _cfg("beam", n=4).validate(4).decision_scales == (0, 1, 2)
    assert _cfg("beam", n=4).validate(13).decision_scales == (2, 5, 6, 9)  # the paper's scales, unchanged


def test_an_error_no_option_owns_names_the_strategy():
    from search.registry import option_error

    assert option_error("too few scales", {"lam"}, "beam") == "search.strategy=beam: too few scales"


def test_a_plugin_strategy_adds_options_by_adding_keywords():
    from search.registry import register_strategy, strategy_options
    from search.strategies.best_of_n import BestOfN

    @register_strategy("test-bon-with-option")
    class WithOption(BestOfN):
        def __init__(self, widget: int = 3) -> None:
            if widget < 0:
                raise ValueError(f"widget: {widget} must be >= 0")
            self.widget = widget

    assert strategy_options("test-bon-with-option") == {"widget": 3}
    assert build_strategy(_cfg("test-bon-with-option", widget=5)).widget == 5
    with pytest.raises(ValueError, match="search.options.widget: -1 must be >= 0"):
        _cfg("test-bon-with-option", widget=-1).validate(13)
    with pytest.raises(ValueError, match=r"search.options.lam = 1.0 has no effect .* its options are \['widget'\]"):
        _cfg("test-bon-with-option", lam=1.0).validate(13)


def test_build_strategy_passes_only_the_fields_the_strategy_uses():
    cfg = _cfg(strategy="fk", n=4, resample_scales=[3, 5], potential="diff", lam=2.0, ess_threshold=0.3)
    strategy = build_strategy(cfg)
    assert (strategy.potential, strategy.lam, strategy.ess_threshold) == ("diff", 2.0, 0.3)
    plan = cfg.validate(10)
    assert isinstance(plan, SearchPlan) and plan.batch_sizes == (4,) * 10 and plan.decision_scales == (3, 5)
    # batch_schedule[k] = rows kept after scale k; read only at decision scales
    cfg = _cfg(strategy="cluster-only", batch_schedule=[4, 2, 2, 2, 1, 1], cluster_scales=[1, 4])
    assert cfg.validate(6).batch_sizes == (4, 4, 2, 2, 2, 1)


def test_strategies_do_not_import_torch():
    code = ("import sys, numpy as np; from search import create_strategy, Observation; "
            "s = create_strategy('tts-var'); p = s.plan(13, 1); st = s.init_group(0, 0); "
            "s.decide(st, Observation(2, 13, np.arange(8), None, np.eye(8, 4, dtype='f4'))); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
