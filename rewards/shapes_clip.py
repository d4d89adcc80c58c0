"""`shapes-clip`: CLIPScore with the testbed's tiny CLIP (shipped in `ttsvar/testbed/weights`).

The default reward of the embedded `shapes-tiny` generator: a learned model steers the search, and the
exact evaluator judges it, as GenEval judges ImageReward-steered search.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rewards.clip_score import CLIPScore
from rewards.registry import register_reward


@register_reward("shapes-clip")
class ShapesCLIPScore(CLIPScore):
    def __init__(self, weights: str | None = None, *, device: str | torch.device = "cpu", dtype: str = "float32"):
        from ttsvar.testbed.clip import DEFAULT_WEIGHTS, ShapesTokenizer

        path = Path(weights) if weights else DEFAULT_WEIGHTS
        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file():
            raise FileNotFoundError(f"shapes-clip weights not found: {path} and {meta}; they ship with ttsvar, "
                                    "or rebuild them with `python -m ttsvar.testbed.train`")
        cfg = json.loads(meta.read_text())["model_cfg"]
        super().__init__(model="shapes-clip", pretrained=str(path), model_config=cfg, tokenizer=ShapesTokenizer(),
                         scale="model", preprocess_cfg={"interpolation": "area", "resize_mode": "squash"},
                         device=device, dtype=dtype)
        self.name = "shapes-clip"
