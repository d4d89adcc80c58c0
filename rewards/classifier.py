"""An ImageNet classifier as the reward of class-conditional search: ``log p(target class | image)``.

The classifier is any timm architecture (``model``, default ``vit_base_patch16_224``), built with
``timm.create_model(model, pretrained=False, num_classes=num_classes)`` and loaded strictly from the local file
``weights`` (safetensors, or a tensors-only torch file); nothing downloads. Why that default: timm's default tag
of it (``augreg2_in21k_ft_in1k``, 85.1% ImageNet top-1 at 224 px, 86M parameters) is one ``model.safetensors``
in the Hugging Face repo ``timm/vit_base_patch16_224.augreg2_in21k_ft_in1k``; it is not the Inception network of
FID/IS, so a search does not optimise the evaluation metric's own network; and at 224 px it is cheap next to the
generator's forward passes. Any other ImageNet timm model works with ``model=`` and its weights.

Preprocessing comes from the architecture's timm pretrained config (``timm.data.resolve_data_config``: input
size, ``crop_pct``, interpolation, mean and std; the ViT above uses mean = std = 0.5, not ImageNet's): resize the
short side to ``size / crop_pct``, center crop to ``size``, normalise. ``preprocess_cfg`` overrides any of
``input_size`` (an int side), ``crop_pct``, ``interpolation`` (bicubic / bilinear), ``mean``, ``std``; without a
timm config the ImageNet mean/std, 224 px and ``crop_pct`` 0.875 are used.

The target class: the engine passes a class prompt as its index written as text (``"207"``, see
``ttsvar.core.classes``); any other prompt is a ``RewardInputError``. Scores are log-probabilities (<= 0; higher is
better); their spread over generated images is not declared (set ``reward.score_scale`` for potentials).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from torch import Tensor

from rewards.base import Reward, RewardInputError, parse_dtype
from rewards.registry import register_reward
from ttsvar.core.checkpoint import load_strict, read_state_dict
from ttsvar.core.classes import parse_class_prompt
from ttsvar.core.errors import ConfigError, MissingFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_PREPROCESS_KEYS = ("input_size", "crop_pct", "interpolation", "mean", "std")


def _check_weights(weights, model: str) -> Path:
    if not weights:
        raise ConfigError(f"reward 'classifier' needs reward.options.weights: the local weights file of the timm "
                          f"model {model!r} (reward.options.model) trained on ImageNet, e.g. model.safetensors "
                          f"from huggingface.co/timm/{model}.<tag>; nothing downloads")
    path = Path(str(weights)).expanduser()
    if not path.is_file():
        raise MissingFileError(f"reward.options.weights={weights!r} does not exist: it should be the weights file of "
                               f"the timm model {model!r}")
    return path


def timm_preprocess(net, overrides: dict | None = None) -> dict:
    """input_size (int), crop_pct, interpolation, mean, std: timm's pretrained config of `net`, else ImageNet
    defaults, then `overrides`."""
    cfg = {"input_size": 224, "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_MEAN,
           "std": IMAGENET_STD}
    try:
        from timm.data import resolve_data_config

        dc = resolve_data_config(model=net)
        cfg.update(input_size=int(dc["input_size"][-1]), crop_pct=float(dc.get("crop_pct") or 1.0),
                   interpolation=dc.get("interpolation") or "bicubic", mean=tuple(dc["mean"]), std=tuple(dc["std"]))
    except Exception:  # noqa: BLE001 - no timm config for this model: the ImageNet defaults
        pass
    unknown = set(overrides or {}) - set(_PREPROCESS_KEYS)
    if unknown:
        raise ValueError(f"preprocess_cfg: unknown keys {sorted(unknown)}; allowed: {list(_PREPROCESS_KEYS)}")
    cfg.update(overrides or {})
    if cfg["interpolation"] not in ("bicubic", "bilinear"):
        raise ValueError(f"preprocess_cfg.interpolation={cfg['interpolation']!r}; use bicubic or bilinear")
    if not 0 < float(cfg["crop_pct"]) <= 1:
        raise ValueError(f"preprocess_cfg.crop_pct={cfg['crop_pct']!r} must be in (0, 1]")
    cfg["input_size"], cfg["crop_pct"] = int(cfg["input_size"]), float(cfg["crop_pct"])
    cfg["mean"], cfg["std"] = tuple(float(x) for x in cfg["mean"]), tuple(float(x) for x in cfg["std"])
    return cfg


@register_reward("classifier")
class ClassifierReward(Reward):
    """``log softmax(classifier(image))[class]``; options: ``weights`` (required, a local file), ``model`` (a timm
    name), ``num_classes``, ``model_kwargs`` (more `timm.create_model` keywords), ``preprocess_cfg``, ``device``,
    ``dtype``."""

    name = "classifier"
    needs_prompt = True
    conditioning = "class"

    @classmethod
    def check_options(cls, **options) -> None:
        """The weights file must be named and exist (checked before the generator loads)."""
        _check_weights(options.get("weights"), options.get("model", "vit_base_patch16_224"))

    def __init__(
        self,
        weights: str | None = None,
        model: str = "vit_base_patch16_224",
        *,
        num_classes: int = 1000,
        model_kwargs: dict | None = None,
        preprocess_cfg: dict | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        super().__init__()
        import timm

        path = _check_weights(weights, model)
        try:
            net = timm.create_model(model, pretrained=False, num_classes=int(num_classes), **(model_kwargs or {}))
        except RuntimeError as e:  # timm: "Unknown model (...)"
            raise ConfigError(f"reward.options.model={model!r}: {e}") from None
        sd = read_state_dict(path, nested_key="state_dict")
        load_strict(net, sd, path, hint=f"Expected the weights of timm's {model!r} with {num_classes} classes; "
                                        "check reward.options.model and num_classes against the file.")
        self.dtype = parse_dtype(dtype)
        self.net = net.to(device=device, dtype=self.dtype).eval().requires_grad_(False)
        self.num_classes = int(num_classes)
        self.pre = timm_preprocess(net, preprocess_cfg)
        self.input_size = self.pre["input_size"]

    def transform(self, images: Tensor) -> Tensor:
        """[B,3,H,W] in [0,1] -> the classifier's normalised input (short side to size / crop_pct, center crop)."""
        size, p = self.pre["input_size"], self.pre
        scale = int(size / p["crop_pct"])
        h, w = images.shape[-2:]
        if (h, w) != (size, size):
            nh, nw = (scale, max(scale, round(w * scale / h))) if h <= w else (max(scale, round(h * scale / w)), scale)
            if (nh, nw) != (h, w):
                images = F.interpolate(images.float(), size=(nh, nw), mode=p["interpolation"], antialias=True,
                                       align_corners=False).clamp(0, 1)
            images = TF.center_crop(images, [size, size])
        mean = torch.tensor(p["mean"], device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(p["std"], device=images.device).view(1, 3, 1, 1)
        return (images.float() - mean) / std

    def targets(self, prompts: list[str] | None) -> list[int]:
        out = []
        for i, p in enumerate(prompts or []):
            k = parse_class_prompt(p, self.num_classes)
            if k is None:
                raise RewardInputError(
                    f"reward 'classifier': prompt {i} ({p!r}) is not a class index in [0, {self.num_classes}); it "
                    "scores class-conditional jobs (prompts that name a class), not text prompts")
            out.append(k)
        return out

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        target = torch.tensor(self.targets(prompts), device=images.device)
        x = self.transform(images).to(device=self.device, dtype=self.dtype)
        logp = self.net(x).float().log_softmax(-1)
        return logp.gather(1, target.to(logp.device)[:, None])[:, 0]
