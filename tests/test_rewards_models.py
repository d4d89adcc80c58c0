"""Built-in rewards on tiny random-weight configs of each architecture: the common tests every
registered built-in must pass, missing-file errors, and ImageReward against references.

``rewards.testing.reward_files`` writes the files a user would have (official file names and key layouts)
into a temporary folder; everything is loaded through ``create_reward``, so each test is also a round trip
through the checkpoint format. References: the official ImageReward equations in float64 and timm's ViT.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rewards import CheckpointError, RewardInputError, WeightsNotFoundError, create_reward, list_rewards
from rewards.imagereward_model import BlipViTConfig, ImageRewardModel, MedBertConfig, native_to_official
from rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from rewards.registry import _REGISTRY
from rewards.testing import (
    BERT_SPECIALS,
    TINY_VIT,
    TINY_WORDS,
    randomize_,
    reward_files,
    write_imagereward_files,
)

PROMPTS = ["a red circle", "a photo of two blue squares above a triangle", "green"]  # valid for every tokenizer
list_rewards()  # imports the built-in modules
BUILTINS = sorted(k for k, v in _REGISTRY.items() if v.__module__.startswith("rewards."))


# class rewards (`conditioning == "class"`) read class prompts: the class index as text
CLASS_OF = {p: str(i) for i, p in enumerate(PROMPTS + ["a photo of three green triangles"])}


def _p(reward, prompts):
    """The test's prompts as `reward` reads them (class rewards: a class index per text prompt)."""
    return prompts if getattr(reward, "conditioning", "text") == "text" else [CLASS_OF[p] for p in prompts]


def _images(b: int, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 3, h, w), generator=g).float() / 255


def build(name: str, d: Path, **kw):
    return create_reward(name, **reward_files(name, d), **kw)


def test_builtins_are_all_covered():
    assert set(BUILTINS) == {"imagereward", "clip-score", "hpsv2.1", "pickscore", "aesthetic", "ensemble",
                             "shapes-clip", "shapes-reward", "classifier"}


@pytest.fixture(scope="module", params=BUILTINS)
def built(request, tmp_path_factory):
    # a new built-in needs tiny files in rewards.testing.reward_files; then it runs through every test below
    d = tmp_path_factory.mktemp(request.param.replace(".", "_"))
    return request.param, build(request.param, d)


# ----------------------------------------------------------------------------- common tests, every reward


class TestEveryReward:
    def test_declared_attributes(self, built):
        name, reward = built
        assert isinstance(reward.name, str) and reward.name
        assert isinstance(reward.needs_prompt, bool)
        assert reward.input_size == 32  # all tiny configs run at 32 px
        assert reward.higher_is_better

    def test_declared_score_scale(self, built):
        # potentials divide by it (search.md): None (undeclared) or a positive finite number
        _, reward = built
        s = reward.score_scale
        assert s is None or (math.isfinite(s) and s > 0)

    def test_shape_dtype_device(self, built):
        _, reward = built
        s = reward.score(_images(3, 40, 56), _p(reward, PROMPTS))  # non-square: exercises resize + crop/pad
        assert s.shape == (3,) and s.dtype == torch.float32 and s.device.type == "cpu"
        assert torch.isfinite(s).all()
        assert s.unique().numel() == 3  # random weights still separate random images

    def test_deterministic(self, built):
        _, reward = built
        x = _images(3, seed=1)
        assert torch.equal(reward.score(x, _p(reward, PROMPTS)), reward.score(x.clone(), _p(reward, list(PROMPTS))))

    def test_batch_order_invariance(self, built):
        _, reward = built
        x = _images(5, seed=2)
        prompts = _p(reward, [PROMPTS[i % 3] for i in range(5)])
        perm = torch.tensor([3, 0, 4, 2, 1])
        s = reward.score(x, prompts)
        s_perm = reward.score(x[perm], [prompts[i] for i in perm])
        torch.testing.assert_close(s_perm, s[perm], rtol=1e-5, atol=1e-5)

    def test_batch_size_invariance(self, built):
        _, reward = built
        x = _images(4, seed=3)
        prompts = _p(reward, [PROMPTS[i % 3] for i in range(4)])
        full = reward.score(x, prompts)
        single = torch.cat([reward.score(x[i : i + 1], prompts[i : i + 1]) for i in range(4)])
        torch.testing.assert_close(single, full, rtol=1e-5, atol=1e-5)
        old = reward.batch_size
        try:
            reward.configure(batch_size=3)  # chunks of 3 + 1 inside score()
            torch.testing.assert_close(reward.score(x, prompts), full, rtol=1e-5, atol=1e-5)
        finally:
            reward.batch_size = old

    def test_uses_prompt_iff_declared(self, built):
        _, reward = built
        x = _images(1, seed=4).expand(2, -1, -1, -1)
        s = reward.score(x, _p(reward, ["a red circle", "a photo of three green triangles"]))
        if reward.needs_prompt:
            assert s[0] != s[1]
        else:
            assert s[0] == s[1]
            assert torch.equal(reward.score(x, None), s)

    def test_input_dtype_and_size(self, built):
        _, reward = built
        x = _images(2, seed=5)
        ref = reward.score(x, _p(reward, PROMPTS[:2]))
        torch.testing.assert_close(reward.score(x.double(), _p(reward, PROMPTS[:2])), ref)
        big = F.interpolate(x, size=(64, 64), mode="nearest")  # any size is accepted
        assert reward.score(big, _p(reward, PROMPTS[:2])).shape == (2,)

    def test_bad_inputs(self, built):
        _, reward = built

        with pytest.raises(RewardInputError, match="empty batch"):
            reward.score(_images(1)[:0], [])
        with pytest.raises(RewardInputError, match=r"\[0,1\]"):
            reward.score(_images(2) * 2, _p(reward, PROMPTS[:2]))
        with pytest.raises(RewardInputError, match="2 prompts for 3 images"):
            reward.score(_images(3), _p(reward, PROMPTS[:2]))


@pytest.mark.parametrize("name", ["imagereward", "hpsv2.1", "pickscore", "aesthetic"])
def test_missing_files_name_what_to_put_where(name, tmp_path):
    expected = {
        "imagereward": "ImageReward.pt",
        "hpsv2.1": "HPS_v2.1_compressed.pt",
        "pickscore": "PickScore_v1",
        "aesthetic": "sac+logos+ava1-l14-linearMSE.pth",
    }[name]
    with pytest.raises(WeightsNotFoundError) as e:
        create_reward(name, weights_dir=str(tmp_path))
    assert str(tmp_path / expected) in str(e.value)
    assert "huggingface.co" in str(e.value) or "github.com" in str(e.value)
    with pytest.raises(WeightsNotFoundError, match="no (file|folder) given"):
        create_reward(name)


# ----------------------------------------------------------------------------- ImageReward


def _ir_reference(
    sd: dict, pixels: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, cfg: dict
) -> torch.Tensor:
    """ImageReward forward written from the official equations, float64, straight from the state dict
    (additive -10000 padding mask, post-LN BERT, pre-LN ViT, exact GELU, [CLS] -> MLP -> (r-mean)/std)."""
    w = {k: v.double() for k, v in sd.items() if v.is_floating_point()}

    def lin(x, p):
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def ln(x, p, eps):
        return F.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], eps)

    def attn(q, k, v, heads, add_mask=None):
        B, T, C = q.shape
        q, k, v = (t.reshape(B, -1, heads, C // heads).transpose(1, 2) for t in (q, k, v))
        a = q @ k.transpose(-1, -2) / math.sqrt(C // heads)
        if add_mask is not None:
            a = a + add_mask
        return (a.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)

    v = "blip.visual_encoder."
    x = F.conv2d(pixels.double(), w[v + "patch_embed.proj.weight"], w[v + "patch_embed.proj.bias"], stride=8)
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([w[v + "cls_token"].expand(x.shape[0], -1, -1), x], 1) + w[v + "pos_embed"]
    for i in range(cfg["vit_depth"]):
        p = f"{v}blocks.{i}."
        h = ln(x, p + "norm1", 1e-6)
        q, k, vv = lin(h, p + "attn.qkv").chunk(3, dim=-1)
        x = x + lin(attn(q, k, vv, cfg["vit_heads"]), p + "attn.proj")
        x = x + lin(F.gelu(lin(ln(x, p + "norm2", 1e-6), p + "mlp.fc1")), p + "mlp.fc2")
    img = ln(x, v + "norm", 1e-6)

    t = "blip.text_encoder."
    T = ids.shape[1]
    h = w[t + "embeddings.word_embeddings.weight"][ids] + w[t + "embeddings.position_embeddings.weight"][:T]
    h = ln(h, t + "embeddings.LayerNorm", 1e-12)
    add = (1.0 - mask.double())[:, None, None, :] * -10000.0
    for i in range(cfg["bert_layers"]):
        p = f"{t}encoder.layer.{i}."
        a = attn(
            lin(h, p + "attention.self.query"),
            lin(h, p + "attention.self.key"),
            lin(h, p + "attention.self.value"),
            cfg["bert_heads"],
            add,
        )
        h = ln(lin(a, p + "attention.output.dense") + h, p + "attention.output.LayerNorm", 1e-12)
        a = attn(
            lin(h, p + "crossattention.self.query"),
            lin(img, p + "crossattention.self.key"),
            lin(img, p + "crossattention.self.value"),
            cfg["bert_heads"],
        )
        h = ln(lin(a, p + "crossattention.output.dense") + h, p + "crossattention.output.LayerNorm", 1e-12)
        f = F.gelu(lin(h, p + "intermediate.dense"))
        h = ln(lin(f, p + "output.dense") + h, p + "output.LayerNorm", 1e-12)
    r = h[:, 0]
    for j in (0, 2, 4, 6, 7):
        r = lin(r, f"mlp.layers.{j}")
    return (r[:, 0] - 0.16717362830052426) / 1.0333394966054072  # ImageReward/ImageReward.py


IR_CFG = {"vit_depth": 2, "vit_heads": 2, "bert_layers": 2, "bert_heads": 2}


def test_imagereward_matches_float64_reference(tmp_path):
    write_imagereward_files(tmp_path)
    reward = create_reward("imagereward", weights_dir=str(tmp_path), vit=TINY_VIT)
    sd = torch.load(tmp_path / "ImageReward.pt", weights_only=True)
    x = _images(3, seed=7)
    prompts = ["a red cat", "the big blue dogs on a green sofa of a photo " * 4, "dog"]  # 2nd is truncated
    ids, mask = reward.tokenize(prompts)
    assert ids.shape == (3, 35) and mask[1].all() and not mask[2].all()
    mean = torch.tensor(OPENAI_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(1, 3, 1, 1)
    ref = _ir_reference(sd, (x.double() - mean) / std, ids, mask, IR_CFG)
    torch.testing.assert_close(reward.score(x, prompts), ref.float(), rtol=1e-4, atol=1e-4)


def test_imagereward_output_normalisation_known_value(tmp_path):
    model = write_imagereward_files(tmp_path)
    sd = native_to_official(model)
    sd["mlp.layers.7.weight"].zero_()
    sd["mlp.layers.7.bias"].fill_(0.5)  # head output 0.5 for every image
    torch.save(sd, tmp_path / "ImageReward.pt")
    reward = create_reward("imagereward", weights_dir=str(tmp_path), vit=TINY_VIT)
    want = (0.5 - 0.16717362830052426) / 1.0333394966054072
    torch.testing.assert_close(
        reward.score(_images(2), PROMPTS[:2]), torch.full((2,), want), rtol=0, atol=1e-7
    )


def test_imagereward_tokenizer_is_blips():
    import tempfile

    from rewards.imagereward import load_blip_tokenizer

    with tempfile.TemporaryDirectory() as d:
        Path(d, "vocab.txt").write_text("\n".join(BERT_SPECIALS + TINY_WORDS) + "\n")
        tok = load_blip_tokenizer(d)
    n = len(BERT_SPECIALS + TINY_WORDS)
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n, n + 1]  # as in bert-base: 30522, 30523
    out = tok(["A Red cats"], padding="max_length", truncation=True, max_length=35)
    toks = tok.convert_ids_to_tokens(out["input_ids"][0])
    # the official scorer keeps [CLS] first (no enc_token_id substitution) and lower-cases
    assert toks[:6] == ["[CLS]", "a", "red", "cat", "##s", "[SEP]"] and toks[6:] == ["[PAD]"] * 29


def test_blip_vit_matches_timm_vit():
    import timm

    torch.manual_seed(0)
    ours = ImageRewardModel(
        BlipViTConfig(**TINY_VIT),
        MedBertConfig(
            vocab_size=30, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        ),
    ).eval()
    randomize_(ours, 8)
    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=2, num_classes=0, global_pool=""
    ).eval()
    ref.load_state_dict(ours.blip.visual_encoder.state_dict(), strict=True)  # same key names as timm's ViT
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours.blip.visual_encoder(x), ref.forward_features(x), rtol=1e-5, atol=1e-5)


def test_imagereward_checkpoint_round_trip_and_strictness(tmp_path):
    model = write_imagereward_files(tmp_path)
    reward = create_reward("imagereward", weights_dir=str(tmp_path), vit=TINY_VIT)
    for k, v in model.state_dict().items():
        assert torch.equal(reward.model.state_dict()[k], v), k

    sd = torch.load(tmp_path / "ImageReward.pt", weights_only=True)
    assert "blip.text_encoder.encoder.layer.0.crossattention.self.query.weight" in sd
    assert "blip.text_encoder.embeddings.position_ids" in sd and "mlp.layers.7.bias" in sd
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = {
        "missing": (
            {k: v for k, v in sd.items() if k != "mlp.layers.4.weight"},
            "missing keys.*mlp.layers.4.weight",
        ),
        "unexpected": (
            {**sd, "blip.itm_head.weight": torch.zeros(2, 32)},
            "unexpected keys.*blip.itm_head.weight",
        ),
        "shape": ({**sd, "mlp.layers.7.weight": torch.zeros(1, 17)}, "wrong shapes.*mlp.layers.7.weight"),
    }
    for case, (state, pattern) in cases.items():
        torch.save(state, bad / f"{case}.pt")
        with pytest.raises(CheckpointError, match=pattern) as e:
            create_reward(
                "imagereward", checkpoint=str(bad / f"{case}.pt"), weights_dir=str(tmp_path), vit=TINY_VIT
            )
        assert str(bad / f"{case}.pt") in str(e.value)
    # a file without position_ids (saved from a model with a non-persistent buffer) also loads
    torch.save({k: v for k, v in sd.items() if "position_ids" not in k}, bad / "nopos.pt")
    create_reward("imagereward", checkpoint=str(bad / "nopos.pt"), weights_dir=str(tmp_path), vit=TINY_VIT)
    # pickles of arbitrary objects are refused (weights_only=True)
    torch.save({"model": model}, bad / "pickled.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        create_reward(
            "imagereward", checkpoint=str(bad / "pickled.pt"), weights_dir=str(tmp_path), vit=TINY_VIT
        )


def test_imagereward_package_backend_needs_the_package(tmp_path):
    write_imagereward_files(tmp_path)
    try:
        import ImageReward  # noqa: F401

        pytest.skip("image-reward is installed: see test_imagereward_package_backend_agrees")
    except ImportError:
        pass
    with pytest.raises(ImportError, match="pip install image-reward"):
        create_reward("imagereward", weights_dir=str(tmp_path), backend="package")


FAKE_PACKAGE = {
    "ImageReward/__init__.py": "",
    "ImageReward/models/__init__.py": "",
    "ImageReward/models/BLIP/__init__.py": "",
    "ImageReward/models/BLIP/blip_pretrain.py": (
        "def init_tokenizer():\n    raise RuntimeError('would download bert-base-uncased')\n"
    ),
    # stands in for the package's ImageReward class: same constructor, key layout and score_gard
    "ImageReward/ImageReward.py": """
import torch
from rewards.imagereward_model import BlipViTConfig, ImageRewardModel, MedBertConfig
from .models.BLIP import blip_pretrain

class ImageReward(ImageRewardModel):
    def __init__(self, med_config, device="cpu"):
        super().__init__(BlipViTConfig(image_size=32, patch_size=8, width=48, depth=2, heads=2),
                         MedBertConfig.from_json(med_config))
        self.device_name = device
        self.tokenizer = blip_pretrain.init_tokenizer()
        self.blip.text_encoder.embeddings.register_buffer("position_ids", torch.arange(40)[None])

    def score_gard(self, prompt_ids, prompt_attention_mask, image):
        return self.forward(image, prompt_ids, prompt_attention_mask)[:, None]
""",
}


def test_imagereward_package_backend_plumbing(tmp_path, monkeypatch):
    """backend='package' with a stand-in package: local tokenizer injected, strict load, score_gard used."""
    import sys

    for rel, text in FAKE_PACKAGE.items():
        (tmp_path / "pkg" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / rel).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "pkg"))
    for m in [m for m in sys.modules if m.split(".")[0] == "ImageReward"]:
        monkeypatch.delitem(sys.modules, m)
    try:
        write_imagereward_files(tmp_path)
        native = create_reward("imagereward", weights_dir=str(tmp_path), vit=TINY_VIT)
        package = create_reward("imagereward", weights_dir=str(tmp_path), vit=TINY_VIT, backend="package")
        assert package.model.tokenizer is package.tokenizer
        from ImageReward.models.BLIP import blip_pretrain

        with pytest.raises(RuntimeError, match="would download"):
            blip_pretrain.init_tokenizer()  # restored after construction
        x = _images(3, seed=6)
        torch.testing.assert_close(package.score(x, PROMPTS), native.score(x, PROMPTS))
    finally:
        for m in [m for m in sys.modules if m.split(".")[0] == "ImageReward"]:
            sys.modules.pop(m)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["imagereward", "clip-score", "hpsv2.1", "pickscore", "aesthetic"])
def test_cuda_half_matches_cpu(name, tmp_path):
    cpu = build(name, tmp_path)
    gpu = build(name, tmp_path, device="cuda", dtype="float16")
    assert gpu.device.type == "cuda"
    x = _images(3, 48, 40, seed=15)
    ref = cpu.score(x, PROMPTS)
    out = gpu.score(x.cuda().half(), PROMPTS)  # images may live on the GPU in any float dtype
    assert out.device.type == "cpu" and out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=5e-2, atol=5e-2 * float(ref.abs().max()))
