"""The step-wise generator interface: on a tiny random Infinity (select, concat/split, batch invariance, RNG,
compute accounting), and the `Generator` contract on every registered generator (`TestGeneratorContract`)."""

import numpy as np
import pytest
import torch
from helpers_generator import rows, run

from search.base import SearchPlan
from ttsvar.core.generator import Generator, GenState, Rows, SamplingConfig, mix64
from ttsvar.models.infinity.builders import tiny_random
from ttsvar.models.infinity.generator import InfinityGenerator
from ttsvar.models.infinity.model import Infinity, InfinityConfig
from ttsvar.models.infinity.training import teacher_inputs, token_bits
from ttsvar.models.infinity.vae import BSQVAE, BSQVAEConfig
from ttsvar.models.registry import create_generator, list_generators
from ttsvar.models.sampling import (
    filter_logits,
    row_uniforms,
    sample_categorical,
    sample_with_confidence,
    token_confidence,
)
from ttsvar.models.text import WordEncoderConfig, WordTextEncoder
from ttsvar.models.var.builders import tiny_random as var_tiny_random

PROMPTS = {0: "a photo of a red circle", 1: "a photo of two squares", 2: "a blue triangle above a circle"}


@pytest.fixture(scope="module")
def gen():
    # randomise the (zero-initialised) weights so the rows really depend on their text and history
    g = tiny_random(seed=0, sampling=SamplingConfig(cfg=2.0, tau=1.0, top_k=0, top_p=0.0),
                    vocab=sorted({w for p in PROMPTS.values() for w in p.split()}))
    gen_ = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in list(g.model.parameters()) + list(g.text_encoder.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen_) * 0.05)
    return g


def test_batch_composition_invariance(gen):
    alone = run(gen, gen.start(PROMPTS, rows([1], [3])))
    mixed = run(gen, gen.start(PROMPTS, rows([0, 1, 2, 1], [0, 3, 5, 4])))
    torch.testing.assert_close(mixed.summed_codes[1:2], alone.summed_codes, rtol=0, atol=0)
    torch.testing.assert_close(gen.finish(mixed)[1:2], gen.finish(alone), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_select_equivalence(gen, k):
    r = rows([0, 1, 2], [0, 1, 2])
    state = gen.select(run(gen, gen.start(PROMPTS, r), until=k), [2, 2, 0])
    assert state.rows.prompt_index.tolist() == [2, 2, 0]
    selected = run(gen, state)
    direct = run(gen, gen.start(PROMPTS, r.select(np.array([2, 2, 0]))))
    torch.testing.assert_close(selected.summed_codes, direct.summed_codes, rtol=0, atol=0)
    torch.testing.assert_close(gen.finish(selected), gen.finish(direct), rtol=0, atol=1e-5)
    # duplicates with the same candidate id share their randomness, so they stay identical
    torch.testing.assert_close(selected.summed_codes[0], selected.summed_codes[1])


def test_select_with_new_candidate_ids_branches_the_duplicates(gen):
    r = rows([0, 1], [0, 1])
    mid = run(gen, gen.start(PROMPTS, r), until=2)
    branched = run(gen, gen.select(mid, [1, 1], candidate_id=np.array([1, 9])))
    assert not torch.equal(branched.summed_codes[0], branched.summed_codes[1])
    # the same decision taken on the direct path gives the same rows
    direct = gen.start(PROMPTS, r.select(np.array([1, 1])))
    direct = run(gen, gen.select(run(gen, direct, until=2), [0, 1], candidate_id=np.array([1, 9])))
    torch.testing.assert_close(branched.summed_codes, direct.summed_codes, rtol=0, atol=0)


def test_concat_split_round_trip(gen):
    a = run(gen, gen.start(PROMPTS, rows([0, 1], [0, 1])), until=2)
    b = run(gen, gen.start(PROMPTS, rows([2], [4])), until=2)
    packed = gen.concat([a, b])
    assert len(packed) == 3 and packed.rows.prompt_index.tolist() == [0, 1, 2]
    parts = gen.split(packed, [2, 1])
    for part, ref in zip(parts, (a, b)):
        assert all(torch.equal(x, y) for x, y in zip(gen.kv_rows(part), gen.kv_rows(ref), strict=True))
        assert torch.equal(part.summed_codes, ref.summed_codes)
        # the parts read the blocks the packed state reads: nothing was copied
        assert {id(blk) for blk in part.caches.blocks()} <= {id(blk) for blk in packed.caches.blocks()}
    done = run(gen, packed)
    torch.testing.assert_close(done.summed_codes[2:], run(gen, b).summed_codes, rtol=0, atol=0)


def test_concat_rejects_mixed_scales(gen):
    a = gen.start(PROMPTS, rows([0], [0]))
    b = gen.step(gen.start(PROMPTS, rows([1], [0])))
    with pytest.raises(ValueError, match="same scale"):
        gen.concat([a, b])
    with pytest.raises(ValueError, match="sum to"):
        gen.split(a, [2])
    with pytest.raises(IndexError, match="out of range"):
        gen.select(a, [3])


def test_preview_and_finish(gen):
    s = gen.start(PROMPTS, rows([0, 2], [0, 0]))
    with pytest.raises(ValueError, match="step"):
        gen.preview(s)
    s = gen.step(gen.step(s))
    img = gen.preview(s)
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    assert gen.preview(s, size=16).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="finish"):
        gen.finish(s)


def test_per_scale_sampling_lists_are_validated(gen):
    with pytest.raises(ValueError, match="sampling.cfg has 2 entries"):
        gen.set_sampling(SamplingConfig(cfg=[1.0, 2.0]))
    with pytest.raises(ValueError, match="tau"):
        SamplingConfig(tau=0.0).per_scale(6)


def test_teacher_inputs_match_sampling_inputs(gen):
    s = run(gen, gen.start(PROMPTS, rows([0], [0])), until=gen.num_scales)
    # recover each scale's bits by re-running the same sampler step by step
    st, bits = gen.start(PROMPTS, rows([0], [0])), []
    for si in range(gen.num_scales):
        before = torch.zeros_like(s.summed_codes) if st.summed_codes is None else st.summed_codes
        st = gen.step(st)
        h, w = gen.vae_schedule[si]
        delta = st.summed_codes - before
        codes = delta if si == gen.num_scales - 1 else gen.vae.downsample_codes(delta, (h, w))
        bits.append((codes.permute(0, 2, 3, 1) > 0).long())
    x = teacher_inputs(gen, bits)
    assert x.shape == (1, sum(h * w for h, w in gen.scale_schedule) - 1, gen.model.config.d_vae)
    assert token_bits(gen, bits).shape == (1, sum(h * w for h, w in gen.scale_schedule), 6)
    np.testing.assert_array_equal(torch.cat([b.flatten() for b in bits]).numpy() >= 0, True)


def test_spatial_patchify_generator_runs():
    """The 8B layout: each transformer token carries 2x2 VAE tokens (4d bits)."""
    torch.manual_seed(0)
    vcfg = BSQVAEConfig.tiny(codebook_dim=4)
    model = Infinity(InfinityConfig.tiny(codebook_dim=4, apply_spatial_patchify=True)).eval()
    text = WordTextEncoder(WordEncoderConfig(dim=32, max_len=16)).eval()
    g = InfinityGenerator(model, BSQVAE(vcfg).eval(), text, [(1, 1), (2, 2), (4, 4)], SamplingConfig(cfg=2.0))
    assert g.vae_schedule == [(2, 2), (4, 4), (8, 8)]
    s = run(g, g.start(PROMPTS, rows([0, 1], [0, 1])))
    assert s.summed_codes.shape == (2, 4, 8, 8)
    assert g.finish(s).shape == (2, 3, 32, 32)
    grids = [torch.randint(0, 2, (2, h, w, 4)) for h, w in g.vae_schedule]
    assert token_bits(g, grids).shape == (2, 1 + 4 + 16, 16)
    assert teacher_inputs(g, grids).shape == (2, 4 + 16, 16)


# ---------------------------------------------------------------------------- randomness and sampling


def test_row_uniforms_depend_only_on_the_seed():
    a = row_uniforms([5, 6, 7], (4, 3), "cpu")
    b = row_uniforms([7], (4, 3), "cpu")
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    assert Rows([0, 0], [1, 2], [3, 3]).step_seeds(4) == [mix64(3, 1, 4), mix64(3, 2, 4)]
    assert mix64(3, 1, 4) != mix64(3, 1, 5)


def test_filter_logits_known_values():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, False, True, True]]
    # top_p=0.8: drop the smallest entries whose cumulative mass is <= 0.2 -> 0.05 and 0.15
    assert torch.isinf(filter_logits(logits, top_p=0.8)).tolist() == [[False, False, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.9)).tolist() == [[False, False, False, True]]
    # the largest entry always survives
    assert torch.isinf(filter_logits(logits, top_p=1e-9)).tolist() == [[False, True, True, True]]


def test_sample_categorical_follows_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.7])
    logits = probs.log().expand(200_000, 3)
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(sample_categorical(logits, u), minlength=3).float() / 200_000
    torch.testing.assert_close(freq, probs, atol=0.005, rtol=0)
    # inverse CDF: u below the first mass picks 0, above picks the last
    assert sample_categorical(probs.log()[None], torch.tensor([0.05])).item() == 0
    assert sample_categorical(probs.log()[None], torch.tensor([0.99])).item() == 2


def test_token_confidence_matches_a_float64_reference():
    """Mean log-prob and entropy per row: positions averaged, the parts of one token (Infinity's bits) summed."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 4, generator=g) * 3  # [B, l, V]
    idx = torch.randint(0, 4, (3, 5), generator=g)
    p = logits.double().softmax(-1)
    ref_logp = torch.stack([torch.stack([p[b, i, idx[b, i]].log() for i in range(5)]).mean() for b in range(3)])
    ref_ent = (-(p * p.log()).sum(-1)).mean(1)
    got = token_confidence(logits, idx)
    assert got.shape == (3, 2) and got.dtype == torch.float32
    torch.testing.assert_close(got[:, 0].double(), ref_logp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[:, 1].double(), ref_ent, rtol=1e-5, atol=1e-6)
    # bits: [B, l, bits, 2]; a token's log-prob/entropy is the sum over its independent bits
    bits_logits = torch.randn(2, 3, 4, 2, generator=g)
    bits = torch.randint(0, 2, (2, 3, 4), generator=g)
    per_bit = token_confidence(bits_logits.reshape(2, 12, 2), bits.reshape(2, 12))
    torch.testing.assert_close(token_confidence(bits_logits, bits, token_parts=1), per_bit * 4)
    # a certain distribution: log-prob 0, entropy 0 (0 log 0 = 0, no NaN)
    sure = torch.tensor([[[0.0, -torch.inf]]])
    assert token_confidence(sure, torch.tensor([[0]])).tolist() == [[0.0, 0.0]]
    u = torch.rand(3, 5, generator=g)
    idx2, conf = sample_with_confidence(logits, u, top_k=2)
    assert torch.equal(idx2, sample_categorical(logits, u, top_k=2))
    torch.testing.assert_close(conf, token_confidence(logits, idx2))  # top-k truncation not applied


def test_forward_rows_per_candidate_counts_the_rows_the_transformer_forwards(gen):
    """The compute accounting (`token_forwards`) is the number of rows the transformer really runs."""
    seen = []
    forward = gen.model.forward_scale

    def counting(x, si, *args, **kw):
        seen.append((si, x.shape[0], x.shape[1]))
        return forward(x, si, *args, **kw)

    try:
        gen.model.forward_scale = counting
        for cfg, rows_per in ((2.0, 2), (1.0, 1)):
            gen.set_sampling(SamplingConfig(cfg=cfg, tau=1.0, top_k=0, top_p=0.0))
            seen.clear()
            run(gen, gen.start(PROMPTS, rows([0, 1, 2], [0, 1, 2])))
            assert [gen.forward_rows_per_candidate(k) for k in range(gen.num_scales)] == [rows_per] * gen.num_scales
            assert [(si, b) for si, b, _ in seen] == [(k, 3 * rows_per) for k in range(gen.num_scales)]
            assert [n for _, _, n in seen] == [gen.tokens_at_scale(k) for k in range(gen.num_scales)]
    finally:
        del gen.model.forward_scale
        gen.set_sampling(SamplingConfig(cfg=2.0, tau=1.0, top_k=0, top_p=0.0))


# ---------------------------------------------------------------------------- the contract of every generator

CONTRACT_SAMPLING = SamplingConfig(cfg=2.0, tau=1.0, top_k=0, top_p=0.0)
CONTRACT_PROMPTS = {3: "a photo of a red circle", 8: "a photo of two blue squares"}  # indices are not positions
CLASS_PROMPTS = {3: "3", 8: "8"}  # class-conditional generators read class indices


def _randomized(g: InfinityGenerator, seed: int = 1) -> InfinityGenerator:
    """Random weights instead of zeros, so rows depend on their text, history and sampling."""
    gen_ = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in list(g.model.parameters()) + list(g.text_encoder.parameters()):
            p.copy_(torch.randn(p.shape, generator=gen_) * 0.05)
    return g


def _released_layout(patchify: bool) -> InfinityGenerator:
    """A random model of a released checkpoint's layout (the 8B's 2x2 spatial patchify or the 2B's plain
    tokens) at test size: the released builders need the checkpoints, the class and code path are the same."""
    torch.manual_seed(0)
    d = 4 if patchify else 6
    model = Infinity(InfinityConfig.tiny(codebook_dim=d, apply_spatial_patchify=patchify)).eval()
    text = WordTextEncoder(WordEncoderConfig(dim=32, max_len=16)).eval()
    schedule = [(1, 1), (2, 2), (4, 4)] if patchify else [(1, 1), (2, 2), (4, 4), (8, 8)]
    return _randomized(InfinityGenerator(model, BSQVAE(BSQVAEConfig.tiny(codebook_dim=d)).eval(), text, schedule))


# Every registered generator, built small on the CPU (like diffusers' common scheduler tests, each entry only
# supplies its configuration). A newly registered generator must add itself here.
CONTRACT_BUILDS = {
    "infinity-2b": lambda: _released_layout(patchify=False),
    "infinity-8b": lambda: _released_layout(patchify=True),
    "infinity-tiny-random": lambda: _randomized(create_generator("infinity-tiny-random", device="cpu")),
    "shapes-tiny": lambda: create_generator("shapes-tiny", device="cpu"),
    "shapes-var-tiny": lambda: create_generator("shapes-var-tiny", device="cpu"),
    # the released VAR builders need the checkpoints; the tiny model has their layout (per-block AdaLN for
    # d16-d30, shared AdaLN for d36) and the same classes and code path
    **{f"var-d{d}": (lambda: var_tiny_random(shared_aln=False)) for d in (16, 20, 24, 30)},
    "var-d36": lambda: var_tiny_random(shared_aln=True),
    "var-tiny-random": lambda: create_generator("var-tiny-random", device="cpu"),
}
CONTRACT_PROMPTS_OF = {name: CLASS_PROMPTS for name in CONTRACT_BUILDS if "var-" in name}


def test_every_registered_generator_is_in_the_contract_tests():
    assert sorted(CONTRACT_BUILDS) == list_generators()


def _finish(gen: Generator, r: Rows, prompts) -> torch.Tensor:
    return gen.finish(run(gen, gen.start(prompts, r)))


class TestGeneratorContract:
    """What the engine relies on (`ttsvar.core.generator.Generator`), for every registered generator."""

    @pytest.fixture(scope="class", params=sorted(CONTRACT_BUILDS))
    def g(self, request) -> Generator:
        gen = CONTRACT_BUILDS[request.param]()
        gen.set_sampling(CONTRACT_SAMPLING)
        return gen

    @pytest.fixture
    def prompts(self, request) -> dict[int, str]:
        return CONTRACT_PROMPTS_OF.get(request.node.callspec.params["g"], CONTRACT_PROMPTS)

    def test_is_a_generator(self, g, prompts):
        assert isinstance(g, Generator)
        assert g.num_scales == len(g.scale_schedule) >= 2
        assert isinstance(g.device, torch.device)
        for p in prompts.values():
            assert g.check_prompt(p) is None

    def test_start_step_finish(self, g, prompts):
        r = Rows([8, 3, 8], [0, 0, 1], [7, 7, 7])
        state = g.start(prompts, r)
        assert isinstance(state, GenState) and len(state) == 3 and state.scale == 0
        np.testing.assert_array_equal(state.rows.prompt_index, [8, 3, 8])
        for k in range(g.num_scales):
            with pytest.raises(ValueError):
                g.finish(state)
            state = g.step(state)
            assert state.scale == k + 1 and len(state) == 3
        with pytest.raises(ValueError):
            g.step(state)
        img = g.finish(state)
        assert img.dtype == torch.float32 and img.ndim == 4 and img.shape[:2] == (3, 3)
        assert torch.isfinite(img).all() and img.min() >= 0 and img.max() <= 1
        torch.testing.assert_close(g.finish(state, rows=[2, 0]), img[[2, 0]], rtol=0, atol=1e-5)

    def test_preview(self, g, prompts):
        state = g.start(prompts, Rows([3, 8], [0, 0], [1, 1]))
        with pytest.raises(ValueError):
            g.preview(state)  # nothing sampled yet
        state = g.step(state)
        full = g.preview(state)
        assert full.shape[:2] == (2, 3) and full.min() >= 0 and full.max() <= 1
        assert g.preview(state, size=16).shape == (2, 3, 16, 16)
        torch.testing.assert_close(g.preview(state, rows=[1]), full[1:], rtol=0, atol=1e-5)

    def test_cheap_preview(self, g, prompts):
        """`cheap=True` decodes the scale's own grid: a float [0, 1] image of fewer pixels (the decoder's work),
        resizable like the full one, equal to it at the last scale."""
        state = g.step(g.start(prompts, Rows([3, 8], [0, 0], [1, 1])))
        grid, final = g.preview_grid(1, cheap=True), g.preview_grid(1)
        assert grid[0] * grid[1] < final[0] * final[1]
        full, cheap = g.preview(state), g.preview(state, cheap=True)
        assert cheap.dtype == torch.float32 and cheap.shape[:2] == (2, 3)
        assert torch.isfinite(cheap).all() and cheap.min() >= 0 and cheap.max() <= 1
        # the decoder's output pixels scale with the latent grid it decodes
        assert cheap.shape[-2] * final[0] == full.shape[-2] * grid[0]
        assert cheap.shape[-1] * final[1] == full.shape[-1] * grid[1]
        assert g.preview(state, size=16, cheap=True).shape == (2, 3, 16, 16)
        torch.testing.assert_close(g.preview(state, rows=[1], cheap=True), cheap[1:], rtol=0, atol=1e-5)
        state = run(g, state)
        assert g.preview_grid(g.num_scales, cheap=True) == g.preview_grid(g.num_scales)
        torch.testing.assert_close(g.preview(state, cheap=True), g.finish(state), rtol=0, atol=0)
        with pytest.raises(ValueError, match="preview_grid"):
            g.preview_grid(0, cheap=True)

    def test_row_bookkeeping(self, g, prompts):
        state = g.step(g.start(prompts, Rows([3, 8, 3], [0, 1, 2], [5, 5, 5])))
        picked = g.select(state, [2, 2, 0], candidate_id=np.array([2, 9, 0]))
        assert len(picked) == 3 and picked.scale == 1
        assert picked.rows.prompt_index.tolist() == [3, 3, 3] and picked.rows.candidate_id.tolist() == [2, 9, 0]
        parts = g.split(state, [1, 2])
        assert [len(p) for p in parts] == [1, 2]
        packed = g.concat(parts)
        assert len(packed) == 3 and packed.rows.candidate_id.tolist() == [0, 1, 2]
        keys = g.row_keys(g.select(state, [1, 1]))
        assert keys is None or (len(keys) == 2 and keys[0] == keys[1])

    def test_reports_token_confidence(self, g, prompts):
        """`confidence(state)`: [B, 2] (mean log-prob <= 0, mean entropy >= 0) of the scale just sampled, per row
        whatever the batch, carried by select/concat; the engine hands it to strategies."""
        from ttsvar.engine import Worker, WorkUnit

        state = g.start(prompts, Rows([3, 8, 3], [0, 1, 2], [5, 5, 5]))
        assert g.confidence(state) is None  # nothing sampled yet
        for _ in range(2):
            state = g.step(state)
            conf = g.confidence(state)
            assert conf.shape == (3, 2) and conf.dtype == np.float32 and np.isfinite(conf).all()
            assert (conf[:, 0] <= 1e-6).all() and (conf[:, 1] >= -1e-6).all()
        alone = g.step(g.step(g.start(prompts, Rows([8], [1], [5]))))
        np.testing.assert_allclose(g.confidence(alone)[0], conf[1], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(g.confidence(g.select(state, [2, 0, 0])), conf[[2, 0, 0]])
        np.testing.assert_array_equal(g.confidence(g.concat(g.split(state, [1, 2]))), conf)
        plan = SearchPlan((2,) * g.num_scales, frozenset(), frozenset(), (1,))
        worker = Worker(g, lambda images, prompts: torch.zeros(len(images)), None, plan)
        report = worker.start(WorkUnit(0, [3, 8], [prompts[3], prompts[8]], [1, 2]))
        assert report.scale == 1 and not report.final
        for ga in report.groups:
            assert ga.rewards is None and ga.log_prob.shape == (2,) and ga.entropy.shape == (2,)
            assert (ga.entropy >= -1e-6).all()
        worker.drop(0)

    def test_compute_accounting(self, g, prompts):
        from ttsvar.engine import Worker, WorkUnit

        tokens = [g.tokens_at_scale(k) for k in range(g.num_scales)]
        assert tokens == [h * w for h, w in g.scale_schedule]
        try:
            for cfg, per_row in ((1.0, 1), (2.0, 2)):
                g.set_sampling(SamplingConfig(cfg=cfg, tau=1.0, top_k=0, top_p=0.0))
                assert [g.forward_rows_per_candidate(k) for k in range(g.num_scales)] == [per_row] * g.num_scales
                n = 2
                plan = SearchPlan((n,) * g.num_scales, frozenset(), frozenset(), ())
                worker = Worker(g, lambda images, prompts: torch.zeros(len(images)), None, plan)
                report = worker.start(WorkUnit(0, [3, 8], [prompts[3], prompts[8]], [1, 2]))
                assert report.final
                for p in (3, 8):
                    assert report.counters[p]["token_forwards"] == n * per_row * sum(tokens)
                worker.drop(0)
        finally:
            g.set_sampling(CONTRACT_SAMPLING)
        sizes = [g.state_bytes_per_row(k) for k in range(g.num_scales)]
        assert all(s is None for s in sizes) or all(isinstance(s, int) and s > 0 for s in sizes)
        assert sizes == sorted(sizes) or None in sizes  # a row only grows as scales are sampled

    def test_set_sampling(self, g, prompts):
        r = Rows([3, 8, 3, 8], [0, 0, 1, 1], [4, 4, 4, 4])
        base = _finish(g, r, prompts)
        try:
            g.set_sampling(SamplingConfig(cfg=2.0, tau=0.05, top_k=0, top_p=0.0))
            cold = _finish(g, r, prompts)
            with pytest.raises(ValueError, match="sampling.cfg"):
                g.set_sampling(SamplingConfig(cfg=[1.0] * (g.num_scales + 1)))
            assert torch.equal(_finish(g, r, prompts), cold)  # a rejected config leaves the last one in place
        finally:
            g.set_sampling(CONTRACT_SAMPLING)
        assert not torch.equal(base, cold)  # takes effect from the next start
        assert torch.equal(_finish(g, r, prompts), base)

    def test_determinism_under_seeds(self, g, prompts):
        r = Rows([3, 8], [0, 0], [11, 11])
        a = _finish(g, r, prompts)
        assert torch.equal(a, _finish(g, r, prompts))  # the same seeds draw the same images
        assert not torch.equal(a, _finish(g, Rows([3, 8], [0, 0], [12, 12]), prompts))  # another seed, other images
        assert not torch.equal(a, _finish(g, Rows([3, 8], [5, 5], [11, 11]), prompts))  # another candidate id too
