"""Building open_clip models for rewards from local files only (CLIPScore, HPS v2, Aesthetic's backbone).

``load_open_clip(model, pretrained, ...)``:

* architecture: ``model_config`` (a dict or a JSON file, either open_clip's model config or an
  ``open_clip_config.json`` with ``model_cfg``/``preprocess_cfg``) or else open_clip's built-in config
  of the name ``model``;
* weights: ``pretrained`` is a local file, or an open_clip pretrained tag (e.g. ``laion2b_s32b_b79k``)
  looked up offline in ``weights_dir`` (hub cache layout, ``<repo name>/<file>``, or the file name open_clip
  downloads to). The file is read with ``weights_only=True`` and loaded strictly (no silent resizing of
  position embeddings, unlike ``open_clip.load_checkpoint``).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from rewards.preprocess import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, ImageTransform
from rewards.weights import WeightsNotFoundError, find_file, load_strict, read_state_dict

Tokenize = Callable[[list[str]], Tensor]


@dataclass
class OpenClipBundle:
    model: nn.Module
    tokenize: Tokenize
    transform: ImageTransform
    checkpoint: Path


def _read_config(model: str, model_config: dict | str | os.PathLike | None) -> tuple[dict, dict]:
    """-> (model_cfg, preprocess_cfg) as deep copies."""
    if model_config is None:
        cfg = open_clip.get_model_config(model)
        if cfg is None:
            raise ValueError(
                f"open_clip has no built-in model config {model!r} (see open_clip.list_models()); "
                "pass model_config=<dict or JSON path> for a custom architecture"
            )
        raw: dict = cfg
    elif isinstance(model_config, dict):
        raw = copy.deepcopy(model_config)
    else:
        path = Path(model_config).expanduser()
        if not path.is_file():
            raise FileNotFoundError(
                f"model_config={str(model_config)!r} is not a file (an open_clip JSON config)"
            )
        with open(path) as f:
            raw = json.load(f)
    pre = raw.get("preprocess_cfg", {}) if "model_cfg" in raw else {}
    cfg = raw["model_cfg"] if "model_cfg" in raw else raw
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise ValueError(f"open_clip model config for {model!r} lacks {missing}")
    return copy.deepcopy(cfg), dict(pre)


def _tag_file(model: str, tag: str, weights_dir: str | None) -> tuple[Path, dict]:
    """Offline resolution of an open_clip pretrained tag -> (file, pretrained cfg)."""
    pcfg = open_clip.get_pretrained_cfg(model, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(model)
        raise ValueError(
            f"pretrained={tag!r} is neither a file nor an open_clip tag of {model!r} "
            f"(tags: {tags}); pass the path of the weights file"
        )
    names, hf = [], []
    hub = pcfg.get("hf_hub", "")
    if hub:
        repo_id, filename = os.path.split(hub.rstrip("/")) if not hub.endswith("/") else (hub.rstrip("/"), "")
        files = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        for fn in files:
            names.append(f"{repo_id.split('/')[-1]}/{fn}")
            hf.append((repo_id, fn))
    if pcfg.get("url"):
        names.append(os.path.basename(pcfg["url"]))
    where = f"hub repo {hub}" if hub else pcfg.get("url", "")
    path = find_file(
        f"open_clip weights {model}/{tag}",
        explicit=None,
        weights_dir=weights_dir,
        names=names,
        hf=hf,
        hint=f"from {where}",
        option="pretrained",
    )
    return path, pcfg


def _build(cfg: dict) -> nn.Module:
    cfg = copy.deepcopy(cfg)
    text_cfg, vision_cfg = cfg["text_cfg"], cfg["vision_cfg"]
    if "hf_model_name" in text_cfg:
        raise ValueError(
            "open_clip configs with a Hugging Face text tower (hf_model_name) are not supported: "
            "they fetch their text config from the hub"
        )
    if "timm_model_name" in vision_cfg:
        vision_cfg["timm_model_pretrained"] = False  # weights come from the checkpoint, never from timm's hub
    if "multimodal_cfg" in cfg:
        raise ValueError("CoCa configs (multimodal_cfg) are not supported as rewards")
    custom_text = cfg.pop("custom_text", False)
    cls = open_clip.CustomTextCLIP if custom_text else open_clip.CLIP
    return cls(**cfg)


def load_open_clip(
    model: str,
    pretrained: str | None,
    *,
    model_config: dict | str | None = None,
    weights_dir: str | None = None,
    quick_gelu: bool | None = None,
    tokenizer: Tokenize | None = None,
    preprocess_cfg: dict | None = None,
    nested_key: str | None = "state_dict",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> OpenClipBundle:
    """Build an open_clip CLIP, load its weights strictly, and return it with its tokenizer and transform.

    ``quick_gelu``: None takes it from the tag (OpenAI weights use QuickGELU), from the ``open_clip_config.json``
    beside a weights file (as the hub stores them), or from the model config.
    ``tokenizer``: a callable ``list[str] -> LongTensor[B, context]`` replacing open_clip's tokenizer (for
    custom vocabularies). ``preprocess_cfg``: overrides of ``mean``, ``std``, ``interpolation``,
    ``resize_mode`` (highest priority, above the model config's and the tag's).
    """
    if pretrained is None:
        raise WeightsNotFoundError(
            f"open_clip model {model!r}: no weights given; pass pretrained=<file path or open_clip tag> "
            "(a tag is looked up in weights_dir)"
        )
    cfg, pre = _read_config(model, model_config)
    p = Path(str(pretrained)).expanduser()
    pcfg: dict[str, Any] = {}
    if p.is_file():
        ckpt = p
        beside = p.parent / "open_clip_config.json"  # a hub download's config: it knows the activation
        if quick_gelu is None and beside.is_file():
            try:
                pcfg = {"quick_gelu": json.loads(beside.read_text(encoding="utf-8"))["model_cfg"]["quick_gelu"]}
            except (OSError, ValueError, KeyError, TypeError):
                pcfg = {}
    elif os.sep in str(pretrained) or p.suffix in (".pt", ".pth", ".bin", ".safetensors"):
        raise WeightsNotFoundError(f"open_clip weights: pretrained={str(pretrained)!r} is not a file")
    else:
        ckpt, pcfg = _tag_file(model, str(pretrained), weights_dir)
    if quick_gelu is None:
        quick_gelu = bool(pcfg.get("quick_gelu", cfg.get("quick_gelu", False)))
    cfg["quick_gelu"] = quick_gelu
    net = _build(cfg)
    sd = read_state_dict(ckpt, nested_key=nested_key)
    ours = net.state_dict()
    for k in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's own file's extras; open_clip drops them
        if k in sd and k not in ours:
            del sd[k]
    if "logit_scale" in sd and sd["logit_scale"].ndim != net.logit_scale.ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(net.logit_scale.shape)
    load_strict(net, sd, ckpt)
    net = net.to(device=device, dtype=dtype).eval()

    if tokenizer is None:
        text_cfg = cfg["text_cfg"]
        if text_cfg.get("hf_tokenizer_name"):
            raise ValueError(
                f"{model!r} uses a Hugging Face tokenizer ({text_cfg['hf_tokenizer_name']}); "
                "pass tokenizer=<callable> instead"
            )
        ctx = int(text_cfg.get("context_length", 77))
        tokenizer = open_clip.SimpleTokenizer(context_length=ctx, **text_cfg.get("tokenizer_kwargs", {}))
        vocab = int(text_cfg.get("vocab_size", 49408))
        if vocab < 49408:
            raise ValueError(
                f"text_cfg.vocab_size={vocab} is smaller than open_clip's BPE vocabulary (49408); "
                "pass tokenizer=<callable> producing ids below the vocab size"
            )

    size = cfg["vision_cfg"].get("image_size", 224)
    if isinstance(size, (list, tuple)):
        if size[0] != size[1]:
            raise ValueError(f"non-square image_size {size} is not supported")
        size = size[0]
    known = ("mean", "std", "interpolation", "resize_mode")
    unknown = set(preprocess_cfg or {}) - set(known)
    if unknown:
        raise ValueError(f"preprocess_cfg keys {sorted(unknown)} are not supported; use {known}")
    defaults = {
        "mean": OPENAI_CLIP_MEAN,
        "std": OPENAI_CLIP_STD,
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    pp = {k: (preprocess_cfg or {}).get(k, pre.get(k, pcfg.get(k, defaults[k]))) for k in known}
    transform = ImageTransform(
        int(size), tuple(pp["mean"]), tuple(pp["std"]), pp["resize_mode"], pp["interpolation"]
    )
    return OpenClipBundle(net, tokenizer, transform, ckpt)


def encode_prompts(bundle: OpenClipBundle, prompts: list[str], device: torch.device | None) -> Tensor:
    """Unit-norm text embeddings [B, D]; identical prompts are encoded once (the search sends many)."""
    unique = list(dict.fromkeys(prompts))
    ids = bundle.tokenize(unique)
    if not isinstance(ids, Tensor) or ids.ndim != 2 or ids.shape[0] != len(unique):
        raise ValueError(
            f"tokenizer must return a LongTensor [num_prompts, context], got {type(ids).__name__}"
        )
    vocab = getattr(bundle.model, "vocab_size", None)
    if vocab is not None and int(ids.max()) >= vocab:
        raise ValueError(f"tokenizer produced id {int(ids.max())} >= the text tower's vocab_size {vocab}")
    emb = bundle.model.encode_text(ids.to(device), normalize=True)
    pos = {p: i for i, p in enumerate(unique)}
    return emb[torch.tensor([pos[p] for p in prompts], device=emb.device)]
