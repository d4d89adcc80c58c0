"""The exact evaluator of the shapes world, `ShapesEvaluator`, registered as evaluator `shapes`.

It implements `ttsvar.eval.evaluator.Evaluator` (a detector; GenEval's rules come from `ttsvar.eval.geneval`).
The evaluator registry (`ttsvar.eval.registry`) imports this module on its first lookup.

ShapesEvaluator's detector, for one image:
1. nearest-palette segmentation (`segment`): the background is the world background nearest to the
   image border's median; each pixel is explained as a blend of that background with one of the six
   palette colours and belongs to the best-fitting colour when it is at least half that colour, so
   blur, noise and colour drift move outlines by at most half a pixel and never create a third colour;
2. connected components per colour (8-connectivity); components smaller than ``min_area`` (scaled to
   the image size) are speckles, not objects;
3. a shape classifier on scale-free geometric features of the component (extent, aspect ratio,
   top-half mass, fill of the top and of the bottom corners of its box), matched to templates of every
   shape at every world size, sharp and blurred (`TEMPLATE_BLURS`); the confidence exp(-d^2/2) in
   (0, 1] is the detection score, and components below ``min_score`` (blobs that are no shape) are
   dropped, as GenEval drops detections below its confidence threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ttsvar.eval.evaluator import EvalResult, Evaluator
from ttsvar.eval.evaluator import check_image as _check_image
from ttsvar.eval.geneval import POSITION_THRESHOLD, Detection, check_metadata, validate_metadata
from ttsvar.eval.registry import register_evaluator
from ttsvar.testbed.world import ALL_PROMPTS, BACKGROUNDS, IMAGE_SIZE, MASKS, MAX_SIZE, MIN_SIZE, PALETTE, SHAPES

# ----------------------------------------------------------------------------------------------------
# shapes-world detector

_COLOR_NAMES = list(PALETTE)
_SHAPE_COLORS = np.array(list(PALETTE.values()), dtype=np.float32)  # [6, 3]
_BACKGROUNDS = np.array(list(BACKGROUNDS.values()), dtype=np.float32)  # [2, 3]
_EIGHT = np.ones((3, 3), dtype=bool)
FEATURES = ("extent", "aspect", "top_mass", "top_corners", "bottom_corners")
# how far a feature may drift from the nearest template before the match gets doubtful; one unit of
# distance = one tolerance on one feature
_TOLERANCE = np.array([0.10, 0.10, 0.08, 0.25, 0.25])
TEMPLATE_BLURS = (0.0, 0.6, 1.0)  # Gaussian sigmas (pixels) of the template renders


def shape_features(mask: np.ndarray) -> np.ndarray:
    """float64 [5] scale-free features of one component's mask, cropped to its box (see `FEATURES`).

    extent = area / box area; aspect = short side / long side; top_mass = fraction of the area in the
    top half of the box; top/bottom_corners = mean fill of the corner windows (each a quarter of the
    box side), averaged over the two top and the two bottom corners.
    """
    h, w = mask.shape
    m = mask.astype(np.float64)
    area = m.sum()
    rows = m.sum(axis=1)
    half = h // 2
    # split the middle row of an odd-height box evenly between the halves
    top = rows[:half].sum() + (rows[half] / 2 if h % 2 else 0.0)
    kh, kw = max(1, round(h / 4)), max(1, round(w / 4))
    corners = [m[:kh, :kw].mean(), m[:kh, -kw:].mean(), m[-kh:, :kw].mean(), m[-kh:, -kw:].mean()]
    return np.array(
        [
            area / (h * w),
            min(h, w) / max(h, w),
            top / area,
            (corners[0] + corners[1]) / 2,
            (corners[2] + corners[3]) / 2,
        ]
    )


def _templates() -> tuple[np.ndarray, np.ndarray]:
    """Features of every shape at every world size, rendered sharp and blurred, thresholded at 1/2
    coverage as `segment` does: the variation a rendered (or slightly soft generated) shape shows."""
    feats, labels = [], []
    for k, kind in enumerate(SHAPES):
        for size in range(MIN_SIZE, MAX_SIZE + 1):
            canvas = np.zeros((size + 8, size + 8))
            canvas[4 : 4 + size, 4 : 4 + size] = MASKS[kind][size]
            for sigma in TEMPLATE_BLURS:
                soft = ndimage.gaussian_filter(canvas, sigma) if sigma else canvas
                sl = ndimage.find_objects((soft >= 0.5).astype(int))[0]
                feats.append(shape_features(soft[sl] >= 0.5))
                labels.append(k)
    return np.stack(feats), np.array(labels)


TEMPLATES, TEMPLATE_SHAPES = _templates()  # [N, 5] features, [N] index into SHAPES
_BY_PROMPT = {m["prompt"].lower(): m for ms in ALL_PROMPTS.values() for m in ms}


def classify_shape(mask: np.ndarray) -> tuple[str, float]:
    """(shape, confidence) of a component mask: the shape of the nearest template at tolerance-scaled
    distance d, confidence exp(-d^2 / 2)."""
    d2 = (((shape_features(mask)[None] - TEMPLATES) / _TOLERANCE) ** 2).sum(axis=1)
    i = int(np.argmin(d2))
    return SHAPES[TEMPLATE_SHAPES[i]], float(np.exp(-d2[i] / 2))


def segment(image: np.ndarray) -> np.ndarray:
    """int [H, W]: index into PALETTE of each pixel's shape colour, or -1 for background.

    Batched over leading dimensions ([..., H, W, 3] -> [..., H, W]). The background of each image is
    the world background nearest to the median of its border pixels. Every pixel is then explained as
    a blend ``bg + alpha * (colour - bg)`` of the background with each palette colour; the colour with
    the smallest blend residual wins, and the pixel is foreground when its alpha is at least 1/2. A
    pixel half-covered by a shape thus goes to that shape (blur keeps shape outlines), and blends never
    turn into a third colour (blurred black on white is grey-ish, which plain nearest-colour would
    call green).
    """
    x = image.astype(np.float32)
    border = np.concatenate(
        [x[..., 0, :, :], x[..., -1, :, :], x[..., 1:-1, 0, :], x[..., 1:-1, -1, :]], axis=-2
    )  # [..., 2H+2W-4, 3]
    med = np.median(border, axis=-2)  # [..., 3]
    bg = _BACKGROUNDS[((med[..., None, :] - _BACKGROUNDS) ** 2).sum(-1).argmin(-1)]  # [..., 3]
    v = x - bg[..., None, None, :]  # [..., H, W, 3] offset from the background
    d = _SHAPE_COLORS - bg[..., None, :]  # [..., 6, 3] background -> colour directions
    dd = (d * d).sum(-1)  # [..., 6]
    proj = np.einsum("...hwc,...kc->...hwk", v, d)  # [..., H, W, 6]
    alpha = np.clip(proj / dd[..., None, None, :], 0.0, 1.0)
    resid = (v * v).sum(-1)[..., None] - 2 * alpha * proj + alpha**2 * dd[..., None, None, :]
    best = resid.argmin(-1)  # [..., H, W]
    fg = np.take_along_axis(alpha, best[..., None], -1)[..., 0] >= 0.5
    return np.where(fg, best, -1)


@register_evaluator("shapes")
class ShapesEvaluator(Evaluator):
    """Exact evaluator of the shapes world (see the module docstring for the detector).

    ``min_area`` is in pixels of a 32x32 image and scales with the image area; ``min_score`` drops
    components that do not look like any shape.
    """

    classes = SHAPES
    colors = tuple(PALETTE)

    def __init__(self, min_area: int = 10, min_score: float = 0.05, position_threshold: float = POSITION_THRESHOLD):
        for name, v in (("min_area", min_area), ("min_score", min_score), ("position_threshold", position_threshold)):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if min_area < 1:
            raise ValueError(f"min_area must be >= 1 pixel, got {min_area}")
        if not 0.0 <= min_score < 1.0:
            raise ValueError(f"min_score must be in [0, 1), got {min_score}")
        self.min_area = min_area
        self.min_score = min_score
        self.position_threshold = position_threshold

    def metadata_for(self, record: dict) -> dict | None:
        """A manifest record's own metadata, else that of the shapes-world prompt with its text: the prompt of a
        .txt file of world prompts, or the class name of a class prompt (the classes of `shapes-var-tiny` are
        world prompts, and its records carry the prompt "3" and the class name)."""
        md = super().metadata_for(record)
        text = record.get("class_name") or record.get("prompt")
        return md if md is not None or not isinstance(text, str) else _BY_PROMPT.get(text.strip().lower())

    def detect(self, image: np.ndarray, metadata: dict | None = None) -> list[Detection]:
        return self._detect_labels(segment(_check_image(image)))

    def _detect_labels(self, labels: np.ndarray) -> list[Detection]:
        return [det for det, _, _ in self.objects(labels)]

    def objects(self, labels: np.ndarray) -> list[tuple[Detection, tuple[slice, slice], np.ndarray]]:
        """The detections of a `segment` label map [H, W], each with its box's slices and its bool mask
        within the box: the pixels the detector counted as the object (shapes-reward learns from them)."""
        h, w = labels.shape
        min_area = self.min_area * (h * w) / (IMAGE_SIZE * IMAGE_SIZE)
        present = np.bincount(labels.ravel() + 1, minlength=len(_COLOR_NAMES) + 1)[1:]
        out = []
        for c in np.nonzero(present >= min_area)[0]:
            comp, n = ndimage.label(labels == c, structure=_EIGHT)
            for i, sl in enumerate(ndimage.find_objects(comp), 1):
                mask = comp[sl] == i
                area = int(mask.sum())
                if area < min_area:
                    continue
                kind, score = classify_shape(mask)
                if score < self.min_score:
                    continue
                ys, xs = sl
                box = (float(xs.start), float(ys.start), float(xs.stop), float(ys.stop))
                out.append((Detection(kind, box, score, _COLOR_NAMES[c], area), sl, mask))
        return out

    def evaluate_batch(self, images: np.ndarray | Sequence[np.ndarray], metadata: Sequence[dict]) -> list[EvalResult]:
        if isinstance(images, np.ndarray) and images.ndim == 4:
            if len(images) != len(metadata):
                raise ValueError(f"got {len(images)} images but {len(metadata)} metadata objects; pass one per image")
            _check_image(images[0] if len(images) else np.zeros((1, 1, 3), np.uint8), "images[i]")
            labels = segment(images)  # one vectorised pass for the whole batch
            out = []
            for lab, md in zip(labels, metadata):
                validate_metadata(md, "metadata", classes=self.classes, colors=self.colors)
                dets = self._detect_labels(lab)
                out.append(EvalResult(*check_metadata(dets, md, self.position_threshold), dets))
            return out
        return super().evaluate_batch(images, metadata)
