"""Shared KV blocks (`ttsvar.models.kv`): rows read the same bits as private copies would hold, duplicates share
blocks instead of copying them, dead blocks are dropped or compacted, concat keeps a shared block once. The
generators' own checks (teacher-forced logits against cached ones, select equivalence, concat/split) are in
tests/test_generator.py, tests/test_var_model.py and tests/test_infinity_model.py."""

import numpy as np
import torch

from ttsvar.core.generator import Rows, SamplingConfig
from ttsvar.models.kv import SharedKV, total_nbytes
from ttsvar.models.var.builders import tiny_random as var_tiny


def scale(R: int, tokens: int, seed: int, layers: int = 2) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(R, 2, tokens, 4, generator=g), torch.randn(R, 2, tokens, 4, generator=g))
            for _ in range(layers)]


def private(scales: list, index: list[int]) -> list[torch.Tensor]:
    """What rows `index` would hold as private copies: per layer k then v, [K,H,L,hd]."""
    out = []
    for i in range(len(scales[0])):
        for j in (0, 1):
            out.append(torch.cat([s[i][j] for s in scales], dim=2)[index])
    return out


def views(kv: SharedKV) -> list[torch.Tensor]:
    return [t for i in range(kv.num_layers) for t in kv.layer(i)]


def test_duplicates_share_blocks_and_read_their_parents_bits():
    s0, s1 = scale(4, 1, 0), scale(4, 3, 1)
    kv = SharedKV.empty(4).extend(s0).extend(s1)
    picked = kv.select(torch.tensor([2, 2, 2, 0, 3]))  # 3 of 4 rows live: no compaction
    assert all(torch.equal(a, b) for a, b in zip(views(picked), private([s0, s1], [2, 2, 2, 0, 3]), strict=True))
    assert {id(b) for b in picked.blocks()} == {id(b) for b in kv.blocks()}  # no tensor was copied
    assert picked.nbytes() == kv.nbytes() and picked.copied_nbytes() == kv.copied_nbytes() * 5 // 4
    # a copy that diverges adds its own block for the next scale; the shared past stays shared
    s2 = scale(5, 2, 2)
    grown = picked.extend(s2)
    assert grown.nbytes() == kv.nbytes() + sum(k.nbytes + v.nbytes for k, v in s2)
    past, new = private([s0, s1], [2, 2, 2, 0, 3]), private([s2], list(range(5)))
    expect = [torch.cat((a, b), dim=2) for a, b in zip(past, new)]
    assert all(torch.equal(a, b) for a, b in zip(views(grown), expect, strict=True))


def test_mostly_dead_scales_are_compacted_and_dead_blocks_dropped():
    s0, s1 = scale(8, 1, 0), scale(8, 4, 1)
    kv = SharedKV.empty(8).extend(s0).extend(s1)
    kept = kv.select(torch.tensor([5, 5, 5, 1]))  # 2 of 8 rows live: each scale is copied down to its 2 rows
    assert all(torch.equal(a, b) for a, b in zip(views(kept), private([s0, s1], [5, 5, 5, 1]), strict=True))
    assert kept.nbytes() == kv.nbytes() * 2 // 8
    lazy = kv.select(torch.tensor([5, 5, 5, 1]), compact=False)  # split's select: the blocks stay as they are
    assert lazy.nbytes() == kv.nbytes()
    # concat of two chunks stepped apart, then a select that only reads the second chunk's block
    a, b = SharedKV.empty(2).extend(scale(2, 1, 3)), SharedKV.empty(3).extend(scale(3, 1, 4))
    both = SharedKV.concat([a, b], torch.arange(5))
    assert len(both.scales[0].blocks) == 2
    only_b = both.select(torch.tensor([3, 4, 4]), compact=False)
    assert only_b.blocks() == b.blocks()  # a's block is no longer referenced


def test_concat_keeps_a_shared_block_once_and_orders_rows():
    s0 = scale(6, 2, 0)
    kv = SharedKV.empty(6).extend(s0)
    # two chunks of one batch (split reads the same block), concatenated in cond-then-uncond order
    left, right = kv.select(torch.tensor([0, 1, 3, 4]), compact=False), kv.select(torch.tensor([2, 5]), compact=False)
    order = torch.tensor([0, 1, 4, 2, 3, 5])  # cond rows of both parts, then their uncond rows
    joined = SharedKV.concat([left, right], order)
    assert joined.blocks() == kv.blocks() and total_nbytes([left, right, joined]) == kv.nbytes()
    assert all(torch.equal(a, b) for a, b in zip(views(joined), private([s0], [0, 1, 2, 3, 4, 5]), strict=True))


def test_generator_duplicates_hold_no_extra_kv():
    """VAR tiny: resampling 4 rows into 4 copies of one row keeps one row's KV (not four), and their samples
    after the copy equal a fresh run's of the same rows."""
    gen = var_tiny(seed=0, sampling=SamplingConfig(cfg=4.0, tau=1.0, top_k=0, top_p=0.0))
    rows = Rows([0, 1, 2, 0], [0, 1, 2, 3], [7] * 4)
    state = gen.step(gen.step(gen.start({0: "3", 1: "7", 2: "0"}, rows)))
    before = state.caches.nbytes()
    dup = gen.select(state, [1, 1, 1, 1])
    assert dup.caches.nbytes() == before // 4  # the dead rows' blocks compacted away; the copies share one
    assert dup.caches.copied_nbytes() == before
    assert all(torch.equal(x, y) for x, y in zip(gen.kv_rows(dup), [t[[1, 1, 1, 1, 5, 5, 5, 5]]
                                                                     for t in gen.kv_rows(state)], strict=True))


def _storage_bytes(kv: SharedKV) -> int:
    storages = {}
    for b in kv.blocks():
        for k, v in b.layers:
            for t in (k, v):
                storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def test_blocks_hold_only_their_own_keys_and_values():
    """A model's values are views of its fused qkv output; a block keeps a copy of just them, so the memory a cache
    holds is what `nbytes` counts (it held the queries too: 2x), for both generators."""
    from ttsvar.models.infinity.builders import tiny_random as infinity_tiny

    sampling = SamplingConfig(cfg=4.0, tau=1.0, top_k=0, top_p=0.0)
    for gen, prompts in ((var_tiny(seed=0, sampling=sampling), {0: "3", 1: "7"}),
                         (infinity_tiny(0, sampling=sampling), {0: "a red circle", 1: "two squares"})):
        state = gen.step(gen.step(gen.start(prompts, Rows.for_prompts(2, [5, 6], [0, 1]))))
        assert _storage_bytes(state.caches) == state.caches.nbytes(), type(gen).__name__
    qkv = torch.randn(3, 5, 3, 2, 4)  # [B,L,3,H,hd] as a projection leaves it
    k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)[1:]
    kv = SharedKV.empty(3).extend([(k, v)])
    assert _storage_bytes(kv) == kv.nbytes() and torch.equal(kv.layer(0)[1], v)


def test_rows_of_one_prompt_share_its_text_conditioning():
    """The cross-attention keys of a prompt are held once, not per row: a selection moves the row-to-text index,
    concatenation keeps each text once, and texts no row keeps are dropped. The images are what per-row copies
    give (`test_golden_outputs`), so only the storage is checked here."""
    from ttsvar.models.infinity.builders import tiny_random as infinity_tiny

    gen = infinity_tiny(0, sampling=SamplingConfig(cfg=4.0, tau=1.0, top_k=0, top_p=0.0))
    prompts = {0: "a red circle", 1: "two squares"}
    state = gen.step(gen.start(prompts, Rows.for_prompts(8, [5, 6], [0, 1])))  # 16 rows, 32 with the uncond ones
    cond = state.cond
    assert len(cond) == 32 and len(cond.cond_BD) == 4  # 2 prompts + their 2 unconditional texts
    k0 = cond.ca_kv[0][0]
    picked = gen.select(state, np.array([3, 3, 3, 3, 9, 9]))  # both prompts kept, duplicated
    assert len(picked.cond) == 12 and picked.cond.ca_kv[0][0].data_ptr() == k0.data_ptr()
    one = gen.select(state, np.array([0, 1, 2]))  # only the first prompt: its texts alone stay
    assert len(one.cond.cond_BD) == 2
    both = gen.concat([one, gen.select(state, np.array([8, 9]))])
    assert len(both.cond) == 10 and len(both.cond.cond_BD) == 4
    # each row still sees its own prompt's (or uncond text's) keys, cond rows first
    k = [both.cond.per_row(t) for t in both.cond.ca_kv[0]][0]
    full = [state.cond.per_row(t) for t in state.cond.ca_kv[0]][0]
    for r, src in enumerate([0, 1, 2, 8, 9]):
        assert torch.equal(k[r], full[src]) and torch.equal(k[5 + r], full[16 + src])
