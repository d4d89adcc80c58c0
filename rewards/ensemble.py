"""Weighted combination of rewards with per-reward normalisation.

``total = sum_i weight_i * norm_i(score_i)``, with ``norm`` one of

* ``{kind: none}`` (default): the raw score;
* ``{kind: affine, scale: a, shift: b}``: ``a * s + b`` (fixed, e.g. to bring HPS cosines ~0.3 and
  ImageReward's ~N(0,1) onto one scale);
* ``{kind: zscore, eps: 1e-6}``: ``(s - mean_g) / (std_g + eps)`` over the candidate group ``g`` of each
  image (population std; a group of one image scores 0).

Groups: ``score(images, prompts, groups=ids)``; the engine passes the prompt-group id of every
candidate and never splits a group between calls (the contract in ``rewards.base``). Without ``groups``,
images with the same prompt string form a group; without prompts either (only prompt-free members), the whole
batch is one group. Z-scored ensembles are therefore not batch-size invariant by design: the score of a
candidate is relative to its group.

YAML::

    reward:
      name: ensemble
      weights_dir: /models
      options:
        members:
          - {name: imagereward, weight: 1.0, norm: {kind: zscore}}
          - {name: hpsv2.1, weight: 0.5, norm: {kind: affine, scale: 10.0, shift: -2.5}}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rewards.base import Reward, check_groups, check_images, check_prompts, check_scores
from rewards.registry import accepts_option, create_reward, register_reward, resolve_reward

NORM_KINDS = ("none", "affine", "zscore")


@dataclass
class Normalization:
    kind: str = "none"
    scale: float = 1.0
    shift: float = 0.0
    eps: float = 1e-6

    def __post_init__(self):
        if self.kind not in NORM_KINDS:
            raise ValueError(f"normalisation kind {self.kind!r}; use one of {NORM_KINDS}")
        if self.eps <= 0:
            raise ValueError(f"normalisation eps must be > 0, got {self.eps}")

    def __call__(self, scores: Tensor, groups: Tensor) -> Tensor:
        if self.kind == "none":
            return scores
        if self.kind == "affine":
            return scores * self.scale + self.shift
        return zscore(scores, groups, self.eps)


def zscore(scores: Tensor, groups: Tensor, eps: float = 1e-6) -> Tensor:
    """``(s - mean) / (std + eps)`` within each group id (population std), computed in float64 over the group's
    finite scores; a non-finite score stays as it is (a member's ``nan_policy=-inf`` still rules its candidate
    out, instead of turning the whole group into NaN)."""
    s = scores.double()
    ok = torch.isfinite(s)
    x = torch.where(ok, s, torch.zeros_like(s))
    _, inv = torch.unique(groups, return_inverse=True)
    n = torch.zeros(int(inv.max()) + 1, dtype=torch.float64).index_add_(0, inv, ok.double()).clamp_(min=1)
    mean = torch.zeros_like(n).index_add_(0, inv, x) / n
    dev = torch.where(ok, s - mean[inv], torch.zeros_like(s))
    std = (torch.zeros_like(n).index_add_(0, inv, dev * dev) / n).sqrt()
    return torch.where(ok, dev / (std[inv] + eps), s).float()


@dataclass
class EnsembleMember:
    reward: Reward
    weight: float = 1.0
    norm: Normalization = field(default_factory=Normalization)


def _member(spec: Any, weights_dir: str | None) -> EnsembleMember:
    if isinstance(spec, EnsembleMember):
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"ensemble member must be a dict {{name, weight, norm, options}}, got {type(spec).__name__}"
        )
    spec = dict(spec)
    unknown = set(spec) - {"name", "reward", "weight", "norm", "options"}
    if unknown:
        raise ValueError(
            f"ensemble member {spec}: unknown keys {sorted(unknown)} "
            "(allowed: name or reward, weight, norm, options)"
        )
    if ("name" in spec) == ("reward" in spec):
        raise ValueError(
            f"ensemble member {spec}: give exactly one of 'name' (registered name / import path) "
            "or 'reward' (an object)"
        )
    target = spec.get("name", spec.get("reward"))
    options = dict(spec.get("options") or {})
    if (
        weights_dir is not None
        and "weights_dir" not in options
        and accepts_option(resolve_reward(target), "weights_dir")
    ):
        options["weights_dir"] = weights_dir
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise ValueError(f"ensemble member {target!r}: weight must be a finite number, got {weight!r}")
    norm = spec.get("norm") or {}
    norm = norm if isinstance(norm, Normalization) else Normalization(**dict(norm))
    return EnsembleMember(create_reward(target, **options), float(weight), norm)


@register_reward("ensemble")
class EnsembleReward(Reward):
    name = "ensemble"

    def __init__(self, members: Sequence[Mapping | EnsembleMember], *, weights_dir: str | None = None):
        super().__init__()
        if isinstance(members, (str, Mapping)) or not members:
            raise ValueError("ensemble needs a non-empty list of members")
        built = [_member(m, weights_dir) for m in members]
        self.members = built
        # registered as submodules so that .to(device) moves every member
        self.rewards = torch.nn.ModuleList([m.reward for m in built])
        self.needs_prompt = any(m.reward.needs_prompt for m in built)
        sizes = [m.reward.input_size for m in built if m.reward.input_size]
        self.input_size = max(sizes) if sizes else None

    def configure(self, *, nan_policy=None, batch_size: int | None = None) -> EnsembleReward:
        """``nan_policy`` applies to the total; ``batch_size`` goes to members that have none of their own."""
        super().configure(nan_policy=nan_policy, batch_size=batch_size)
        if batch_size is not None:
            for m in self.members:
                if m.reward.batch_size is None:
                    m.reward.configure(batch_size=batch_size)
        return self

    @property
    def device(self) -> torch.device | None:
        return None  # members place their inputs themselves

    def member_scores(self, images: Tensor, prompts: Sequence[str] | None = None, groups: Any = None
                      ) -> list[Tensor]:
        """Raw scores of every member (each validated by its own ``score``), e.g. for logging. ``groups`` reach
        the members whose ``score`` takes them (a nested ensemble standardises within them too)."""
        out = []
        for m in self.members:
            kw = {"groups": groups} if groups is not None and accepts_option(m.reward.score, "groups") else {}
            out.append(m.reward.score(images, prompts if m.reward.needs_prompt else None, **kw))
        return out

    def score(self, images: Tensor, prompts: Sequence[str] | None = None, groups: Any = None) -> Tensor:
        images = check_images(images, self.name)
        batch = images.shape[0]
        prompts = check_prompts(prompts, batch, self.needs_prompt, self.name)
        g = given = check_groups(groups, batch, self.name)
        if g is None:
            if prompts is not None:
                ids: dict[str, int] = {}
                g = torch.tensor([ids.setdefault(p, len(ids)) for p in prompts])
            else:
                g = torch.zeros(batch, dtype=torch.int64)
        total = torch.zeros(batch, dtype=torch.float32)
        for m, raw in zip(self.members, self.member_scores(images, prompts, given)):
            total += m.weight * m.norm(raw, g)
        return check_scores(total, batch, self.name, self.nan_policy)

    def extra_repr(self) -> str:
        parts = [f"{m.reward.name} x{m.weight} ({m.norm.kind})" for m in self.members]
        return "members=[" + ", ".join(parts) + "]"
