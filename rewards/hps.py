"""HPS v2.1 (tgxs002/HPSv2): human-preference score from an open_clip ViT-H-14 fine-tuned on HPD v2.

File: ``HPS_v2.1_compressed.pt`` (hub repo xswu/HPSv2; ``{'state_dict': ...}`` with open_clip key names);
``version="2.0"`` takes ``HPS_v2_compressed.pt``. Score as in ``hpsv2.score``: cosine between the
unit-norm image and prompt embeddings (no logit scale). Preprocessing as HPS's validation transform:
the long side is resized to 224 (bicubic) and the short side zero-padded (before normalisation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.base import Reward, parse_dtype
from rewards.open_clip_loader import encode_prompts, load_open_clip
from rewards.registry import register_reward
from rewards.weights import find_file

HPS_FILES = {"2.1": "HPS_v2.1_compressed.pt", "2.0": "HPS_v2_compressed.pt"}


@register_reward("hpsv2.1")
class HPSv2(Reward):
    name = "hpsv2.1"
    needs_prompt = True

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        weights_dir: str | None = None,
        version: str = "2.1",
        model: str = "ViT-H-14",
        model_config: dict | str | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        super().__init__()
        if version not in HPS_FILES:
            raise ValueError(f"version={version!r}; use one of {sorted(HPS_FILES)}")
        fname = HPS_FILES[version]
        ckpt = find_file(
            f"HPS v{version} checkpoint",
            explicit=checkpoint,
            weights_dir=weights_dir,
            names=[fname, f"HPSv2/{fname}"],
            hf=[("xswu/HPSv2", fname)],
            hint="download it from https://huggingface.co/xswu/HPSv2",
            option="checkpoint",
        )
        self.name = f"hpsv{version}"
        self.dtype = parse_dtype(dtype)
        bundle = load_open_clip(
            model,
            str(ckpt),
            model_config=model_config,
            quick_gelu=False,
            preprocess_cfg={"resize_mode": "longest"},
            device=device,
            dtype=self.dtype,
        )
        self.clip = bundle.model
        self.bundle = bundle
        self.transform = bundle.transform
        self.input_size = bundle.transform.size

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        device = self.device
        img = self.clip.encode_image(self.transform(images, device, self.dtype), normalize=True)
        txt = encode_prompts(self.bundle, prompts, device)
        return (img.float() * txt.float()).sum(-1)
