"""Feature extractors on tiny random-weight timm / open_clip models saved to local files, against references:
the PCA features against a float64 numpy SVD of the same model's patch tokens, the others against the
model's own forward pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from rewards.features import create_features, first_pc_projection, list_features
from ttsvar.core.checkpoint import CheckpointError

TINY_VIT = dict(depth=1, embed_dim=32, num_heads=2)
VIT_NAME = "vit_small_patch14_reg4_dinov2"
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def save(model: torch.nn.Module, path, extra: dict | None = None) -> str:
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    sd.update(extra or {})
    save_file(sd, str(path))
    return str(path)




@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    model = timm.create_model(VIT_NAME, pretrained=False, img_size=56, num_classes=0, **TINY_VIT).eval()
    return model, save(model, tmp_path_factory.mktemp("w") / "dinov2.safetensors")


def quick_random(build) -> torch.nn.Module:
    """A random model without the architecture's slow initialisers (InceptionV3's take seconds on CPU):
    He-scaled weights, small biases, unit-ish batch-norm statistics."""
    with torch.device("meta"):
        model = build()
    model = model.to_empty(device="cpu").eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5, generator=g)
            elif name.endswith("num_batches_tracked") or name.endswith("running_mean"):
                t.zero_()
            elif t.ndim > 1:
                t.normal_(0, (2.0 / t[0].numel()) ** 0.5, generator=g)
            else:
                t.normal_(1.0 if name.endswith("weight") else 0.0, 0.1, generator=g)
    return model


def reference_tokens(model, images: torch.Tensor) -> np.ndarray:
    mean = np.array([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
    std = np.array([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
    x = torch.from_numpy(((images.double().numpy() - mean) / std).astype(np.float32))
    with torch.no_grad():
        tokens = model.forward_features(x)[:, 5:]  # 1 CLS + 4 registers precede the patch tokens
    return tokens.double().numpy()


def reference_pca(tokens: np.ndarray) -> np.ndarray:
    out = []
    for t in tokens:
        c = t - t.mean(0, keepdims=True)
        _, _, vt = np.linalg.svd(c, full_matrices=False)
        s = c @ vt[0]
        out.append(s if s[np.argmax(np.abs(s))] > 0 else -s)
    return np.stack(out)


def test_registry():
    assert {"dinov2", "clip", "inception"} <= set(list_features())
    with pytest.raises(ValueError, match="unknown feature extractor 'dino'"):
        create_features("dino")
    with pytest.raises(ValueError, match=r"no option\(s\) \['layers'\]"):
        create_features("dinov2", layers=3)


def test_first_pc_projection_matches_numpy_svd():
    tokens = torch.randn(3, 20, 7, dtype=torch.float64) + torch.linspace(0, 3, 7, dtype=torch.float64)
    np.testing.assert_allclose(first_pc_projection(tokens).numpy(), reference_pca(tokens.numpy()), rtol=1e-9,
                               atol=1e-9)


def test_dinov2_pca_features_match_the_float64_reference(tiny_dinov2):
    model, path = tiny_dinov2
    fx = create_features("dinov2", weights=path, model_name=VIT_NAME, img_size=56, model_kwargs=TINY_VIT,
                         device="cpu", batch_size=2)
    images = torch.rand(5, 3, 56, 56)
    got = fx.extract(images)
    assert got.shape == (5, 16) and got.dtype == np.float32 and fx.dim == 16  # (56 / 14)^2 patches
    np.testing.assert_allclose(got, reference_pca(reference_tokens(model, images)), rtol=1e-4, atol=1e-5)


def test_dinov2_mean_mode_and_resizing(tiny_dinov2):
    model, path = tiny_dinov2
    fx = create_features("dinov2", weights=path, mode="mean", model_name=VIT_NAME, img_size=56,
                         model_kwargs=TINY_VIT, device="cpu")
    images = torch.rand(2, 3, 56, 56)
    ref = reference_tokens(model, images).mean(1)
    np.testing.assert_allclose(fx.extract(images), ref, rtol=1e-4, atol=1e-5)
    assert fx.extract(torch.rand(3, 3, 40, 72)).shape == (3, 32)  # any preview size is resized to 56 x 56


def test_dinov2_loads_a_file_with_another_grid_by_resampling_pos_embed(tmp_path):
    import timm

    other = timm.create_model(VIT_NAME, pretrained=False, img_size=28, num_classes=0, **TINY_VIT)
    path = save(other, tmp_path / "grid2.safetensors")
    fx = create_features("dinov2", weights=path, model_name=VIT_NAME, img_size=56, model_kwargs=TINY_VIT,
                         device="cpu")
    assert fx.extract(torch.rand(1, 3, 56, 56)).shape == (1, 16)


def test_dinov2_file_errors(tiny_dinov2, tmp_path):
    _, path = tiny_dinov2
    with pytest.raises(ValueError, match="weights: DINOv2 needs the path"):
        create_features("dinov2")
    with pytest.raises(FileNotFoundError, match="missing.safetensors does not exist"):
        create_features("dinov2", weights=tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)dinov2.safetensors does not match .*missing keys.*: blocks.1."):
        create_features("dinov2", weights=path, model_name=VIT_NAME, img_size=56,
                        model_kwargs=dict(TINY_VIT, depth=2), device="cpu")


def test_bad_images_are_refused(tiny_dinov2):
    _, path = tiny_dinov2
    fx = create_features("dinov2", weights=path, model_name=VIT_NAME, img_size=56, model_kwargs=TINY_VIT,
                         device="cpu")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got values in \[-1.000"):
        fx.extract(torch.full((1, 3, 8, 8), -1.0))
    with pytest.raises(ValueError, match="expected float images"):
        fx.extract(torch.zeros((1, 3, 8, 8), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"expected a torch tensor \[B, 3, H, W\], got \(3, 8, 8\)"):
        fx.extract(torch.zeros(3, 8, 8))


def test_clip_embeddings_match_encode_image(tmp_path):
    import open_clip

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP).eval()
    path = save(model, tmp_path / "clip.safetensors")
    fx = create_features("clip", weights=path, model_cfg=TINY_CLIP, device="cpu")
    images = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = model.encode_image((images - mean) / std, normalize=True).numpy()
    got = fx.extract(images)
    assert got.shape == (3, 16) and fx.dim == 16
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    assert fx.extract(torch.rand(2, 3, 48, 64)).shape == (2, 16)  # shorter side resized, centre crop


def test_inception_pool_features_match_the_model_and_drop_torchvision_aux_logits(tmp_path):
    import timm

    model = quick_random(lambda: timm.create_model("inception_v3.tv_in1k", pretrained=False))
    aux = {"AuxLogits.fc.weight": torch.zeros(1000, 768)}  # present in torchvision files, not in timm's model
    path = save(model, tmp_path / "inception.safetensors", extra=aux)
    fx = create_features("inception", weights=path, img_size=75, device="cpu")
    images = torch.rand(1, 3, 75, 75)  # one small image: InceptionV3 is the slowest model in this file
    model.reset_classifier(0)
    with torch.no_grad():
        ref = model((images - 0.5) / 0.5).numpy()  # timm's tv_in1k config: mean = std = 0.5
    got = fx.extract(images)
    assert got.shape == (1, 2048) and fx.dim == 2048
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)


def test_shapes_clip_reward_and_features_adapt_the_testbed_loader_with_unchanged_outputs(tmp_path):
    """Both `shapes-clip` adapters load through `ttsvar.testbed.clip.load_shapes_clip` and give what the generic
    open_clip paths they replaced give on the same file: CLIPScore with the model's logit scale (area squash) and
    the `clip` features."""
    import json

    from rewards import create_reward
    from rewards.clip_score import CLIPScore
    from ttsvar.testbed.clip import ShapesTokenizer, build_shapes_clip, save_shapes_clip

    torch.manual_seed(0)
    weights, config = save_shapes_clip(build_shapes_clip(), tmp_path / "mini", {})
    cfg = json.loads(config.read_text())["model_cfg"]
    images = torch.rand(5, 3, 48, 40)
    prompts = ["a photo of a red circle", "a photo of two squares", "a photo of a red circle",
               "a photo of a blue triangle", "a photo of two squares"]

    fx = create_features("shapes-clip", weights=str(weights), device="cpu", batch_size=2)
    generic = create_features("clip", weights=str(weights), model_cfg=cfg, device="cpu")
    assert fx.dim == generic.dim == cfg["embed_dim"]
    np.testing.assert_allclose(fx.extract(images), generic.extract(images), rtol=0, atol=1e-6)

    reward = create_reward("shapes-clip", weights=str(weights))
    clip_score = CLIPScore(model="shapes-clip", pretrained=str(weights), model_config=cfg,
                           tokenizer=ShapesTokenizer(), scale="model",
                           preprocess_cfg={"interpolation": "area", "resize_mode": "squash"})
    torch.testing.assert_close(reward.score(images, prompts), clip_score.score(images, prompts), rtol=0, atol=1e-5)
    assert reward.device == torch.device("cpu") and reward.score_scale == 4.42
