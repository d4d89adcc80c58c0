"""LAION aesthetic predictor (christophschuhmann/improved-aesthetic-predictor), prompt-free.

An MLP over the unit-norm CLIP ViT-L/14 image embedding (OpenAI weights), predicting the 1-10 rating.
Files: the MLP ``sac+logos+ava1-l14-linearMSE.pth`` (keys ``layers.{0,2,4,6,7}.*``) and the CLIP
weights in open_clip format, e.g. ``open_clip_model.safetensors`` of
``timm/vit_large_patch14_clip_224.openai``
(``clip_pretrained="openai"`` looks it up in ``weights_dir``; OpenAI's original ``ViT-L-14.pt`` is a
TorchScript archive and cannot be loaded with ``weights_only=True``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from rewards.base import Reward, parse_dtype
from rewards.imagereward_model import RewardMLP
from rewards.open_clip_loader import load_open_clip
from rewards.registry import register_reward
from rewards.weights import find_file, load_strict, read_state_dict

MLP_FILE = "sac+logos+ava1-l14-linearMSE.pth"


# The LAION aesthetic predictor's MLP is the same stack as ImageReward's head (same layers, same keys).
AestheticMLP = RewardMLP


@register_reward("aesthetic")
class AestheticScore(Reward):
    name = "aesthetic"
    needs_prompt = False

    def __init__(
        self,
        checkpoint: str | None = None,
        *,
        clip_model: str = "ViT-L-14",
        clip_pretrained: str | None = "openai",
        clip_model_config: dict | str | None = None,
        weights_dir: str | None = None,
        quick_gelu: bool | None = None,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        super().__init__()
        ckpt = find_file(
            "aesthetic predictor MLP",
            explicit=checkpoint,
            weights_dir=weights_dir,
            names=[MLP_FILE, f"aesthetic/{MLP_FILE}"],
            hint="from https://github.com/christophschuhmann/improved-aesthetic-predictor",
            option="checkpoint",
        )
        self.dtype = parse_dtype(dtype)
        from pathlib import Path

        pretrained_file = clip_pretrained is not None and Path(str(clip_pretrained)).expanduser().is_file()
        if quick_gelu is None and pretrained_file and not (Path(str(clip_pretrained)).expanduser().parent
                                                           / "open_clip_config.json").is_file():
            # the predictor was fitted on OpenAI's ViT-L/14, which uses QuickGELU; ViT-L-14's open_clip config
            # says GELU, so a bare file would score with the wrong activation, silently
            quick_gelu = True
        bundle = load_open_clip(
            clip_model,
            clip_pretrained,
            model_config=clip_model_config,
            weights_dir=weights_dir,
            quick_gelu=quick_gelu,
            device=device,
            dtype=self.dtype,
        )
        self.clip = bundle.model
        self.transform = bundle.transform
        self.input_size = bundle.transform.size
        sd = read_state_dict(ckpt)
        w0 = sd.get("layers.0.weight")
        embed_dim = getattr(self.clip.visual, "output_dim", None)
        if w0 is not None and embed_dim is not None and w0.shape[1] != embed_dim:
            raise ValueError(
                f"{ckpt} expects {w0.shape[1]}-d CLIP embeddings but {clip_model} gives {embed_dim}-d; "
                "the LAION predictor needs CLIP ViT-L/14"
            )
        self.mlp = AestheticMLP(w0.shape[1] if w0 is not None else 768)
        load_strict(self.mlp, sd, ckpt)
        self.mlp.to(device).eval()

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        emb = self.clip.encode_image(self.transform(images, self.device, self.dtype), normalize=True)
        return self.mlp(emb.float())[:, 0]
