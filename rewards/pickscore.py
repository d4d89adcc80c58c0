"""PickScore v1 (yuvalkirstain/PickScore): a CLIP-H fine-tuned on Pick-a-Pic, in the Hugging Face format.

Folders (nothing is downloaded):

* ``model_dir``: ``yuvalkirstain/PickScore_v1`` (``config.json`` + weights), loaded with
  ``transformers.CLIPModel``; missing or wrong-shaped weights raise instead of being initialised randomly;
* ``processor_dir``: the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (tokenizer files and
  ``preprocessor_config.json``), as in PickScore's README. Defaults to ``model_dir`` when that holds them.

Score as in the README: ``logit_scale.exp() * cos(image embedding, prompt embedding)``. Images go
through the processor's geometry (resize short side, center crop, mean/std) on tensors.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from rewards.base import Reward, parse_dtype
from rewards.preprocess import ImageTransform
from rewards.registry import register_reward
from rewards.weights import CheckpointError, find_dir

MODEL_REPO = "yuvalkirstain/PickScore_v1"
PROCESSOR_REPO = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
TOKENIZER_FILES = ["tokenizer.json", "vocab.json"]
# buffers older transformers versions saved; harmless when present in a checkpoint
_BENIGN_UNEXPECTED = re.compile(r"(text_model|vision_model)\.embeddings\.position_ids")
_RESAMPLE = {3: "bicubic", 2: "bilinear", 0: "nearest"}


def _size(value, key: str) -> int:
    if isinstance(value, int):
        return value
    v = dict(value)
    if key in v and v[key]:
        return int(v[key])
    if v.get("height") and v.get("height") == v.get("width"):
        return int(v["height"])
    raise ValueError(f"unsupported image processor size {value!r}")


@register_reward("pickscore")
class PickScore(Reward):
    name = "pickscore"
    needs_prompt = True

    def __init__(
        self,
        model_dir: str | None = None,
        processor_dir: str | None = None,
        *,
        weights_dir: str | None = None,
        max_length: int = 77,
        device: str | torch.device = "cpu",
        dtype: str = "float32",
    ):
        super().__init__()
        from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

        mdir = find_dir(
            "PickScore model",
            explicit=model_dir,
            weights_dir=weights_dir,
            names=["PickScore_v1"],
            must_contain=["config.json"],
            hf_repo=MODEL_REPO,
            hint=f"from https://huggingface.co/{MODEL_REPO}",
            option="model_dir",
        )
        if processor_dir is None and any((mdir / f).is_file() for f in TOKENIZER_FILES):
            processor_dir = str(mdir)
        pdir = find_dir(
            "PickScore processor (CLIP-H tokenizer + preprocessor)",
            explicit=processor_dir,
            weights_dir=weights_dir,
            names=["CLIP-ViT-H-14-laion2B-s32B-b79K"],
            must_contain=TOKENIZER_FILES,
            hf_repo=PROCESSOR_REPO,
            hint=f"from https://huggingface.co/{PROCESSOR_REPO}",
            option="processor_dir",
        )
        model, info = CLIPModel.from_pretrained(str(mdir), local_files_only=True, output_loading_info=True)
        unexpected = {k for k in info.get("unexpected_keys", ()) if not _BENIGN_UNEXPECTED.fullmatch(k)}
        problems = {
            "missing keys": sorted(info.get("missing_keys", ())),
            "unexpected keys": sorted(unexpected),
            "wrong shapes": sorted(str(m) for m in info.get("mismatched_keys", ())),
        }
        if any(problems.values()):
            detail = "; ".join(f"{k}: {v[:20]}" for k, v in problems.items() if v)
            raise CheckpointError(f"PickScore checkpoint in {mdir} does not match its config.json: {detail}")
        self.dtype = parse_dtype(dtype)
        self.clip = model.to(device=device, dtype=self.dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(pdir), local_files_only=True)
        if len(self.tokenizer) > model.config.text_config.vocab_size:
            raise ValueError(
                f"tokenizer in {pdir} has {len(self.tokenizer)} tokens, more than the model's "
                f"vocab_size {model.config.text_config.vocab_size}"
            )
        proc = CLIPImageProcessor.from_pretrained(str(pdir), local_files_only=True)
        crop = _size(proc.crop_size, "height") if getattr(proc, "do_center_crop", True) else None
        short = _size(proc.size, "shortest_edge")
        if crop is not None and crop != short:
            raise ValueError(f"processor in {pdir}: crop {crop} != resize {short} is not supported")
        self.transform = ImageTransform(
            short,
            tuple(proc.image_mean),
            tuple(proc.image_std),
            "shortest",
            _RESAMPLE.get(int(proc.resample), "bicubic"),
        )
        self.input_size = short
        self.max_length = max_length

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        device = self.device
        pixels = self.transform(images, device, self.dtype)
        img = self.clip.visual_projection(self.clip.vision_model(pixel_values=pixels).pooler_output)
        unique = list(dict.fromkeys(prompts))
        tok = self.tokenizer(
            unique, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.clip.text_model(
            input_ids=tok["input_ids"].to(device), attention_mask=tok["attention_mask"].to(device)
        )
        txt = self.clip.text_projection(out.pooler_output)
        pos = {p: i for i, p in enumerate(unique)}
        txt = txt[torch.tensor([pos[p] for p in prompts], device=txt.device)]
        img = img.float() / img.float().norm(dim=-1, keepdim=True)
        txt = txt.float() / txt.float().norm(dim=-1, keepdim=True)
        return self.clip.logit_scale.exp().float() * (img * txt).sum(-1)
