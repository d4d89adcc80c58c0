"""ImageReward v1.0 (THUDM/ImageReward) as a reward: human-preference score of an image for a prompt.

Files (nothing is downloaded):

* ``ImageReward.pt``: the official checkpoint (hub repo THUDM/ImageReward),
* ``med_config.json``: BLIP's BERT config (same repo),
* a ``bert-base-uncased`` tokenizer folder (``vocab.txt``, optionally ``tokenizer_config.json``).

Pipeline, as in ``ImageReward.score``: image -> resize short side to 224 (bicubic), center crop, CLIP
mean/std -> BLIP ViT-L/16 tokens; prompt -> BERT tokenizer (max_length 35, padded to 35, truncated)
with BLIP's extra ``[DEC]`` / ``[ENC]`` special tokens in the vocabulary (the official scorer keeps the
``[CLS]`` first token: it does not substitute ``enc_token_id``); the text encoder cross-attends to the
image tokens; its ``[CLS]`` output goes through the MLP head; ``(r - mean) / std``.

``backend="package"`` runs the network of the ``image-reward`` package instead (same files, same
tokenizer and preprocessing) so that both implementations can be compared on the same inputs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewards.base import Reward, parse_dtype
from rewards.imagereward_model import (
    VIT_PRESETS,
    BlipViTConfig,
    ImageRewardModel,
    MedBertConfig,
    official_to_native,
)
from rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform
from rewards.registry import register_reward
from rewards.weights import find_dir, find_file, load_strict, read_state_dict

MAX_PROMPT_TOKENS = 35
HF_REPO = "THUDM/ImageReward"


def load_blip_tokenizer(path: str | os.PathLike) -> Any:
    """``bert-base-uncased`` tokenizer from a local folder plus BLIP's special tokens, as
    ``BLIP.init_tokenizer`` builds it: ``[DEC]`` as bos token, ``[ENC]`` as additional special token."""
    from transformers import BertTokenizer

    tok = BertTokenizer.from_pretrained(str(path), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def _vit_config(vit: str | dict | BlipViTConfig) -> BlipViTConfig:
    if isinstance(vit, BlipViTConfig):
        return vit
    if isinstance(vit, str):
        if vit not in VIT_PRESETS:
            raise ValueError(
                f"vit={vit!r}; use one of {sorted(VIT_PRESETS)} or a dict of BlipViTConfig fields"
            )
        return VIT_PRESETS[vit]
    if isinstance(vit, dict):
        return BlipViTConfig(**vit)
    raise TypeError(f"vit must be a preset name, a dict or a BlipViTConfig, got {type(vit).__name__}")


@contextlib.contextmanager
def _package_tokenizer(tokenizer: Any):
    """The package builds its tokenizer with BertTokenizer.from_pretrained('bert-base-uncased'), which may
    download; point it at the local tokenizer while its model is constructed."""
    mod = importlib.import_module("ImageReward.models.BLIP.blip_pretrain")
    original = mod.init_tokenizer
    mod.init_tokenizer = lambda: tokenizer
    try:
        yield
    finally:
        mod.init_tokenizer = original


@register_reward("imagereward")
class ImageReward(Reward):
    """ImageReward v1.0. ``score`` returns the official normalised reward (about N(0,1) over prompts).

    ``checkpoint`` / ``med_config`` / ``tokenizer``: explicit paths (the tokenizer is a folder); missing ones
    are looked up in ``weights_dir``. ``vit``: ``'large'`` (official), ``'base'`` or a dict of
    :class:`BlipViTConfig` fields (tiny test configs); it also sets the input size. ``backend``:
    ``'native'`` (ours) or ``'package'`` (the image-reward package's network, for cross-checks).
    """

    name = "imagereward"
    input_size = 224
    needs_prompt = True
    score_scale = 1.0  # standardised by the official mean/std: the units the paper's lam = 10 was set in

    def __init__(
        self,
        checkpoint: str | None = None,
        med_config: str | None = None,
        tokenizer: str | None = None,
        *,
        weights_dir: str | None = None,
        vit: str | dict = "large",
        device: str | torch.device = "cpu",
        dtype: str = "float32",
        backend: str = "native",
    ):
        super().__init__()
        if backend not in ("native", "package"):
            raise ValueError(f"backend={backend!r}; use 'native' or 'package' (the image-reward package)")
        self.backend = backend
        self.dtype = parse_dtype(dtype)
        hint = "download it from https://huggingface.co/THUDM/ImageReward"
        ckpt = find_file(
            "ImageReward checkpoint",
            explicit=checkpoint,
            weights_dir=weights_dir,
            names=["ImageReward.pt", "ImageReward/ImageReward.pt"],
            hf=[(HF_REPO, "ImageReward.pt")],
            hint=hint,
            option="checkpoint",
        )
        med = find_file(
            "ImageReward med_config.json",
            explicit=med_config,
            weights_dir=weights_dir,
            names=["med_config.json", "ImageReward/med_config.json"],
            hf=[(HF_REPO, "med_config.json")],
            hint=hint,
            option="med_config",
        )
        tok_dir = find_dir(
            "bert-base-uncased tokenizer",
            explicit=tokenizer,
            weights_dir=weights_dir,
            names=["bert-base-uncased", "ImageReward/bert-base-uncased"],
            must_contain=["vocab.txt", "tokenizer.json"],
            hf_repo="google-bert/bert-base-uncased",
            hint="from https://huggingface.co/google-bert/bert-base-uncased",
            option="tokenizer",
        )
        self.tokenizer = load_blip_tokenizer(tok_dir)
        vit_cfg = _vit_config(vit)
        bert_cfg = MedBertConfig.from_json(med)
        if len(self.tokenizer) > bert_cfg.vocab_size:
            raise ValueError(
                f"tokenizer {tok_dir} has {len(self.tokenizer)} tokens (with [DEC], [ENC]) but "
                f"{med} declares vocab_size={bert_cfg.vocab_size}; use the matching bert-base-uncased vocab"
            )
        self.input_size = vit_cfg.image_size
        self.transform = ImageTransform(vit_cfg.image_size, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "shortest")
        state_dict = read_state_dict(ckpt)
        if backend == "native":
            with torch.device("meta"):
                model = ImageRewardModel(vit_cfg, bert_cfg)
            load_strict(model, official_to_native(state_dict, str(ckpt)), ckpt, assign=True)
            self.model = model.to(device=device, dtype=self.dtype).eval()
            self.model.mlp.float()
        else:
            self.model = self._build_package_model(ckpt, med, state_dict, device)

    def _build_package_model(
        self, ckpt: Path, med: Path, state_dict: dict, device: str | torch.device
    ) -> torch.nn.Module:
        """The package's ``ImageReward`` module (hard-coded BLIP ViT-L), our strict weight loading."""
        try:
            pkg = importlib.import_module("ImageReward.ImageReward")
        except ImportError as e:
            raise ImportError(
                f"backend='package' needs the image-reward package (pip install image-reward), "
                f"which failed to import: {e}"
            ) from e
        with _package_tokenizer(self.tokenizer):
            model = pkg.ImageReward(med_config=str(med), device=str(torch.device(device)))
        load_strict(model, state_dict, ckpt)
        return model.to(device=device, dtype=self.dtype).eval()

    def tokenize(self, prompts: list[str]) -> tuple[Tensor, Tensor]:
        """Prompts -> (input_ids, attention_mask), both [B, 35]."""
        out = self.tokenizer(
            prompts, padding="max_length", truncation=True, max_length=MAX_PROMPT_TOKENS, return_tensors="pt"
        )
        return out["input_ids"], out["attention_mask"]

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        device = self.device
        pixels = self.transform(images, device, self.dtype)
        ids, mask = self.tokenize(prompts)
        ids, mask = ids.to(device), mask.to(device)
        if self.backend == "package":
            return self.model.score_gard(ids, mask, pixels)[:, 0].float()
        return self.model(pixels, ids, mask)
