"""The reward section of a job config, and ``build_reward(cfg)`` that the engine calls once per worker.

Plain types only so that it embeds in the job config with omegaconf::

    reward:
      name: imagereward            # registered name, entry point, or "package.module:object"
      weights_dir: /models         # forwarded to rewards that take a weights_dir
      options: {device: cuda, dtype: float16}
      nan_policy: raise            # raise | pass | a float such as -.inf
      batch_size: 32               # max images per forward pass (null: whole batch)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from rewards.base import Reward
from rewards.registry import accepts_option, create_reward, resolve_reward


@dataclass
class RewardConfig:
    name: str = "auto"  # auto: the model's default reward (ttsvar resolves it); or a registered name
    options: dict[str, Any] = field(default_factory=dict)
    weights_dir: str | None = None
    nan_policy: Any = "raise"  # 'raise' | 'pass' | float (Any: omegaconf has no str|float union)
    batch_size: int | None = None
    score_scale: float | None = None  # overrides the reward's declared score scale (potentials: lam * r / it)


def check_score_scale(scale: Any) -> float | None:
    """Validate ``reward.score_scale`` (None, or a finite number > 0)."""
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise ValueError(f"reward.score_scale={scale!r}: must be a finite number > 0 (the std of the reward's scores "
                         "over generated images), or null to use the reward's declared scale")
    return float(scale)


def reward_score_scale(cfg: RewardConfig) -> tuple[float, bool]:
    """(scale, declared) for a reward config, without building the reward: ``cfg.score_scale`` if set, else the
    reward's :meth:`~rewards.base.Reward.declared_score_scale`; 1.0 with ``declared=False`` when neither exists."""
    if cfg.score_scale is not None:
        return check_score_scale(cfg.score_scale), True
    obj = resolve_reward(cfg.name)
    options = dict(cfg.options or {})
    if cfg.weights_dir is not None and "weights_dir" not in options and accepts_option(obj, "weights_dir"):
        options["weights_dir"] = cfg.weights_dir  # as `build_reward` passes it: the scale may depend on the weights
    if isinstance(obj, type) and issubclass(obj, Reward):
        scale = obj.declared_score_scale(**options)
    else:
        scale = getattr(obj, "score_scale", None)
        made = _returned_class(obj)
        if scale is None and made is not None:  # a registered factory of a Reward class declares through the class
            scale = made.declared_score_scale(**options)
    if scale is None:
        return 1.0, False
    return check_score_scale(scale), True


def _returned_class(factory: Any) -> type | None:
    """The Reward subclass a factory function's return annotation names, if any (`-> MyReward`)."""
    import typing

    if not callable(factory) or isinstance(factory, type):
        return None
    try:
        ret = typing.get_type_hints(factory).get("return")
    except Exception:  # noqa: BLE001 - unresolvable annotations: no declaration
        return None
    return ret if isinstance(ret, type) and issubclass(ret, Reward) else None


def build_reward(cfg: RewardConfig | Mapping[str, Any]) -> Reward:
    """Build the reward a :class:`RewardConfig` (or an equivalent mapping / omegaconf node) describes."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(cfg):
        cfg = OmegaConf.to_container(cfg, resolve=True)
    if not isinstance(cfg, RewardConfig):
        if not isinstance(cfg, Mapping):
            raise TypeError(f"reward config must be a RewardConfig or a mapping, got {type(cfg).__name__}")
        known = {f.name for f in fields(RewardConfig)}
        unknown = set(cfg) - known
        if unknown:
            raise ValueError(f"unknown reward config keys {sorted(unknown)}; allowed: {sorted(known)}")
        cfg = RewardConfig(**dict(cfg))
    check_score_scale(cfg.score_scale)
    options = dict(cfg.options or {})
    if cfg.weights_dir is not None and "weights_dir" not in options:
        if accepts_option(resolve_reward(cfg.name), "weights_dir"):
            options["weights_dir"] = cfg.weights_dir
    return create_reward(cfg.name, nan_policy=cfg.nan_policy, batch_size=cfg.batch_size, **options)
