"""Best-of-N: n independent candidates per prompt, no intermediate decisions, highest final reward wins."""

from __future__ import annotations

from search.base import Decision, GroupState, Observation, PlannedStrategy, SearchPlan, argmax_reward
from search.registry import register_strategy


@register_strategy("best-of-n")
class BestOfN(PlannedStrategy):
    """No options: the batch is n rows at every scale; NaN rewards never win (all NaN -> row 0)."""

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(), ())

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        raise RuntimeError("best-of-n has no decision scales; decide() must not be called")

    def pick(self, state: GroupState, obs: Observation) -> int:
        return argmax_reward(self.check_pick(state, obs))
