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

    def __init__(self, weights: str | None = None, *, views: int | None = None, device: str | torch.device = "cpu",
                 dtype: str = "float32"):
        """`views`: symmetric views averaged per score (None: the weights' own, 8 for the shipped ones; 1: the
        image and prompt as given). docs/testbed.md, "Symmetric views"."""
        super().__init__()
        from ttsvar.testbed.reward import declared_scale, load_shapes_reward

        _check_views(views)
        self.model, meta = load_shapes_reward(_weights_path(weights), device)
        self.model.to(parse_dtype(dtype))
        self.views = self.model.cfg.views if views is None else views
        self.score_scale = declared_scale(meta, self.views)  # read from the JSON; shadows the class default

    @classmethod
    def declared_score_scale(cls, **options: Any) -> float | None:
        meta = _weights_path(options.get("weights")).with_suffix(".json")
        if not meta.is_file():
            return None
        from ttsvar.testbed.reward import declared_scale

        _check_views(options.get("views"))
        return declared_scale(json.loads(meta.read_text()), options.get("views"))

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        try:  # unknown words are the caller's error: say so before any view maps them
            self.model.tokenize(prompts or [])
        except ValueError as e:
            raise RewardInputError(str(e).removeprefix("shapes-reward: ")) from None  # the caller names the reward
        dev, dt = self.model.head.weight.device, self.model.head.weight.dtype
        x = self.model.prepare(images.to(dev)).to(dt)
        return self.model.score(x, list(prompts or []), self.views).float()


def _check_views(views: Any) -> None:
    if views is not None and (not isinstance(views, int) or isinstance(views, bool) or views < 1):
        raise ValueError(f"shapes-reward: views={views!r}: use an integer >= 1 (1 scores the image and prompt as "
                         "given; leave it unset for the weights' own number)")
