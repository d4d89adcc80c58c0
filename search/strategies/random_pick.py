"""Random sampling: the paper's "N=1" baseline. n candidates, the final one chosen uniformly at random
(seeded by the group), ignoring rewards; with n=1 it is plain sampling. With n>1 its expected quality is the
same as n=1, at n times the cost: use it only to match another strategy's compute."""

from __future__ import annotations

from search.base import RNG_PICK, Decision, GroupState, Observation, PlannedStrategy, SearchPlan, group_rng
from search.registry import register_strategy


@register_strategy("random")
class RandomPick(PlannedStrategy):
    """No options."""

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        return SearchPlan((n,) * num_scales, frozenset(), frozenset(), ())

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        raise RuntimeError("random has no decision scales; decide() must not be called")

    def pick(self, state: GroupState, obs: Observation) -> int:
        self.check_pick(state, obs)
        return int(group_rng(state.seed, obs.scale, RNG_PICK).integers(obs.num_rows))
