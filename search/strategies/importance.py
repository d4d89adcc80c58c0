"""Importance sampling (sequential importance resampling), the paper's IS baseline as we read it.

The official repository has no IS code, so this follows the paper's description of the baseline: a constant
batch of n candidates, multinomial resampling by the potential after every configured scale (default: every
scale but the last), then the highest final reward wins. It differs from TTS-VAR by having no descending
schedule, no clustering, and resampling at coarse scales too; from `fk` by resampling unconditionally with no
weight bookkeeping.
"""

from __future__ import annotations

from collections.abc import Sequence

from search.base import Decision, GroupState, Observation, PlannedStrategy, SearchPlan, argmax_reward
from search.potentials import check_potential, check_resampler
from search.registry import register_strategy
from search.schedule import check_scales, option_list
from search.strategies.steps import resample_step


@register_strategy("importance")
class Importance(PlannedStrategy):
    """Options: `resample_scales` (None: 0..S-2), `potential`, `lam`, `resampler` (as tts-var)."""

    def __init__(self, resample_scales: Sequence[int] | None = None, potential: str = "value",
                 lam: float = 10.0, resampler: str = "multinomial") -> None:
        self.resample_scales = option_list(resample_scales, "resample_scales")
        self.potential, self.lam = check_potential(potential, lam)
        self.resampler = check_resampler(resampler)

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        scales = range(num_scales - 1) if self.resample_scales is None else self.resample_scales
        scales = check_scales(scales, num_scales, "resample_scales")
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(scales), scales)

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        return resample_step(state, obs, obs.num_rows, self.potential, self.lam, resampler=self.resampler)

    def pick(self, state: GroupState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))
