"""`value`: TTS-VAR's schedule with a learned value V_k (`ttsvar fit-value`) at the coarse scales.

TTS-VAR clusters at coarse scales because a preview's reward there barely ranks paths (docs/search.md,
bench/bench_scales.py). A value model fitted on the engine's own runs (docs/value.md) predicts the final outcome
from the preview's features, its reward and the generator's token statistics. This strategy keeps TTS-VAR's
batch schedule and decision scales, and:

  * after a clustering scale the model was fitted for, clusters as TTS-VAR does and keeps each cluster's member
    with the highest V_k (`coarse="cluster"`, default: diversity first, then value), or keeps the top-k distinct
    rows by V_k (`coarse="top"`);
  * after a resampling scale, resamples by the `learned` potential exp(lam V_k) (the raw reward where the model
    has no fit);
  * picks the highest final reward.

Called by the engine like every strategy (`search.base.Strategy`). The value file is read when the strategy is
built (a missing or bad file fails when the job config is checked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.base import Decision, GroupState, Observation, SearchPlan, children_counts, jsonable
from search.registry import register_strategy
from search.strategies.steps import cluster_step, resample_step
from search.strategies.tts_var import TTSVar

COARSE = ("cluster", "top")


@register_strategy("value")
class ValueSearch(TTSVar):
    """Options: `value` (required: the file of `ttsvar fit-value`), `batch_schedule`, `cluster_scales`,
    `resample_scales` (as tts-var), `lam` (the learned potential's temperature), `coarse` in cluster|top,
    `resampler` (as tts-var)."""

    def __init__(
        self,
        value: str | None = None,
        batch_schedule: Sequence[int] | None = None,
        cluster_scales: Sequence[int] | None = None,
        resample_scales: Sequence[int] | None = None,
        lam: float = 10.0,
        coarse: str = "cluster",
        resampler: str = "multinomial",
    ) -> None:
        if value is None:
            raise ValueError("value: the value strategy needs search.options.value=PATH (a value file written by "
                             "`ttsvar fit-value`)")
        if coarse not in COARSE:
            raise ValueError(f"coarse: {coarse!r} is not one of {list(COARSE)}")
        super().__init__(batch_schedule, cluster_scales, resample_scales, potential="learned", lam=lam,
                         value=value, resampler=resampler)
        self.coarse = coarse

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        plan = super().make_plan(num_scales, n)
        learned = self.value_model.scales
        return SearchPlan(plan.batch_sizes, plan.feature_scales,
                          plan.reward_scales | (self._cluster & learned), plan.decision_scales)

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        k = state.plan.batch_sizes[obs.scale + 1]
        if obs.scale not in self._cluster:
            return resample_step(state, obs, k, "learned", self.lam, self.value_model, self.resampler)
        if obs.scale not in self.value_model.scales:
            return cluster_step(state, obs, k)
        values = self.value_model.predict(obs)
        if self.coarse == "cluster":
            return cluster_step(state, obs, k, scores=values)
        return top_step(state, obs, k, values)


def top_step(state: GroupState, obs: Observation, k: int, values: np.ndarray) -> Decision:
    """Keep the k distinct rows with the highest `values` (NaN last, ties to the lower index), in row order."""
    n = obs.num_rows
    v = np.where(np.isnan(values), -np.inf, values)
    order = np.argsort(-v, kind="stable")
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    parents = np.sort(order[:k]).astype(np.int64)
    state.past_rewards = state.past_rewards[parents]
    trace = {"row_id": jsonable(obs.row_ids), "value": jsonable(values), "rank": jsonable(rank),
             "children": children_counts(parents, n)}
    return Decision(parents, trace, {"kind": "value-top", "kept": int(k)})
