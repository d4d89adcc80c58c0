"""Rewards for test-time search: ``score(images, prompts) -> Tensor[B]``, higher is better.

Built-ins (created by name, weights from local files only): ``imagereward``, ``clip-score``,
``hpsv2.1``, ``pickscore``, ``aesthetic``, ``ensemble``. Custom rewards: a ``Reward`` subclass or
instance, a plain function ``f(images, prompts)``, an import path ``"pkg.mod:obj"`` or an entry point in
the group ``ttsvar.rewards``. See docs/rewards.md.

Feature extractors (images -> one vector per image, for clustering-based search) live here too, behind their
own registry: ``create_features(name, **opts)``, ``list_features()``, ``@register_features``; built-ins
``dinov2``, ``clip``, ``inception``, ``shapes-clip``. See docs/search.md.

Importing this package is cheap: the built-in reward modules (open_clip, transformers) are imported on
the first ``create_reward`` / ``list_rewards`` call.
"""

from rewards.base import FunctionReward, Reward, RewardInputError, RewardOutputError
from rewards.config import RewardConfig, build_reward
from rewards.features import FeatureExtractor, create_features, list_features, register_features
from rewards.registry import ENTRY_POINT_GROUP, create_reward, list_rewards, register_reward
from rewards.weights import CheckpointError, WeightsNotFoundError

__all__ = [
    "ENTRY_POINT_GROUP",
    "CheckpointError",
    "FeatureExtractor",
    "FunctionReward",
    "Reward",
    "RewardConfig",
    "RewardInputError",
    "RewardOutputError",
    "WeightsNotFoundError",
    "build_reward",
    "create_features",
    "create_reward",
    "list_features",
    "list_rewards",
    "register_features",
    "register_reward",
]
