"""The contract between the engine and the search strategies.

The engine owns every model tensor; a strategy sees only small per-row numpy arrays for ONE prompt group
(features of decoded previews, rewards, row ids) and answers with row positions. The call order is:

    plan = strategy.plan(num_scales, n)             # once per job, before any generation
    state = strategy.init_group(prompt_index, seed) # once per prompt group
    for scale in range(num_scales):
        ... engine generates scale `scale` for plan.batch_sizes[scale] rows ...
        if scale in plan.decision_scales:
            decision = strategy.decide(state, Observation(...))  # rows -> decision.parents
    best = strategy.pick(state, Observation(final rewards))      # after the last scale

Strategies never import torch: everything here is numpy and plain dataclasses, so a group's state can be
pickled and moved between processes.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

# Purposes mixed into the per-decision RNG seed, so two random choices made at the same scale (e.g. a
# k-means++ seeding and a resampling) never share a stream.
RNG_KMEANS = 1
RNG_RESAMPLE = 2
RNG_PICK = 3
RNG_DENSITY = 4


def group_rng(seed: int, scale: int, purpose: int) -> np.random.Generator:
    """The generator for one random choice of one group: a function of (group seed, scale, purpose) only,
    so results do not depend on which other groups run, in which order, or in which process."""
    return np.random.default_rng([seed, scale, purpose])


@dataclass(frozen=True)
class SearchPlan:
    """What the engine must do for every prompt group of a job; returned by `Strategy.plan`.

    Invariant: `batch_sizes[k + 1] != batch_sizes[k]` only if `k in decision_scales` (the batch changes
    only through a decision). Violations raise ValueError naming the field.
    """

    batch_sizes: tuple[int, ...]  # live rows per prompt group at each scale index 0..S-1
    feature_scales: frozenset[int]  # decisions after these scale indices need preview features
    reward_scales: frozenset[int]  # decisions after these scale indices need preview rewards
    decision_scales: tuple[int, ...]  # sorted scale indices after which decide() is called (never the last)

    def __post_init__(self) -> None:
        sizes = tuple(self.batch_sizes)
        if not sizes:
            raise ValueError("batch_sizes: empty; a plan needs one batch size per scale")
        for k, b in enumerate(sizes):
            if not is_int(b) or b < 1:
                raise ValueError(f"batch_sizes[{k}] = {b!r}: every scale needs a positive number of rows")
        num_scales = len(sizes)
        decisions = tuple(self.decision_scales)
        for k in decisions:
            if not is_int(k) or not 0 <= k <= num_scales - 2:
                raise ValueError(
                    f"decision_scales: {k!r} is not a scale index in [0, {num_scales - 2}] "
                    f"(no decision after the last scale {num_scales - 1})"
                )
        if list(decisions) != sorted(set(decisions)):
            raise ValueError(f"decision_scales: {decisions} must be strictly increasing")
        for name in ("feature_scales", "reward_scales"):
            extra = sorted(set(getattr(self, name)) - set(decisions))
            if extra:
                raise ValueError(f"{name}: {extra} are not in decision_scales {decisions}")
        for k in range(num_scales - 1):
            if sizes[k + 1] != sizes[k] and k not in decisions:
                raise ValueError(
                    f"batch_sizes: the batch changes from {sizes[k]} to {sizes[k + 1]} after scale {k}, "
                    f"which is not in decision_scales {decisions}"
                )
        object.__setattr__(self, "batch_sizes", tuple(int(b) for b in sizes))
        object.__setattr__(self, "decision_scales", tuple(int(k) for k in decisions))
        object.__setattr__(self, "feature_scales", frozenset(int(k) for k in self.feature_scales))
        object.__setattr__(self, "reward_scales", frozenset(int(k) for k in self.reward_scales))

    @property
    def num_scales(self) -> int:
        return len(self.batch_sizes)

    @property
    def final_batch(self) -> int:
        """Number of final candidates per group, among which `pick` chooses."""
        return self.batch_sizes[-1]


@dataclass
class Observation:
    """What the engine hands to a strategy for ONE prompt group after a scale."""

    scale: int  # index of the scale just completed (0-based)
    num_scales: int
    row_ids: np.ndarray  # int64 [n] ids of the live rows (for traces)
    rewards: np.ndarray | None  # float32 [n] (None if not requested at this scale); may hold NaN/inf
    features: np.ndarray | None  # float32 [n, F] (None if not requested)
    # Free per-row arrays from the generator (no decode, no reward call): the mean log-probability and the mean
    # entropy (nats per token) of the tokens each row sampled at THIS scale, under the distribution it was
    # sampled from (after guidance and temperature, before top-k/top-p). None when the generator does not
    # report them (`Generator.confidence`).
    log_prob: np.ndarray | None = None  # float32 [n]
    entropy: np.ndarray | None = None  # float32 [n]

    def __post_init__(self) -> None:
        self.row_ids = np.asarray(self.row_ids)
        if self.row_ids.ndim != 1 or not np.issubdtype(self.row_ids.dtype, np.integer):
            raise ValueError(f"Observation.row_ids must be a 1-D integer array, got {self.row_ids.dtype} "
                             f"{self.row_ids.shape}")
        n = len(self.row_ids)
        if self.rewards is not None:
            self.rewards = np.asarray(self.rewards)
            if self.rewards.shape != (n,):
                raise ValueError(f"Observation.rewards has shape {self.rewards.shape}, expected ({n},) "
                                 "(one reward per live row)")
        if self.features is not None:
            self.features = np.asarray(self.features)
            if self.features.ndim != 2 or self.features.shape[0] != n:
                raise ValueError(f"Observation.features has shape {self.features.shape}, expected ({n}, F) "
                                 "(one feature vector per live row)")
        for name in ("log_prob", "entropy"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value)
                if value.shape != (n,):
                    raise ValueError(f"Observation.{name} has shape {value.shape}, expected ({n},) "
                                     "(one value per live row)")
                setattr(self, name, value)

    @property
    def num_rows(self) -> int:
        return len(self.row_ids)


@dataclass
class Decision:
    """A strategy's answer after a decision scale."""

    parents: np.ndarray  # int64 [batch_sizes[scale+1]] positions into Observation rows (duplicates allowed)
    trace: dict[str, list]  # per INPUT row (length n), JSON-serialisable: cluster, reward, weight, ...
    info: dict[str, Any] = field(default_factory=dict)  # group-level facts (kind, ess, resampled), JSON-able


@dataclass
class GroupState:
    """Per-group state shared by the built-in strategies. Plain data, picklable.

    `past_rewards[i]` holds the rewards seen at earlier reward scales along live row i's lineage, so
    history-dependent potentials (diff, max, sum) follow rows through every reordering by `parents`.
    """

    prompt_index: int
    seed: int
    plan: SearchPlan
    past_rewards: np.ndarray  # float64 [rows, t]

    @property
    def num_rows(self) -> int:
        return self.past_rewards.shape[0]


class Strategy(ABC):
    """A search strategy. Subclasses hold only their options; all per-group data lives in the state.

    Who calls what and when:
      * `plan(num_scales, n)`: the engine, once per job before any generation.
      * `init_group(prompt_index, seed)`: the engine, once per prompt group, after `plan`.
      * `decide(state, obs)`: the engine, after each scale in `plan.decision_scales`; updates `state` in
        place (history reordered by the returned parents).
      * `pick(state, obs)`: the engine, after the last scale, with the final rewards; returns the index of
        the final image among the final rows.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def plan(self, num_scales: int, n: int) -> SearchPlan: ...

    @abstractmethod
    def init_group(self, prompt_index: int, seed: int) -> Any: ...

    @abstractmethod
    def decide(self, state: Any, obs: Observation) -> Decision: ...

    @abstractmethod
    def pick(self, state: Any, obs: Observation) -> int: ...


class PlannedStrategy(Strategy):
    """Base for the built-in strategies: remembers the last plan, copies it into each group state, and
    checks every observation against it so an engine bug fails loudly at the first wrong call."""

    _plan: SearchPlan | None = None

    def plan(self, num_scales: int, n: int) -> SearchPlan:
        if not is_int(num_scales) or num_scales < 1:
            raise ValueError(f"num_scales must be a positive integer, got {num_scales!r}")
        if not is_int(n) or n < 1:
            raise ValueError(f"n must be a positive integer (rows per unit of the batch schedule), got {n!r}")
        self._plan = self.make_plan(int(num_scales), int(n))
        return self._plan

    @abstractmethod
    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        """Build the plan for validated `num_scales` and `n`."""

    def init_group(self, prompt_index: int, seed: int) -> GroupState:
        plan = self.require_plan()
        if not is_int(seed) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        return GroupState(int(prompt_index), int(seed), plan, np.zeros((plan.batch_sizes[0], 0)))

    def require_plan(self) -> SearchPlan:
        if self._plan is None:
            raise RuntimeError(f"{type(self).__name__}.plan(num_scales, n) must be called before "
                               "init_group()")
        return self._plan

    def check_decide(self, state: GroupState, obs: Observation) -> None:
        plan = state.plan
        if obs.num_scales != plan.num_scales:
            raise ValueError(f"Observation.num_scales = {obs.num_scales} but the plan has {plan.num_scales}")
        if obs.scale not in plan.decision_scales:
            raise ValueError(f"decide() called after scale {obs.scale}, which is not a decision scale "
                             f"{plan.decision_scales}")
        self._check_rows(state, obs, plan.batch_sizes[obs.scale])
        if obs.scale in plan.feature_scales and obs.features is None:
            raise ValueError(f"the plan needs preview features after scale {obs.scale} but "
                             "Observation.features is None")
        if obs.scale in plan.reward_scales and obs.rewards is None:
            raise ValueError(f"the plan needs preview rewards after scale {obs.scale} but "
                             "Observation.rewards is None")

    def check_pick(self, state: GroupState, obs: Observation) -> np.ndarray:
        """Validate a final observation and return its rewards as float64."""
        plan = state.plan
        if obs.scale != plan.num_scales - 1:
            raise ValueError(f"pick() expects the last scale {plan.num_scales - 1}, got scale {obs.scale}")
        self._check_rows(state, obs, plan.final_batch)
        if obs.rewards is None:
            raise ValueError("pick() needs the rewards of the final images; Observation.rewards is None")
        return np.asarray(obs.rewards, dtype=np.float64)

    @staticmethod
    def _check_rows(state: GroupState, obs: Observation, expected: int) -> None:
        if obs.num_rows != expected or state.num_rows != expected:
            raise ValueError(f"after scale {obs.scale} the plan has {expected} live rows, but the "
                             f"observation has {obs.num_rows} and the group state {state.num_rows}")


def argmax_reward(rewards: np.ndarray) -> int:
    """Index of the highest reward; NaN never wins, +inf always does, ties go to the lowest index, and an
    all-NaN vector gives 0."""
    r = np.asarray(rewards, dtype=np.float64)
    if r.size == 0:
        raise ValueError("argmax_reward: no candidates")
    r = np.where(np.isnan(r), -np.inf, r)
    return int(np.argmax(r))


def children_counts(parents: np.ndarray, n: int) -> list[int]:
    return np.bincount(parents, minlength=n).tolist()


def jsonable(values: np.ndarray) -> list:
    """A JSON-serialisable list: ints and bools as is, finite floats as floats, NaN/inf as "nan"/"inf"/"-inf"
    (strict JSON has no non-finite numbers)."""
    a = np.asarray(values)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a.tolist()
    return [float(x) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))
            for x in a.astype(np.float64).tolist()]


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
