"""Search strategies for next-scale test-time scaling: which candidate rows continue after a scale.

Numpy only (no torch; tests/test_layering.py checks it): strategies see small per-row arrays and return row
positions. The feature extractors that turn previews into those arrays are image models, so they live beside the
rewards (`rewards.features`: `create_features`, `list_features`, `register_features`).
"""

from search.base import Decision, GroupState, Observation, PlannedStrategy, SearchPlan, Strategy
from search.registry import (
    SearchConfig,
    build_strategy,
    create_strategy,
    list_strategies,
    register_strategy,
)

__all__ = [
    "Decision",
    "GroupState",
    "Observation",
    "PlannedStrategy",
    "SearchConfig",
    "SearchPlan",
    "Strategy",
    "build_strategy",
    "create_strategy",
    "list_strategies",
    "register_strategy",
]
