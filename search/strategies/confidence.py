"""Reward-free confidence pruning (after ScalingAR, Chen et al., arXiv 2509.26376), over scales.

ScalingAR uses the model's own token entropy as a confidence signal and terminates low-confidence trajectories
early, with no intermediate decoding and no reward model. Here the generator reports, for free, each row's mean
log-probability and mean entropy of the tokens it sampled at a scale (`Observation.log_prob`, `.entropy`, from
`Generator.confidence`). After each `prune_scales` decision a row's confidence is the mean, over the prune
scales seen along its lineage, of `-entropy` (`signal="entropy"`, the default) or of `log_prob`
(`signal="log_prob"`); the `keep` fraction of the live rows with the highest confidence continue (distinct, no
refill; ties to the lower index; NaN is least confident). Prune decisions need neither previews nor rewards, so
they cost nothing but the generator's own forwards. The final image is the one with the highest final reward.

What is not ScalingAR: its profile also fuses a top-1/top-2 margin, spatial-instability and conditional
(guidance) channels into a calibrated state, and its policy also re-schedules guidance strength; it runs on
next-token models, token by token. We keep the plain token-entropy signal, per scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from search.base import (
    Decision,
    GroupState,
    Observation,
    PlannedStrategy,
    SearchPlan,
    argmax_reward,
    children_counts,
    jsonable,
)
from search.registry import register_strategy
from search.schedule import check_scales, default_decisions, option_list
from search.strategies.density import default_critical_scales

SIGNALS = ("entropy", "log_prob")


def default_prune_scales(num_scales: int) -> tuple[int, ...]:
    """TTS-VAR's clustering scales (the early, coarse decisions: search.schedule), where a reward on a preview
    is least reliable; for models too short for those defaults, `default_critical_scales`."""
    try:
        return default_decisions(num_scales)[0]
    except ValueError:
        return default_critical_scales(num_scales)


@dataclass
class ConfidenceState(GroupState):
    past_confidence: np.ndarray | None = None  # float64 [rows, t]: confidence at each earlier prune scale


@register_strategy("confidence")
class Confidence(PlannedStrategy):
    """Options: `prune_scales` (None: `default_prune_scales`), `keep` in (0, 1] (fraction of the live rows kept
    at each prune scale, at least 1), `signal` in entropy|log_prob.

    Called by the engine (`search.base.Strategy`): `decide` after each prune scale with the generator's token
    statistics (no previews, no rewards), `pick` after the last scale with the final rewards.
    """

    def __init__(self, prune_scales: Sequence[int] | None = None, keep: float = 0.75,
                 signal: str = "entropy") -> None:
        self.prune_scales = option_list(prune_scales, "prune_scales")
        if isinstance(keep, bool) or not isinstance(keep, (int, float, np.integer, np.floating)) \
                or not 0 < keep <= 1:
            raise ValueError(f"keep: {keep!r} must be in (0, 1] (the fraction of live rows kept)")
        if signal not in SIGNALS:
            raise ValueError(f"signal: {signal!r} is not one of {list(SIGNALS)}")
        self.keep, self.signal = float(keep), signal

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        default = default_prune_scales(num_scales)
        scales = check_scales(default if self.prune_scales is None else self.prune_scales, num_scales,
                              "prune_scales")
        sizes = [n]
        for k in range(num_scales - 1):
            sizes.append(max(1, math.floor(sizes[-1] * self.keep)) if k in scales else sizes[-1])
        return SearchPlan(tuple(sizes), frozenset(), frozenset(), scales)

    def init_group(self, prompt_index: int, seed: int) -> ConfidenceState:
        base = super().init_group(prompt_index, seed)
        return ConfidenceState(base.prompt_index, base.seed, base.plan, base.past_rewards,
                               np.zeros((base.num_rows, 0)))

    def decide(self, state: ConfidenceState, obs: Observation) -> Decision:
        self.check_decide(state, obs)
        if obs.log_prob is None or obs.entropy is None:
            raise ValueError(f"confidence needs the generator's per-row token statistics after scale {obs.scale}, "
                             "but Observation.log_prob/entropy is None: the model does not report them "
                             "(Generator.confidence); use a reward-based strategy with it")
        n, k = obs.num_rows, state.plan.batch_sizes[obs.scale + 1]
        log_prob = np.asarray(obs.log_prob, dtype=np.float64)
        entropy = np.asarray(obs.entropy, dtype=np.float64)
        conf = -entropy if self.signal == "entropy" else log_prob
        conf = np.where(np.isnan(conf), -np.inf, conf)
        history = np.concatenate([state.past_confidence, conf[:, None]], axis=1)
        with np.errstate(invalid="ignore"):
            score = history.mean(axis=1)
        score = np.where(np.isnan(score), -np.inf, score)
        order = np.argsort(-score, kind="stable")  # most confident first, ties to the lower index
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        parents = np.sort(order[:k]).astype(np.int64)
        state.past_confidence = history[parents]
        state.past_rewards = state.past_rewards[parents]
        trace = {"row_id": jsonable(obs.row_ids), "log_prob": jsonable(log_prob), "entropy": jsonable(entropy),
                 "confidence": jsonable(score), "rank": jsonable(rank), "children": children_counts(parents, n)}
        return Decision(parents, trace, {"kind": "confidence", "signal": self.signal, "kept": int(k)})

    def pick(self, state: ConfidenceState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))
