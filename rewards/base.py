"""The reward interface: one float per image, higher is better.

The search engine calls ``reward.score(images, prompts)`` at every decision step with the decoded
candidates of one or more prompts. Every reward, built-in or user supplied, goes through the same
checks here, so a bad input or a broken reward fails loudly at the boundary instead of steering the
search with wrong numbers.

Contract of ``Reward.score``:

* ``images``: ``Tensor[B, 3, H, W]``, floating point, values in [0, 1], any device.
* ``prompts``: list of ``B`` strings aligned with ``images`` (may be ``None`` for rewards with
  ``needs_prompt = False``).
* ``groups``: optional ``B`` integer ids of the candidate group of each image. Per-image rewards ignore it;
  group-relative ones (z-score ensembles) normalise within each group.
* returns ``Tensor[B]``, ``float32``, on the CPU.

Groups contract of the engine (`ttsvar.engine.Worker`, local and on Ray): every reward whose ``score`` takes a
``groups`` argument (every ``Reward``) gets the prompt index of each candidate as its group id, and one call
holds whole groups only: all the distinct candidates of a prompt at that scale (identical rows are scored
once), never part of one, even when a group is larger than ``runtime.score_batch``. ``batch_size`` then only
chunks the forward passes inside ``score``; a group-relative reward overrides ``score`` and normalises after
its chunks, as ``rewards.ensemble.EnsembleReward`` does.

Non-finite scores (NaN, +-inf) follow the reward's ``nan_policy``: ``"raise"`` (default) raises
:class:`RewardOutputError`; ``"pass"`` returns them unchanged; a float replaces them with that value
(for example ``float("-inf")`` so that the candidate gets weight ``exp(-inf) = 0`` and is never picked).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from ttsvar.core.classes import parse_class_prompt
from ttsvar.core.device import DTYPES  # the one dtype table (the bottom layer)

NanPolicy = str | float

# The project's one table of dtype names (rewards, feature extractors, model.dtype). Its home is the bottom layer
# with the checkpoint code (ttsvar.core, planned); it sits here until that exists.


class RewardInputError(ValueError):
    """Bad images, prompts or groups were passed to a reward."""


class RewardOutputError(RuntimeError):
    """A reward returned something that is not one finite float per image."""


class RewardShapeError(RewardOutputError):
    """A reward returned something that is not one real number per image (wrong type or shape): a bug of the
    reward whatever the images, unlike a non-finite score, which may depend on them."""


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map a config string ('float32', 'float16', 'bfloat16') or a torch dtype to a torch dtype."""
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    raise ValueError(f"dtype={dtype!r} is not supported; use one of {sorted(DTYPES)}")


def check_images(images: Any, reward_name: str) -> Tensor:
    """Validate an image batch; called by ``Reward.score`` before any model runs."""
    where = f"reward '{reward_name}'"
    if not isinstance(images, Tensor):
        raise RewardInputError(
            f"{where}: images must be a torch.Tensor [B,3,H,W] in [0,1], got {type(images).__name__}; "
            "convert PIL/numpy images with torchvision.transforms.functional.to_tensor"
        )
    if images.ndim != 4 or images.shape[1] != 3:
        raise RewardInputError(
            f"{where}: images must have shape [B,3,H,W], got {tuple(images.shape)}; "
            "add a batch dimension with images[None] or move channels first with images.permute(0,3,1,2)"
        )
    if images.shape[0] == 0:
        raise RewardInputError(f"{where}: empty batch (B=0); call score() with at least one image")
    if images.shape[2] == 0 or images.shape[3] == 0:
        raise RewardInputError(f"{where}: images have zero height or width: {tuple(images.shape)}")
    if not images.is_floating_point():
        raise RewardInputError(
            f"{where}: images must be floating point in [0,1], got dtype {images.dtype}; "
            "for uint8 images use images.float() / 255"
        )
    lo, hi = torch.aminmax(images.detach())
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi) or math.isinf(lo) or math.isinf(hi):
        raise RewardInputError(f"{where}: images contain NaN or inf values")
    if lo < 0.0 or hi > 1.0:
        raise RewardInputError(
            f"{where}: image values must lie in [0,1], got min {lo:.4g} max {hi:.4g}; "
            "map [-1,1] outputs with (x + 1) / 2 and clip with x.clamp(0, 1)"
        )
    return images


def check_prompts(prompts: Any, batch: int, needs_prompt: bool, reward_name: str) -> list[str] | None:
    """Validate the prompt list (one string per image)."""
    where = f"reward '{reward_name}'"
    if prompts is None:
        if needs_prompt:
            raise RewardInputError(
                f"{where} needs one prompt per image; pass prompts=[...] with {batch} strings"
            )
        return None
    if isinstance(prompts, str):
        raise RewardInputError(
            f"{where}: prompts must be a list of {batch} strings, got a single string; use [prompt] * {batch}"
        )
    if not isinstance(prompts, Sequence):
        raise RewardInputError(f"{where}: prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) != batch:
        raise RewardInputError(
            f"{where}: got {len(prompts)} prompts for {batch} images; pass one prompt per image"
        )
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise RewardInputError(
            f"{where}: prompts must be strings; entries {bad[:10]} are {type(prompts[bad[0]]).__name__}"
        )
    return list(prompts)


def check_groups(groups: Any, batch: int, reward_name: str) -> Tensor | None:
    """Validate optional group ids (one integer per image) and return them as a CPU int64 tensor."""
    if groups is None:
        return None
    g = torch.as_tensor(np.asarray(groups.cpu() if isinstance(groups, Tensor) else groups))
    if g.ndim != 1 or g.shape[0] != batch:
        raise RewardInputError(
            f"reward '{reward_name}': groups must be a 1-D sequence of {batch} ids, got {tuple(g.shape)}"
        )
    if g.is_floating_point() or g.dtype == torch.bool or g.is_complex():
        raise RewardInputError(f"reward '{reward_name}': groups must be integer ids, got dtype {g.dtype}")
    return g.to(torch.int64)


def check_nan_policy(nan_policy: Any) -> NanPolicy:
    """Validate a ``nan_policy`` value: 'raise', 'pass' or a replacement number (not NaN, not +inf: a broken
    candidate would then win every pick)."""
    if nan_policy in ("raise", "pass"):
        return nan_policy
    if (
        isinstance(nan_policy, (int, float))
        and not isinstance(nan_policy, bool)
        and not math.isnan(nan_policy)
        and nan_policy != math.inf
    ):
        return float(nan_policy)
    raise ValueError(
        f"nan_policy={nan_policy!r} is invalid; use 'raise', 'pass' or a float such as -inf or -10.0"
    )


def check_scores(scores: Any, batch: int, reward_name: str, nan_policy: NanPolicy) -> Tensor:
    """Turn what a reward returned into a CPU float32 ``Tensor[B]``, or raise saying what is wrong.

    Accepts a tensor, numpy array or list of numbers of shape ``[B]`` or ``[B, 1]``.
    """
    where = f"reward '{reward_name}'"
    if isinstance(scores, Tensor):
        out = scores.detach()
    elif isinstance(scores, (np.ndarray, list, tuple)):
        try:
            out = torch.as_tensor(np.asarray(scores, dtype=np.float64))
        except (TypeError, ValueError) as e:
            raise RewardShapeError(f"{where} returned a sequence that is not numeric: {e}") from e
    else:
        raise RewardShapeError(f"{where} must return a Tensor[B] of scores, got {type(scores).__name__}")
    if out.dtype == torch.bool or out.is_complex():
        raise RewardShapeError(f"{where} returned scores of dtype {out.dtype}; return real numbers")
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1 or out.shape[0] != batch:
        raise RewardShapeError(
            f"{where} returned scores of shape {tuple(out.shape)} for {batch} images; it must return one "
            f"score per image, shape [{batch}]"
        )
    out = out.to(device="cpu", dtype=torch.float32)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        if nan_policy == "raise":
            idx = bad.nonzero()[:, 0].tolist()
            raise RewardOutputError(
                f"{where} returned non-finite scores at positions {idx[:10]} ({out[idx[:10]].tolist()}); "
                "set nan_policy='pass' to return them unchanged or nan_policy=<float> to replace them"
            )
        if nan_policy != "pass":
            out = out.masked_fill(bad, float(nan_policy))
    return out


class Reward(nn.Module):
    """Base class of every reward. Subclasses implement ``_score(images, prompts) -> Tensor[B]``.

    ``score`` validates inputs, splits the batch into chunks of ``batch_size`` (if set), runs
    ``_score`` under ``torch.inference_mode()`` and validates the output. ``_score`` receives images
    that passed :func:`check_images` (still on the caller's device) and does its own resizing and
    normalisation.
    """

    name: str = "reward"
    input_size: int | None = None  # preferred square input side in pixels; None: any size
    needs_prompt: bool = True
    # what a prompt is to the reward: "text", or "class" (a class index written as text, "207": class rewards
    # of class-conditional jobs, see ttsvar.core.classes)
    conditioning: str = "text"
    higher_is_better: ClassVar[bool] = True
    nan_policy: NanPolicy = "raise"
    batch_size: int | None = None  # max images per forward pass; None: whole batch at once
    # The spread of the reward's scores over generated images (their standard deviation). Potentials use
    # exp(lam * r / score_scale), so one lam means the same for every reward; ImageReward's scores are standardised
    # by construction (scale 1), which is what the paper's lam = 10 was tuned for. None: not declared
    # (taken as 1, with a warning from the engine when a strategy resamples). See docs/search.md.
    score_scale: ClassVar[float | None] = None

    @classmethod
    def declared_score_scale(cls, **options: Any) -> float | None:
        """The scale a reward built with ``options`` will have, known *before* it loads (the Ray driver
        asks this without building the model). Rewards whose scale depends on their weights override it."""
        return cls.score_scale

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Check ``options`` before anything loads (a job's preflight, before the generator loads): raise
        ``ValueError`` (or ttsvar's ``ConfigError``) naming the option, e.g. a required weights file that is not
        set. The default checks nothing; the constructor checks everything again."""
        return None

    def configure(self, *, nan_policy: NanPolicy | None = None, batch_size: int | None = None) -> Reward:
        """Set the options every reward shares; ``create_reward`` calls this with the common options."""
        if nan_policy is not None:
            self.nan_policy = check_nan_policy(nan_policy)
        if batch_size is not None:
            if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
                raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
            self.batch_size = batch_size
        return self

    @property
    def device(self) -> torch.device | None:
        """Device of the reward's weights (None for rewards without weights)."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return None

    def score(self, images: Tensor, prompts: Sequence[str] | None = None, groups: Any = None) -> Tensor:
        """Score a batch: ``Tensor[B]`` float32 on the CPU, higher is better. See the module docstring."""
        images = check_images(images, self.name)
        batch = images.shape[0]
        prompts = check_prompts(prompts, batch, self.needs_prompt, self.name)
        check_groups(groups, batch, self.name)
        step = self.batch_size or batch
        parts = []
        with torch.inference_mode():
            for i in range(0, batch, step):
                chunk_prompts = None if prompts is None else prompts[i : i + step]
                chunk = images[i : i + step]
                parts.append(
                    check_scores(self._score(chunk, chunk_prompts), chunk.shape[0], self.name, "pass")
                )
        return check_scores(torch.cat(parts), batch, self.name, self.nan_policy)

    def forward(self, images: Tensor, prompts: Sequence[str] | None = None, groups: Any = None) -> Tensor:
        return self.score(images, prompts, groups)

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _score(images, prompts)")

    def extra_repr(self) -> str:
        return f"name={self.name!r}, input_size={self.input_size}, needs_prompt={self.needs_prompt}"


class FunctionReward(Reward):
    """Wraps a plain function ``f(images, prompts) -> scores`` into a :class:`Reward`.

    ``create_reward(f)`` builds this. ``f`` gets the validated images (on the caller's device, in
    [0,1]) and the list of prompts, under ``torch.inference_mode()``; it may return a tensor, a numpy
    array or a list with one number per image.
    """

    def __init__(
        self,
        fn: Callable[[Tensor, list[str] | None], Any],
        *,
        name: str | None = None,
        needs_prompt: bool = True,
        input_size: int | None = None,
    ):
        super().__init__()
        if not callable(fn):
            raise TypeError(f"FunctionReward needs a callable f(images, prompts), got {type(fn).__name__}")
        self.fn = fn
        self.name = name or getattr(fn, "__name__", None) or type(fn).__name__
        self.needs_prompt = bool(needs_prompt)
        self.input_size = input_size

    def _score(self, images: Tensor, prompts: list[str] | None) -> Tensor:
        return self.fn(images, prompts)


class ClassTextReward:
    """A text reward scoring a class-conditional job: each class prompt (its index as text, `"3"`) reaches the
    reward as the class's name, `classes.name(k)`; other prompts pass unchanged.

    The job wraps its reward in this when the model is class-conditional and the reward reads text
    (`ttsvar.jobs.build_reward_for`). The rule serves models whose class names are texts a reward can read: the
    classes of the testbed's `shapes-var-tiny` are shapes-world prompts, so `shapes-reward` scores a sample of
    class 3 against "a photo of a blue circle"; an ImageNet text reward reads "goldfish". Everything but `score`
    (name, input_size, score_scale, ...) is the wrapped reward's."""

    def __init__(self, reward: Reward, classes: Any):
        self.reward, self.classes = reward, classes

    def __getattr__(self, name: str) -> Any:
        if name in ("reward", "classes"):  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.reward, name)

    def texts(self, prompts: Sequence[str]) -> list[str]:
        out = []
        for p in prompts:
            k = parse_class_prompt(p, len(self.classes)) if isinstance(p, str) else None
            out.append(p if k is None else self.classes.name(k))
        return out

    def score(self, images: Tensor, prompts: Sequence[str] | None = None, groups: Any = None) -> Tensor:
        return self.reward.score(images, None if prompts is None else self.texts(prompts), groups=groups)
