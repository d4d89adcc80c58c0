"""Small, weight-free reward and feature extractor for engine tests (plugged in by name / import path)."""

import torch

from rewards import FeatureExtractor, Reward, list_features, register_features


def redness(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """Mean red minus mean green/blue: a real, cheap reward."""
    return images[:, 0].mean((1, 2)) - images[:, 1:].mean((1, 2, 3))


def failing_on_squares(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    if any("square" in p for p in prompts):
        raise RuntimeError("this reward refuses squares")
    return redness(images, prompts)


if "test-pixels" not in list_features():
    @register_features("test-pixels")
    class PixelFeatures(FeatureExtractor):
        def __init__(self, size: int = 8, device: str = "cpu"):
            super().__init__(device, "float32", 64)
            self.size = size
            self.dim = 3 * size * size

        def features(self, images: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.interpolate(images, size=(self.size, self.size), mode="area").flatten(1)


class ScaledRedness(Reward):
    """`redness` times a constant: the same preferences in other units (for the score-scale test)."""

    name = "scaled-redness"
    needs_prompt = False

    def __init__(self, factor: float = 1.0):
        super().__init__()
        self.factor = factor

    def _score(self, images: torch.Tensor, prompts: list[str] | None) -> torch.Tensor:
        return redness(images, prompts) * self.factor


def dies_on_triangles(images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """`redness`, but the process kills itself when it scores a generated image of a triangle prompt (not the
    prompt check's flat probe): a prompt that brings its Ray actor down (tests/test_cluster.py)."""
    import os
    import signal

    for img, p in zip(images, prompts):
        if "triangle" in p and float(img.std()) > 0.01:
            os.kill(os.getpid(), signal.SIGKILL)
    return redness(images, prompts)
