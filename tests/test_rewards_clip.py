"""The open_clip rewards (CLIPScore, HPS v2.1, aesthetic), PickScore and the tensor preprocessing,
against their official formulas computed by open_clip's and transformers' own code on the PIL path.

Test images are quantised to k/255 and made at the models' 32 px input size, so the official PIL
preprocessing sees exactly the same pixels and the comparisons are tight.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from rewards import CheckpointError, WeightsNotFoundError, create_reward
from rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform
from rewards.testing import (
    SEEDS,
    TINY_CLIP,
    open_clip_model,
    reward_files,
    write_hub_cache_file,
    write_pickscore_dir,
)

PROMPTS = ["a red cat", "a photo of the blue dog on a sofa", "green"]


def _images(b: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 255


def _pil(images: torch.Tensor) -> list[Image.Image]:
    arr = (images * 255).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in arr]


def build(name: str, d: Path, **kw):
    return create_reward(name, **reward_files(name, d), **kw)


# ----------------------------------------------------------------------------- open_clip rewards


def _openclip_reference(model, images, prompts, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD):
    """open_clip's own PIL preprocessing and forward pass -> unit-norm features."""
    pre = open_clip.image_transform(32, is_train=False, mean=mean, std=std)
    x = torch.stack([pre(im) for im in _pil(images)])
    tok = open_clip.SimpleTokenizer(context_length=16)
    with torch.no_grad():
        img = model.encode_image(x, normalize=True)
        txt = model.encode_text(tok(prompts), normalize=True)
    return img, txt


def test_clip_score_matches_open_clip(tmp_path):
    reward = build("clip-score", tmp_path)
    x = _images(3, seed=9)
    img, txt = _openclip_reference(open_clip_model(SEEDS["clip-score"]), x, PROMPTS)
    torch.testing.assert_close(reward.score(x, PROMPTS), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-4)
    clamped = create_reward(
        "clip-score",
        model="tiny",
        pretrained=str(tmp_path / "clip.safetensors"),
        model_config=TINY_CLIP,
        clamp=True,
        scale=2.5,
    )
    torch.testing.assert_close(
        clamped.score(x, PROMPTS), 2.5 * (img * txt).sum(-1).clamp_min(0), rtol=1e-4, atol=1e-4
    )


def test_clip_score_learned_scale_and_bias(tmp_path):
    # a SigLIP-style custom model (logit_bias) with its own preprocessing stats, as the testbed's shapes CLIP
    cfg = dict(TINY_CLIP, init_logit_bias=-3.0, init_logit_scale=math.log(7.0))
    torch.manual_seed(6)
    model = open_clip.CLIP(**cfg).eval()
    save_file(model.state_dict(), str(tmp_path / "siglipish.safetensors"))
    mean, std = (0.8, 0.7, 0.6), (0.2, 0.25, 0.3)
    wrapped = {"model_cfg": cfg, "preprocess_cfg": {"mean": mean, "std": std}}
    reward = create_reward(
        "clip-score",
        model="tiny",
        pretrained=str(tmp_path / "siglipish.safetensors"),
        model_config=wrapped,
        scale="model",
    )
    x = _images(3, seed=16)
    img, txt = _openclip_reference(model, x, PROMPTS, mean=mean, std=std)
    torch.testing.assert_close(
        reward.score(x, PROMPTS), 7.0 * (img * txt).sum(-1) - 3.0, rtol=1e-4, atol=1e-4
    )
    with pytest.raises(ValueError, match="scale must be a number or 'model'"):
        create_reward(
            "clip-score",
            model="tiny",
            pretrained=str(tmp_path / "siglipish.safetensors"),
            model_config=wrapped,
            scale="learned",
        )


def test_clip_score_custom_tokenizer_and_config_file(tmp_path):
    build("clip-score", tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps(TINY_CLIP))
    calls = []

    def tokenize(prompts):
        calls.append(list(prompts))
        return open_clip.SimpleTokenizer(context_length=16)(prompts)

    reward = create_reward(
        "clip-score",
        model="tiny",
        pretrained=str(tmp_path / "clip.safetensors"),
        model_config=str(tmp_path / "cfg.json"),
        tokenizer=tokenize,
    )
    s = reward.score(_images(4), ["a cat", "a dog", "a cat", "a cat"])
    assert s.shape == (4,) and calls == [["a cat", "a dog"]]  # identical prompts are encoded once


def test_open_clip_tag_lookup_and_errors(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="vit_large_patch14_clip_224.openai"):
        create_reward(
            "clip-score",
            model="ViT-L-14",
            pretrained="openai",
            weights_dir=str(tmp_path),
            model_config=TINY_CLIP,
        )
    sd = open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True).state_dict()
    write_hub_cache_file(
        tmp_path, "timm/vit_large_patch14_clip_224.openai", "open_clip_model.safetensors", sd
    )
    reward = create_reward(
        "clip-score", model="ViT-L-14", pretrained="openai", weights_dir=str(tmp_path), model_config=TINY_CLIP
    )
    x = _images(2)
    img, txt = _openclip_reference(
        open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True), x, PROMPTS[:2]
    )  # the tag implies QuickGELU
    torch.testing.assert_close(reward.score(x, PROMPTS[:2]), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        create_reward("clip-score", model="ViT-L-14", pretrained="no-such-tag", weights_dir=str(tmp_path))
    with pytest.raises(WeightsNotFoundError, match="no weights given"):
        create_reward("clip-score", model="ViT-L-14")
    with pytest.raises(ValueError, match="no built-in model config"):
        create_reward("clip-score", model="no-such-arch", pretrained="x")


def test_open_clip_checkpoint_strictness(tmp_path):
    build("clip-score", tmp_path)
    sd = load_file(str(tmp_path / "clip.safetensors"))
    sd.pop("ln_final.bias")
    sd["visual.extra"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "bad.safetensors"))
    with pytest.raises(
        CheckpointError, match=r"(?s)missing keys.*ln_final.bias.*unexpected keys.*visual.extra"
    ):
        create_reward(
            "clip-score", model="tiny", pretrained=str(tmp_path / "bad.safetensors"), model_config=TINY_CLIP
        )
    other = dict(
        TINY_CLIP, vision_cfg=dict(TINY_CLIP["vision_cfg"], image_size=48)
    )  # no silent pos-embed resize
    with pytest.raises(CheckpointError, match="visual.positional_embedding"):
        create_reward(
            "clip-score", model="tiny", pretrained=str(tmp_path / "clip.safetensors"), model_config=other
        )


def test_hps_matches_official_formula(tmp_path):
    reward = build("hpsv2.1", tmp_path)
    model = open_clip_model(SEEDS["hpsv2.1"])
    x = _images(3, seed=10)
    img, txt = _openclip_reference(model, x, PROMPTS)  # at 32 px HPS's resize+pad is the identity
    torch.testing.assert_close(reward.score(x, PROMPTS), (img * txt).sum(-1), rtol=1e-4, atol=1e-4)
    # non-square: long side already 32 -> no resize, zero padding (before normalisation) top and bottom
    wide = _images(1, 16, 32, seed=11)
    padded = torch.zeros(1, 3, 32, 32)
    padded[:, :, 8:24] = wide
    torch.testing.assert_close(reward.score(wide, PROMPTS[:1]), reward.score(padded, PROMPTS[:1]))


def test_hps_checkpoint_layout(tmp_path):
    build("hpsv2.1", tmp_path)
    ckpt = torch.load(tmp_path / "HPS_v2.1_compressed.pt", weights_only=True)
    assert set(ckpt) == {"state_dict"} and "visual.conv1.weight" in ckpt["state_dict"]
    # DataParallel-saved files ('module.' prefix) load too
    torch.save({"state_dict": {"module." + k: v for k, v in ckpt["state_dict"].items()}}, tmp_path / "dp.pt")
    create_reward("hpsv2.1", checkpoint=str(tmp_path / "dp.pt"), model_config=TINY_CLIP)


def test_aesthetic_matches_official_formula(tmp_path):
    reward = build("aesthetic", tmp_path)
    x = _images(3, seed=12)
    clip = open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True)
    pre = open_clip.image_transform(32, is_train=False)
    with torch.no_grad():
        emb = clip.encode_image(torch.stack([pre(im) for im in _pil(x)])).double().numpy()
    emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)  # improved-aesthetic-predictor's normalized()
    sd = torch.load(tmp_path / "sac+logos+ava1-l14-linearMSE.pth", weights_only=True)
    assert sorted(sd) == sorted(f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias"))
    h = torch.from_numpy(emb)
    for i in (0, 2, 4, 6, 7):
        h = h @ sd[f"layers.{i}.weight"].double().T + sd[f"layers.{i}.bias"].double()
    torch.testing.assert_close(reward.score(x, None), h[:, 0].float(), rtol=1e-4, atol=1e-4)


def test_a_clip_file_gets_the_activation_its_weights_were_trained_with(tmp_path):
    from safetensors.torch import save_file

    by_tag = build("aesthetic", tmp_path)
    file = next(tmp_path.rglob("open_clip_model.safetensors"))
    x = _images(3, seed=12)
    # the aesthetic predictor needs OpenAI's CLIP (QuickGELU): a bare file is read as that, not as GELU
    by_file = create_reward("aesthetic", checkpoint=str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"),
                            clip_pretrained=str(file), clip_model_config=TINY_CLIP)
    torch.testing.assert_close(by_file.score(x, None), by_tag.score(x, None), rtol=0, atol=0)
    # clip-score: the open_clip_config.json a hub download keeps beside the file decides
    hub = tmp_path / "hub"
    hub.mkdir()
    save_file(open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True).state_dict(), str(hub / "w.safetensors"))
    (hub / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_CLIP, "quick_gelu": True}}))
    reward = create_reward("clip-score", model="tiny", pretrained=str(hub / "w.safetensors"), model_config=TINY_CLIP)
    img, txt = _openclip_reference(open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True), x, PROMPTS)
    torch.testing.assert_close(reward.score(x, PROMPTS), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-4)


def test_openais_own_state_dict_with_its_extra_entries_loads(tmp_path):
    """`torch.save(model.state_dict())` of OpenAI's TorchScript ViT-L-14.pt (what the refusal of TorchScript
    suggests) keeps three scalar entries open_clip drops (input_resolution, context_length, vocab_size)."""
    sd = dict(open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True).state_dict())
    sd.update(input_resolution=torch.tensor(32), context_length=torch.tensor(16), vocab_size=torch.tensor(49408))
    torch.save(sd, tmp_path / "openai.pt")
    reward = create_reward("clip-score", model="tiny", pretrained=str(tmp_path / "openai.pt"), model_config=TINY_CLIP,
                           quick_gelu=True)
    x = _images(2)
    img, txt = _openclip_reference(open_clip_model(SEEDS["aesthetic-clip"], quick_gelu=True), x, PROMPTS[:2])
    torch.testing.assert_close(reward.score(x, PROMPTS[:2]), 100 * (img * txt).sum(-1), rtol=1e-4, atol=1e-4)


def test_aesthetic_rejects_wrong_embedding_width(tmp_path):
    build("aesthetic", tmp_path)
    from rewards.aesthetic import AestheticMLP

    torch.save(AestheticMLP(768).state_dict(), tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    with pytest.raises(ValueError, match="768-d CLIP embeddings"):
        create_reward("aesthetic", weights_dir=str(tmp_path), clip_model_config=TINY_CLIP)


# ----------------------------------------------------------------------------- PickScore


def test_pickscore_matches_readme_formula(tmp_path):
    from transformers import AutoProcessor, CLIPModel

    reward = build("pickscore", tmp_path)
    mdir = tmp_path / "PickScore_v1"
    processor = AutoProcessor.from_pretrained(str(mdir))
    model = CLIPModel.from_pretrained(str(mdir)).eval()
    x = _images(3, seed=13)

    def feats(out):
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    with torch.no_grad():
        img = feats(model.get_image_features(**processor(images=_pil(x), return_tensors="pt")))
        txt = feats(
            model.get_text_features(
                **processor(text=PROMPTS, padding=True, truncation=True, max_length=77, return_tensors="pt")
            )
        )
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    ref = model.logit_scale.exp() * (img * txt).sum(-1)
    torch.testing.assert_close(reward.score(x, PROMPTS), ref.detach(), rtol=1e-4, atol=1e-4)


def test_pickscore_refuses_incomplete_weights(tmp_path):
    mdir = write_pickscore_dir(tmp_path)
    sd = load_file(str(mdir / "model.safetensors"))
    sd.pop("visual_projection.weight")
    save_file(sd, str(mdir / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="visual_projection.weight"):
        create_reward("pickscore", model_dir=str(mdir))


# ----------------------------------------------------------------------------- preprocessing


def test_transform_geometry_and_pil_agreement():
    x = _images(1, 32, 48, seed=14)
    t = ImageTransform(32, resize_mode="shortest")
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    # short side already 32: no resampling, a centred 32x32 crop (columns 8..40)
    torch.testing.assert_close(t(x), (x[..., 8:40] - mean) / std)
    # with resampling: close to the official PIL pipeline (bicubic kernels differ slightly, uint8 rounding)
    pil = open_clip.image_transform(24, is_train=False)(_pil(x)[0])[None]
    ours = ImageTransform(24)(x)
    assert ours.shape == pil.shape == (1, 3, 24, 24)
    assert (ours - pil).abs().mean() < 0.03
    squash = ImageTransform(16, resize_mode="squash")(x)
    assert squash.shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="resize_mode"):
        ImageTransform(16, resize_mode="crop")


def test_clip_score_preprocess_override_area_squash(tmp_path):
    # the testbed's shapes CLIP shrinks by area averaging to its 32 px input and uses its own pixel stats
    opts = reward_files("clip-score", tmp_path)
    mean, std = (0.871, 0.858, 0.857), (0.227, 0.236, 0.246)
    pre = {"interpolation": "area", "resize_mode": "squash", "mean": mean, "std": std}
    reward = create_reward("clip-score", preprocess_cfg=pre, **opts)
    assert reward.transform == ImageTransform(32, mean, std, "squash", "area")
    x = _images(2, 64, 96, seed=17)
    want = torch.nn.functional.interpolate(x, size=(32, 32), mode="area") - torch.tensor(mean).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(reward.transform(x), want / torch.tensor(std).view(1, 3, 1, 1))
    small = _images(1, 16, 16, seed=18)  # enlarging: bilinear
    up = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        reward.transform(small),
        (up - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1),
    )
    with pytest.raises(ValueError, match="preprocess_cfg keys"):
        create_reward("clip-score", preprocess_cfg={"size": 64}, **opts)
