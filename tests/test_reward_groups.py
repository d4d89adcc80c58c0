"""The groups contract (`rewards.base.Reward`, docs/rewards.md) as the engine keeps it: every reward that takes
`groups` gets each candidate's prompt index, and a score call never splits a group, even one larger than
`runtime.score_batch`, so a z-score ensemble standardises over the whole group."""

from __future__ import annotations

import helpers_components
import numpy as np
import pytest
import torch

from rewards.ensemble import EnsembleReward
from ttsvar.config import load_config
from ttsvar.engine import Coordinator, Worker, group_batches, make_units, run_unit, score_images
from ttsvar.jobs import build_components

# the first two groups share their prompt text: only the group ids tell them apart
PROMPTS = ["a photo of a red circle", "a photo of a red circle", "a photo of two squares"]
N = 5


@pytest.mark.parametrize("groups, size, cuts", [
    ([0, 0, 1, 1, 1, 2], 6, [(0, 6)]),
    ([0, 0, 1, 1, 1, 2], 5, [(0, 5), (5, 6)]),
    ([0, 0, 1, 1, 1, 2], 3, [(0, 2), (2, 5), (5, 6)]),
    ([0, 0, 1, 1, 1, 2], 2, [(0, 2), (2, 5), (5, 6)]),  # group 1 (3 rows) is not cut at 2
    ([4, 4, 4, 4, 4], 2, [(0, 5)]),
    ([7], 64, [(0, 1)]),
    ([3, 3, 1, 2, 2], 1, [(0, 2), (2, 3), (3, 5)]),  # ids need not be sorted, only adjacent
])
def test_group_batches_pack_whole_groups(groups, size, cuts):
    got = group_batches(np.asarray(groups), size)
    assert [(s.start, s.stop) for s in got] == cuts


def test_score_images_hands_groups_to_scorers_that_take_them():
    seen = {}

    def with_groups(images, prompts, groups=None):
        seen["groups"] = groups
        return torch.zeros(len(images))

    def without(images, prompts):
        return torch.ones(len(images))

    x, g = torch.rand(3, 3, 4, 4), np.array([5, 5, 9])
    score_images(with_groups, x, ["a"] * 3, g)
    assert seen["groups"] is g
    assert score_images(without, x, ["a"] * 3, g).tolist() == [1.0, 1.0, 1.0]


class Recorder:
    """A z-score ensemble of `redness`, recording every call the engine makes to it."""

    def __init__(self):
        self.ensemble = EnsembleReward([{"reward": helpers_components.redness, "norm": {"kind": "zscore"}}])
        self.calls: list[tuple[torch.Tensor, list[str], np.ndarray | None]] = []

    def score(self, images, prompts, groups=None):
        self.calls.append((images.clone(), list(prompts), None if groups is None else np.asarray(groups).copy()))
        return self.ensemble.score(images, prompts, groups)


@pytest.fixture(scope="module")
def components():
    job = load_config(None, ["model.name=shapes-tiny", "search.strategy=best-of-n", f"search.n={N}",
                             "reward.name=helpers_components:redness", "runtime.quiet=true"])
    return job, build_components(job)


def _final(components, score_batch: int) -> tuple[dict[int, np.ndarray], Recorder]:
    job, comp = components
    rec = Recorder()
    worker = Worker(comp.generator, rec, None, comp.plan, preview_size=comp.preview_size, score_batch=score_batch)
    unit = make_units(list(range(len(PROMPTS))), PROMPTS, job.seed, len(PROMPTS))[0]
    report, _, _ = run_unit(worker, Coordinator(comp.strategy, comp.plan), unit)
    return {ga.prompt_index: ga.rewards for ga in report.groups}, rec


def test_a_zscore_ensemble_sees_whole_groups_even_past_score_batch(components):
    small, rec = _final(components, score_batch=N - 1)  # every group is larger than score_batch
    assert len(rec.calls) == len(PROMPTS)
    for images, _, groups in rec.calls:
        assert groups is not None and len(set(groups.tolist())) == 1 and len(groups) == len(images) == N
    assert sorted(int(g[0]) for _, _, g in rec.calls) == [0, 1, 2]  # the prompt indices
    whole, rec_whole = _final(components, score_batch=64)
    assert len(rec_whole.calls) == 1 and rec_whole.calls[0][2].tolist() == np.repeat([0, 1, 2], N).tolist()
    for p in range(len(PROMPTS)):
        np.testing.assert_allclose(small[p], whole[p], rtol=0, atol=1e-6)
        # standardised within the group alone, though groups 0 and 1 share a prompt and one call
        assert abs(float(whole[p].mean())) < 1e-5 and float(whole[p].std()) == pytest.approx(1.0, abs=1e-4)
    # and what the engine reports is the ensemble's score of the group scored whole
    for images, prompts, groups in rec.calls:
        ref = rec.ensemble.score(images, prompts).numpy()
        np.testing.assert_allclose(small[int(groups[0])], ref, rtol=0, atol=1e-6)
