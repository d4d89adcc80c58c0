"""Self-attention keys and values of a batch of candidate rows, kept per scale in blocks that rows share.

A search duplicates rows (resampling with replacement keeps a good path several times) and drops others; the
copies share their whole history. Copying each row's cache on every `select` (what a plain [R,H,L,hd] tensor per
layer forces) stores every duplicate's history again. Here, as in vLLM's prefix sharing:

* a `KVBlock` holds one scale's keys and values (every layer) for the rows one `step` computed; it is never
  written after that step, so any number of rows can point at the same block row (copy-on-write without
  writes: a diverging copy only ever adds new blocks);
* each scale keeps, per row, which block and which row of it the row reads (`ScaleKV.block`, `.row`);
* `select` remaps those indices (duplicates cost an index entry per scale, no tensor copy), drops blocks no row
  reads any more, and compacts a scale whose blocks have at most half of their rows still read (a copy of the
  unique surviving rows only, so memory stays within 2x of what the live rows need);
* `concat` joins the block lists (the same block, shared by chunks of one batch, is kept once) and the indices;
* attention reads a layer's past as one [R,H,L_past + l,hd] tensor built for that layer only (`with_past`), so
  the full per-row cache exists for one layer at a time, never for the whole model.

The rows are the transformer's batch rows: with classifier-free guidance the B cond rows then the B uncond rows
(`ttsvar.models.rows`), so the caller passes the paired index. Infinity and VAR both keep their caches here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

KV = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, eq=False)
class KVBlock:
    """One scale's keys and values of the rows one step computed: per layer (k, v), each [U,H,l,hd]."""

    layers: list[KV]

    @property
    def num_rows(self) -> int:
        return self.layers[0][0].shape[0]

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


@dataclass(frozen=True, eq=False)
class ScaleKV:
    """Where each of R rows reads one scale's keys and values: row `row[r]` of `blocks[block[r]]`."""

    blocks: tuple[KVBlock, ...]
    block: torch.Tensor  # long [R]
    row: torch.Tensor  # long [R]

    def gather(self, layer: int) -> KV:
        """(k, v) [R,H,l,hd] of one layer, in row order (a copy)."""
        return self._take(layer, self.block, self.row)

    def _take(self, layer: int, block: torch.Tensor, row: torch.Tensor) -> KV:
        if len(self.blocks) == 1:
            k, v = self.blocks[0].layers[layer]
            return k.index_select(0, row), v.index_select(0, row)
        # rows of several blocks (chunks stepped apart): the blocks of one layer joined for this read only
        flat = self._offsets()[block] + row
        k = torch.cat([b.layers[layer][0] for b in self.blocks]).index_select(0, flat)
        v = torch.cat([b.layers[layer][1] for b in self.blocks]).index_select(0, flat)
        return k, v

    def _offsets(self) -> torch.Tensor:
        sizes = torch.tensor([0] + [b.num_rows for b in self.blocks[:-1]], device=self.block.device)
        return sizes.cumsum(0)

    def select(self, index: torch.Tensor, compact: bool) -> ScaleKV:
        block, row = self.block[index], self.row[index]
        used = torch.zeros(len(self.blocks), dtype=torch.bool, device=block.device)
        used[block] = True
        if not bool(used.all()):  # forget blocks no row reads any more (nothing is copied)
            blocks = tuple(b for b, u in zip(self.blocks, used.tolist()) if u)
            block = (used.long().cumsum(0) - 1)[block]
        else:
            blocks = self.blocks
        out = ScaleKV(blocks, block, row)
        return out.compacted() if compact else out

    def compacted(self) -> ScaleKV:
        """This scale with its unique read rows copied into one block, if at most half of the stored rows are read
        (else itself): the copy frees at least as much as it allocates."""
        stored = sum(b.num_rows for b in self.blocks)
        flat = self._offsets()[self.block] + self.row
        uniq, inverse = torch.unique(flat, return_inverse=True)
        if 2 * len(uniq) > stored:
            return self
        sizes = torch.tensor([b.num_rows for b in self.blocks], device=flat.device)
        block = torch.searchsorted(sizes.cumsum(0), uniq, right=True)  # the block of each unique row
        row = uniq - self._offsets()[block]
        layers = [self._take(i, block, row) for i in range(len(self.blocks[0].layers))]
        return ScaleKV((KVBlock(layers),), torch.zeros_like(inverse), inverse)


def _owned(t: torch.Tensor) -> torch.Tensor:
    """t itself if it is all of its storage, else a copy of just it. A model's values come out of its fused qkv
    projection as a view ([B,L,3,H,hd] permuted and unbound), and a block that kept that view would keep the
    queries and the pre-normalisation keys alive with it: 3x the values' bytes for as long as any row reads them.
    Reads copy rows out (`ScaleKV.gather`), so the copy changes no value anyone sees."""
    if t.is_contiguous() and t.untyped_storage().nbytes() == t.numel() * t.element_size():
        return t
    return t.clone(memory_format=torch.contiguous_format)


class SharedKV:
    """The past keys and values of R rows, one `ScaleKV` per sampled scale (module docstring). Immutable: every
    operation returns a new object that shares the blocks."""

    def __init__(self, scales: Sequence[ScaleKV], num_rows: int):
        self.scales = tuple(scales)
        self.num_rows = int(num_rows)

    def __len__(self) -> int:
        return self.num_rows

    @classmethod
    def empty(cls, num_rows: int) -> SharedKV:
        """No scale yet (what `extend` starts from)."""
        return cls((), num_rows)

    def extend(self, layers: list[KV]) -> SharedKV:
        """Add a scale: per layer (k, v) [R,H,l,hd] of this step's tokens, row r read by row r."""
        R = layers[0][0].shape[0]
        if R != self.num_rows:
            raise ValueError(f"new keys/values have {R} rows, the cache {self.num_rows}")
        idx = torch.arange(R, device=layers[0][0].device)
        owned = [(_owned(k), _owned(v)) for k, v in layers]
        return SharedKV((*self.scales, ScaleKV((KVBlock(owned),), torch.zeros_like(idx), idx)), R)

    def with_past(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> KV:
        """This step's k, v [R,H,l,hd] of `layer` preceded by every past scale's: [R,H,L_past + l,hd] each."""
        ks, vs = [], []
        for s in self.scales:
            pk, pv = s.gather(layer)
            ks.append(pk)
            vs.append(pv)
        return torch.cat((*ks, k), dim=2), torch.cat((*vs, v), dim=2)

    def layer(self, layer: int) -> KV:
        """Every past scale's (k, v) of `layer` as each row sees them, [R,H,L_past,hd] (tests, benchmarks)."""
        parts = [s.gather(layer) for s in self.scales]
        return torch.cat([p[0] for p in parts], dim=2), torch.cat([p[1] for p in parts], dim=2)

    @property
    def num_layers(self) -> int:
        return len(self.scales[0].blocks[0].layers) if self.scales else 0

    def select(self, index: torch.Tensor, compact: bool = True) -> SharedKV:
        """Rows `index` (long [K], duplicates allowed, any order): indices remapped; `compact` also copies the
        unique surviving rows of a scale whose stored rows are at most half read (`ScaleKV.compacted`)."""
        return SharedKV([s.select(index, compact) for s in self.scales], len(index))

    @staticmethod
    def concat(parts: Sequence[SharedKV], order: torch.Tensor) -> SharedKV:
        """Rows of `parts` one after another, then taken in `order` (positions into that concatenation, e.g. all
        cond rows first). A block several parts read (chunks of one batch) is kept once."""
        if len({len(p.scales) for p in parts}) != 1:
            raise ValueError(f"concat needs caches of the same scales, got {[len(p.scales) for p in parts]}")
        scales = []
        for i in range(len(parts[0].scales)):
            blocks: list[KVBlock] = []
            where: dict[int, int] = {}
            ids, rows = [], []
            for p in parts:
                s = p.scales[i]
                remap = []
                for b in s.blocks:
                    if id(b) not in where:
                        where[id(b)] = len(blocks)
                        blocks.append(b)
                    remap.append(where[id(b)])
                ids.append(torch.tensor(remap, device=s.block.device)[s.block])
                rows.append(s.row)
            scales.append(ScaleKV(tuple(blocks), torch.cat(ids)[order], torch.cat(rows)[order]))
        return SharedKV(scales, len(order))

    def blocks(self) -> list[KVBlock]:
        """The distinct blocks these rows read."""
        seen: dict[int, KVBlock] = {}
        for s in self.scales:
            for b in s.blocks:
                seen.setdefault(id(b), b)
        return list(seen.values())

    def nbytes(self) -> int:
        """Bytes of the blocks these rows read (each once, however many rows share it)."""
        return sum(b.nbytes for b in self.blocks())

    def copied_nbytes(self) -> int:
        """Bytes the same rows would hold with a private copy of their whole history each (the layout before
        shared blocks): the yardstick of `bench/bench_kv.py`."""
        total = 0
        for s in self.scales:
            per_row = s.blocks[0].nbytes // s.blocks[0].num_rows
            total += per_row * self.num_rows
        return total


def total_nbytes(caches: Sequence[SharedKV | None]) -> int:
    """Bytes of the distinct blocks several states read together (chunks of one unit share blocks)."""
    seen: dict[int, KVBlock] = {}
    for c in caches:
        if c is not None:
            for b in c.blocks():
                seen.setdefault(id(b), b)
    return sum(b.nbytes for b in seen.values())
