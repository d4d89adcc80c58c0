"""Beam search over scales: n rows; after each beam scale keep the `beam_width` rows with the highest preview
reward and refill the batch by giving each kept row n / beam_width children (the first n % beam_width kept
rows get one more). Children diverge because the engine samples every row with its own seed. Highest final
reward wins."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.base import (
    Decision,
    GroupState,
    Observation,
    PlannedStrategy,
    SearchPlan,
    argmax_reward,
    children_counts,
    is_int,
    jsonable,
)
from search.registry import register_strategy
from search.schedule import check_scales, default_decisions, option_list


@register_strategy("beam")
class Beam(PlannedStrategy):
    """Options: `beam_scales` (None: the TTS-VAR decision scales, adapted; on a model too short for those, every
    scale but the last), `beam_width` (None: max(1, n // 2))."""

    def __init__(self, beam_scales: Sequence[int] | None = None, beam_width: int | None = None) -> None:
        self.beam_scales = option_list(beam_scales, "beam_scales")
        if beam_width is not None and (not is_int(beam_width) or beam_width < 1):
            raise ValueError(f"beam_width: {beam_width!r} must be a positive integer")
        self.beam_width = beam_width

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        if self.beam_scales is None:
            try:
                cluster, resample = default_decisions(num_scales)
                scales = tuple(sorted(cluster + resample))
            except ValueError:  # too few scales for the paper's four decisions: every scale but the last, as beam-wc
                scales = tuple(range(num_scales - 1))
        else:
            scales = check_scales(self.beam_scales, num_scales, "beam_scales")
        if self.width(n) > n:
            raise ValueError(f"beam_width: {self.beam_width} is larger than the batch n = {n}")
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(scales), scales)

    def width(self, n: int) -> int:
        """Rows kept at a beam scale for a batch of n."""
        return max(1, n // 2) if self.beam_width is None else int(self.beam_width)

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        n = obs.num_rows
        width = self.width(n)
        rewards = np.asarray(obs.rewards, dtype=np.float64)
        key = np.where(np.isnan(rewards), -np.inf, rewards)
        order = np.argsort(-key, kind="stable")  # highest first, ties to the lower index; NaN last
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        kept = order[:width]
        counts = np.full(width, n // width)
        counts[: n % width] += 1
        parents = np.sort(np.repeat(kept, counts)).astype(np.int64)
        state.past_rewards = np.concatenate([state.past_rewards, rewards[:, None]], axis=1)[parents]
        trace = {"row_id": jsonable(obs.row_ids), "reward": jsonable(rewards), "rank": jsonable(rank),
                 "children": children_counts(parents, n)}
        return Decision(parents, trace, {"kind": "beam", "width": width})

    def pick(self, state: GroupState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))
