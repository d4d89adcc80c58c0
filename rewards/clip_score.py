"""CLIPScore through open_clip: ``scale * cos(image embedding, prompt embedding)``.

Any open_clip architecture works: a built-in name (``model="ViT-L-14"``) or a custom config
(``model_config=<dict or JSON path>``), with weights from a local file or a pretrained tag looked up
in ``weights_dir``. With ``clamp=True`` and ``scale=100`` this is torchmetrics' CLIPScore
(``100 * max(cos, 0)``; Hessel et al. use ``2.5 * max(cos, 0)``). The default does not clamp, so that
the search can still rank candidates whose cosine is negative. ``scale="model"`` uses the model's own
learned ``logit_scale.exp() * cos + logit_bias`` (the bias only where the model has one, as SigLIP-style
models do): the logit of the pair. ``preprocess_cfg`` overrides the preprocessing (``mean``, ``std``,
``interpolation``, ``resize_mode``; see ``rewards.preprocess``).

Class-conditional jobs: ``class_template="a photo of a {}"`` makes the reward read class prompts (the class
index as text, ``"207"``, see ``ttsvar.core.classes``) and score each image against the template filled with the
class's short name (``class_names``: one name per class; default the ImageNet-1k list shipped with ttsvar, whose
first names are WordNet lemmas such as ``golden retriever``). Without it the reward reads text prompts.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.base import Reward, RewardInputError, parse_dtype
from rewards.open_clip_loader import Tokenize, encode_prompts, load_open_clip
from rewards.registry import register_reward
from ttsvar.core.classes import imagenet_classes, parse_class_prompt


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
        class_template: str | None = None,
        class_names: list[str] | None = None,
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
        self.class_template, self.class_names = None, None
        if class_template is not None:
            if not isinstance(class_template, str) or class_template.count("{}") != 1:
                raise ValueError(f"class_template={class_template!r} must be a string with one '{{}}' for the class "
                                 "name, e.g. 'a photo of a {}'")
            names = class_names if class_names is not None else \
                [imagenet_classes().name(k) for k in range(len(imagenet_classes()))]
            if not names or not all(isinstance(x, str) and x.strip() for x in names):
                raise ValueError("class_names must be a non-empty list of class names (one per class index)")
            self.class_template, self.class_names = class_template, list(names)
            self.conditioning = "class"
        elif class_names is not None:
            raise ValueError("class_names is used only with class_template (e.g. class_template='a photo of a {}')")

    def class_texts(self, prompts: list[str] | None) -> list[str] | None:
        """The texts a class prompt stands for (the template with the class name); others unchanged."""
        if self.class_template is None or prompts is None:
            return prompts
        out = []
        for i, p in enumerate(prompts):
            k = parse_class_prompt(p, len(self.class_names))
            if k is None:
                raise RewardInputError(
                    f"reward '{self.name}' with class_template: prompt {i} ({p!r}) is not a class index in "
                    f"[0, {len(self.class_names)}); it scores class-conditional jobs")
            out.append(self.class_template.format(self.class_names[k]))
        return out

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        device = self.device
        img = self.clip.encode_image(self.transform(images, device, self.dtype), normalize=True)
        txt = encode_prompts(self.bundle, self.class_texts(prompts), device)
        cos = (img.float() * txt.float()).sum(-1)
        cos = cos.clamp_min(0.0) if self.clamp else cos
        if self.scale != "model":
            return self.scale * cos
        bias = getattr(self.clip, "logit_bias", None)
        logits = self.clip.logit_scale.exp().float() * cos
        return logits + bias.float() if bias is not None else logits
