"""Train `shapes-reward` on samples of the embedded generator, labelled by the exact evaluator.

    python -m ttsvar.testbed.train_reward [--threads 2] [--workers 2] [--out PATH] [--data CACHE.npz]
                                          [--set seed=1 steps=1200 det_steps=1500 ...] [--quick]

1. Data: `samples_per_prompt` images of `shapes-tiny` for every *training-split* prompt, spread over
   several (cfg, tau) settings so the reward sees the generator's typical mistakes at many rates. Held-out
   prompts are never sampled, never used as a label, never scored here.
2. Labels, from the exact evaluator: correctness; partial credit (the share of include/exclude clauses
   met, a count clause by its distance); for every image also a few *other* training prompts of the same
   tag (one-attribute perturbations first), so the model must read the words and not only the image;
   and the evaluator's dense view of every image (`dense_targets`: colour, shape and object density per
   2x2 cell), the detector's targets.
3. Stage 1 trains the detector on the dense targets (`train_detector`). Stage 2 freezes it, reads every
   image's slot features once, and trains slots, text and fusion: binary cross-entropy of the log-odds on
   correctness, plus ImageReward's within-prompt pairwise ranking loss, -log sigmoid(r_i - r_j) over
   image pairs of one prompt whose graded labels (correct + partial/2) differ. Three in four prompt
   groups are seen under a random symmetry of the world (`symmetries`: colours and shapes relabelled, the
   image mirrored, in image and prompt alike, which keeps the verdict), restricted to symmetries that map
   the pair's prompts onto other training prompts; this is what makes unseen combinations score well.
   With `dev=True`, `DEV_COMBOS` (combinations inside the training split) are held out of stage 2 and
   scored on their own images (`dev_metrics`): how the reward generalises, measured without held-out prompts.
4. Metrics on fresh samples of training prompts (new seeds, never trained on): within-prompt AUROC, pair
   accuracy, Best-of-8 against random and oracle; the declared scale (std of the scores over generated
   samples) that potentials divide by. Printed, and stored in the JSON beside the weights, with the prompts
   stage 2 trained on: the model scores with `views` symmetric views onto them (ShapesRewardModel.views_of).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..eval.geneval import check_metadata
from . import world
from .data_cache import (  # noqa: F401 - sample_images: imported from here by benches and tests
    data_cache_path,
    data_settings,
    read_data_cache,
    sample_images,
    sample_settings,
    split_data_cache,
    write_data_cache,
)
from .evaluator import ShapesEvaluator
from .overrides import configure
from .reward import (
    DEFAULT_WEIGHTS,
    DENSITY_SCALE,
    N_SLOTS,
    ShapesRewardConfig,
    ShapesRewardModel,
    apply_symmetry,
    map_prompt,
    save_shapes_reward,
    slot_features,
    symmetry_table,
)
from .reward_metrics import ranking_metrics
from .train_vae import autocast

# (cfg, tau, share of the samples): the shipped default first; the others widen the failure modes seen.
SETTINGS: tuple[tuple[float, float, float], ...] = ((3.0, 1.0, 0.5), (2.0, 1.0, 0.2), (4.0, 1.3, 0.15),
                                                     (1.5, 0.8, 0.15))


@dataclass
class RewardTrainConfig:
    seed: int = 0  # the model's initialisation, batch order and symmetries (and the data's, unless data_seed)
    # the sampled training and validation images' seed; -1: `seed`. Members of an ensemble trained on one data
    # set differ by `seed` alone and share a `--data` cache (docs/testbed.md, "An ensemble of fusions")
    data_seed: int = -1
    samples_per_prompt: int = 64  # generated images per training prompt (over all SETTINGS)
    val_per_prompt: int = 8  # fresh samples per training prompt at the default setting, for the metrics
    extra_prompts: int = 7  # other training prompts scored per image and step (labels: the full verdict matrix)
    # stage 2: slots, text and fusion, on the frozen detector's slot features. The fusion learns which side
    # each shape of a position prompt is on only late: 2,000 steps with `tag_weights` below, not 1,000
    # (docs/testbed.md, "More position steps teach the direction")
    steps: int = 2000
    prompts_per_batch: int = 16
    images_per_prompt: int = 8  # images of one prompt per batch (the ranking loss compares them)
    lr: float = 1e-3
    warmup: int = 50
    weight_decay: float = 0.05
    rank_weight: float = 1.0
    det_steps: int = 1500  # stage 1: the detector on the evaluator's dense view of the images
    det_batch: int = 64
    det_lr: float = 2e-3
    # stage 1: weight of a loss on the read-out's soft counts against the evaluator's (docs/testbed.md, "Counting,
    # taken apart": a small measured gain in the counts)
    det_count_weight: float = 1.0
    val_every: int = 250
    # which validation number keeps the best weights: "auroc" (within-prompt AUROC, the shipped recipe) or
    # "best_of_k" (Best-of-k's gap closed): AUROC can rise while Best-of-k falls (docs/testbed.md, counting)
    select_by: str = "best_of_k"
    det_width: int = 32
    width: int = 96
    fusion_layers: int = 2
    pair_tokens: bool = False  # ShapesRewardConfig.pair_tokens: relation tokens of shape pairs
    # the near-miss half of each image's extra prompts: training prompts one word away from its own ("left" for
    # "right", "three" for "four") instead of any prompt of its tag, where it has such neighbours
    hard_negatives: bool = False
    # position prompts' images also seen mirrored across their relation's axis, labelled by the evaluator for the
    # same prompt: pairs that differ only in which side each shape is on (the direction the fusion misses)
    mirror_pairs: bool = False
    tag_balance: float = 0.5  # prompt sampling weight ~ (prompts of its tag)^-tag_balance: 0 uniform, 1 per tag
    # extra sampling weight per tag, "position=4,counting=2" (the rest 1): where the reward needs more steps
    # than the tag's share of the batches gives it (docs/testbed.md, "More position steps teach the direction")
    tag_weights: str = "position=4"
    amp: str = "fp32"  # "bf16" autocast: 7x slower than fp32 for this model on the 2-core CPU machine
    gen_batch: int = 384  # rows per generator forward while sampling
    augment: float = 0.75  # share of prompt groups seen under a random symmetry of the world (`symmetries`)
    dev: bool = False  # hold `DEV_COMBOS` out of stage 2 and report the model's metrics on them (`dev_metrics`)
    # symmetric views the trained reward averages (ShapesRewardConfig.views); validation, the kept weights and
    # the declared scale use them (docs/testbed.md, "Symmetric views")
    views: int = 8


# A compositional dev split inside the training prompts, shaped like `world.HELDOUT`. With `dev=True` stage 2
# never sees these prompts, and their images measure how the model scores combinations it was not trained on:
# the failure the held-out benchmark shows, measured without looking at a held-out prompt.
DEV_COMBOS: dict[str, frozenset] = {
    "color_shape": frozenset({("red", "square"), ("blue", "triangle"), ("black", "circle")}),
    "two_object": frozenset({("square", "circle")}),
    "counting": frozenset({(3, "square")}),
    "position": frozenset({("triangle", "above", "square"), ("circle", "left of", "triangle")}),
}

# ----------------------------------------------------------------------------------------------- data


def partial_credit(detections, metadata: dict) -> float:
    """Share of the prompt's clauses that hold, in [0, 1]; a count clause earns 1 - |found - asked| / asked."""
    by_class: dict[str, int] = {}
    for d in detections:
        by_class[d.cls] = by_class.get(d.cls, 0) + 1
    credits = []
    inc = metadata.get("include", [])
    for req in inc:
        sub = {"include": [req] if "position" not in req else [inc[req["position"][1]], {**req, "position":
               [req["position"][0], 0]}]}
        if check_metadata(detections, sub)[0]:
            credits.append(1.0)
        else:
            found = by_class.get(req["class"], 0)
            credits.append(0.5 * min(found, req["count"]) / req["count"])  # present but wrong colour/position
    for req in metadata.get("exclude", []):
        n, asked = by_class.get(req["class"], 0), req["count"] - 1
        credits.append(1.0 if n < req["count"] else max(0.0, 1.0 - abs(n - asked) / max(asked, 1)))
    return float(np.mean(credits)) if credits else 0.0


def label(ev: ShapesEvaluator, images: np.ndarray, metadata: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(correct int8 [N], partial float32 [N]) of each image for its metadata."""
    dets = [ev.detect(im) for im in images]
    correct = np.array([check_metadata(d, m)[0] for d, m in zip(dets, metadata)], dtype=np.int8)
    partial = np.array([1.0 if c else partial_credit(d, m) for d, m, c in zip(dets, metadata, correct)], np.float32)
    return correct, partial


def make_data(gen, tc: RewardTrainConfig, log=print, workers: int = 1, generator: str | None = None) -> dict:
    """Samples of every training prompt under SETTINGS, with labels for their own and extra prompts
    (`workers`, `generator`: see `sample_settings`)."""
    train = world.prompts_of("train")
    texts = [m["prompt"] for m in train]
    rng = np.random.default_rng(sampling_seed(tc))
    images, prompt_idx, setting = [], [], []
    t0 = time.perf_counter()
    jobs = [(cfg, tau, max(1, round(tc.samples_per_prompt * share)),
             [int(x) for x in rng.integers(0, 2**31, len(texts))]) for cfg, tau, share in SETTINGS]
    for si, imgs in enumerate(sample_settings(gen, jobs, texts, tc.gen_batch, workers, generator)):
        cfg, tau, k, _ = jobs[si]
        images.append(imgs.reshape(-1, *imgs.shape[2:]))
        prompt_idx.append(np.repeat(np.arange(len(texts)), k))
        setting.append(np.full(len(texts) * k, si))
        log(f"  sampled cfg={cfg:g} tau={tau:g}: {len(texts)} prompts x {k} ({time.perf_counter() - t0:.0f}s)")
    images, prompt_idx, setting = np.concatenate(images), np.concatenate(prompt_idx), np.concatenate(setting)
    data = {"images": images, "prompt_idx": prompt_idx, "setting": setting, "prompts": np.array(texts),
            **label_matrix(images, prompt_idx, train), **dense_targets(images)}
    log(f"  labelled {len(images)} images x {len(train)} prompts ({time.perf_counter() - t0:.0f}s); "
        "own-prompt accuracy per setting " + ", ".join(
            f"{c:g}/{t:g}: {data['correct'][setting == i, prompt_idx[setting == i]].mean():.3f}"
            for i, (c, t, _) in enumerate(SETTINGS)))
    return data


def label_matrix(images: np.ndarray, own: np.ndarray, prompts: list[dict]) -> dict:
    """The evaluator's verdict of every image for every prompt (`correct` int8 [N, P]: the training pairs
    beyond an image's own prompt teach the model to read the words), and partial credit for the own prompt
    (`partial` float32 [N])."""
    ev = ShapesEvaluator()
    correct = np.zeros((len(images), len(prompts)), np.int8)
    partial = np.zeros(len(images), np.float32)
    for n, im in enumerate(images):
        d = ev.detect(im)
        correct[n] = [check_metadata(d, m)[0] for m in prompts]
        partial[n] = 1.0 if correct[n, own[n]] else partial_credit(d, prompts[own[n]])
    return {"correct": correct, "partial": partial}


def sampling_seed(tc: RewardTrainConfig) -> int:
    """The seed of the sampled images: `data_seed`, or `seed` when it is -1."""
    return tc.seed if tc.data_seed == -1 else tc.data_seed


def make_val(gen, tc: RewardTrainConfig, k: int, seed: int, workers: int = 1, generator: str | None = None) -> dict:
    """Fresh samples of every training prompt at the default setting (new seeds): the metrics' data."""
    train = world.prompts_of("train")
    texts = [m["prompt"] for m in train]
    seeds = [int(x) for x in np.random.default_rng([seed, 99]).integers(0, 2**31, len(texts))]
    imgs = sample_settings(gen, [(SETTINGS[0][0], SETTINGS[0][1], k, seeds)], texts, tc.gen_batch, workers,
                           generator)[0]
    correct, partial = label(ShapesEvaluator(), imgs.reshape(-1, *imgs.shape[2:]), [m for m in train for _ in range(k)])
    return {"images": imgs, "correct": correct.reshape(len(texts), k), "partial": partial.reshape(len(texts), k),
            "prompts": texts, "tags": [m["tag"] for m in train]}


def dense_targets(images: np.ndarray, batch: int = 2048) -> dict:
    """The exact evaluator's view of each image on the detector's 16x16 grid (2x2 pixel cells):
    `color` int8 [N, 16, 16]: the segmentation class (0 background, 1 + palette index), see `_cell_class`;
    `shape` int8 [N, 16, 16]: the shape class (0 none, 1 + shape index) of the detected objects' pixels;
    `density` float32 [N, 16, 16]: each detected object's pixels carry 1 / its area, so a cell's sum counts the
    objects in it (fractions at object edges) and the whole map sums to the number of detections;
    `counts` float32 [N, N_SLOTS]: the detections per slot of `slot_features` (per shape and colour, and per
    shape of any colour), the targets of the read-out's soft counts."""
    from .evaluator import segment

    ev = ShapesEvaluator()
    shapes, colors, n_col = list(world.SHAPES), list(world.PALETTE), len(world.PALETTE)
    color, shape, density, counts = [], [], [], np.zeros((len(images), N_SLOTS), np.float32)
    for s in range(0, len(images), batch):
        lab = segment(images[s:s + batch])  # [b, 32, 32] in -1..5
        b, h, w = lab.shape
        shp = np.zeros((b, h, w), np.int64)
        den = np.zeros((b, h, w), np.float32)
        for n in range(b):
            for det, sl, mask in ev.objects(lab[n]):
                shp[n][sl][mask] = shapes.index(det.cls) + 1
                den[n][sl][mask] = 1.0 / det.area
                base = shapes.index(det.cls) * (n_col + 1)
                counts[s + n, [base + colors.index(det.color), base + n_col]] += 1
        cells = (b, h // 2, 2, w // 2, 2)
        color.append(_cell_class(np.eye(n_col + 1, dtype=np.float32)[lab + 1].reshape(*cells, -1).sum((2, 4))))
        shape.append(_cell_class(np.eye(len(shapes) + 1, dtype=np.float32)[shp].reshape(*cells, -1).sum((2, 4))))
        density.append(den.reshape(cells).sum((2, 4)))
    return {"color": np.concatenate(color).astype(np.int8), "shape": np.concatenate(shape).astype(np.int8),
            "density": np.concatenate(density), "counts": counts}


def _cell_class(counts: np.ndarray) -> np.ndarray:
    """Class of each cell from its pixel counts [..., 1 + K]: the most frequent non-background class when the
    cell has any, so every cell carrying an object's density also carries its class (no mass is lost at edges)."""
    fg = counts[..., 1:].sum(-1) > 0
    return np.where(fg, counts[..., 1:].argmax(-1) + 1, 0)


def detector_loss(logits: torch.Tensor, color: torch.Tensor, shape: torch.Tensor, density: torch.Tensor,
                  counts: torch.Tensor | None = None, count_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the colour and shape classes per cell plus the squared error of the scaled density;
    with `counts` [B, N_SLOTS], also a Huber loss of the read-out's soft counts against them. The per-cell
    losses alone leave the counts shrunk (a 3-object image read as 1.9 objects: uncertain shape and colour
    probabilities multiply the density down), and the counts are what the fusion reads."""
    nc = len(world.PALETTE) + 1
    ns = len(world.SHAPES) + 1
    pred = F.softplus(logits[:, nc + ns])
    loss = (F.cross_entropy(logits[:, :nc], color) + F.cross_entropy(logits[:, nc:nc + ns], shape)
            + 4 * F.mse_loss(pred, density * DENSITY_SCALE))
    if counts is not None and count_weight:
        loss = loss + count_weight * F.smooth_l1_loss(slot_features(logits)[..., 0], counts, beta=0.5)
    return loss


# ------------------------------------------------------------------------------------------- training


def to_tensor(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images_u8)).permute(0, 3, 1, 2).float() / 255.0


def pixel_stats(images_u8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    x = images_u8.reshape(-1, 3).astype(np.float64) / 255.0
    return tuple(float(v) for v in x.mean(0)), tuple(float(v) for v in x.std(0))


def ranking_loss(scores: torch.Tensor, graded: torch.Tensor) -> torch.Tensor:
    """ImageReward's pairwise loss within groups: scores, graded [G, M]; pairs where graded_i > graded_j."""
    diff = scores[:, :, None] - scores[:, None, :]  # [G, M, M]
    better = (graded[:, :, None] > graded[:, None, :]).float()
    n = better.sum()
    return (F.softplus(-diff) * better).sum() / n if n > 0 else scores.sum() * 0.0


def symmetries(prompts: list[str], n: int, seed: int) -> dict[str, torch.Tensor]:
    """`n` random symmetries of the shapes world (`symmetry_table`: index 0 is the identity) and what they do
    to slot features and prompts. A transformed (image, prompt) pair keeps its label, so training on them
    teaches the fusion to match words to slots by identity instead of memorising which combinations occur.

    Returns ``slots`` int64 [n, N_SLOTS] and ``flip`` bool [n, 2] (for `apply_symmetry`) and ``prompt`` int64
    [n, P]: the index of each transformed prompt among `prompts`, -1 where it is not one of them (a pair whose
    prompt leaves the list is not trained on, so the symmetries never introduce a prompt outside the training
    list)."""
    table = symmetry_table(n, seed)
    index = {p: i for i, p in enumerate(prompts)}
    pmap = [[index.get(map_prompt(p, words), -1) for p in prompts] for words in table["words"]]
    return {"slots": table["slots"], "flip": table["flip"], "prompt": torch.tensor(pmap, dtype=torch.int64)}


def tag_of(prompt: str) -> str:
    """The GenEval tag of a shapes-world prompt (the trainer balances tags by it)."""
    return _TAGS.get(prompt, "other")


_META = {m["prompt"]: m for ms in world.ALL_PROMPTS.values() for m in ms}
_TAGS = {p: m["tag"] for p, m in _META.items()}


def mirror_images(images: np.ndarray, prompts: list[str], own: np.ndarray) -> dict:
    """The images of position prompts mirrored across their relation's axis (x for left/right, y for
    above/below), with the evaluator's verdict and partial credit for their own prompt: an image correct for
    "A left of B" usually becomes wrong, and a wrong one whose shapes are on the wrong sides becomes correct.
    Returns ``rows`` int64 [K] (the source images), ``images`` uint8 [K,H,W,3], ``correct`` int8 [K], ``partial``
    float32 [K]."""
    ev = ShapesEvaluator()
    rows, out, correct, partial = [], [], [], []
    for n in range(len(images)):
        md = _META.get(prompts[own[n]])
        if md is None or md["tag"] != "position":
            continue
        rel = md["include"][1]["position"][0]
        im = np.ascontiguousarray(images[n][:, ::-1] if rel in ("left of", "right of") else images[n][::-1])
        d = ev.detect(im)
        ok = check_metadata(d, md)[0]
        rows.append(n), out.append(im), correct.append(ok), partial.append(1.0 if ok else partial_credit(d, md))
    shape = images.shape[1:]
    return {"rows": np.asarray(rows, np.int64), "images": np.stack(out) if out else np.zeros((0, *shape), np.uint8),
            "correct": np.asarray(correct, np.int8), "partial": np.asarray(partial, np.float32)}


def train_detector(model: ShapesRewardModel, data: dict, tc: RewardTrainConfig, log=print) -> list[float]:
    """Stage 1: the detector alone, on `dense_targets` of the training images; returns the loss curve."""
    if "density" not in data or ("counts" not in data and tc.det_count_weight):
        data.update(dense_targets(data["images"]))
    gen = torch.Generator().manual_seed(tc.seed + 2)
    params = list(model.detector.parameters())
    opt = torch.optim.AdamW(params, lr=tc.det_lr, weight_decay=0.01)
    with torch.no_grad():  # start the density near zero: a softplus started at ~0.7 per cell dies to 0
        model.detector.head.bias[-1] = -3.0
    color, shape = torch.from_numpy(data["color"].astype(np.int64)), torch.from_numpy(data["shape"].astype(np.int64))
    density = torch.from_numpy(data["density"])
    counts = torch.from_numpy(data["counts"]) if tc.det_count_weight else None
    losses = []
    model.train()
    for step in range(tc.det_steps):
        for g in opt.param_groups:
            g["lr"] = tc.det_lr * 0.5 * (1 + math.cos(math.pi * step / tc.det_steps))
        idx = torch.randint(0, len(data["images"]), (tc.det_batch,), generator=gen)
        logits = model.detect(to_tensor(data["images"][idx.numpy()]))
        loss = detector_loss(logits, color[idx], shape[idx], density[idx],
                             None if counts is None else counts[idx], tc.det_count_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 250 == 0 or step == tc.det_steps - 1:
            log(f"  detector step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    return losses


@torch.no_grad()
def image_features(model: ShapesRewardModel, images_u8: np.ndarray, batch: int = 512) -> torch.Tensor:
    """Slot features [N, N_SLOTS, SLOT_FEATURES] of uint8 images [N, H, W, 3] by the (frozen) detector."""
    return torch.cat([slot_features(model.detect(to_tensor(images_u8[s:s + batch])))
                      for s in range(0, len(images_u8), batch)])


@torch.no_grad()
def detector_metrics(model: ShapesRewardModel, images_u8: np.ndarray) -> dict:
    """How well the read-out counts, on images the detector never trained on: the mean absolute error of the
    soft count per shape (any colour) against the exact evaluator's detections, and the share of images whose
    rounded counts are all exact, over the shapes (any colour) and over every (shape, colour) slot."""
    soft = image_features(model, images_u8)[..., 0].numpy()  # [N, N_SLOTS]
    true = dense_targets(images_u8)["counts"]
    shape_slots = [s * (len(world.PALETTE) + 1) + len(world.PALETTE) for s in range(len(world.SHAPES))]
    mae = {sh: float(np.abs(soft[:, j] - true[:, j]).mean()) for sh, j in zip(world.SHAPES, shape_slots)}
    return {"count_mae": mae,
            "counts_exact_shapes": float((np.round(soft[:, shape_slots]) == true[:, shape_slots]).all(1).mean()),
            "counts_exact_slots": float((np.round(soft) == true).all(1).mean())}


def train_reward(model: ShapesRewardModel, data: dict, tc: RewardTrainConfig, log=print,
                 val: dict | None = None) -> dict[str, list[float]]:
    """Stage 1 (`train_detector`), then stage 2 on the frozen detector's slot features: minibatches of
    `prompts_per_batch` prompts x `images_per_prompt` images, each image scored against its own prompt and
    `extra_prompts` others. Returns the loss curves {"detector", "fusion"}. With `val`, the validation
    metrics are logged every `val_every` steps and the best weights by `select_by` are kept."""
    if tc.select_by not in ("auroc", "best_of_k"):
        raise ValueError(f"select_by={tc.select_by!r}: use auroc or best_of_k")
    rng = np.random.default_rng(tc.seed + 1)
    det_losses = train_detector(model, data, tc, log) if tc.det_steps else []
    model.detector.requires_grad_(False)
    feats = image_features(model, data["images"])
    val_feats = image_features(model, val["images"].reshape(-1, *val["images"].shape[2:])) if val else None
    own = data["prompt_idx"]
    n_prompts = len(data["prompts"])
    trainable = ~dev_mask(data["prompts"]) if tc.dev else np.ones(n_prompts, bool)
    pool = np.nonzero(trainable)[0]
    by_prompt = [np.nonzero(own == p)[0] for p in range(n_prompts)]
    tags = [tag_of(p) for p in data["prompts"]]
    same_tag = [np.array([q for q in pool if tags[q] == tags[p] and q != p] or [p]) for p in range(n_prompts)]
    if tc.hard_negatives:
        same_tag = [n if len(n) else st for n, st in zip(one_word_neighbours(list(data["prompts"]), pool), same_tag)]
    keep = [p for p, b in enumerate(by_prompt) if len(b) and trainable[p]]
    # what the fusion is trained on: symmetric views map other prompts onto these (dev prompts stay unseen)
    model.cfg.trained_prompts = tuple(str(data["prompts"][p]) for p in pool)
    model.cfg.views = tc.views
    w = prompt_weights([tags[p] for p in keep], tc)
    ids_all = model.tokenize(list(data["prompts"]))  # [P, L]
    sym = symmetries(list(data["prompts"]), 256, tc.seed + 3)
    sym["prompt"][:, ~trainable] = -1  # no symmetry may lead to a held-back prompt
    mirror_at = np.full(len(own), -1)  # image -> its row in `mirror`, -1: none
    if tc.mirror_pairs:
        mirror = mirror_images(data["images"], list(data["prompts"]), own)
        mirror_at[mirror["rows"]] = np.arange(len(mirror["rows"]))
        mirror_feats = image_features(model, mirror["images"])
        log(f"  mirror pairs: {len(mirror['rows'])} position images, own-prompt accuracy "
            f"{data['correct'][mirror['rows'], own[mirror['rows']]].mean():.3f} -> mirrored "
            f"{mirror['correct'].mean():.3f}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay, betas=(0.9, 0.98))
    amp = {"bf16": torch.bfloat16, "fp32": None}[tc.amp]
    losses = []
    model.train()
    G, M, E = tc.prompts_per_batch, tc.images_per_prompt, tc.extra_prompts
    best: tuple[float, int, dict | None] = (-1.0, 0, None)
    for step in range(tc.steps):
        lr = tc.lr * min(1.0, (step + 1) / tc.warmup) * 0.5 * (1 + math.cos(math.pi * step / tc.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        groups = [keep[i] for i in rng.choice(len(keep), G, replace=False, p=w)]
        idx = np.concatenate([rng.choice(by_prompt[g], M, replace=len(by_prompt[g]) < M) for g in groups])
        # prompts per image: its own, then half same-tag prompts (near misses), half any training prompt
        n_same = E // 2
        others = np.concatenate([np.stack([rng.choice(same_tag[p], n_same) for p in own[idx]]),
                                 rng.choice(pool, (len(idx), E - n_same))], 1)
        pidx = np.concatenate([own[idx][:, None], others], 1)  # [B, 1 + E]
        correct = torch.from_numpy(data["correct"][idx[:, None], pidx]).float()
        partial = torch.from_numpy(data["partial"][idx])[:, None]
        # one symmetry per prompt group (its own prompt must map into the list); labels are invariant
        t = np.zeros(G, np.int64)
        for i, g in enumerate(groups):
            if rng.random() < tc.augment:
                cand = int(rng.integers(1, len(sym["prompt"])))
                t[i] = cand if sym["prompt"][cand, g] >= 0 else 0
        t_img = torch.from_numpy(np.repeat(t, M))  # [B]
        mapped = sym["prompt"][t_img[:, None], torch.from_numpy(pidx)]  # [B, 1 + E], -1: not trained on
        valid = (mapped >= 0).float()
        pidx = torch.where(mapped >= 0, mapped, mapped[:, :1]).numpy()
        B, P = pidx.shape
        uniq, inverse = np.unique(pidx.reshape(-1), return_inverse=True)  # encode each distinct prompt once
        with autocast(correct.device, amp):
            tokens = model.encode_slots(apply_symmetry(feats[idx], sym, t_img) if t.any() else feats[idx])
            which = torch.arange(B).repeat_interleave(P)  # [B*P] image of each (image, prompt) pair
            text = model.encode_text(ids_all[torch.from_numpy(uniq)])
            s = model.score_tokens(tokens, None, which, text=text,
                                   text_index=torch.from_numpy(inverse.reshape(-1))).float().view(B, P)
        weight = torch.ones(P)
        weight[0] = 2.0  # an image's own prompt is what search ranks by
        pair_w = weight * valid
        bce_sum = (F.binary_cross_entropy_with_logits(s, correct, reduction="none") * pair_w).sum()
        bce_n = pair_w.sum()
        graded = (correct[:, 0] + 0.5 * partial[:, 0]).view(G, M)  # correct first, then closer misses
        rank = ranking_loss(s[:, 0].view(G, M), graded)
        sel = np.nonzero(mirror_at[idx] >= 0)[0]  # whole groups: the images of position prompts
        if len(sel):
            m_rows = mirror_at[idx[sel]]
            mf = mirror_feats[m_rows]
            with autocast(correct.device, amp):
                ms = model.score_tokens(model.encode_slots(apply_symmetry(mf, sym, t_img[sel]) if t.any() else mf),
                                        None, torch.arange(len(sel)), text=text,
                                        text_index=torch.from_numpy(inverse.reshape(B, P)[sel, 0])).float()
            mc = torch.from_numpy(mirror["correct"][m_rows]).float()
            bce_sum = bce_sum + 2.0 * F.binary_cross_entropy_with_logits(ms, mc, reduction="sum")
            bce_n = bce_n + 2.0 * len(sel)
            gsel = torch.from_numpy(sel[::M] // M)  # the groups with mirrors, in batch order
            m_graded = (mc + 0.5 * torch.from_numpy(mirror["partial"][m_rows])).view(-1, M)
            # each image ranked against its group's images and their mirrors
            rank_m = ranking_loss(torch.cat((s[:, 0].view(G, M)[gsel], ms.view(-1, M)), 1),
                                  torch.cat((graded[gsel], m_graded), 1))
            rank = rank + rank_m * len(gsel) / G
        bce = bce_sum / bce_n
        loss = bce + tc.rank_weight * rank
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == tc.steps - 1:
            log(f"  step {step:4d}  loss {loss.item():.4f}  (bce {bce.item():.4f}, rank {rank.item():.4f})  "
                f"lr {lr:.2e}")
        if val is not None and tc.val_every and (step + 1) % tc.val_every == 0:
            model.eval()
            vs = _score_features(model, val_feats, val["prompts"], val["images"].shape[1])
            vk = trainable[[list(data["prompts"]).index(p) for p in val["prompts"]]]  # dev prompts stay unseen
            m = ranking_metrics(vs[vk], val["correct"][vk], [t for t, k in zip(val["tags"], vk) if k])
            if tc.dev:
                d = dev_metrics(model, feats, data)
                log(f"  step {step + 1:4d}  dev (unseen combinations): prompt AUROC {d['prompt_auroc']:.3f}, "
                    f"best-of-8 {d['best_of_8']:.3f} (random {d['random']:.3f}, oracle {d['oracle_best_of_8']:.3f}, "
                    f"gap closed {d['gap_closed']:.2f})")
            log(f"  step {step + 1:4d}  validation: prompt AUROC {m['prompt_auroc']:.3f}, best-of-8 "
                f"{m['best_of_8']:.3f} (random {m['random']:.3f}, oracle {m['oracle_best_of_8']:.3f})")
            score = m["prompt_auroc"] if tc.select_by == "auroc" else m["gap_closed"]
            if score > best[0]:  # keep the best weights by the validation number (training prompts)
                best = (score, step + 1, {k: v.detach().clone() for k, v in model.state_dict().items()})
            model.train()
    model.eval()
    model.detector.requires_grad_(True)
    if best[2] is not None and best[1] != tc.steps:
        log(f"  keeping the weights of step {best[1]} (validation {tc.select_by} {best[0]:.3f})")
        model.load_state_dict(best[2])
    return {"detector": det_losses, "fusion": losses}


def prompt_weights(tags: list[str], tc: RewardTrainConfig) -> np.ndarray:
    """The probability that a batch draws each prompt (given by its tag): ~ (prompts of its tag)^-tag_balance,
    times its tag's `tag_weights`."""
    n_tag = {t: tags.count(t) for t in set(tags)}
    boost = parse_tag_weights(tc.tag_weights)
    w = np.array([n_tag[t] ** -tc.tag_balance * boost.get(t, 1.0) for t in tags])
    return w / w.sum()


def check_train_config(tc: RewardTrainConfig) -> None:
    """What `main` checks before any data is built (ValueError, one line): the tag weights, the views, amp."""
    try:
        parse_tag_weights(tc.tag_weights)
    except ValueError as e:
        raise ValueError(f"--set {e}") from None
    if tc.views < 1:
        raise ValueError(f"--set views={tc.views}: the symmetric views per score are 1 or more")
    if tc.amp not in ("bf16", "fp32"):
        raise ValueError(f"--set amp={tc.amp!r}: use bf16 or fp32")


def parse_tag_weights(spec: str) -> dict[str, float]:
    """`RewardTrainConfig.tag_weights` ("position=4,counting=2") as {tag: weight}; a ValueError names the
    bad part."""
    out: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        tag, sep, val = part.partition("=")
        if not sep or tag not in world.TAGS:
            raise ValueError(f"tag_weights: {part!r} is not tag=weight with a tag in {sorted(world.TAGS)}")
        try:
            out[tag] = float(val)
        except ValueError:
            raise ValueError(f"tag_weights: {part!r}: the weight must be a number") from None
        if not out[tag] > 0:
            raise ValueError(f"tag_weights: {part!r}: the weight must be above 0")
    return out


def one_word_neighbours(prompts: list[str], pool: np.ndarray) -> list[np.ndarray]:
    """For each prompt, the indices in `pool` of the other prompts one word away from it (same length, one word
    changed: the relation, a count, a colour or a shape): the hardest negatives a prompt has in the list."""
    words = [p.split() for p in prompts]
    return [np.array([q for q in pool if q != p and len(words[q]) == len(words[p])
                      and sum(x != y for x, y in zip(words[q], words[p])) == 1], np.int64) for p in range(len(prompts))]


def dev_mask(prompts: list[str]) -> np.ndarray:
    """bool [P]: the prompts `DEV_COMBOS` holds out of stage 2 when `dev` is set."""
    meta = {m["prompt"]: m for ms in world.ALL_PROMPTS.values() for m in ms}
    return np.array([world.is_heldout(meta[p], DEV_COMBOS) for p in prompts])


@torch.no_grad()
def dev_metrics(model: ShapesRewardModel, feats: torch.Tensor, data: dict, k: int = 8) -> dict:
    """`ranking_metrics` on the dev prompts' own training images (stage 2 never saw them with `dev`): each
    prompt's images in groups of `k`, so Best-of-k averages over many groups."""
    was = model.training
    model.eval()
    rows, prompts, correct = dev_groups(data, k)
    scores = _score_features(model, feats[rows], prompts, k)
    model.train(was)
    return ranking_metrics(scores, correct, [tag_of(p) for p in prompts], k=k)


def dev_groups(data: dict, k: int = 8) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(image rows [G * k], prompt of each group [G], correct [G, k]): the dev prompts' training images in
    groups of `k` (a prompt's images beyond a multiple of k are left out)."""
    rows, prompts, correct = [], [], []
    for p in np.nonzero(dev_mask(data["prompts"]))[0]:
        idx = np.nonzero(data["prompt_idx"] == p)[0]
        idx = idx[: len(idx) // k * k]
        rows.append(idx)
        prompts += [data["prompts"][p]] * (len(idx) // k)
        correct.append(data["correct"][idx, p].reshape(-1, k))
    return np.concatenate(rows), prompts, np.concatenate(correct)


@torch.no_grad()
def _score_features(model: ShapesRewardModel, feats: torch.Tensor, prompts: list[str], k: int,
                    batch: int = 1024) -> np.ndarray:
    """Scores [P, k] of precomputed slot features [P * k, ...] for their own prompts [P] (the model's views)."""
    rows = [p for p in prompts for _ in range(k)]
    out = [model.score_features(feats[s:s + batch], rows[s:s + batch]) for s in range(0, len(rows), batch)]
    return torch.cat(out).float().numpy().reshape(len(prompts), k)


# -------------------------------------------------------------------------------------------- metrics


@torch.no_grad()
def score_grid(model: ShapesRewardModel, images_u8: np.ndarray, prompts: list[str], batch: int = 512,
               views: int | None = None) -> np.ndarray:
    """Scores [P, K] of images [P, K, H, W, 3] for their own prompts [P] (`views` None: the model's)."""
    P, K = images_u8.shape[:2]
    flat = images_u8.reshape(P * K, *images_u8.shape[2:])
    rows = [p for p in prompts for _ in range(K)]
    out = [model.score(to_tensor(flat[s:s + batch]), rows[s:s + batch], views) for s in range(0, P * K, batch)]
    return torch.cat(out).float().numpy().reshape(P, K)


_FLIP = {"left": "right", "right": "left", "above": "below", "below": "above"}


@torch.no_grad()
def position_direction(model, images_u8: np.ndarray, correct: np.ndarray, prompts: list[str]) -> dict:
    """Whether the reward reads which side each shape is on: over the images correct for a position prompt
    (images [P, k, H, W, 3], correct [P, k]), the share that score above the same prompt with the relation
    flipped. A pair whose flipped text is a held-out prompt is left out (no held-out text is scored). Returns
    {"direction": share or nan, "pairs": n} (docs/testbed.md, "More position steps teach the direction")."""
    held = {m["prompt"] for m in world.prompts_of("heldout")}
    above = total = 0
    for i, p in enumerate(prompts):
        flipped = " ".join(_FLIP.get(w, w) for w in p.split())
        ok = correct[i].astype(bool)
        if tag_of(p) != "position" or flipped in held or not ok.any():
            continue
        x = to_tensor(images_u8[i][ok])
        s_p = model.score(x, [p] * len(x))
        s_q = model.score(x, [flipped] * len(x))
        above += int((s_p > s_q).sum())
        total += len(x)
    return {"direction": above / total if total else float("nan"), "pairs": total}


# ----------------------------------------------------------------------------------------------- main


def build_model(tc: RewardTrainConfig, images_u8: np.ndarray) -> ShapesRewardModel:
    mean, std = pixel_stats(images_u8[:4096])
    cfg = ShapesRewardConfig(vocab=tuple(world.VOCAB), context_length=world.MAX_PROMPT_WORDS, width=tc.width,
                             det_width=tc.det_width, fusion_layers=tc.fusion_layers,
                             pair_tokens=tc.pair_tokens, mean=mean, std=std)
    torch.manual_seed(tc.seed)
    return ShapesRewardModel(cfg)


def _exit_on_sigterm(signum, frame):  # unwinds like Ctrl-C, so `sample_settings` stops its worker processes
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ttsvar.testbed.train_reward", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    p.add_argument("--generator", default=None, help="shapes-tiny weights (default: the shipped ones)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes that sample the data (one torch thread each; default: 2, or 1 on one core)")
    p.add_argument("--data", default=None, help="cache the generated data set in this .npz (reused if present)")
    p.add_argument("--quick", action="store_true", help="a tiny budget (smoke test)")
    p.add_argument("--set", nargs="*", default=[], help="RewardTrainConfig overrides, e.g. steps=100")
    a = p.parse_args(argv)
    if a.workers < 1:
        print(f"error: --workers {a.workers}: use 1 or more sampling processes", file=sys.stderr)
        return 2
    tc = RewardTrainConfig()
    if a.quick:
        tc = RewardTrainConfig(samples_per_prompt=4, val_per_prompt=2, steps=3, prompts_per_batch=4,
                               images_per_prompt=2, width=32, det_width=8, fusion_layers=1, warmup=1,
                               det_steps=3, det_batch=4)
    if not configure(tc, a.set, a.quick, a.out, DEFAULT_WEIGHTS, check=lambda: check_train_config(tc),
                     out_is_folder=False, seed=tc.seed, threads=a.threads, out_suffix=".safetensors"):
        return 2
    if a.generator and not Path(a.generator).is_file():
        print(f"error: --generator {a.generator}: no such file (give a shapes_tiny.safetensors)", file=sys.stderr)
        return 2
    if a.threads:
        torch.set_num_threads(a.threads)
    from .model import load_shapes_tiny

    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    t_start = time.perf_counter()
    gen = load_shapes_tiny(a.generator)
    timings = {}
    try:
        cache = data_cache_path(a.data) if a.data else None
        built_with = data_settings(sampling_seed(tc), tc.samples_per_prompt, tc.val_per_prompt, a.generator)
        stored = read_data_cache(cache, built_with) if cache and cache.is_file() else None
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if stored is not None:
        data, val = split_data_cache(stored)
        print(f"data: {len(data['images'])} images (+ {val['images'].shape[:2]} validation) from {cache}")
    else:
        print(f"data: sampling shapes-tiny for {len(world.prompts_of('train'))} training prompts")
        data = make_data(gen, tc, workers=a.workers, generator=a.generator)
        timings["data_s"] = time.perf_counter() - t_start
        t0 = time.perf_counter()
        val = make_val(gen, tc, tc.val_per_prompt, sampling_seed(tc), a.workers, a.generator)
        timings["val_data_s"] = time.perf_counter() - t0
        data["prompts"] = [str(x) for x in data["prompts"]]
        if cache:
            write_data_cache(cache, {**data, **{f"val_{k}": np.asarray(v) for k, v in val.items()}}, built_with)
    model = build_model(tc, data["images"])
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters; detector {tc.det_steps} steps of {tc.det_batch} images, then "
          f"{tc.steps} steps of {tc.prompts_per_batch}x{tc.images_per_prompt} images x {1 + tc.extra_prompts} prompts")
    t0 = time.perf_counter()
    curves = train_reward(model, data, tc, val=val)
    losses = curves["fusion"]
    timings["train_s"] = time.perf_counter() - t0
    det = detector_metrics(model, val["images"].reshape(-1, *val["images"].shape[2:]))
    print("detector (validation images): count MAE per shape "
          f"{json.dumps({k: round(v, 3) for k, v in det['count_mae'].items()})}, all shape counts exact "
          f"{det['counts_exact_shapes']:.3f}, all slot counts exact {det['counts_exact_slots']:.3f}")
    scores = score_grid(model, val["images"], val["prompts"])
    metrics = ranking_metrics(scores, val["correct"], val["tags"], k=min(8, tc.val_per_prompt))
    metrics["score_scale"] = float(scores.std())  # over all generated samples of all prompts, like ImageReward's
    # the scale of one view too, for a user who scores with views=1 (declared_scale picks by views)
    score_scales = {str(tc.views): metrics["score_scale"],
                    "1": float(score_grid(model, val["images"], val["prompts"], views=1).std())}
    metrics["within_prompt_std"] = float(scores.std(1).mean())
    metrics["position_direction"] = position_direction(model, val["images"], val["correct"], val["prompts"])
    timings["total_s"] = time.perf_counter() - t_start
    print(f"validation (fresh samples of training prompts): prompt AUROC {metrics['prompt_auroc']:.3f}, "
          f"best-of-{min(8, tc.val_per_prompt)} {metrics[f'best_of_{min(8, tc.val_per_prompt)}']:.3f} "
          f"(random {metrics['random']:.3f}, oracle {metrics[f'oracle_best_of_{min(8, tc.val_per_prompt)}']:.3f}, "
          f"gap closed {metrics['gap_closed']:.2f}); score scale {metrics['score_scale']:.3f}; position direction "
          f"{metrics['position_direction']['direction']:.3f} over {metrics['position_direction']['pairs']} images")
    print(f"time: {json.dumps({k: round(v) for k, v in timings.items()})}")
    meta = {"score_scale": metrics["score_scale"], "score_scales": score_scales, "metrics": metrics,
            "detector_metrics": det, "train_config": asdict(tc),
            "settings": [list(s) for s in SETTINGS], "loss": losses[:: max(1, len(losses) // 200)],
            "loss_first": losses[0], "loss_last": float(np.mean(losses[-20:])), "timings_s": timings,
            "detector_loss": curves["detector"][:: max(1, len(curves["detector"]) // 100)],
            "parameters": n_params,
            "command": " ".join(["python -m ttsvar.testbed.train_reward", *(argv or sys.argv[1:])]),
            "torch_threads": torch.get_num_threads()}
    save_shapes_reward(model, a.out, meta)
    print(f"wrote {a.out} and {Path(a.out).with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
