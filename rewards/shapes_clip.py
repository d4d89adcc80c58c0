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
from ttsvar.core.errors import MissingFileError


@register_reward("shapes-clip")
class ShapesCLIPScore(CLIPScore):
    # std of its scores over 1,432 generated samples of shapes-tiny (8 per training prompt, cfg 3, tau 1);
    # within one prompt the std is 2.64. Measured for the shipped weights (docs/benchmarks.md, score scales).
    score_scale = 4.42

    def __init__(self, weights: str | None = None, *, device: str | torch.device = "cpu", dtype: str = "float32"):
        from ttsvar.testbed.clip import DEFAULT_WEIGHTS, ShapesTokenizer

        path = Path(weights) if weights else DEFAULT_WEIGHTS
        meta = path.with_suffix(".json")
        if not path.is_file() or not meta.is_file():
            raise MissingFileError(f"shapes-clip weights not found: {path} and {meta}; they ship with ttsvar, "
                                    "or rebuild them with `python -m ttsvar.testbed.train`")
        cfg = json.loads(meta.read_text())["model_cfg"]
        super().__init__(model="shapes-clip", pretrained=str(path), model_config=cfg, tokenizer=ShapesTokenizer(),
                         scale="model", preprocess_cfg={"interpolation": "area", "resize_mode": "squash"},
                         device=device, dtype=dtype)
        self.name = "shapes-clip"
