"""CLIPScore through open_clip: ``scale * cos(image embedding, prompt embedding)``.

Any open_clip architecture works: a built-in name (``model="ViT-L-14"``) or a custom config
(``model_config=<dict or JSON path>``), with weights from a local file or a pretrained tag looked up
in ``weights_dir``. With ``clamp=True`` and ``scale=100`` this is torchmetrics' CLIPScore
(``100 * max(cos, 0)``; Hessel et al. use ``2.5 * max(cos, 0)``). The default does not clamp, so that
the search can still rank candidates whose cosine is negative. ``scale="model"`` uses the model's own
learned ``logit_scale.exp() * cos + logit_bias`` (the bias only where the model has one, as SigLIP-style
models do): the logit of the pair. ``preprocess_cfg`` overrides the preprocessing (``mean``, ``std``,
``interpolation``, ``resize_mode``; see ``rewards.preprocess``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.base import Reward, parse_dtype
from rewards.open_clip_loader import Tokenize, encode_prompts, load_open_clip
from rewards.registry import register_reward


@register_reward("clip-score")
class CLIPScore(Reward):
    name = "clip-score"
    needs_prompt = True

    def __init__(
        self,
        model: str = "ViT-L-14",
        pretrained: str | None = None,
        *,
        model_config: dict | str | None = None,
        weights_dir: str | None = None,
        tokenizer: Tokenize | None = None,
        quick_gelu: bool | None = None,
        preprocess_cfg: dict | None = None,
        scale: float | str = 100.0,
        clamp: bool = False,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        super().__init__()
        if scale != "model" and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
            raise ValueError(f"scale must be a number or 'model' (the learned logit scale), got {scale!r}")
        self.dtype = parse_dtype(dtype)
        bundle = load_open_clip(
            model,
            pretrained,
            model_config=model_config,
            weights_dir=weights_dir,
            quick_gelu=quick_gelu,
            tokenizer=tokenizer,
            preprocess_cfg=preprocess_cfg,
            device=device,
            dtype=self.dtype,
        )
        self.clip = bundle.model
        self.bundle = bundle
        self.transform = bundle.transform
        self.input_size = bundle.transform.size
        self.scale = scale if scale == "model" else float(scale)
        self.clamp = bool(clamp)

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        device = self.device
        img = self.clip.encode_image(self.transform(images, device, self.dtype), normalize=True)
        txt = encode_prompts(self.bundle, prompts, device)
        cos = (img.float() * txt.float()).sum(-1)
        cos = cos.clamp_min(0.0) if self.clamp else cos
        if self.scale != "model":
            return self.scale * cos
        bias = getattr(self.clip, "logit_bias", None)
        logits = self.clip.logit_scale.exp().float() * cos
        return logits + bias.float() if bias is not None else logits
