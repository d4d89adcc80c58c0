"""The embedded `shapes-tiny` generator: a tiny Infinity + BSQ-VAE + word encoder trained on the shapes
world by `python -m ttsvar.testbed.train`, shipped inside the package (no files to find).

Importing this module registers `shapes-tiny`; the generator registry names it in its `_BUILTIN_MODULES` and
imports it on the first lookup (the models never import the testbed)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from search.schedule import tts_var_family

from ..core.checkpoint import load_parts, read_state_dict
from ..core.device import resolve_device
from ..core.errors import MissingFileError
from ..core.generator import SamplingConfig
from ..models.infinity.generator import InfinityGenerator
from ..models.infinity.model import Infinity, InfinityConfig
from ..models.infinity.vae import BSQVAE, BSQVAEConfig
from ..models.registry import ModelConfig, ModelDefaults, register_generator
from ..models.text import WordEncoderConfig, WordTextEncoder

WEIGHTS = Path(__file__).parent / "weights" / "shapes_tiny.safetensors"

# Sampling that suits the tiny model (chosen on the training prompts, see docs/testbed.md).
SHAPES_SAMPLING = {"cfg": 3.0, "tau": 1.0, "top_k": 0, "top_p": 0.0}


def weights_available(path: Path = WEIGHTS) -> bool:
    return path.is_file() and path.with_suffix(".json").is_file()


def load_shapes_tiny(path: str | Path | None = None, device: str | torch.device = "cpu",
                     sampling: SamplingConfig | None = None) -> InfinityGenerator:
    path = Path(path) if path else WEIGHTS
    meta_path = path.with_suffix(".json")
    if not path.is_file() or not meta_path.is_file():
        raise MissingFileError(f"shapes-tiny weights not found at {path} (+ .json); reinstall the package or "
                               "rebuild them with `python -m ttsvar.testbed.train`")
    meta = json.loads(meta_path.read_text())
    vd = {k: (tuple(map(tuple, v)) if k == "scale_schedule" and v else tuple(v) if isinstance(v, list) else v)
          for k, v in meta["vae"].items()}
    vcfg = BSQVAEConfig(**vd)
    icfg = InfinityConfig(**meta["infinity"])
    wcfg = WordEncoderConfig(**{**meta["text"], "vocab": tuple(meta["text"]["vocab"])})
    sd = {k: v.float() for k, v in read_state_dict(path).items()}
    parts = {"gpt.": Infinity(icfg), "text.": WordTextEncoder(wcfg), "vae.": BSQVAE(vcfg)}
    load_parts(parts, sd, path, what="shapes-tiny",
               fix="pass the shapes_tiny.safetensors written by `python -m ttsvar.testbed.train`")
    for module in parts.values():
        module.to(device).eval().requires_grad_(False)
    schedule = [tuple(s) for s in meta["scale_schedule"]]
    return InfinityGenerator(parts["gpt."], parts["vae."], parts["text."], schedule,
                             sampling or SamplingConfig(**SHAPES_SAMPLING), device)


# TTS-VAR on this 6-scale model, chosen on training prompts (docs/search.md, "TTS-VAR's defaults on the testbed"):
# the last scale holds half of a sample's tokens, so the paper's narrowing to n final rows spends most of the
# budget on coarse rows whose previews rank paths barely better than chance; keeping 2n rows to the end and
# resampling gently (lam 1) scored 0.708 against the paper schedule's 0.608 at N=2 on training prompts, at the same
# compute. Resampling is systematic: the decision after scale 4 keeps the batch size, where multinomial draws drop
# about a third of the distinct rows even at flat weights; +0.075 +- 0.028 at N=8, +0.025 +- 0.025 at N=4 (paired
# over 4 seeds, training prompts; benchmarks.md, "Resamplers").
SHAPES_TTS_VAR = {"batch_schedule": (4, 3, 3, 2, 2, 2), "cluster_scales": (1,), "resample_scales": (3, 4), "lam": 1.0,
                  "resampler": "systematic"}


@register_generator("shapes-tiny", ModelDefaults(
    reward="shapes-reward", features="shapes-clip", sampling=SHAPES_SAMPLING, reads=("weights", "device"),
    search=tts_var_family(SHAPES_TTS_VAR)))
def shapes_tiny(cfg: ModelConfig, sampling: SamplingConfig | None) -> InfinityGenerator:
    return load_shapes_tiny(cfg.weights, resolve_device(cfg.device), sampling)
