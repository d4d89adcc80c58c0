"""User code named by a job config: a search strategy (`search.strategy=pkg.mod:Class`) and a feature extractor
(`search.features=pkg.mod:Class`), as rewards already are (`reward.name=pkg.mod:obj`). Nothing is imported
unless the config names it; a bad path is a one-line error naming the field, before any model loads."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from test_bad_input import FAST, make_job, manifest

from ttsvar.cli import main
from ttsvar.config import load_config
from ttsvar.core.errors import ConfigError
from ttsvar.jobs import preflight, run_job

MODULE = "user_search_plugins"


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent("""
        import numpy as np
        import torch
        from rewards import FeatureExtractor
        from search.strategies.best_of_n import BestOfN
        from search.base import Strategy

        class LowestReward(BestOfN):
            '''Best-of-N turned round: the pick is the lowest final reward (so a test can tell it ran).'''
            def __init__(self, offset: int = 0):
                if offset < 0:
                    raise ValueError(f"offset: {offset} must be >= 0")
                self.offset = offset
            def pick(self, state, obs):
                return int(np.argmin(np.asarray(obs.rewards)))

        class MeanColour(FeatureExtractor):
            calls = 0
            def __init__(self, device: str = "cpu"):
                super().__init__(device, "float32", 64)
                self.dim = 3
            def features(self, images):
                MeanColour.calls += 1
                return images.mean(dim=(2, 3))

        class NotAStrategy:
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield MODULE
    sys.modules.pop(MODULE, None)


def test_a_strategy_named_by_import_path_runs(plugin, tmp_path):
    base = run_job(make_job(tmp_path, "search.n=4", out="best"))
    assert base["prompts_ok"] == 4
    s = run_job(make_job(tmp_path, "search.n=4", f"search.strategy={plugin}:LowestReward", out="lowest"))
    assert s["prompts_ok"] == 4
    best, lowest = manifest(tmp_path / "best"), manifest(tmp_path / "lowest")
    assert all(r["strategy"] == f"{plugin}:LowestReward" for r in lowest)
    assert all(lo["reward"] <= hi["reward"] for lo, hi in zip(lowest, best))
    assert any(lo["reward"] < hi["reward"] for lo, hi in zip(lowest, best))
    with pytest.raises(ConfigError, match=r"search.options.offset: -1 must be >= 0"):
        load_config(None, [*FAST, f"search.strategy={plugin}:LowestReward", "search.options.offset=-1"])


def test_features_named_by_import_path_are_used_for_clustering(plugin, tmp_path):
    job = make_job(tmp_path, "search.strategy=tts-var", "search.n=1", f"search.features={plugin}:MeanColour",
                   "runtime.prompts_per_unit=4")
    assert run_job(job)["prompts_ok"] == 4
    assert sys.modules[plugin].MeanColour.calls > 0
    assert json.loads((tmp_path / "out" / "job.json").read_text())["fingerprint"]["search.features"] == \
        f"{plugin}:MeanColour"


@pytest.mark.parametrize("override, message", [
    ("search.strategy=no_such_module:X", r"search.strategy='no_such_module:X': cannot import search strategy"),
    (f"search.strategy={MODULE}:Missing", r"has no attribute 'Missing'"),
    (f"search.strategy={MODULE}:NotAStrategy", r"not a search.Strategy subclass"),
    ("search.strategy=bon", r"search.strategy='bon' is unknown; available: .*or an import path"),
    ("search.features=no_such_module:X", r"search.features='no_such_module:X': cannot import module"),
    (f"search.features={MODULE}:NotAStrategy", r"not a class with extract"),
    ("search.features=nope", r"search.features='nope' is unknown; available: .*or an import path"),
])
def test_a_bad_import_path_is_one_line_naming_the_field(plugin, override, message, tmp_path, capsys):
    with pytest.raises(ConfigError, match=message):
        preflight(load_config(None, [*FAST, override]))
    prompts = tmp_path / "p.txt"
    prompts.write_text("a photo of a red circle\n")
    assert main(["run", f"prompts={prompts}", f"output.dir={tmp_path / 'o'}", *FAST, override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ttsvar: error: search.") and "\n" not in err and "Traceback" not in err
