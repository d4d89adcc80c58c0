"""Native Infinity transformer: KV-cached scale-by-scale logits vs the teacher-forced pass, checkpoints."""

import pytest
import torch

from ttsvar.core.checkpoint import CheckpointError, load_strict, read_state_dict
from ttsvar.models.infinity.model import Infinity, InfinityConfig, official_state_dict_to_ours, rope_cos_sin
from ttsvar.models.infinity.schedules import rope_reference, scale_schedule

SCHED = [(1, 1), (2, 2), (3, 3), (4, 4), (6, 6), (8, 8)]


def _text(B=3, lens=(5, 2, 7), C=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lens)
    text = torch.randn(B, T, C, generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(lens):
        mask[i, :n] = True
    return text, mask


def _randomise(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model


@pytest.mark.parametrize("schedule", [SCHED, scale_schedule(1.0, "0.06M")[:5], [(1, 1), (1, 2), (2, 4)]])
def test_kv_cached_steps_equal_teacher_forced_pass(schedule):
    torch.manual_seed(0)
    model = _randomise(Infinity(InfinityConfig.tiny(depth=3, block_chunks=3))).eval()
    text, mask = _text()
    L = sum(h * w for h, w in schedule)
    x = torch.randn(3, L - 1, model.config.d_vae)
    with torch.no_grad():
        full = model(text, mask, x, schedule)
        cond = model.encode_text(text, mask)
        caches, outs, start = None, [], 0
        for si, (h, w) in enumerate(schedule):
            xi = model.sos(cond) if si == 0 else model.embed_scale_input(x[:, start - 1:start - 1 + h * w])
            logits, caches = model.forward_scale(xi, si, schedule, cond, caches)
            outs.append(logits)
            start += h * w
    assert full.shape == (3, L, model.V)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=2e-5)


def test_padding_of_text_does_not_change_logits():
    model = _randomise(Infinity(InfinityConfig.tiny())).eval()
    text, mask = _text(B=1, lens=(4,))
    padded = torch.cat([text, torch.randn(1, 6, 32)], 1)
    pmask = torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)], 1)
    x = torch.randn(1, sum(h * w for h, w in SCHED) - 1, model.config.d_vae)
    with torch.no_grad():
        torch.testing.assert_close(model(padded, pmask, x, SCHED), model(text, mask, x, SCHED), rtol=0, atol=1e-5)


def test_rope_matches_float64_reference():
    hd, sched = 16, [(1, 1), (2, 2), (3, 5)]
    cos, sin = rope_cos_sin(hd, sched)
    uh, uw = rope_reference(sched)
    assert (uh, uw) == (3, 5)
    inv = 1.0 / (10000.0 ** (torch.arange(0, hd // 2, 2, dtype=torch.float64) / (hd // 2)))
    rows = []
    for ph, pw in sched:
        for i in range(ph):
            for j in range(pw):
                pi, pj = round(i * uh / ph), round(j * uw / pw)
                rows.append(torch.cat([pi * inv, pj * inv]))
    ang = torch.stack(rows)
    torch.testing.assert_close(cos.double(), ang.cos(), rtol=0, atol=1e-6)
    torch.testing.assert_close(sin.double(), ang.sin(), rtol=0, atol=1e-6)


def test_released_schedules_normalise_rope_to_the_1M_grid():
    assert rope_reference(scale_schedule(1.0, "0.25M")) == (64, 64)
    assert rope_reference(scale_schedule(0.5, "1M")) == (45, 90)
    assert len(scale_schedule(1.0, "0.6M")) == 12
    with pytest.raises(ValueError, match="pixels"):
        scale_schedule(1.0, "2M")


def test_parameter_counts_of_released_configs():
    with torch.device("meta"):
        n2 = sum(p.numel() for p in Infinity(InfinityConfig.infinity_2b()).parameters())
        n8 = sum(p.numel() for p in Infinity(InfinityConfig.infinity_8b()).parameters())
    assert 2.1e9 < n2 < 2.3e9 and 8.2e9 < n8 < 8.5e9


# ---------------------------------------------------------------------------- checkpoints

OFFICIAL_KEYS = [
    "cfg_uncond", "pos_start", "text_norm.weight", "text_proj_for_sos.ca.mat_q", "text_proj_for_sos.ca.mat_kv.weight",
    "text_proj_for_sos.ca.v_bias", "text_proj_for_sos.ca.proj.weight", "text_proj_for_ca.0.weight",
    "text_proj_for_ca.2.bias", "lvl_embed.weight", "word_embed.weight", "shared_ada_lin.1.weight",
    "block_chunks.1.module.0.sa.mat_qkv.weight", "block_chunks.1.module.0.sa.scale_mul_1H11",
    "block_chunks.1.module.0.sa.q_bias", "block_chunks.1.module.0.ca.mat_q.weight",
    "block_chunks.1.module.0.ca.mat_kv.weight", "block_chunks.1.module.0.ca_norm.weight",
    "block_chunks.1.module.0.ffn.fc2.weight", "block_chunks.1.module.0.ada_gss", "head_nm.ada_lin.1.weight",
    "head.weight",
]


def test_parameter_names_follow_the_official_layout():
    keys = set(Infinity(InfinityConfig.tiny(depth=4, block_chunks=2)).state_dict())
    assert set(OFFICIAL_KEYS) <= keys


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip(tmp_path, suffix):
    src = _randomise(Infinity(InfinityConfig.tiny())).eval()
    path = tmp_path / f"ckpt{suffix}"
    sd = {k: v.contiguous() for k, v in src.state_dict().items()}
    if suffix == ".pth":
        torch.save(sd, path)
    else:
        from safetensors.torch import save_file
        save_file(sd, str(path))
    dst = load_strict(Infinity(InfinityConfig.tiny()), read_state_dict(path), path, official_state_dict_to_ours)
    text, mask = _text()
    x = torch.randn(3, sum(h * w for h, w in SCHED) - 1, 6)
    with torch.no_grad():
        torch.testing.assert_close(dst(text, mask, x, SCHED), src(text, mask, x, SCHED), rtol=0, atol=0)


def test_official_quirks_are_adapted_in_one_place(tmp_path):
    src = Infinity(InfinityConfig.tiny())
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("zero_k_bias")}
    sd["cfg_uncond"] = torch.randn(40, 32)  # trained with a longer text_maxlen
    nested = {"trainer": {"gpt_fsdp": sd}}
    dst = load_strict(Infinity(InfinityConfig.tiny()), nested, "nested", official_state_dict_to_ours)
    torch.testing.assert_close(dst.cfg_uncond.data, sd["cfg_uncond"][:16])


@pytest.mark.parametrize("corrupt, message", [
    (lambda sd: sd.pop("head.weight"), r"missing keys.*: head.weight"),
    (lambda sd: sd.__setitem__("extra.weight", torch.zeros(1)), r"unexpected keys.*: extra.weight"),
    (lambda sd: sd.__setitem__("word_embed.weight", torch.zeros(64, 5)), r"wrong shapes.*: word_embed.weight"),
])
def test_bad_checkpoints_name_the_problem(tmp_path, corrupt, message):
    sd = dict(Infinity(InfinityConfig.tiny()).state_dict())
    corrupt(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=message) as e:
        load_strict(Infinity(InfinityConfig.tiny()), read_state_dict(path), path, official_state_dict_to_ours)
    assert str(path) in str(e.value)


def test_unreadable_or_pickled_objects_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_state_dict(tmp_path / "nope.pth")
    path = tmp_path / "obj.pth"
    torch.save({"a": object()}, path)
    with pytest.raises(CheckpointError, match="pickles objects other than tensors"):
        read_state_dict(path)


@pytest.mark.gpu
def test_bfloat16_on_cuda_matches_float32_on_cpu():
    model = _randomise(Infinity(InfinityConfig.tiny(depth=3, block_chunks=3))).eval()
    text, mask = _text()
    x = torch.randn(3, sum(h * w for h, w in SCHED) - 1, model.config.d_vae)
    with torch.no_grad():
        ref = model(text, mask, x, SCHED)
        gpu = model.cuda().cast_blocks(torch.bfloat16)
        out = gpu(text.cuda(), mask.cuda(), x.cuda(), SCHED).cpu()
    assert out.dtype == torch.float32
    # bfloat16 keeps ~3 significant digits; the logits agree to a few percent of their scale
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert torch.corrcoef(torch.stack([out.flatten(), ref.flatten()]))[0, 1] > 0.999
