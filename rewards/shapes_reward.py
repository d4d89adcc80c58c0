"""`shapes-reward`: the testbed's ImageReward (shipped in `ttsvar/testbed/weights`), the default reward of
the embedded `shapes-tiny` generator.

A text-image model trained on the generator's own samples, labelled by the exact evaluator (correctness,
partial credit and a within-prompt ranking loss, like ImageReward's human rankings): a small learned detector
reads the image into one slot per (shape, colour), and the prompt's words cross-attend to the slots. Its score
is the log-odds that the evaluator judges the image correct. See docs/testbed.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from rewards.base import Reward, RewardInputError, parse_dtype
from rewards.registry import register_reward


def _weights_path(weights: str | None) -> Path:
    from ttsvar.testbed.reward import DEFAULT_WEIGHTS

    return Path(weights) if weights else DEFAULT_WEIGHTS


@register_reward("shapes-reward")
class ShapesReward(Reward):
    name = "shapes-reward"
    input_size = 32

    def __init__(self, weights: str | None = None, *, device: str | torch.device = "cpu", dtype: str = "float32"):
        super().__init__()
        from ttsvar.testbed.reward import declared_scale, load_shapes_reward

        self.model, meta = load_shapes_reward(_weights_path(weights), device)
        self.model.to(parse_dtype(dtype))
        self.score_scale = declared_scale(meta)  # instance value read from the JSON; shadows the class default

    @classmethod
    def declared_score_scale(cls, **options: Any) -> float | None:
        meta = _weights_path(options.get("weights")).with_suffix(".json")
        if not meta.is_file():
            return None
        from ttsvar.testbed.reward import declared_scale

        return declared_scale(json.loads(meta.read_text()))

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        try:
            ids = self.model.tokenize(prompts or [])
        except ValueError as e:
            raise RewardInputError(str(e)) from None
        dev, dt = self.model.head.weight.device, self.model.head.weight.dtype
        x = self.model.prepare(images.to(dev)).to(dt)
        return self.model(x, ids.to(dev)).float()
