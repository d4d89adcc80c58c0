"""The embedded `shapes-var-tiny` generator: the native VAR (`ttsvar.models.var`) and its multi-scale VQ-VAE
at a tiny configuration, class-conditional on scene descriptions of the shapes world, trained by
`python -m ttsvar.testbed.train_var` and shipped inside the package.

Its classes are shapes-world prompts (`a photo of two red circles` is one class): the list ships in the JSON
beside the weights, so a prompt line `{"class": 3}`, the class's text, or its index all name it, and the exact
evaluator judges a sample by the GenEval metadata of its class's prompt. Text rewards read the class's text
(docs/testbed.md). Importing this module registers `shapes-var-tiny`; the generator registry names it in its
`_BUILTIN_MODULES` (the models never import the testbed).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch

from ..core.checkpoint import load_parts, read_state_dict
from ..core.classes import ClassList
from ..core.device import resolve_device
from ..core.errors import MissingFileError
from ..core.generator import SamplingConfig
from ..models.registry import ModelConfig, ModelDefaults, register_generator
from ..models.var.generator import VARGenerator
from ..models.var.model import VAR, VARConfig
from ..models.var.vqvae import VQVAE, VQVAEConfig

WEIGHTS = Path(__file__).parent / "weights" / "shapes_var_tiny.safetensors"

# Sampling that suits the tiny VAR (chosen on its classes, docs/testbed.md); cfg is the last scale's weight of
# VAR's guidance ramp (docs/var.md)
SHAPES_VAR_SAMPLING = {"cfg": 3.0, "tau": 1.0, "top_k": 0, "top_p": 0.0}


def read_record(path: str | Path | None = None) -> dict:
    """The JSON record beside the weights (configs, classes, training record); `MissingFileError` if absent."""
    path = Path(path) if path else WEIGHTS
    meta = path.with_suffix(".json")
    if not path.is_file() or not meta.is_file():
        raise MissingFileError(f"shapes-var-tiny weights not found at {path} (+ .json); reinstall the package or "
                               "rebuild them with `python -m ttsvar.testbed.train_var`")
    return json.loads(meta.read_text())


def class_list(record: dict) -> ClassList:
    """The model's classes: class k is named by its prompt text."""
    return ClassList(tuple((name,) for name in record["classes"]))


@lru_cache(maxsize=1)
def shipped_classes() -> ClassList:
    """The shipped model's classes (what the job resolves prompts with, before the model loads)."""
    return class_list(read_record())


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


def load_shapes_var_tiny(path: str | Path | None = None, device: str | torch.device = "cpu",
                         sampling: SamplingConfig | None = None) -> VARGenerator:
    """The generator, float32, from the float16 file; strict: every `var.*` and `vae.*` key must match."""
    path = Path(path) if path else WEIGHTS
    record = read_record(path)
    parts = {"var.": VAR(VARConfig(**_tuples(record["var"]))), "vae.": VQVAE(VQVAEConfig(**_tuples(record["vqvae"])))}
    sd = {k: v.float() for k, v in read_state_dict(path).items()}
    load_parts(parts, sd, path, what="shapes-var-tiny",
               fix="pass the shapes_var_tiny.safetensors written by `python -m ttsvar.testbed.train_var`")
    for module in parts.values():
        module.to(device).eval().requires_grad_(False)
    return VARGenerator(parts["var."], parts["vae."], sampling or SamplingConfig(**SHAPES_VAR_SAMPLING), device,
                        classes=class_list(record))


@register_generator("shapes-var-tiny", ModelDefaults(reward="shapes-reward", features="shapes-clip",
                                                     sampling=SHAPES_VAR_SAMPLING, reads=("weights", "device"),
                                                     classes=shipped_classes))
def shapes_var_tiny(cfg: ModelConfig, sampling: SamplingConfig | None) -> VARGenerator:
    return load_shapes_var_tiny(cfg.weights, resolve_device(cfg.device), sampling)
