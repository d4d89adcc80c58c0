"""Row bookkeeping shared by the model families' generators (Infinity, VAR).

Both keep classifier-free guidance as one batch of 2B rows, the B cond rows first and the B uncond rows
after them, with per-layer KV caches in the same order; `select`, `concat` and `split` must move a row's
cond and uncond halves together. These helpers hold that layout in one place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..core.generator import Generator, GenState
from .invariant import batch_invariant
from .kv import SharedKV

Caches = SharedKV | None


def check_index(index: Any, num_rows: int) -> np.ndarray:
    """`index` as int64 [K]; IndexError naming the bad entries when one is outside 0..num_rows-1."""
    index = np.asarray(index, dtype=np.int64).reshape(-1)
    if index.size and (index.min() < 0 or index.max() >= num_rows):
        raise IndexError(f"select index out of range for a state of {num_rows} rows: {index.tolist()}")
    return index


def paired(idx: torch.Tensor, num_rows: int, cfg_pairs: bool) -> torch.Tensor:
    """Batch rows of candidate rows `idx`: with CFG pairs, the cond rows then their uncond partners."""
    return torch.cat((idx, idx + num_rows)) if cfg_pairs else idx


def select_caches(caches: Caches, full: torch.Tensor, compact: bool = True) -> Caches:
    """Batch rows `full` of the caches: indices only (`SharedKV.select`); `compact` frees blocks mostly dead."""
    return None if caches is None else caches.select(full, compact)


def check_concat(states: Sequence[Any]) -> None:
    """States to concatenate must exist and share their scale and CFG layout."""
    if not states:
        raise ValueError("concat needs at least one state")
    if len({s.scale for s in states}) != 1 or len({s.cfg_pairs for s in states}) != 1:
        raise ValueError(f"concat needs states at the same scale, got scales {[s.scale for s in states]}")


def cond_then_uncond(xs: Sequence[torch.Tensor], cfg_pairs: bool) -> torch.Tensor:
    """Concatenate batches [2B_i, ...] of cond-then-uncond rows so all cond rows precede all uncond rows."""
    if not cfg_pairs:
        return torch.cat(list(xs))
    halves = [x.chunk(2) for x in xs]
    return torch.cat([h[0] for h in halves] + [h[1] for h in halves])


def concat_caches(states: Sequence[Any], cfg_pairs: bool) -> Caches:
    if all(s.caches is None for s in states):
        return None
    if any(s.caches is None for s in states):
        raise ValueError("concat needs states that all have caches or none")
    sizes = [len(s.caches) for s in states]
    device = states[0].caches.scales[0].block.device if states[0].caches.scales else None
    order = cond_then_uncond(torch.arange(sum(sizes), device=device).split(sizes), cfg_pairs)
    return SharedKV.concat([s.caches for s in states], order)


def split_rows(select: Callable[..., Any], state: Any, sizes: Sequence[int]) -> list[Any]:
    """`split_by_select` with a select that does not compact the caches: the parts share the blocks, so a block
    only one part reads is still read by the others (compacting per part would copy every block)."""
    return split_by_select(lambda st, idx: select(st, idx, None, compact=False), state, sizes)


def split_by_select(select: Callable[[Any, np.ndarray], Any], state: Any, sizes: Sequence[int]) -> list[Any]:
    """Consecutive runs of `sizes` rows, each taken with the generator's `select`."""
    if sum(sizes) != len(state.rows) or any(s < 0 for s in sizes):
        raise ValueError(f"split sizes {list(sizes)} must be >= 0 and sum to {len(state.rows)} rows")
    out, start = [], 0
    for n in sizes:
        out.append(select(state, np.arange(start, start + n)))
        start += n
    return out


def to_unit_images(img: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """Decoded images [B, 3, H, W] in [-1, 1] -> float [0, 1], resized to `size` x `size` when given."""
    img = ((img.float() + 1) / 2).clamp_(0, 1)
    if size is not None and tuple(img.shape[-2:]) != (size, size):
        img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        img = img.clamp_(0, 1)
    return img


def check_finished(scale: int, num_scales: int) -> None:
    if scale != num_scales:
        raise ValueError(f"finish() needs all {num_scales} scales sampled, state has {scale}")


def row_hashes(x: torch.Tensor) -> list[bytes]:
    """A 16-byte digest per row of x [B, ...]: equal rows (duplicated paths) have equal keys."""
    flat = x.flatten(1).float().cpu().numpy()
    return [hashlib.blake2b(r.tobytes(), digest_size=16).digest() for r in flat]


def gather_rows(x: torch.Tensor | None, idx: torch.Tensor) -> torch.Tensor | None:
    """Per-candidate-row values (e.g. a state's `confidence`) of rows `idx`, or None when there are none."""
    return None if x is None else x[idx]


def concat_rows(xs: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Concatenate per-candidate-row values of states; None unless every state has them."""
    return None if any(x is None for x in xs) else torch.cat(list(xs))


class PairedRowsGenerator(Generator):
    """The part of a built-in family's generator (Infinity, VAR) that only moves rows: CFG as cond/uncond
    pairs, KV caches in `SharedKV` blocks, the batch-invariant mode around every forward.

    A subclass holds its model and implements `start`, `_step` (one scale, already inside the batch-invariant
    mode), `_preview`, `_select` (with `compact`), `concat` and `row_keys`; its state has `caches`, `scale`
    and `cfg_pairs`. `set_sampling` must set `cfg_list`.
    """

    cfg_list: list[float]

    def _cfg_pairs(self) -> bool:
        # one answer for all scales: if any scale guides, the unconditional rows need their caches from scale 0
        return any(c != 1 for c in self.cfg_list)

    def forward_rows_per_candidate(self, k: int) -> int:
        return 2 if self._cfg_pairs() else 1

    @torch.inference_mode()
    def step(self, state: GenState) -> GenState:
        with batch_invariant(self.batch_invariant):
            return self._step(state)

    def _step(self, state: GenState) -> GenState:
        raise NotImplementedError

    @torch.inference_mode()
    def preview(self, state: GenState, size: int | None = None, rows=None, cheap: bool = False) -> torch.Tensor:
        with batch_invariant(self.batch_invariant):
            return self._preview(state, size, rows, cheap)

    def _preview(self, state: GenState, size: int | None, rows, cheap: bool) -> torch.Tensor:
        raise NotImplementedError

    def finish(self, state: GenState, rows=None) -> torch.Tensor:
        check_finished(state.scale, self.num_scales)
        return self.preview(state, rows=rows)

    def kv_rows(self, state: GenState) -> list[torch.Tensor]:
        """Every block's keys then values as each row sees them, [R,H,L,hd] (tests and benchmarks)."""
        kv = state.caches
        return [] if kv is None else [t for i in range(kv.num_layers) for t in kv.layer(i)]

    def select(self, state: GenState, index, candidate_id: np.ndarray | None = None) -> GenState:
        return self._select(state, index, candidate_id)

    def _select(self, state: GenState, index, candidate_id: np.ndarray | None = None,
                compact: bool = True) -> GenState:
        """`select`; duplicates share their caches' blocks (`ttsvar.models.kv`), `compact` frees dead ones."""
        raise NotImplementedError

    def split(self, state: GenState, sizes: Sequence[int]) -> list[GenState]:
        return split_rows(self._select, state, sizes)
