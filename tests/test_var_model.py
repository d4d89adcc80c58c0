"""Native VAR on tiny random configs: teacher-forced vs KV-cached logits, the VQ-VAE's scale arithmetic, the
generator's row bookkeeping, strict checkpoints and class-index prompts."""

import numpy as np
import pytest
import torch
from helpers_generator import rows, run

from ttsvar.core.checkpoint import CheckpointError, load_strict, read_state_dict
from ttsvar.core.errors import ConfigError, PromptError
from ttsvar.core.generator import SamplingConfig
from ttsvar.models.registry import create_generator
from ttsvar.models.var.builders import tiny_random
from ttsvar.models.var.generator import cfg_weights
from ttsvar.models.var.model import VAR, VARConfig, official_state_dict_to_ours
from ttsvar.models.var.vqvae import PATCH_NUMS_512, VQVAE, VQVAEConfig, load_vqvae

PROMPTS = {0: "3", 1: "7", 2: "0"}
SAMPLING = SamplingConfig(cfg=3.0, tau=1.0, top_k=0, top_p=0.0)


@pytest.fixture(scope="module", params=[False, True], ids=["ada_lin", "shared_aln"])
def gen(request):
    return tiny_random(seed=0, sampling=SAMPLING, shared_aln=request.param)


def _image(B=3, size=16, seed=0):
    return torch.rand(B, 3, size, size, generator=torch.Generator().manual_seed(seed)) * 2 - 1


# ----------------------------------------------------------------------------- transformer


def test_kv_cached_scales_equal_the_block_causal_teacher_forced_pass(gen):
    model, vae = gen.model, gen.vae
    labels = torch.tensor([3, 7, 10])  # 10 = the null class
    with torch.no_grad():
        idx = vae.img_to_idx(_image())
        full = model(labels, vae.idx_to_var_input(idx))  # [B,L,V]
        # the sampler's path: accumulate f_hat scale by scale and feed its downsampled maps
        cond, caches, f_hat, outs = model.class_cond(labels), None, None, []
        for si in range(gen.num_scales):
            x = model.sos(cond) if si == 0 else model.embed_scale_input(vae.next_input(f_hat, si))
            logits, caches = model.forward_scale(x, si, cond, caches)
            outs.append(logits)
            f_hat = vae.add_scale(si, f_hat, idx[si])
    assert full.shape == (3, model.config.L, model.V)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=2e-5)
    # block-causal: changing the last scale's input leaves the logits of the earlier scales alone
    x = vae.idx_to_var_input(idx)
    x2 = x.clone()
    x2[:, -16:] += 1
    with torch.no_grad():
        changed = model(labels, x2)
    n = model.config.L - 16
    torch.testing.assert_close(changed[:, :n], full[:, :n], rtol=0, atol=1e-6)
    assert not torch.allclose(changed[:, n:], full[:, n:])


def test_released_configs():
    for depth in (16, 20, 24, 30):
        c = VARConfig.released(depth)
        assert (c.embed_dim, c.num_heads, c.shared_aln, c.patch_nums[-1]) == (64 * depth, depth, False, 16)
    c = VARConfig.released(36)
    assert c.shared_aln and c.patch_nums == PATCH_NUMS_512 == (1, 2, 3, 4, 6, 9, 13, 18, 24, 32)
    with torch.device("meta"):
        n16 = sum(p.numel() for p in VAR(VARConfig.released(16)).parameters())
    assert 305e6 < n16 < 315e6  # the README's 310M
    with pytest.raises(ValueError, match="released"):
        VARConfig.released(12)


# ----------------------------------------------------------------------------- VQ-VAE


def test_image_to_indices_is_the_residual_quantization_of_the_accumulated_f_hat(gen):
    """Scale k's indices are the nearest codes of (f - f_hat of scales < k), area-downsampled to pn_k, where
    f_hat is what `idx_to_fhat` / `add_scale` (the sampler's accumulation) build from the earlier indices."""
    vae = gen.vae
    img = _image()
    with torch.no_grad():
        f = vae.quant_conv(vae.encoder(img))
        idx = vae.img_to_idx(img)
        E = vae.quantize.embedding.weight
        for si, pn in enumerate(vae.v_patch_nums):
            assert idx[si].shape == (3, pn * pn) and 0 <= idx[si].min() and idx[si].max() < E.shape[0]
            rest = f if si == 0 else f - vae.idx_to_fhat(idx[:si])
            if si < len(vae.v_patch_nums) - 1:
                rest = torch.nn.functional.interpolate(rest, size=(pn, pn), mode="area")
            z = rest.flatten(2).transpose(1, 2)  # [B,l,Cvae]
            d = torch.cdist(z, E.unsqueeze(0))  # [B,l,V]
            chosen = d.gather(-1, idx[si].unsqueeze(-1)).squeeze(-1)
            torch.testing.assert_close(chosen, d.min(-1).values, rtol=0, atol=1e-4)
        f_hat = vae.idx_to_fhat(idx)
        assert (f - f_hat).norm() < f.norm()  # the codes explain part of f
        # decoding: the generator's preview of that f_hat is the VAE's decode of it
        img_hat = vae.fhat_to_img(f_hat)
    assert img_hat.shape == img.shape and img_hat.abs().max() <= 1


def test_vae_checkpoint_round_trip_and_official_buffers(tmp_path):
    vae = VQVAE(VQVAEConfig.tiny()).eval()
    sd = dict(vae.state_dict())
    sd["quantize.ema_vocab_hit_SV"] = torch.zeros(4, 64)  # the official training buffer is accepted and dropped
    torch.save(sd, tmp_path / "vae.pth")
    loaded = load_vqvae(tmp_path / "vae.pth", VQVAEConfig.tiny())
    img = _image(1)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(loaded.img_to_idx(img), vae.img_to_idx(img)))
    del sd["decoder.conv_out.bias"]
    sd["decoder.extra"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"bad\.pth(.|\n)*decoder\.conv_out\.bias(.|\n)*decoder\.extra"):
        load_vqvae(tmp_path / "bad.pth", VQVAEConfig.tiny())


# ----------------------------------------------------------------------------- checkpoints


def test_var_checkpoint_strict_loading(tmp_path):
    model = VAR(VARConfig.tiny())
    sd = dict(model.state_dict())
    # the official file also holds derived buffers: accepted and dropped by the one remapping function
    sd["lvl_1L"] = torch.zeros(1, model.config.L, dtype=torch.long)
    sd["attn_bias_for_masking"] = torch.zeros(1, 1, model.config.L, model.config.L)
    sd["blocks.0.attn.zero_k_bias"] = torch.zeros(model.C)
    torch.save(sd, tmp_path / "var.pth")
    with torch.device("meta"):
        fresh = VAR(VARConfig.tiny())
    load_strict(fresh, read_state_dict(tmp_path / "var.pth"), tmp_path / "var.pth", official_state_dict_to_ours,
                assign=True)
    assert torch.equal(fresh.head.weight, model.head.weight)
    del sd["blocks.1.ada_lin.1.weight"]
    sd["blocks.1.ada_gss"] = torch.zeros(1, 1, 6, model.C)  # a shared-AdaLN file loaded into a per-block model
    torch.save(sd, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError) as e:
        load_strict(VAR(VARConfig.tiny()), read_state_dict(tmp_path / "wrong.pth"), tmp_path / "wrong.pth",
                    official_state_dict_to_ours)
    msg = str(e.value)
    assert "wrong.pth" in msg and "missing keys (1): blocks.1.ada_lin.1.weight" in msg
    assert "unexpected keys (1): blocks.1.ada_gss" in msg


def test_released_builders_name_the_missing_files(tmp_path):
    with pytest.raises(ConfigError, match="model.weights"):
        create_generator("var-d16", device="cpu")
    (tmp_path / "var_d16.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="model.options.vae_weights"):
        create_generator("var-d16", device="cpu", weights=str(tmp_path / "var_d16.pth"))


# ----------------------------------------------------------------------------- generator


def test_batch_composition_invariance(gen):
    alone = run(gen, gen.start(PROMPTS, rows([1], [3])))
    mixed = run(gen, gen.start(PROMPTS, rows([0, 1, 2, 1], [0, 3, 5, 4])))
    torch.testing.assert_close(mixed.f_hat[1:2], alone.f_hat, rtol=0, atol=1e-6)
    torch.testing.assert_close(gen.finish(mixed)[1:2], gen.finish(alone), rtol=0, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_select_equivalence(gen, k):
    r = rows([0, 1, 2], [0, 1, 2])
    state = gen.select(run(gen, gen.start(PROMPTS, r), until=k), [2, 2, 0])
    assert state.labels.tolist() == [0, 0, 3, 10, 10, 10]  # cond rows, then their null-class rows
    selected = run(gen, state)
    direct = run(gen, gen.start(PROMPTS, r.select(np.array([2, 2, 0]))))
    torch.testing.assert_close(selected.f_hat, direct.f_hat, rtol=0, atol=1e-6)
    torch.testing.assert_close(selected.f_hat[0], selected.f_hat[1], rtol=0, atol=0)  # same candidate id


def test_concat_split_keep_cond_and_uncond_caches_together(gen):
    a = run(gen, gen.start(PROMPTS, rows([0, 1], [0, 1])), until=2)
    b = run(gen, gen.start(PROMPTS, rows([2], [4])), until=2)
    packed = gen.concat([a, b])
    assert packed.labels.tolist() == [3, 7, 0, 10, 10, 10]
    for part, ref in zip(gen.split(packed, [2, 1]), (a, b)):
        assert torch.equal(part.labels, ref.labels) and torch.equal(part.f_hat, ref.f_hat)
        assert all(torch.equal(x, y) for x, y in zip(gen.kv_rows(part), gen.kv_rows(ref), strict=True))
    torch.testing.assert_close(run(gen, packed).f_hat[2:], run(gen, b).f_hat, rtol=0, atol=1e-6)


def test_cfg_ramp_and_rows_per_candidate(gen):
    w = cfg_weights(5.0, 10)
    assert w[0] == 1 and w[-1] == 5 and np.allclose(np.diff(w), 4 / 9)  # official: t = cfg * si / (S - 1)
    assert cfg_weights([1.0, 2.0, 3.0, 4.0], 4) == [1.0, 2.0, 3.0, 4.0]
    try:
        gen.set_sampling(SamplingConfig(cfg=1.0, tau=1.0, top_k=0, top_p=0.0))
        assert gen.forward_rows_per_candidate(0) == 1
        assert len(gen.start(PROMPTS, rows([0, 1], [0, 0])).labels) == 2
    finally:
        gen.set_sampling(SAMPLING)
    assert gen.forward_rows_per_candidate(0) == 2  # scale 0 has weight 1, but its uncond cache is needed later


def test_more_smooth_is_deterministic_and_batch_invariant():
    g = tiny_random(seed=0, sampling=SAMPLING, more_smooth=True)
    alone = run(g, g.start(PROMPTS, rows([1], [3])))
    mixed = run(g, g.start(PROMPTS, rows([0, 1], [0, 3])))
    # soft codes are sums over the codebook, so batched matmuls may round differently: close, not equal
    torch.testing.assert_close(mixed.f_hat[1:], alone.f_hat, rtol=0, atol=1e-4)
    assert torch.equal(run(g, g.start(PROMPTS, rows([1], [3]))).f_hat, alone.f_hat)
    plain = run(tiny_random(seed=0, sampling=SAMPLING), tiny_random(seed=0).start(PROMPTS, rows([1], [3])))
    assert not torch.allclose(plain.f_hat, alone.f_hat)
    conf = g.confidence(alone)  # no token is sampled: the statistics of each position's dominant code
    assert conf.shape == (1, 2) and np.isfinite(conf).all() and conf[0, 0] <= 0 <= conf[0, 1]


def test_prompts_are_class_indices(gen):
    gen.check_prompt("3")
    gen.check_prompt(" 9 ")
    for bad in ("10", "-1", "3.0", "a golden retriever", "", "٣"):
        with pytest.raises(PromptError, match=r"class index(.|\n)*\[0, 10\)"):
            gen.check_prompt(bad)
    with pytest.raises(PromptError, match="'cat'"):
        gen.start({0: "cat"}, rows([0], [0]))
