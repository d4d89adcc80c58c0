"""A tiny open_clip CLIP for the shapes world: image features for clustering and a prompt-following reward.

The model is a plain `open_clip.CLIP` built from a custom config (`SHAPES_CLIP_CONFIG`: a 4-layer,
width-64 ViT on 32x32 images with 4x4 patches and a 3-layer, width-64 text transformer; 0.3M
parameters, 1.2 MB), so its state dict has open_clip's keys and any open_clip code can run it.
Two things differ from stock CLIP:

* Tokenizer: the prompts have a closed vocabulary of 23 words (`world.VOCAB`), so `ShapesTokenizer`
  maps words to ids (``[SOT] words [EOT] pad...``, EOT the largest id, so open_clip's default
  ``argmax`` text pooling finds it). open_clip's BPE tokenizer would need a 49408-row embedding table
  (12.6 MB at width 64, ten times the whole model) for the same 23 words.
* Loss: a sigmoid (SigLIP-style) loss on the full image x prompt label matrix. Every step encodes all
  training prompts, and `world.prompt_truth` says which prompt is correct for which image, so captions
  that differ from an image's own by one colour, count, relation or shape are hard negatives, and the
  many captions that also fit an image ("a photo of a circle" fits "a red circle and ...") are
  positives, not false negatives. The score ``logit_scale * cos + logit_bias`` is then the log-odds
  that the prompt is correct, which is what a search reward needs.

Who calls what: `train_clip` (the testbed training, and a seconds-long run in the tests) ->
`save_shapes_clip`; `load_shapes_clip` -> `ShapesCLIP`. That pair is the only loader and the only wrapper of
this model: the `shapes-clip` reward (`rewards/shapes_clip.py`) and the `shapes-clip` clustering features
(`rewards/features.py`) are thin adapters that load it here and set their own input `transform`;
`evaluate_clip` (bench/bench_clip.py) measures retrieval and how well the score tracks the exact evaluator.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import set_model_preprocess_cfg
from safetensors.torch import load_file
from scipy import ndimage
from scipy.stats import rankdata

from ttsvar.core.errors import MissingFileError
from ttsvar.eval.geneval import check_metadata
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "shapes_clip.safetensors"

SOT_ID = len(world.VOCAB)
EOT_ID = len(world.VOCAB) + 1  # the largest id: open_clip's argmax pooling reads the EOT position
CONTEXT_LENGTH = world.MAX_PROMPT_WORDS + 2

SHAPES_CLIP_CONFIG: dict = {
    "embed_dim": 64,
    "init_logit_scale": math.log(10.0),  # SigLIP's initial scale, for the sigmoid loss
    # ~8 of the 179 training prompts fit an image: start at that base rate, log(8 / 171) ~ -3
    "init_logit_bias": -3.0,
    "vision_cfg": {
        "image_size": 32,
        "patch_size": 4,
        "width": 64,
        "layers": 4,
        "head_width": 32,
        "mlp_ratio": 2.0,
    },
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": len(world.VOCAB) + 2,
        "width": 64,
        "heads": 4,
        "layers": 3,
        "pad_id": world.PAD_ID,
    },
}
# pixel statistics of the shapes world (make_dataset(20000, 0, holdout="include")), so inputs are ~N(0, 1)
SHAPES_CLIP_PREPROCESS: dict = {
    "size": 32,
    "mode": "RGB",
    "mean": (0.871, 0.858, 0.857),
    "std": (0.227, 0.236, 0.246),
    "interpolation": "bilinear",  # for open_clip's PIL transforms; ShapesCLIP.preprocess shrinks by area
    "resize_mode": "shortest",
    "fill_color": 0,
}


class ShapesTokenizer:
    """Word-level tokenizer with open_clip's calling convention: ``tok(texts) -> LongTensor [B, L]``."""

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length
        self.sot_token_id, self.eot_token_id, self.pad_token_id = SOT_ID, EOT_ID, world.PAD_ID
        self.vocab_size = len(world.VOCAB) + 2

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)
        for i, text in enumerate(texts):
            ids = [SOT_ID] + world.tokenize(text) + [EOT_ID]
            if len(ids) > length:
                raise ValueError(f"prompt {text!r} needs {len(ids)} tokens, more than context_length={length}")
            out[i, : len(ids)] = torch.tensor(ids)
        return out


def build_shapes_clip(config: dict | None = None, preprocess_cfg: dict | None = None) -> open_clip.CLIP:
    """A randomly initialised `open_clip.CLIP` from ``config`` (default `SHAPES_CLIP_CONFIG`)."""
    cfg = copy.deepcopy(config if config is not None else SHAPES_CLIP_CONFIG)
    model = open_clip.CLIP(**cfg)
    set_model_preprocess_cfg(model, dict(preprocess_cfg if preprocess_cfg is not None else SHAPES_CLIP_PREPROCESS))
    return model


# ----------------------------------------------------------------------------------------------------
# saving and loading: <stem>.safetensors (open_clip state dict) + <stem>.json (open_clip_config.json
# layout: model_cfg and preprocess_cfg, plus the tokenizer and the training record)


def save_shapes_clip(model: open_clip.CLIP, path: str | os.PathLike, record: dict | None = None) -> tuple[Path, Path]:
    """Write ``<path>.safetensors`` and ``<path>.json``; ``record`` (seed, command, metrics) goes in the
    JSON."""
    from ..output import write_weights

    path = Path(path)
    wfile = path.with_suffix(".safetensors") if path.suffix in (".safetensors", ".json", "") else \
        path.with_name(path.name + ".safetensors")  # `--out run.v2`: a name with a dot, not a suffix to replace
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_weights(wfile, state, {
        "model_cfg": getattr(model, "shapes_cfg", SHAPES_CLIP_CONFIG),
        "preprocess_cfg": dict(model.visual.preprocess_cfg),
        "tokenizer": {"kind": "shapes-word", "vocab": world.VOCAB, "sot_id": SOT_ID, "eot_id": EOT_ID},
        "training": record or {},
    })
    return wfile, wfile.with_suffix(".json")


def load_shapes_clip(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> ShapesCLIP:
    """Load a saved shapes CLIP (default: the weights shipped in ``ttsvar/testbed/weights``), strictly."""
    path = Path(path if path is not None else DEFAULT_WEIGHTS).with_suffix("")
    wfile, cfile = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (wfile, cfile):
        if not f.is_file():
            raise MissingFileError(
                f"shapes CLIP file {f} not found; the shipped pair is in ttsvar/testbed/weights (rebuild it with "
                "`python -m ttsvar.testbed.train`), or train one with ttsvar.testbed.clip.train_clip and "
                "save_shapes_clip and pass the path of its <name>.safetensors/<name>.json pair"
            )
    with open(cfile, encoding="utf-8") as f:
        cfg = json.load(f)
    if cfg.get("tokenizer", {}).get("vocab") != world.VOCAB:
        raise ValueError(f"{cfile} was trained with a different vocabulary than world.VOCAB; retrain it")
    model = build_shapes_clip(cfg["model_cfg"], cfg["preprocess_cfg"])
    model.shapes_cfg = cfg["model_cfg"]
    state = load_file(str(wfile))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    shapes = [(k, tuple(state[k].shape), tuple(expected[k].shape)) for k in wrong]
    if missing or unexpected or wrong:
        raise ValueError(
            f"{wfile} does not match the config in {cfile}: missing keys {missing}, unexpected keys "
            f"{unexpected}, wrong shapes (file, config) {shapes}"
        )
    model.load_state_dict(state, strict=True)
    return ShapesCLIP(model.to(device, dtype).eval(), cfg["preprocess_cfg"], record=cfg.get("training", {}))


# ----------------------------------------------------------------------------------------------------
# inference wrapper: the reward and feature interfaces


def _as_tensor(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """[B,3,H,W] float in [0,1]; also accepts uint8 numpy [B,H,W,3] (the evaluator's layout)."""
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"numpy images must be uint8 [B,H,W,3], got {images.dtype} {images.shape}")
        return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        desc = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a tensor [B,3,H,W] with values in [0,1], got {desc}")
    if not images.is_floating_point():
        raise ValueError(f"images must be float in [0,1], got dtype {images.dtype}; divide uint8 images by 255")
    if images.numel() and (images.min() < 0 or images.max() > 1):
        raise ValueError(
            f"images must be in [0,1], got values in [{images.min().item():.3g}, {images.max().item():.3g}]"
        )
    return images


# (images [B,3,H,W] in [0,1], device, dtype) -> the model's normalised input; `rewards.preprocess.ImageTransform`
# has this signature
Transform = Callable[[torch.Tensor, torch.device, torch.dtype], torch.Tensor]


class ShapesCLIP:
    """A loaded shapes CLIP with the interfaces the engine uses.

    ``score(images, prompts)`` is the reward (rewards' interface: one float32 per image, on CPU, higher
    = better; it is the model's log-odds that the prompt is correct). ``extract(images)`` gives
    L2-normalised image embeddings for clustering (the feature extractors' interface).
    ``transform`` (settable) replaces the input pipeline the model was trained with (`preprocess`).
    """

    name = "shapes-clip"
    input_size = 32
    needs_prompt = True

    def __init__(self, model: open_clip.CLIP, preprocess_cfg: dict | None = None, record: dict | None = None,
                 transform: Transform | None = None):
        self.model = model.eval()
        self.preprocess_cfg = dict(preprocess_cfg or SHAPES_CLIP_PREPROCESS)
        self.tokenizer = ShapesTokenizer(model.context_length)
        self.record = record or {}
        self.transform = transform

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def preprocess(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Resize to 32x32 and normalise; input [B,3,H,W] in [0,1] (or uint8 numpy [B,H,W,3]).

        Shrinking uses area averaging (exact for integer factors: a 2x nearest-upsampled image comes
        back unchanged), enlarging bilinear interpolation. A ``transform``, when set, runs instead.
        """
        if self.transform is not None:
            return self.transform(_as_tensor(images), self.device, self.dtype)
        x = _as_tensor(images).to(self.device, self.dtype)
        size = self.preprocess_cfg["size"]
        if x.shape[-2:] != (size, size):
            if x.shape[-2] >= size and x.shape[-1] >= size:
                x = F.interpolate(x, size=(size, size), mode="area")
            else:
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(self.preprocess_cfg["mean"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess_cfg["std"], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """float32 [B, D] unit-norm image embeddings (on the model's device)."""
        return self.model.encode_image(self.preprocess(images), normalize=True).float()

    @torch.inference_mode()
    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B, D] unit-norm text embeddings; a prompt repeated in the batch (the search sends each
        prompt once per candidate) is encoded once."""
        unique = list(dict.fromkeys(prompts))
        emb = self.model.encode_text(self.tokenizer(unique).to(self.device), normalize=True).float()
        pos = {p: i for i, p in enumerate(unique)}
        return emb[torch.tensor([pos[p] for p in prompts], dtype=torch.long, device=emb.device)]

    def extract(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """float32 [B, D] image features for clustering."""
        return self.encode_images(images).cpu().numpy()

    @torch.inference_mode()
    def score(self, images: torch.Tensor | np.ndarray, prompts: Sequence[str]) -> torch.Tensor:
        """float32 [B] on CPU: ``logit_scale * cos(image, prompt) + logit_bias`` per (image, prompt) pair."""
        images = _as_tensor(images)
        n = len(images)
        if isinstance(prompts, str) or len(prompts) != n:
            raise ValueError(f"score() needs one prompt per image: got {n} images and {len(prompts)} prompts")
        if n == 0:
            raise ValueError("score() got an empty batch")
        img, txt = self.encode_images(images), self.encode_texts(prompts)
        return self.logits_from(img, txt).cpu()

    def logits_from(self, img: torch.Tensor, txt: torch.Tensor) -> torch.Tensor:
        """Row-wise log-odds of matching pairs of unit-norm embeddings (both [B, D])."""
        bias = self.model.logit_bias if self.model.logit_bias is not None else 0.0
        return ((img * txt).sum(-1) * self.model.logit_scale.exp() + bias).float()

    @torch.inference_mode()
    def score_matrix(self, images: torch.Tensor | np.ndarray, prompts: Sequence[str], batch: int = 512) -> np.ndarray:
        """float32 [n_images, n_prompts] log-odds of every pair (for retrieval)."""
        txt = self.encode_texts(list(prompts))
        img = torch.cat([self.encode_images(images[i : i + batch]) for i in range(0, len(images), batch)])
        bias = self.model.logit_bias if self.model.logit_bias is not None else 0.0
        return (img @ txt.T * self.model.logit_scale.exp() + bias).float().cpu().numpy()


# ----------------------------------------------------------------------------------------------------
# training


@dataclass
class TrainConfig:
    """Settings of `train_clip`; the defaults are the shipped run."""

    steps: int = 2500
    batch: int = 64
    seed: int = 0
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 100
    p_distractor: float = 0.3
    p_augment: float = 0.5  # share of each batch blurred (sigma <= 1) and noised (sigma <= 12/255)
    balance_tags: bool = False  # weight prompts so every GenEval tag counts the same (`tag_weights`)
    log_every: int = 100
    threads: int = 0  # torch CPU threads; 0 leaves torch's setting alone


def _augment(x: torch.Tensor, g: torch.Generator, p: float) -> torch.Tensor:
    """Blur and noise a random share of the batch, so the model also reads soft generated images."""
    b = x.shape[0]
    pick = torch.rand(b, generator=g) < p
    if not pick.any():
        return x
    sigma = 0.2 + 0.8 * torch.rand(1, generator=g).item()
    t = torch.arange(-2, 3, dtype=x.dtype)
    k1 = torch.exp(-(t**2) / (2 * sigma**2))
    k1 = k1 / k1.sum()
    k2 = (k1[:, None] * k1[None, :]).expand(3, 1, 5, 5)  # [C, 1, 5, 5] depthwise kernel
    soft = F.conv2d(F.pad(x[pick], (2, 2, 2, 2), mode="replicate"), k2, groups=3)
    soft = soft + torch.randn(soft.shape, generator=g) * (torch.rand(soft.shape[0], 1, 1, 1, generator=g) * 12 / 255)
    x = x.clone()
    x[pick] = soft.clamp(0, 1)
    return x


def siglip_loss(logits: torch.Tensor, truth: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss over an [images, prompts] logit matrix; ``truth`` is 1/0, and -1 entries are ignored.

    Summed over prompts (each times its entry of ``weights`` [P], default 1) and averaged over images,
    as SigLIP does.
    """
    mask = (truth >= 0).to(logits.dtype)
    if weights is not None:
        mask = mask * weights
    sign = truth.to(logits.dtype) * 2 - 1
    return -(F.logsigmoid(sign * logits) * mask).sum() / logits.shape[0]


def tag_weights(prompts: Sequence[dict]) -> torch.Tensor:
    """float32 [P]: 1 / (number of prompts of the same tag), scaled to mean 1.

    With it every tag weighs the same in the loss, as every tag weighs the same in the GenEval score;
    without it the 126 color_attr prompts would outweigh the 22 position prompts six to one.
    """
    counts: dict[str, int] = {}
    for m in prompts:
        counts[m["tag"]] = counts.get(m["tag"], 0) + 1
    w = torch.tensor([1.0 / counts[m["tag"]] for m in prompts])
    return w * len(prompts) / w.sum()


def train_clip(
    cfg: TrainConfig | None = None,
    model_config: dict | None = None,
    eval_images_per_prompt: int = 4,
    log=print,
) -> tuple[open_clip.CLIP, dict]:
    """Train a shapes CLIP from scratch on fresh `world` scenes (training prompts only).

    Deterministic in ``cfg.seed`` for a fixed torch build and thread count. Returns the model and a
    metrics dict (loss curve, wall time, and `evaluate_clip` on the train and held-out prompt splits
    when ``eval_images_per_prompt > 0``).
    """
    cfg = cfg or TrainConfig()
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _train(cfg, model_config, eval_images_per_prompt, log)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, model_config: dict | None, eval_images_per_prompt: int, log) -> tuple:
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    model = build_shapes_clip(model_config)
    model.shapes_cfg = copy.deepcopy(model_config or SHAPES_CLIP_CONFIG)
    model.train()
    tok = ShapesTokenizer(model.context_length)
    prompts = world.prompts_of("train")
    text_ids = tok([m["prompt"] for m in prompts])
    weights = tag_weights(prompts) if cfg.balance_tags else None
    mean = torch.tensor(SHAPES_CLIP_PREPROCESS["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(SHAPES_CLIP_PREPROCESS["std"]).view(1, 3, 1, 1)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embedding" in n]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
        betas=(0.9, 0.98),
    )
    curve = []
    t0 = time.time()
    running = None
    for step in range(cfg.steps):
        # linear warmup, then cosine decay to 10% of the peak
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.55 + 0.45 * math.cos(math.pi * step / cfg.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        scenes, _ = world.make_scenes(cfg.batch, seed=cfg.seed * 1_000_003 + step, p_distractor=cfg.p_distractor)
        truth = torch.from_numpy(world.prompt_truth(scenes, prompts))  # [B, P]
        x = torch.from_numpy(world.render_batch(scenes)).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, 32, 32]
        x = _augment(x, g, cfg.p_augment)
        img = model.encode_image((x - mean) / std, normalize=True)  # [B, D]
        txt = model.encode_text(text_ids, normalize=True)  # [P, D]
        logits = img @ txt.T * model.logit_scale.exp()  # [B, P]
        if model.logit_bias is not None:
            logits = logits + model.logit_bias
        loss = siglip_loss(logits, truth, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            curve.append([step, round(loss.item(), 5)])
            elapsed = time.time() - t0
            log(f"step {step:5d}  loss {loss.item():.4f}  (avg {running:.4f})  lr {lr:.2e}  {elapsed:.0f}s")
    model.eval()
    metrics: dict = {"config": cfg.__dict__, "loss_curve": curve, "train_seconds": round(time.time() - t0, 1)}
    if eval_images_per_prompt > 0:
        clip = ShapesCLIP(model)
        metrics["eval"] = {
            split: evaluate_clip(clip, split, eval_images_per_prompt, seed=12345) for split in ("train", "heldout")
        }
    return model, metrics


# ----------------------------------------------------------------------------------------------------
# evaluation against the exact evaluator


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count 1/2)."""
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate_clip(
    clip: ShapesCLIP, split: str = "train", images_per_prompt: int = 4, seed: int = 0, blur_sigma: float = 0.0
) -> dict:
    """How well the CLIP's score tracks the exact evaluator, on the prompts of ``split``.

    Gallery: ``images_per_prompt`` ground-truth scenes for every prompt of the split, optionally
    blurred (``blur_sigma`` pixels, to mimic soft generated images). Every (image, prompt) pair is
    labelled by `ShapesEvaluator` on the image as scored, not by how the image was made.

    * ``t2i_r1``: share of prompts whose top-scored gallery image is correct for it;
    * ``prompt_auroc``: per prompt, AUROC of the score between the gallery images correct and incorrect
      for it, averaged over prompts: how well the reward ranks candidates of one prompt (best-of-N);
    * ``i2t_r1``: share of images whose top-scored prompt (among all prompts of every split) is correct;
    * ``pair_acc``: image vs its own (correct) prompt and a one-attribute perturbation of it
      (`world.perturb_prompt`) that is incorrect: share where the own prompt scores higher;
    * ``auroc`` / ``pearson``: over all (image, prompt-of-split) pairs, AUROC and point-biserial
      correlation of the score with the evaluator's verdict. ``per_tag``: t2i_r1, prompt_auroc, pair_acc.
    """
    rng = np.random.default_rng(seed)
    prompts = world.prompts_of(split)
    own = [m for m in prompts for _ in range(images_per_prompt)]
    images = world.render_batch([world.sample_scene_for(m, rng) for m in own])
    if blur_sigma > 0:
        soft = ndimage.gaussian_filter(images.astype(np.float32), (0, blur_sigma, blur_sigma, 0))
        images = np.clip(soft.round(), 0, 255).astype(np.uint8)
    detections = [ShapesEvaluator().detect(img) for img in images]
    all_prompts = world.prompts_of("all")
    labels_all = np.array([[check_metadata(d, m)[0] for m in all_prompts] for d in detections])  # [N, Pall]
    idx = {m["prompt"]: j for j, m in enumerate(all_prompts)}
    split_cols = np.array([idx[m["prompt"]] for m in prompts])
    s_all = clip.score_matrix(images, [m["prompt"] for m in all_prompts])  # [N, Pall]
    s, lab = s_all[:, split_cols], labels_all[:, split_cols]  # [N, P]
    t2i = lab[s.argmax(0), np.arange(len(prompts))]  # [P]
    p_auroc = np.array([_auroc(s[:, j], lab[:, j]) for j in range(len(prompts))])  # [P], nan if one-sided
    i2t = labels_all[np.arange(len(images)), s_all.argmax(1)]  # [N]
    pairs, pair_tag = [], []
    for i, m in enumerate(own):
        if not labels_all[i, idx[m["prompt"]]]:
            continue
        for _ in range(10):  # find a perturbation the evaluator rejects
            neg = world.perturb_prompt(m, rng)
            if not labels_all[i, idx[neg["prompt"]]]:
                pairs.append(s_all[i, idx[m["prompt"]]] > s_all[i, idx[neg["prompt"]]])
                pair_tag.append(m["tag"])
                break
    pair, pair_tag = np.array(pairs), np.array(pair_tag)
    tags = np.array([m["tag"] for m in prompts])
    per_tag = {
        t: {
            "n_prompts": int((tags == t).sum()),
            "t2i_r1": float(t2i[tags == t].mean()),
            "prompt_auroc": float(np.nanmean(p_auroc[tags == t])),
            "pair_acc": float(pair[pair_tag == t].mean()),
        }
        for t in dict.fromkeys(tags.tolist())
    }
    return {
        "split": split,
        "blur_sigma": blur_sigma,
        "n_images": len(images),
        "n_prompts": len(prompts),
        "t2i_r1": float(t2i.mean()),
        "prompt_auroc": float(np.nanmean(p_auroc)),
        "i2t_r1": float(i2t.mean()),
        "pair_acc": float(pair.mean()),
        "auroc": _auroc(s.ravel(), lab.ravel()),
        "pearson": float(np.corrcoef(s.ravel(), lab.ravel().astype(float))[0, 1]),
        "per_tag": per_tag,
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m ttsvar.testbed.clip [--out PATH] [--steps N] [--seed S] [--threads T]``: train and save."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m ttsvar.testbed.clip", description="Train the shapes CLIP.")
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS.with_suffix("")), help="output path without suffix")
    p.add_argument("--steps", type=int, default=TrainConfig.steps)
    p.add_argument("--batch", type=int, default=TrainConfig.batch)
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    p.add_argument("--eval-images-per-prompt", type=int, default=4)
    args = p.parse_args(argv)
    cfg = TrainConfig(steps=args.steps, batch=args.batch, seed=args.seed, threads=args.threads)
    from .overrides import check_run_args

    try:
        check_run_args(args.out, False, args.seed, args.threads)
        if args.steps < 1 or args.batch < 2 or args.eval_images_per_prompt < 0:
            raise ValueError(f"--steps {args.steps}, --batch {args.batch}, --eval-images-per-prompt "
                             f"{args.eval_images_per_prompt}: need steps >= 1, batch >= 2 (a contrastive batch), "
                             "images >= 0")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model, metrics = train_clip(cfg, eval_images_per_prompt=args.eval_images_per_prompt)
    command = "python -m ttsvar.testbed.clip " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"seed": args.seed, "command": command.strip(), "torch": torch.__version__, **metrics}
    wfile, cfile = save_shapes_clip(model, args.out, record)
    print(json.dumps({k: v for k, v in metrics.get("eval", {}).items()}, indent=1))
    print(f"saved {wfile} and {cfile}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
