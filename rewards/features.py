"""Semantic features of decoded previews, for TTS-VAR's clustering-based diversity search.

    from rewards import create_features
    fx = create_features("dinov2", weights="/models/dinov2_vitl14_reg4.safetensors", mode="pca")
    feats = fx.extract(images)   # images: torch [B, 3, H, W] in [0, 1] -> np.float32 [B, fx.dim]

They live beside the rewards (not in `search`) because both are image models behind a registry, loaded from
local files with the same checkpoint code; `search` stays numpy-only. The engine calls `extract` on the
previews of one decision scale; strategies only see the numpy result.

Weights come from a local file named by the user (safetensors, or a tensors-only torch pickle); nothing
is downloaded. Architectures come from timm / open_clip; a wrong or incomplete file raises an error naming
the file and the keys.

Facts from the official code (ali-vilab/TTS-VAR `extract_k_ids`): DINOv2 ViT-L/14 with registers (torch
hub `dinov2_vitl14_reg`), previews resized to 224x224 (16 x 14 patches) with ImageNet mean/std,
`x_norm_patchtokens` [B, 256, 1024]; "pca": per image, centre the 256 patch tokens, project them on their
first principal component -> a 256-d feature; "pool": mean of the patch tokens -> 1024-d; "inception":
torchvision InceptionV3 at 299x299, fc removed -> 2048-d pool features. The official PCA takes the
principal direction's sign from `torch.svd` (arbitrary); we fix it (largest-magnitude projection
positive) so features are reproducible.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rewards.base import parse_dtype
from ttsvar.core.checkpoint import load_strict, read_state_dict
from ttsvar.core.errors import MissingFileError

_FEATURES: dict[str, type[FeatureExtractor]] = {}


def register_features(name: str) -> Callable[[type], type]:
    """Class decorator adding a FeatureExtractor subclass to the registry under `name`."""

    def deco(cls: type) -> type:
        if name in _FEATURES and _FEATURES[name] is not cls:
            raise ValueError(f"feature extractor {name!r} is already registered by "
                             f"{_FEATURES[name].__qualname__}")
        cls.name = name
        _FEATURES[name] = cls
        return cls

    return deco


def list_features() -> list[str]:
    return sorted(_FEATURES)


def features_class(name: str) -> type:
    """The class registered as `name`, or named by an import path `package.module:Class` (a config naming user
    code: `search.features=my_pkg.feats:Edges`), which is imported and registered under that path. Unknown
    names raise, listing the registered ones."""
    if name in _FEATURES:
        return _FEATURES[name]
    if isinstance(name, str) and ":" in name:
        from ttsvar.core.plugins import load_import_path

        cls = load_import_path(name, "feature extractor")
        if not (isinstance(cls, type) and callable(getattr(cls, "extract", None))):
            raise TypeError(f"feature extractor import path {name!r} names {cls!r}, not a class with "
                            "extract(images) -> np.ndarray [B, D] (subclass rewards.FeatureExtractor)")
        return cls if any(v is cls for v in _FEATURES.values()) else register_features(name)(cls)
    raise ValueError(f"unknown feature extractor {name!r}; available: {list_features()} (or an import path "
                     "'package.module:Class')")


def create_features(name: str, **opts: Any) -> FeatureExtractor:
    """Build the feature extractor registered as `name` (or named by an import path, `features_class`); unknown
    names/options raise, listing valid ones."""
    cls = features_class(name)
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        raise ValueError(f"feature extractor {name!r} has no option(s) {unknown}; its options are {accepted}")
    return cls(**opts)


def first_pc_projection(tokens: torch.Tensor) -> torch.Tensor:
    """Per image, centre the tokens and project them on their first principal component (float64).

    tokens [B, L, D] -> [B, L]. The projection equals U[:, 0] * S[0] of the centred tokens' SVD; we get it
    from the top eigenpair of the L x L Gram matrix. Sign convention: the entry of largest magnitude is
    positive.
    """
    x = tokens.double()
    x = x - x.mean(dim=1, keepdim=True)  # [B, L, D]
    gram = x @ x.transpose(1, 2)  # [B, L, L]
    evals, evecs = torch.linalg.eigh(gram)  # ascending eigenvalues
    scores = evecs[..., -1] * evals[..., -1].clamp_min(0).sqrt()[:, None]  # [B, L]
    pivot = scores.gather(1, scores.abs().argmax(dim=1, keepdim=True))  # [B, 1]
    return scores * torch.where(pivot < 0, -1.0, 1.0).to(scores)


class FeatureExtractor(ABC):
    """Images -> one feature vector per image. Subclasses implement `features` on a preprocessed chunk."""

    name: ClassVar[str] = ""
    dim: int  # feature size F

    def __init__(self, device: str | torch.device | None, dtype: str, batch_size: int) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size: {batch_size!r} must be a positive integer")
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.dtype = parse_dtype(dtype)
        self.batch_size = batch_size

    @abstractmethod
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """images [b, 3, H, W] in [0, 1] on self.device -> [b, F] (any float dtype)."""

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> np.ndarray:
        """Features of `images` (torch [B, 3, H, W], values in [0, 1]) as float32 numpy [B, F]."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"{self.name}: expected a torch tensor [B, 3, H, W], got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"{self.name}: expected float images in [0, 1], got {images.dtype} "
                             "(convert uint8 images with x.float() / 255)")
        if images.shape[0] == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if images.numel():
            lo, hi = float(images.amin()), float(images.amax())
            if lo < -1e-3 or hi > 1 + 1e-3:
                raise ValueError(f"{self.name}: images must lie in [0, 1], got values in "
                                 f"[{lo:.3f}, {hi:.3f}] (map [-1, 1] decoder output with (x + 1) / 2)")
        out = [self.features(chunk.to(self.device, torch.float32)).float().cpu()
               for chunk in images.split(self.batch_size)]
        return torch.cat(out).numpy().astype(np.float32, copy=False)

    def _to(self, model: nn.Module) -> nn.Module:
        return model.to(self.device, self.dtype).eval().requires_grad_(False)


def _normalize(x: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def _load_on_meta(build: Callable[[], nn.Module], path: Path, adapt: Callable[[dict, nn.Module], dict],
                  keep: Callable[[nn.Module], nn.Module] = lambda m: m) -> nn.Module:
    """Build the architecture on the meta device (no random init: seconds saved for ViT-L) and assign the
    file's tensors strictly; `keep` selects the submodule we use, which must then hold no meta tensor."""
    with torch.device("meta"):
        model = build()
    load_strict(model, read_state_dict(path), path, adapt=adapt, assign=True)
    kept = keep(model)
    left = [n for n, t in [*kept.named_parameters(), *kept.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{path}: {type(kept).__name__} tensors missing from the checkpoint: {left[:8]}")
    return kept


def _check_file(weights: str | Path | None, what: str) -> Path:
    if weights is None:
        raise ValueError(f"weights: {what} needs the path of a local weights file (nothing is downloaded)")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise MissingFileError(f"weights: {path} does not exist; pass the local path of the {what} weights")
    return path


@register_features("dinov2")
class DINOv2Features(FeatureExtractor):
    """DINOv2 ViT with registers (timm `vit_large_patch14_reg4_dinov2.lvd142m` by default).

    `mode="pca"` (the paper's): first-principal-component projection of the patch tokens -> (img_size/14)^2
    values; `mode="mean"`: mean patch token -> embed_dim values. Previews are resized to `img_size` (224, as
    the official code). `weights`: timm-format or original Meta DINOv2 checkpoint (converted by timm's
    filter).
    `model_kwargs` override the architecture (tests build tiny random models this way).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        mode: str = "pca",
        model_name: str = "vit_large_patch14_reg4_dinov2.lvd142m",
        img_size: int = 224,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(device, dtype, batch_size)
        if mode not in ("pca", "mean"):
            raise ValueError(f"mode: {mode!r} is not one of ['pca', 'mean']")
        path = _check_file(weights, "DINOv2")
        import timm
        from timm.models.vision_transformer import checkpoint_filter_fn

        model = _load_on_meta(lambda: timm.create_model(model_name, pretrained=False, img_size=img_size,
                                                         num_classes=0, **(model_kwargs or {})),
                              path, adapt=checkpoint_filter_fn)
        self.model = self._to(model)
        self.mode = mode
        self.img_size = img_size
        self.mean, self.std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
        grid = model.patch_embed.grid_size
        self.dim = grid[0] * grid[1] if mode == "pca" else model.embed_dim

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised patch tokens [b, L, D] (the official `x_norm_patchtokens`); registers, CLS dropped."""
        x = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                          align_corners=False)
        x = _normalize(x, self.mean, self.std).to(self.dtype)
        tokens = self.model.forward_features(x)  # [b, prefix + L, D], final norm applied
        return tokens[:, self.model.num_prefix_tokens:]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_tokens(images)
        return first_pc_projection(tokens) if self.mode == "pca" else tokens.float().mean(dim=1)


@register_features("clip")
class CLIPFeatures(FeatureExtractor):
    """open_clip image embeddings (L2-normalised unless `normalize=False`).

    The architecture is `model_cfg` (an open_clip model config dict: embed_dim, vision_cfg, text_cfg; for tiny
    or custom towers) or else the open_clip config named `model_name`. Previews are resized (bicubic,
    shorter side) and centre-cropped to the tower's image size, then normalised with the config's
    `preprocess_cfg` mean/std (OpenAI's by default). Only the image tower is kept after loading.
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        model_name: str = "ViT-L-14",
        model_cfg: dict[str, Any] | None = None,
        normalize: bool = True,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(device, dtype, batch_size)
        path = _check_file(weights, "CLIP")
        import open_clip

        cfg = dict(model_cfg) if model_cfg is not None else open_clip.get_model_config(model_name)
        if cfg is None:
            raise ValueError(f"model_name: {model_name!r} is not an open_clip architecture; pass model_cfg "
                             "or one of open_clip.list_models()")
        preprocess = cfg.pop("preprocess_cfg", {}) or {}
        cls = open_clip.CustomTextCLIP if cfg.pop("custom_text", False) else open_clip.CLIP
        visual = _load_on_meta(lambda: cls(**cfg), path, adapt=_adapt_open_clip, keep=lambda m: m.visual)
        self.visual = self._to(visual)
        self.transform = CLIPInput(visual.image_size, preprocess.get("mean", open_clip.OPENAI_DATASET_MEAN),
                                   preprocess.get("std", open_clip.OPENAI_DATASET_STD))
        self.normalize = normalize
        self.dim = visual.output_dim

    def features(self, images: torch.Tensor) -> torch.Tensor:
        emb = self.visual(self.transform(images, self.device, self.dtype)).float()
        return F.normalize(emb, dim=-1) if self.normalize else emb


class CLIPInput:
    """What `CLIPFeatures` feeds an open_clip image tower: the shorter side resized (bicubic, antialiased), a
    centre crop to the tower's size, mean/std normalisation. Callable as ``(images, device, dtype)``, the
    signature of `rewards.preprocess.ImageTransform` and of `ttsvar.testbed.clip.ShapesCLIP`'s transform."""

    def __init__(self, image_size: int | tuple[int, int] | list[int], mean: Any, std: Any) -> None:
        self.image_size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        self.mean, self.std = mean, std

    def __call__(self, images: torch.Tensor, device: torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
        x = _resize_shorter_center_crop(images.to(device, torch.float32), self.image_size)
        return _normalize(x, self.mean, self.std).to(dtype)


@register_features("inception")
class InceptionFeatures(FeatureExtractor):
    """InceptionV3 2048-d pool features (timm `inception_v3.tv_in1k`, the torchvision weights, by default).

    Previews are resized to `img_size` (299, as the official code) and normalised with the timm config's
    mean/std. `weights`: timm or torchvision checkpoint (the torchvision auxiliary classifier is dropped).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        model_name: str = "inception_v3.tv_in1k",
        img_size: int = 299,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(device, dtype, batch_size)
        path = _check_file(weights, "InceptionV3")
        import timm

        # with its 1000-way fc, as in the file
        model = _load_on_meta(lambda: timm.create_model(model_name, pretrained=False), path,
                              adapt=_adapt_inception)
        model.reset_classifier(0)  # keep the global-pool output
        self.model = self._to(model)
        self.img_size = img_size
        self.mean, self.std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
        self.dim = model.num_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images, size=(self.img_size, self.img_size), mode="bilinear", antialias=True,
                          align_corners=False)
        return self.model(_normalize(x, self.mean, self.std).to(self.dtype))


def _resize_shorter_center_crop(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    h, w = images.shape[-2:]
    scale = max(size[0] / h, size[1] / w)
    nh, nw = max(size[0], round(h * scale)), max(size[1], round(w * scale))
    x = F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return x[..., top:top + size[0], left:left + size[1]].clamp(0, 1)


def _adapt_open_clip(state_dict: dict, model: nn.Module) -> dict:
    """open_clip training checkpoints wrap the weights in "state_dict" and may prefix them with "module."."""
    sd = state_dict.get("state_dict", state_dict)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def _adapt_inception(state_dict: dict, model: nn.Module) -> dict:
    """torchvision InceptionV3 files carry the auxiliary classifier, which timm's model omits."""
    if getattr(model, "AuxLogits", None) is None:
        return {k: v for k, v in state_dict.items() if not k.startswith("AuxLogits.")}
    return state_dict


@register_features("shapes-clip")
class ShapesCLIPFeatures(FeatureExtractor):
    """Image embeddings of the testbed's tiny CLIP (shipped with ttsvar): `shapes-tiny`'s clustering features.

    A thin adapter: `ttsvar.testbed.clip.load_shapes_clip` loads and runs the model (the `shapes-clip` reward
    adapts the same loader); this class only chooses the input transform. `weights`: the `.safetensors` of a
    saved shapes CLIP, with its `.json` beside it (default: the shipped pair).
    """

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str | torch.device | None = None,
        dtype: str = "float32",
        batch_size: int = 32,
    ) -> None:
        super().__init__(device, dtype, batch_size)
        import open_clip

        from ttsvar.testbed.clip import load_shapes_clip

        self.clip = load_shapes_clip(weights, self.device, self.dtype)
        # CLIPFeatures' input: bicubic resize and OpenAI CLIP's statistics, not the shapes-world ones the model was
        # trained with; kept because the clustering results in docs/ were measured with it
        visual = self.clip.model.visual
        self.clip.transform = CLIPInput(visual.image_size, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
        self.dim = int(visual.output_dim)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_images(images)
