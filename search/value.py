"""A learned value V_k: a small per-scale MLP, read strictly from the file `ttsvar fit-value` writes (numpy only).

V_k predicts a row's final outcome (its final reward, or the evaluator's verdict) from what is known after
decision scale k: the preview's features, its scale-k reward, and the generator's free token statistics
(mean log-probability and entropy of the row's sampled tokens). The potential `learned`
(`search.potentials`, `search.options.value=PATH`) and the `value` strategy use it in place of the raw
reward at the scales it was fitted for.

Files (written by `ttsvar.value.save_value`; docs/value.md):

    value.safetensors   scale{k}.{i}.weight float32 [out, in], scale{k}.{i}.bias float32 [out], i = 0..L-1
    value.json          {"format": "ttsvar-value/1", "scales": [k...], "feature_dim": F, "layers": L,
                         "output": "identity" | "sigmoid", "norm": {"k": {"mean": [F+3], "std": [F+3],
                         "y_mean": m, "y_std": s}}, "target", "reward_scale", "features", "reward", "metrics"}

The inputs, in order, are [features (F), reward, log_prob, entropy], standardised with the file's mean/std; a
non-finite input (a generator that reports no token statistics) becomes the training mean (0 after
standardising). Rewards are in the units strategies see (raw / the reward's score scale: search.md), which is
why `reward_scale` is recorded. Layers are ReLU MLPs; the output is de-standardised (`y_mean + y_std * out`)
or, for a verdict, a probability (`sigmoid`).

Who calls what: a strategy's constructor calls `load_value(path)` (so a bad file fails when the job config is
checked, before any model loads); `decide` calls `model.predict(obs)` at the scales in `model.scales`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMAT = "ttsvar-value/1"
EXTRA_INPUTS = ("reward", "log_prob", "entropy")  # after the F features, in this order
OUTPUTS = ("identity", "sigmoid")


def json_path(path: str | Path) -> Path:
    """The JSON written beside a value file: `value.safetensors` -> `value.json`."""
    return Path(path).with_suffix(".json")


@dataclass
class ScaleModel:
    """The MLP of one decision scale: standardisation, ReLU layers, de-standardisation."""

    weights: list[np.ndarray]  # float64 [out, in] per layer
    biases: list[np.ndarray]  # float64 [out]
    mean: np.ndarray  # float64 [F + 3]
    std: np.ndarray  # float64 [F + 3], > 0
    y_mean: float
    y_std: float

    def forward(self, x: np.ndarray) -> np.ndarray:
        """Raw network output for inputs `x` float [n, F + 3] (before the output map)."""
        z = (np.asarray(x, dtype=np.float64) - self.mean) / self.std
        z = np.where(np.isfinite(z), z, 0.0)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = z @ w.T + b
            if i < len(self.weights) - 1:
                z = np.maximum(z, 0.0)
        return z[:, 0]


class ValueModel:
    """V_k for the scales a value file was fitted for. Build it with `load_value(path)`."""

    def __init__(self, path: str, config: dict, models: dict[int, ScaleModel]):
        self.path, self.config, self.models = path, config, models
        self.feature_dim = int(config["feature_dim"])
        self.output = config["output"]

    @property
    def scales(self) -> frozenset[int]:
        return frozenset(self.models)

    def inputs(self, obs) -> np.ndarray:
        """The model's inputs for an `Observation` (float64 [n, F + 3]); raises naming the file when the features
        do not have the dimension the model was fitted on."""
        n = obs.num_rows
        if obs.features is None or obs.rewards is None:
            raise ValueError(f"value: {self.path} needs the preview features and rewards after scale {obs.scale}")
        feats = np.asarray(obs.features, dtype=np.float64)
        if feats.shape[1] != self.feature_dim:
            raise ValueError(f"value: {self.path} was fitted on {self.feature_dim}-d features "
                             f"({self.config.get('features')}), but the job's features are {feats.shape[1]}-d; "
                             "use the same search.features as the runs it was fitted on")
        cols = [np.asarray(obs.rewards, dtype=np.float64)]
        for name in ("log_prob", "entropy"):
            v = getattr(obs, name)
            cols.append(np.full(n, np.nan) if v is None else np.asarray(v, dtype=np.float64))
        return np.concatenate([feats, np.stack(cols, axis=1)], axis=1)

    def predict_inputs(self, scale: int, x: np.ndarray) -> np.ndarray:
        """V_k (float64 [n]) for the model inputs `x` [n, F + 3] at decision scale `scale`."""
        m = self.models.get(int(scale))
        if m is None:
            raise ValueError(f"value: {self.path} has no model for scale {scale} (it has {sorted(self.models)})")
        out = m.forward(x)
        if self.output == "sigmoid":
            return 1.0 / (1.0 + np.exp(-out))
        return m.y_mean + m.y_std * out

    def predict(self, obs) -> np.ndarray:
        """V_k for every row of an `Observation` at one of `scales`; NaN where the row's reward is NaN."""
        v = self.predict_inputs(obs.scale, self.inputs(obs))
        return np.where(np.isnan(np.asarray(obs.rewards, dtype=np.float64)), np.nan, v)


def load_value(path: str | Path) -> ValueModel:
    """Read and check a value file and its JSON; every problem is one ValueError starting `value: <file>`."""
    if not isinstance(path, (str, Path)):
        raise ValueError(f"value: expected the path of a value file (written by `ttsvar fit-value`), got {path!r}")
    p = Path(path).expanduser()
    where = f"value: {p}"
    if not p.is_file():
        what = "is a folder; give the value file in it" if p.is_dir() else "does not exist"
        raise ValueError(f"{where} {what}; write one with `ttsvar fit-value RUN_DIR -o {p.name}`")
    jp = json_path(p)
    if not jp.is_file():
        raise ValueError(f"{where}: its config {jp.name} is missing beside it (fit-value writes both)")
    try:
        config = json.loads(jp.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where}: {jp.name} is not valid JSON ({e})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{where}: {jp.name} is not a value config (format {FORMAT!r} expected)")
    for key in ("scales", "feature_dim", "layers", "output", "norm"):
        if key not in config:
            raise ValueError(f"{where}: {jp.name} has no {key!r}")
    scales, dim, layers = config["scales"], config["feature_dim"], config["layers"]
    if not (isinstance(scales, list) and scales and all(isinstance(k, int) and k >= 0 for k in scales)):
        raise ValueError(f"{where}: 'scales' must be a non-empty list of scale indices, got {scales!r}")
    if not (isinstance(dim, int) and dim >= 1 and isinstance(layers, int) and layers >= 1):
        raise ValueError(f"{where}: 'feature_dim' and 'layers' must be positive integers")
    if config["output"] not in OUTPUTS:
        raise ValueError(f"{where}: 'output' must be one of {list(OUTPUTS)}, got {config['output']!r}")
    try:
        from safetensors.numpy import load_file

        tensors = load_file(str(p))
    except Exception as e:  # noqa: BLE001 - truncated or foreign files raise several kinds
        raise ValueError(f"{where} cannot be read as safetensors ({type(e).__name__}: {e})") from None
    expected = {f"scale{k}.{i}.{w}" for k in scales for i in range(layers) for w in ("weight", "bias")}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise ValueError(f"{where}: missing keys {missing[:4]}, unexpected keys {unexpected[:4]}")
    models = {}
    for k in scales:
        norm = config["norm"].get(str(k)) if isinstance(config["norm"], dict) else None
        if not isinstance(norm, dict) or not {"mean", "std", "y_mean", "y_std"} <= set(norm):
            raise ValueError(f"{where}: norm[{k!r}] must hold mean, std, y_mean and y_std")
        mean, std = np.asarray(norm["mean"], np.float64), np.asarray(norm["std"], np.float64)
        if mean.shape != (dim + 3,) or std.shape != (dim + 3,) or not (np.all(np.isfinite(mean))
                                                                        and np.all(std > 0)):
            raise ValueError(f"{where}: norm[{k!r}] mean/std must be {dim + 3} finite numbers (std > 0) for "
                             f"{dim} features + {len(EXTRA_INPUTS)} inputs")
        ws, bs, fan_in = [], [], dim + 3
        for i in range(layers):
            w, b = tensors[f"scale{k}.{i}.weight"], tensors[f"scale{k}.{i}.bias"]
            out = 1 if i == layers - 1 else w.shape[0]
            if w.ndim != 2 or w.shape != (out, fan_in) or b.shape != (out,):
                raise ValueError(f"{where}: scale{k}.{i} has weight {tuple(w.shape)} and bias {tuple(b.shape)}; "
                                 f"expected ({out}, {fan_in}) and ({out},) (feature_dim {dim})")
            if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
                raise ValueError(f"{where}: scale{k}.{i} holds non-finite weights")
            ws.append(w.astype(np.float64))
            bs.append(b.astype(np.float64))
            fan_in = out
        y_mean, y_std = norm["y_mean"], norm["y_std"]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (y_mean, y_std)) or y_std <= 0:
            raise ValueError(f"{where}: norm[{k!r}] y_mean/y_std must be finite (y_std > 0)")
        models[int(k)] = ScaleModel(ws, bs, mean, std, float(y_mean), float(y_std))
    return ValueModel(str(p), config, models)
