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


def write_value_file(path, feature_dim: int = 8, scales=range(16), hidden: int = 4, seed: int = 0, layers: int = 2,
                     output: str = "identity"):
    """A random but valid value file (`search.value` format) for strategy tests: `path` and its JSON beside."""
    import json
    from pathlib import Path

    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors, norm = {}, {}
    for k in scales:
        fan_in = feature_dim + 3
        for i in range(layers):
            out = 1 if i == layers - 1 else hidden
            tensors[f"scale{k}.{i}.weight"] = rng.normal(size=(out, fan_in)).astype(np.float32)
            tensors[f"scale{k}.{i}.bias"] = rng.normal(size=out).astype(np.float32)
            fan_in = out
        norm[str(k)] = {"mean": [0.0] * (feature_dim + 3), "std": [1.0] * (feature_dim + 3), "y_mean": 0.0,
                        "y_std": 1.0}
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(
        {"format": "ttsvar-value/1", "scales": list(scales), "feature_dim": feature_dim, "layers": layers,
         "output": output, "norm": norm, "features": "test"}))
    return path


_VALUE_FILES: dict = {}


def strategy_test_options(name: str, feature_dim: int = 8) -> dict:
    """Options a registered strategy needs beyond `search.n` in synthetic tests: a value file for `value`."""
    if name != "value":
        return {}
    if feature_dim not in _VALUE_FILES:
        import tempfile
        from pathlib import Path

        _VALUE_FILES[feature_dim] = write_value_file(Path(tempfile.mkdtemp()) / "value.safetensors", feature_dim)
    return {"value": str(_VALUE_FILES[feature_dim])}
