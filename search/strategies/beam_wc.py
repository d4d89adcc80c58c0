"""Per-scale beam search with w beams x c candidates (Riise et al., arXiv 2510.16751, "Visual Autoregressive
Models Beat Diffusion Models on Inference Time Scaling"), over scales.

Their definition (Fig. 2c): beam search keeps w sequences; at each step it explores c continuations of every
beam and keeps the top w of all w * c by the verifier. Here a step is a scale: the batch is w * c rows at every
scale; after each beam scale the w rows with the highest preview reward are kept and each gets exactly c
children (the engine samples every child with its own random stream, so the c continuations differ). The
highest final reward wins.

How it differs from `beam` (search/strategies/beam.py): `beam` takes a row budget n and a width and shares the
n children out as evenly as possible (the first n % width kept rows get one more), and by default decides only
at TTS-VAR's four decision scales; `beam-wc` decides after every scale but the last by default, as the paper's
per-step search does, and every beam always has exactly c children. With n = w * c and the same scales the two
make identical decisions.
"""

from __future__ import annotations

from collections.abc import Sequence

from search.base import Decision, GroupState, Observation, SearchPlan, is_int
from search.registry import register_strategy
from search.schedule import check_scales
from search.strategies.beam import Beam


@register_strategy("beam-wc")
class BeamWC(Beam):
    """Options: `beams` (w), `candidates` (c), `beam_scales` (None: every scale but the last).

    The batch is w * c rows, at most n (`search.n` is the row budget). Options left at None are derived from
    n: neither given -> w = max(1, n // 2), c = n // w (n = 4: 2 x 2; n = 8: 4 x 2; n = 3: 1 x 3); only c ->
    w = n // c; only w -> c = n // w. An odd n above 3 therefore runs n - 1 rows.

    Called by the engine like every strategy (`search.base.Strategy`): `plan` resolves (w, c) for the job's n,
    `decide` after each beam scale, `pick` after the last scale.
    """

    def __init__(self, beam_scales: Sequence[int] | None = None, beams: int | None = None,
                 candidates: int | None = None) -> None:
        for name, value in (("beams", beams), ("candidates", candidates)):
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"{name}: {value!r} must be a positive integer")
        super().__init__(beam_scales=beam_scales)
        self.beams, self.candidates = beams, candidates
        self._wc: tuple[int, int] | None = None

    def beams_and_candidates(self, n: int) -> tuple[int, int]:
        """(w, c) for a row budget of n; raises naming the option when w * c would exceed n."""
        w, c = self.beams, self.candidates
        if w is None and c is None:
            w = max(1, n // 2)
            c = n // w
        elif w is None:
            w = max(1, n // c)
        elif c is None:
            c = max(1, n // w)
        if w * c > n:
            name = "beams" if self.beams is not None else "candidates"
            raise ValueError(f"{name}: {w} beams x {c} candidates = {w * c} rows exceeds the row budget n = {n}; "
                             f"raise search.n to {w * c} or lower {name}")
        return int(w), int(c)

    def make_plan(self, num_scales: int, n: int) -> SearchPlan:
        w, c = self.beams_and_candidates(n)
        self._wc = (w, c)
        default = range(num_scales - 1)
        scales = check_scales(default if self.beam_scales is None else self.beam_scales, num_scales, "beam_scales")
        return SearchPlan((w * c,) * num_scales, frozenset(), frozenset(scales), scales)

    def width(self, n: int) -> int:
        if self._wc is None:
            raise RuntimeError("BeamWC.plan(num_scales, n) must be called before decide()")
        return self._wc[0]

    def decide(self, state: GroupState, obs: Observation) -> Decision:
        d = super().decide(state, obs)  # keeps the top w; w * c rows / w = exactly c children each
        d.info.update(kind="beam-wc", candidates=self._wc[1])
        return d
