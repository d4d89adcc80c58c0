"""Feynman-Kac steering style particle resampling (Singhal et al., 2025), over scales instead of steps.

n particles. After each potential scale t every particle multiplies its weight by its potential G_t (value,
diff, max or sum of its preview rewards, as in TTS-VAR) and accumulates log G_t along its lineage. When the
effective sample size of the weights drops below `ess_threshold * n`, the particles are resampled
(multinomially by default; `resampler`) and their weights reset to 1. After the last scale a final weight correction
G_final = exp(lam * r_final) / prod(G_t along the lineage) makes the particle system target
p(x) * exp(lam * r(x)) whatever potential steered it. `fk_pick="weights"` then draws the final image from the
corrected weights (the SMC answer); `fk_pick="reward"` takes the highest final reward instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.base import (
    RNG_PICK,
    RNG_RESAMPLE,
    Decision,
    GroupState,
    Observation,
    PlannedStrategy,
    SearchPlan,
    argmax_reward,
    children_counts,
    group_rng,
    jsonable,
)
from search.potentials import (
    check_potential,
    check_resampler,
    effective_sample_size,
    log_potential,
    multinomial_resample,
    normalize_log_weights,
    resample,
)
from search.registry import register_strategy
from search.schedule import check_scales, option_list

FK_PICKS = ("weights", "reward")


@dataclass
class FKState(GroupState):
    log_weights: np.ndarray | None = None  # float64 [n] log weight accumulated since the last resampling
    path_log_potential: np.ndarray | None = None  # float64 [n] sum of log G_t along each particle's lineage


@register_strategy("fk")
class FK(PlannedStrategy):
    """Options: `resample_scales` (potential scales; None: 0..S-2), `potential`, `lam`, `ess_threshold`
    in (0, 1], `fk_pick` in weights|reward, `resampler` (as tts-var; search.potentials)."""

    def __init__(
        self,
        resample_scales: Sequence[int] | None = None,
        potential: str = "value",
        lam: float = 10.0,
        ess_threshold: float = 0.5,
        fk_pick: str = "weights",
        resampler: str = "multinomial",
    ) -> None:
        self.resample_scales = option_list(resample_scales, "resample_scales")
        self.potential, self.lam = check_potential(potential, lam)
        if isinstance(ess_threshold, bool) or not isinstance(ess_threshold, (int, float)) \
                or not 0 < ess_threshold <= 1:
            raise ValueError(f"ess_threshold: {ess_threshold!r} must be in (0, 1] (a fraction of the batch)")
        if fk_pick not in FK_PICKS:
            raise ValueError(f"fk_pick: {fk_pick!r} is not one of {list(FK_PICKS)}")
        self.ess_threshold = float(ess_threshold)
        self.fk_pick = fk_pick
        self.resampler = check_resampler(resampler)

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        scales = range(num_scales - 1) if self.resample_scales is None else self.resample_scales
        scales = check_scales(scales, num_scales, "resample_scales")
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(scales), scales)

    def init_group(self, prompt_index: int, seed: int) -> FKState:
        base = super().init_group(prompt_index, seed)
        n = base.plan.batch_sizes[0]
        return FKState(base.prompt_index, base.seed, base.plan, base.past_rewards, np.zeros(n), np.zeros(n))

    def decide(self, state: FKState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        n = obs.num_rows
        rewards = np.asarray(obs.rewards, dtype=np.float64)
        log_g = log_potential(rewards, state.past_rewards, self.potential, self.lam)
        log_g = np.where(np.isnan(log_g), -np.inf, log_g)  # NaN reward: weight 0 from now on
        with np.errstate(invalid="ignore"):  # -inf + inf = NaN is a weight-0 row by policy
            log_w = state.log_weights + log_g
            path = state.path_log_potential + log_g
        probs = normalize_log_weights(log_w)
        ess = effective_sample_size(probs)
        history = np.concatenate([state.past_rewards, rewards[:, None]], axis=1)
        resampled = ess < self.ess_threshold * n
        if resampled:
            parents = resample(probs, n, group_rng(state.seed, obs.scale, RNG_RESAMPLE), self.resampler)
            state.log_weights = np.zeros(n)
        else:
            parents = np.arange(n, dtype=np.int64)
            state.log_weights = log_w
        state.path_log_potential = path[parents]
        state.past_rewards = history[parents]
        trace = {
            "row_id": jsonable(obs.row_ids),
            "reward": jsonable(rewards),
            "log_potential": jsonable(log_g),
            "log_weight": jsonable(log_w),
            "weight": jsonable(probs),
            "children": children_counts(parents, n),
        }
        return Decision(parents, trace, {"kind": "fk", "ess": ess, "resampled": bool(resampled)})

    def final_log_weights(self, state: FKState, obs: Observation) -> np.ndarray:
        """Corrected final log weights: log w + lam * r_final - sum of log G_t along the lineage."""
        rewards = self.check_pick(state, obs)
        target = np.zeros_like(rewards) if self.lam == 0 else self.lam * rewards
        target = np.where(np.isnan(rewards), np.nan, target)
        with np.errstate(invalid="ignore"):
            return state.log_weights + target - state.path_log_potential

    def pick(self, state: FKState, obs: Observation) -> int:
        if self.fk_pick == "reward":
            return argmax_reward(self.check_pick(state, obs))
        probs = normalize_log_weights(self.final_log_weights(state, obs))
        return int(multinomial_resample(probs, 1, group_rng(state.seed, obs.scale, RNG_PICK))[0])
