"""Driving a step-wise `Generator` in tests: step a state to a scale, and build `Rows` with one seed."""

from ttsvar.core.generator import Rows


def run(gen, state, until=None):
    """Step `state` until scale `until` (default: all of the generator's scales)."""
    until = gen.num_scales if until is None else until
    while state.scale < until:
        state = gen.step(state)
    return state


def rows(prompt_idx, cand, seed=7):
    """`Rows` of these prompt indices and candidate ids, every row with the same seed."""
    return Rows(prompt_idx, cand, [seed] * len(prompt_idx))
