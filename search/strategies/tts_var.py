"""TTS-VAR (arXiv 2507.18537): descending batch schedule, clustering at coarse scales, potential resampling at
fine scales, highest final reward wins. Plus its two ablations, `cluster-only` and `resample-only`.

Differences from the official code (ali-vilab/TTS-VAR), all deliberate: many prompt groups at once instead of
one prompt; all four potentials (the official run asserts `value`); previews decoded only where a decision
needs them (official: every scale); k-means++ and resampling seeded per group and scale (official:
`random_state=0` and one torch generator). The ablations follow the official code with a component switched
off: the batch reductions scheduled at the disabled decisions simply do not happen (`--extract_type no` keeps
8 rows until the first resampling; `--cal_type no` keeps the post-clustering batch to the end).
"""

from __future__ import annotations

from collections.abc import Sequence

from search.base import Decision, GroupState, Observation, PlannedStrategy, SearchPlan, argmax_reward
from search.potentials import check_potential, check_resampler
from search.registry import register_strategy
from search.schedule import (
    check_scales,
    check_schedule,
    default_batch_schedule,
    default_decisions,
    live_batch_sizes,
    option_list,
)
from search.strategies.steps import cluster_step, resample_step
from search.value import ValueModel, load_value


@register_strategy("tts-var")
class TTSVar(PlannedStrategy):
    """Options (None = the paper's default adapted to the model's number of scales, see search.schedule):
    `batch_schedule` rows kept after each scale as multiples of n; `cluster_scales`; `resample_scales`;
    `potential` in value|diff|max|sum|learned; `lam` the potential temperature; `value` the file of a learned
    value (`ttsvar fit-value`), read here, which `potential="learned"` weighs instead of the raw reward at the
    resampling scales it was fitted for; `resampler` in multinomial|stratified|systematic|residual how the
    resampling draws its rows (multinomial, the paper's, by default; search.potentials)."""

    def __init__(
        self,
        batch_schedule: Sequence[int] | None = None,
        cluster_scales: Sequence[int] | None = None,
        resample_scales: Sequence[int] | None = None,
        potential: str = "value",
        lam: float = 10.0,
        value: str | None = None,
        resampler: str = "multinomial",
    ) -> None:
        self.batch_schedule = option_list(batch_schedule, "batch_schedule",
                                          "a list with one multiplier per scale")
        self.cluster_scales = option_list(cluster_scales, "cluster_scales")
        self.resample_scales = option_list(resample_scales, "resample_scales")
        self.value_model: ValueModel | None = None if value is None else load_value(value)
        self.potential, self.lam = check_potential(potential, lam, self.value_model is not None, True)
        self.resampler = check_resampler(resampler)
        if self.value_model is not None and self.potential != "learned":
            raise ValueError(f"value: {value} is read only by potential 'learned' (search.options.potential="
                             f"learned); potential {self.potential!r} ignores it")
        self._cluster: frozenset[int] = frozenset()

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        if num_scales < 2:
            raise ValueError(f"num_scales: {self.name} needs at least 2 scales, got {num_scales}")
        needs_default = None in (self.batch_schedule, self.cluster_scales, self.resample_scales)
        dflt_cluster, dflt_resample = default_decisions(num_scales) if needs_default else ((), ())
        schedule = default_batch_schedule(num_scales) if self.batch_schedule is None else self.batch_schedule
        schedule = check_schedule(schedule, num_scales)
        cluster = check_scales(dflt_cluster if self.cluster_scales is None else self.cluster_scales,
                               num_scales, "cluster_scales")
        resample = check_scales(dflt_resample if self.resample_scales is None else self.resample_scales,
                                num_scales, "resample_scales")
        both = sorted(set(cluster) & set(resample))
        if both:
            raise ValueError(f"cluster_scales and resample_scales both contain {both}; one decision per "
                             "scale")
        decisions = tuple(sorted(cluster + resample))
        sizes = live_batch_sizes(schedule, decisions, n)
        for k in cluster:
            if sizes[k + 1] >= sizes[k]:
                raise ValueError(
                    f"cluster_scales: clustering after scale {k} keeps all {sizes[k]} rows "
                    f"(batch_schedule[{k}] = {schedule[k]} x n); it would be a no-op: remove scale {k} or "
                    "lower that batch_schedule entry")
        self._cluster = frozenset(cluster)
        features, rewards = set(cluster), set(resample)
        learned = self.value_model.scales if self.value_model is not None else frozenset()
        if self.potential == "learned":  # V_k reads the features and reward of the rows it weighs
            features |= set(resample) & learned
        return SearchPlan(sizes, frozenset(features), frozenset(rewards), decisions)

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        k = state.plan.batch_sizes[obs.scale + 1]
        if obs.scale in self._cluster:
            return cluster_step(state, obs, k)
        return resample_step(state, obs, k, self.potential, self.lam, self.value_model, self.resampler)

    def pick(self, state: GroupState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))


@register_strategy("cluster-only")
class ClusterOnly(TTSVar):
    """TTS-VAR without resampling: the batch stays at its post-clustering size; highest final reward wins."""

    def __init__(self, batch_schedule: Sequence[int] | None = None,
                 cluster_scales: Sequence[int] | None = None) -> None:
        super().__init__(batch_schedule, cluster_scales, resample_scales=[])


@register_strategy("resample-only")
class ResampleOnly(TTSVar):
    """TTS-VAR without clustering: the initial batch runs until the first resampling scale."""

    def __init__(
        self,
        batch_schedule: Sequence[int] | None = None,
        resample_scales: Sequence[int] | None = None,
        potential: str = "value",
        lam: float = 10.0,
        value: str | None = None,
        resampler: str = "multinomial",
    ) -> None:
        super().__init__(batch_schedule, cluster_scales=[], resample_scales=resample_scales,
                         potential=potential, lam=lam, value=value, resampler=resampler)
