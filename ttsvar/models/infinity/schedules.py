"""Infinity's dynamic-resolution scale schedules.

Infinity generates a fixed list of (h, w) token grids per aspect-ratio template and pixel budget. The
tables are facts of the released checkpoints (FoundationVision/Infinity, MIT): a template is a
13-entry list of grids, and the 0.06M/0.25M/0.60M/1M budgets use its first 7/10/12/13 entries.
A VAE token covers 16x16 pixels.
"""

from __future__ import annotations

# h/w ratio -> the 13 (h, w) grids of the 1M schedule; the ratio r < 1 templates are the transposes.
_TEMPLATES: dict[float, list[tuple[int, int]]] = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16), (20, 20), (24, 24), (32, 32),
            (40, 40), (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16), (25, 20), (30, 24), (35, 28),
            (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15), (24, 18), (28, 21), (36, 27),
            (48, 36), (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14), (27, 18), (33, 22), (39, 26),
            (48, 32), (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12), (28, 16), (35, 20), (42, 24),
            (56, 32), (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11), (30, 15), (38, 19), (46, 23),
            (60, 30), (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10), (30, 12), (40, 16), (50, 20),
            (65, 26), (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9), (36, 12), (45, 15), (54, 18),
            (72, 24), (90, 30), (111, 37)],
}
PIXEL_BUDGETS: dict[str, int] = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13}
_BUDGET_ALIASES = {"0.6M": "0.60M", "0.06m": "0.06M", "0.25m": "0.25M", "0.6m": "0.60M", "1m": "1M"}


def _all_templates() -> dict[float, list[tuple[int, int]]]:
    out = dict(_TEMPLATES)
    for ratio, grids in _TEMPLATES.items():
        if ratio != 1.0:
            # the official code truncates 1/r to 3 decimals for the transposed templates
            out[int(1 / ratio * 1000) / 1000] = [(w, h) for h, w in grids]
    return out


TEMPLATES = _all_templates()
H_DIV_W_TEMPLATES: tuple[float, ...] = tuple(sorted(TEMPLATES))


def nearest_template(h_div_w: float) -> float:
    """The template ratio closest to `h_div_w` (the official sampler snaps to it the same way)."""
    if not h_div_w > 0:
        raise ValueError(f"h_div_w must be a positive height/width ratio, got {h_div_w!r}")
    return min(H_DIV_W_TEMPLATES, key=lambda t: abs(t - h_div_w))


def scale_schedule(h_div_w: float = 1.0, pixels: str = "1M") -> list[tuple[int, int]]:
    """The (h, w) token grids for an aspect ratio and a pixel budget ('0.06M', '0.25M', '0.60M', '1M')."""
    key = _BUDGET_ALIASES.get(pixels, pixels)
    if key not in PIXEL_BUDGETS:
        raise ValueError(f"pixels={pixels!r} is not a known budget; use one of {sorted(PIXEL_BUDGETS)}")
    return list(TEMPLATES[nearest_template(h_div_w)][: PIXEL_BUDGETS[key]])


def rope_reference(schedule: list[tuple[int, int]]) -> tuple[int, int]:
    """The grid that 2D RoPE positions are normalised to ('star' mode, rope2d_normalized_by_hw=2).

    The released models normalise every schedule of a template to the last grid of that template's 1M
    schedule; a custom schedule (e.g. a tiny testbed model) normalises to its own last grid.
    """
    sched = [tuple(s) for s in schedule]
    for grids in TEMPLATES.values():
        if grids[: len(sched)] == sched:
            return grids[-1]
    return sched[-1]
