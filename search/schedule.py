"""The adaptive descending batch schedule and where its decisions fall, for any number of scales.

Facts from the official code (ali-vilab/TTS-VAR, `tts-var/utils_model.py`, `run.bash`): `--bs_sis 8 8 6 6 6 4
2 2 2 1 1 1 1`, clustering after scales `--extract_sis 2 5`, resampling after `--resample_sis 6 9`. Entry k of
`bs_sis` is the number of rows KEPT by the decision after scale k (the batch that generates scale k+1); the
batch only changes where a decision happens, and entries at other scales are never read. So the rows that
generate each of the 13 scales are 8,8,8,6,6,6,4,2,2,2,1,1,1. We keep those semantics for `batch_schedule`.

Other numbers of scales (VAR: 10, the testbed: 6) use the 13-scale default mapped by the fraction of
scales completed: a paper decision after scale k (0-based, of 13) moves to after scale
`floor((k + 1) * S / 13 + 0.5) - 1`, clipped to [1, S-2] (scale 0 is a 1x1 token map, too coarse for any
decision), then pushed forward by one where it would coincide with the previous decision. Each mapped decision
keeps the batch the paper keeps after it (6, 4, 2, 1 for clusters 2, 5 and resamples 6, 9).
Results: S=13 -> clusters (2, 5), resamples (6, 9); S=10 -> (1, 4), (5, 7); S=6 -> (1, 2), (3, 4).

A model that knows its token-grid sides can map by resolution instead (`map_paper_by_side`, what the VAR models
use through their per-model defaults): each paper decision falls after the scale whose side, as a fraction of
the last side, is nearest (in log) to the paper's (Infinity 1M at 1:1 decides after sides 4, 12, 16, 32 of 64),
with the same clipping and push-forward. So the previews and features a decision sees are as coarse as in the
paper. VAR 256 px (sides 1,2,3,4,5,6,8,10,13,16) -> clusters (1, 2), resamples (3, 6); VAR 512 px
(1,2,3,4,6,9,13,18,24,32) -> (1, 4), (5, 7).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from search.base import is_int

PAPER_NUM_SCALES = 13
INFINITY_1M_SCHEDULE = (8, 8, 6, 6, 6, 4, 2, 2, 2, 1, 1, 1, 1)  # rows kept after each scale, x n
PAPER_CLUSTER_SCALES = (2, 5)
PAPER_RESAMPLE_SCALES = (6, 9)
INFINITY_1M_SIDES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)  # token-grid sides of the paper's 13 scales


def map_paper_scales(scales: Sequence[int], num_scales: int) -> tuple[int, ...]:
    """Map sorted 13-scale decision indices onto `num_scales` scales by the rule in the module docstring."""
    if num_scales == PAPER_NUM_SCALES:
        return tuple(scales)
    return _fit([math.floor((k + 1) * num_scales / PAPER_NUM_SCALES + 0.5) - 1 for k in sorted(scales)], num_scales)


def _fit(js: Sequence[int], num_scales: int) -> tuple[int, ...]:
    out: list[int] = []
    for j in js:
        j = max(j, 1, out[-1] + 1 if out else 1)
        if j > num_scales - 2:
            raise ValueError(
                f"the default TTS-VAR decisions do not fit into {num_scales} scales (they need distinct "
                f"scales in [1, {num_scales - 2}]); set batch_schedule, cluster_scales and resample_scales "
                "explicitly"
            )
        out.append(j)
    return tuple(out)


def map_paper_by_side(sides: Sequence[int]) -> dict[str, tuple[int, ...]]:
    """TTS-VAR's default (`batch_schedule`, `cluster_scales`, `resample_scales`) for a model whose scales have
    token-grid sides `sides` (coarse to fine), mapped by resolution (see the module docstring)."""
    sides = [int(x) for x in sides]
    S = len(sides)
    paper = PAPER_CLUSTER_SCALES + PAPER_RESAMPLE_SCALES
    js = []
    for k in paper:
        f = INFINITY_1M_SIDES[k] / INFINITY_1M_SIDES[-1]
        js.append(min(range(S), key=lambda j: (abs(math.log(sides[j] / sides[-1] / f)), j)))
    mapped = _fit(sorted(js), S)
    kept_after = dict(zip(mapped, (INFINITY_1M_SCHEDULE[k] for k in paper)))
    schedule, current = [], INFINITY_1M_SCHEDULE[0]
    for k in range(S):
        current = kept_after.get(k, current)
        schedule.append(current)
    nc = len(PAPER_CLUSTER_SCALES)
    return {"batch_schedule": tuple(schedule), "cluster_scales": mapped[:nc], "resample_scales": mapped[nc:]}


# which of a model's TTS-VAR options each strategy of the family reads; `value` shares the schedule and both
# decision scales but not lam (its lam weighs the learned V_k, not the reward)
FAMILY_KEYS = {
    "tts-var": ("batch_schedule", "cluster_scales", "resample_scales", "lam", "resampler"),
    "cluster-only": ("batch_schedule", "cluster_scales"),
    "resample-only": ("batch_schedule", "resample_scales", "lam", "resampler"),
    "value": ("batch_schedule", "cluster_scales", "resample_scales", "resampler"),
}


def tts_var_family(options: dict) -> dict[str, dict]:
    """A model's own TTS-VAR options (`ModelDefaults.search`) spread over TTS-VAR, its two ablations and `value`,
    so that comparing them changes only the decisions, never the schedule."""
    return {name: {k: options[k] for k in keys if k in options} for name, keys in FAMILY_KEYS.items()}


def default_decisions(num_scales: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(cluster_scales, resample_scales) of the paper's default, mapped onto `num_scales` scales."""
    mapped = map_paper_scales(PAPER_CLUSTER_SCALES + PAPER_RESAMPLE_SCALES, num_scales)
    nc = len(PAPER_CLUSTER_SCALES)
    return mapped[:nc], mapped[nc:]


def default_batch_schedule(num_scales: int) -> tuple[int, ...]:
    """The paper's `bs_sis` (rows kept after each scale, as multiples of n) adapted to `num_scales` scales."""
    if num_scales == PAPER_NUM_SCALES:
        return INFINITY_1M_SCHEDULE
    paper = PAPER_CLUSTER_SCALES + PAPER_RESAMPLE_SCALES
    mapped = map_paper_scales(paper, num_scales)
    kept_after = dict(zip(mapped, (INFINITY_1M_SCHEDULE[k] for k in paper)))
    out, current = [], INFINITY_1M_SCHEDULE[0]
    for k in range(num_scales):
        current = kept_after.get(k, current)
        out.append(current)
    return tuple(out)


def check_schedule(schedule: Sequence[int], num_scales: int, name: str = "batch_schedule") -> tuple[int, ...]:
    """Validate a batch schedule (positive, non-increasing, one entry per scale)."""
    if isinstance(schedule, (str, bytes, int, Mapping)) or not hasattr(schedule, "__iter__"):
        raise ValueError(f"{name}: expected a list with one multiplier per scale, got {schedule!r}")
    sched = tuple(schedule)
    if len(sched) != num_scales:
        raise ValueError(f"{name}: has {len(sched)} entries but the model has {num_scales} scales "
                         "(give one multiplier per scale)")
    for k, b in enumerate(sched):
        if not is_int(b) or b < 1:
            raise ValueError(f"{name}[{k}] = {b!r}: entries must be positive integers (multiples of n)")
    for k in range(1, num_scales):
        if sched[k] > sched[k - 1]:
            raise ValueError(f"{name}: increases from {sched[k - 1]} to {sched[k]} at scale {k}; "
                             "the schedule must be non-increasing (rows cannot be created mid-generation)")
    return tuple(int(b) for b in sched)


def option_list(value: Any, name: str, what: str = "a list of scale indices") -> list | None:
    """A list option as a strategy's constructor takes it: None stays None; a list (or tuple) is copied; a
    scalar, string or mapping is a `ValueError` naming the option, before any model loads."""
    if value is None:
        return None
    if isinstance(value, (str, bytes, Mapping)) or not hasattr(value, "__iter__"):
        raise ValueError(f"{name}: expected {what}, got {value!r}")
    return list(value)


def check_scales(scales: Sequence[int], num_scales: int, name: str) -> tuple[int, ...]:
    """Validate a list of decision scales: integers in [0, S-2], no duplicates; returned sorted."""
    if isinstance(scales, (str, bytes, int, Mapping)) or not hasattr(scales, "__iter__"):
        raise ValueError(f"{name}: expected a list of scale indices, got {scales!r}")
    out = []
    for k in list(scales):
        if not is_int(k):
            raise ValueError(f"{name}: {k!r} is not an integer scale index")
        if not 0 <= k <= num_scales - 2:
            raise ValueError(f"{name}: scale {k} is out of range [0, {num_scales - 2}] for {num_scales} "
                             "scales (decisions happen after a scale, never after the last one)")
        out.append(int(k))
    if len(set(out)) != len(out):
        raise ValueError(f"{name}: {list(scales)} lists a scale twice")
    return tuple(sorted(out))


def live_batch_sizes(schedule: Sequence[int], decisions: Sequence[int], n: int) -> tuple[int, ...]:
    """Rows alive at each scale: `schedule[0] * n` at scale 0; after a decision at scale k the batch becomes
    `schedule[k] * n`; elsewhere it carries over (official semantics, see module docstring)."""
    ds = set(decisions)
    sizes = [schedule[0] * n]
    for k in range(len(schedule) - 1):
        sizes.append(schedule[k] * n if k in ds else sizes[-1])
    return tuple(sizes)
