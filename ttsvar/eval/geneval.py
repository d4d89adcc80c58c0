"""GenEval's file formats and evaluation rules, independent of any detector.

GenEval (Ghosh et al. 2023, github.com/djghosh13/geneval) judges an image against a metadata object::

    {"tag": "position", "prompt": "a photo of a dog right of a teddy bear",
     "include": [{"class": "teddy bear", "count": 1},
                 {"class": "dog", "count": 1, "position": ["right of", 0]}]}

This module holds what every GenEval-style evaluation shares, whatever finds the objects:

* metadata JSONL I/O with validation (`load_metadata`, `save_metadata`, `validate_metadata`);
* the rules that turn detections into a verdict (`filter_detections`, `check_metadata`, `relative_position`),
  replicating GenEval's `evaluation/evaluate_images.py`: a detector's raw detections are filtered as GenEval
  does (confidence threshold, at most 16 per class, optional NMS); includes are ANDed, excludes ORed, colour
  and position are checked only on the ``count`` most confident detections of a class;
* the results JSONL (one line per image) and the summary of `evaluation/summary_scores.py`
  (`summarize`: per-tag accuracy, overall = mean over tags);
* GenEval's image folder layout (`write_sample_folder`, `iter_sample_folder`).

Callers: `ttsvar.eval.evaluator.Evaluator` (every evaluator applies these rules to its detections: the
testbed's exact `shapes` evaluator and, later, the real GenEval detector) and `ttsvar.eval.evaluate`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import InputError

GENEVAL_TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
GENEVAL_COLORS = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white")
GENEVAL_RELATIONS = ("left of", "right of", "above", "below")
POSITION_THRESHOLD = 0.1  # GenEval's default `position_threshold` option


class MetadataError(InputError):
    """A metadata object does not follow GenEval's format; the message names the line and the field."""


@dataclass
class Detection:
    """One detected object, as a detector hands it to `check_metadata`.

    ``box`` is ``(x0, y0, x1, y1)`` in pixels (x to the right, y down), as mmdet returns it.
    ``color`` must be set when the metadata asks for a colour (GenEval classifies crops with CLIP;
    the shapes evaluator reads it from the segmentation).
    """

    cls: str
    box: tuple[float, float, float, float]
    score: float
    color: str | None = None
    area: int = 0


# ----------------------------------------------------------------------------------------------------
# metadata


def validate_metadata(
    metadata: Any,
    where: str = "metadata",
    classes: Iterable[str] | None = None,
    colors: Iterable[str] | None = None,
) -> dict:
    """Check one metadata object against GenEval's format and return it unchanged.

    ``where`` prefixes every error (e.g. ``"prompts.jsonl line 7"``). ``classes``/``colors`` restrict
    the allowed vocabulary (the shapes evaluator passes its shapes and palette); colours must always be
    one of GenEval's ten. Raises `MetadataError`.
    """
    if not isinstance(metadata, dict):
        raise MetadataError(f"{where}: expected a JSON object, got {type(metadata).__name__}")
    classes = None if classes is None else set(classes)
    allowed_colors = set(GENEVAL_COLORS) if colors is None else set(colors)
    for key in ("tag", "prompt"):
        if not isinstance(metadata.get(key), str) or not metadata[key]:
            raise MetadataError(f"{where}: field '{key}' must be a non-empty string, got {metadata.get(key)!r}")
    include = metadata.get("include")
    if not isinstance(include, list) or not include:
        raise MetadataError(f"{where}: field 'include' must be a non-empty list of objects, got {include!r}")
    exclude = metadata.get("exclude", [])
    if not isinstance(exclude, list):
        raise MetadataError(f"{where}: field 'exclude' must be a list, got {exclude!r}")
    for field, entries in (("include", include), ("exclude", exclude)):
        for i, req in enumerate(entries):
            at = f"{where}: field '{field}[{i}]"
            if not isinstance(req, dict):
                raise MetadataError(f"{at}' must be an object, got {req!r}")
            allowed = {"class", "count", "color", "position"} if field == "include" else {"class", "count"}
            unknown = sorted(set(req) - allowed)
            if unknown:
                raise MetadataError(f"{at}' has unknown keys {unknown}; allowed: {sorted(allowed)}")
            if not isinstance(req.get("class"), str):
                raise MetadataError(f"{at}.class' must be a string, got {req.get('class')!r}")
            if classes is not None and req["class"] not in classes:
                raise MetadataError(f"{at}.class' is {req['class']!r}; this evaluator knows {sorted(classes)}")
            count = req.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise MetadataError(f"{at}.count' must be an integer >= 1, got {count!r}")
            if "color" in req and req["color"] not in allowed_colors:
                raise MetadataError(f"{at}.color' is {req['color']!r}; allowed: {sorted(allowed_colors)}")
            if "position" in req:
                pos = req["position"]
                if (
                    not isinstance(pos, (list, tuple))
                    or len(pos) != 2
                    or pos[0] not in GENEVAL_RELATIONS
                    or not isinstance(pos[1], int)
                    or not 0 <= pos[1] < i
                ):
                    raise MetadataError(
                        f"{at}.position' must be [relation, index] with relation in "
                        f"{list(GENEVAL_RELATIONS)} and index an earlier include entry (< {i}), got {pos!r}"
                    )
    return metadata


def load_metadata(path: str | os.PathLike, **vocab: Any) -> list[dict]:
    """Read a GenEval ``evaluation_metadata.jsonl`` (one object per line), validating every line.

    ``vocab`` is passed to `validate_metadata` (``classes=``, ``colors=``). Blank lines are skipped.
    """
    out = []
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "not found"
        raise MetadataError(f"metadata file {what}: {path}; give GenEval's evaluation_metadata.jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {lineno}"
                try:
                    md = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MetadataError(f"{where}: not valid JSON ({e})") from e
                out.append(validate_metadata(md, where, **vocab))
    except UnicodeDecodeError as e:
        raise MetadataError(f"{path}: not UTF-8 text (byte {e.start}); give GenEval's evaluation_metadata.jsonl, "
                            "saved as UTF-8") from None
    return out


def save_metadata(path: str | os.PathLike, metadata: Sequence[dict]) -> None:
    """Write metadata objects as GenEval JSONL, validating each first."""
    for i, md in enumerate(metadata):
        validate_metadata(md, f"metadata[{i}]")
    with open(path, "w", encoding="utf-8") as f:
        for md in metadata:
            f.write(json.dumps(md) + "\n")


# ----------------------------------------------------------------------------------------------------
# rules


def relative_position(box_a: Sequence[float], box_b: Sequence[float], threshold: float = POSITION_THRESHOLD) -> set:
    """Relations of A with respect to B ("left of", "right of", "above", "below"), as GenEval computes them.

    The centre offset is shrunk on each axis by ``threshold * (size_a + size_b)``; a relation holds when the
    shrunk offset, divided by the length of the raw offset, exceeds 0.5 on that axis. The threshold is
    relative to the boxes' sizes, so the rule is the same in a 32x32 frame as in GenEval's 512x512 one.
    Diagonal placements can satisfy two relations at once; overlapping centres satisfy none.

    The arithmetic is GenEval's, step for step, in float32: its boxes are the float32 arrays mmdet returns, so
    every intermediate (centres, sizes, the shrunk offset, its norm) is float32. float64 gives another verdict
    for boxes within about 1e-7 of the 0.5 cut-off.
    """
    boxes = np.array([np.asarray(box_a, dtype=np.float32), np.asarray(box_b, dtype=np.float32)])
    boxes = boxes[:, :4].reshape(2, 2, 2)  # [obj, corner, xy]
    center_a, center_b = boxes.mean(axis=-2)
    dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
    offset = center_a - center_b
    revised = np.maximum(np.abs(offset) - threshold * (dim_a + dim_b), 0) * np.sign(offset)
    if np.all(np.abs(revised) < 1e-3):
        return set()
    dx, dy = revised / np.linalg.norm(offset)
    relations = set()
    if dx < -0.5:
        relations.add("left of")
    if dx > 0.5:
        relations.add("right of")
    if dy < -0.5:
        relations.add("above")
    if dy > 0.5:
        relations.add("below")
    return relations


def box_iou(box_a: Sequence[float], box_b: Sequence[float]) -> float:
    """GenEval's `compute_iou`: intersection over union of two ``(x0, y0, x1, y1)`` boxes with inclusive pixel
    ends (a side is ``x1 - x0 + 1``); 0 when the union is empty.

    The rounding is GenEval's in its pinned environment (numpy 1.23): the boxes are mmdet's float32, a side's
    difference is taken in float32, and numpy 1.x promotes ``float32 scalar + 1`` to float64, so the areas, the
    ratio and the comparison with ``max_overlap`` are float64. (Under numpy 2 GenEval's own script would stay in
    float32; this function does not depend on the installed numpy.)
    """

    def side(lo: np.float32, hi: np.float32) -> float:
        return max(float(np.float32(hi) - np.float32(lo)) + 1, 0)

    a = [np.float32(v) for v in box_a[:4]]
    b = [np.float32(v) for v in box_b[:4]]
    inter = side(max(a[0], b[0]), min(a[2], b[2])) * side(max(a[1], b[1]), min(a[3], b[3]))
    union = side(a[0], a[2]) * side(a[1], a[3]) + side(b[0], b[2]) * side(b[1], b[3]) - inter
    return inter / union if union else 0.0


def _less(a: float, b: float) -> bool:  # numpy's Tag::less for floats: NaNs sort last
    return a < b or (b != b and a == a)


def _sift_down(v: list, a: list, i: int, n: int) -> None:
    """Move a[i] down the 1-based max-heap a[1..n] (keys v[a[k]]), as numpy's heapsort does."""
    tmp, j = a[i], i << 1
    while j <= n:
        if j < n and _less(v[a[j]], v[a[j + 1]]):
            j += 1
        if not _less(v[tmp], v[a[j]]):
            break
        a[i], i, j = a[j], j, j + j
    a[i] = tmp


def _aheapsort(v: list, idx: list, lo: int, n: int) -> None:
    a = [-1] + idx[lo: lo + n]  # a[1..n] is idx[lo..lo+n-1] (1-based heap indexing, as numpy's)
    for ll in range(n >> 1, 0, -1):
        _sift_down(v, a, ll, n)
    while n > 1:
        a[1], a[n] = a[n], a[1]
        n -= 1
        _sift_down(v, a, 1, n)
    idx[lo: lo + len(a) - 1] = a[1:]


def geneval_argsort(scores: Sequence[float]) -> list[int]:
    """``np.argsort(scores)`` (default kind) for float32 scores as numpy 1.x computes it, GenEval's pinned numpy
    (1.23): an introsort (median-of-3 quicksort, insertion sort below 17 elements, heapsort past 2 log2 n
    levels), a port of numpy's ``aquicksort_``. Ties come out in that algorithm's order, which is what decides
    GenEval's ranking of equal scores. numpy >= 2 dispatches to SIMD sorts on x86 and orders ties differently,
    so ``np.argsort`` itself cannot be used."""
    v = [float(np.float32(s)) for s in scores]
    num = len(v)
    idx = list(range(num))
    if num < 2:
        return idx
    pl, pr = 0, num - 1
    stack: list[tuple[int, int, int]] = []
    cdepth = 2 * (num.bit_length() - 1)
    while True:
        if cdepth < 0:
            _aheapsort(v, idx, pl, pr - pl + 1)
        else:
            while pr - pl > 15:
                pm = pl + ((pr - pl) >> 1)
                if _less(v[idx[pm]], v[idx[pl]]):
                    idx[pm], idx[pl] = idx[pl], idx[pm]
                if _less(v[idx[pr]], v[idx[pm]]):
                    idx[pr], idx[pm] = idx[pm], idx[pr]
                if _less(v[idx[pm]], v[idx[pl]]):
                    idx[pm], idx[pl] = idx[pl], idx[pm]
                vp = v[idx[pm]]
                pi, pj = pl, pr - 1
                idx[pm], idx[pj] = idx[pj], idx[pm]
                while True:
                    pi += 1
                    while _less(v[idx[pi]], vp):
                        pi += 1
                    pj -= 1
                    while _less(vp, v[idx[pj]]):
                        pj -= 1
                    if pi >= pj:
                        break
                    idx[pi], idx[pj] = idx[pj], idx[pi]
                idx[pi], idx[pr - 1] = idx[pr - 1], idx[pi]
                cdepth -= 1
                if pi - pl < pr - pi:
                    stack.append((pi + 1, pr, cdepth))
                    pr = pi - 1
                else:
                    stack.append((pl, pi - 1, cdepth))
                    pl = pi + 1
            for pi in range(pl + 1, pr + 1):  # insertion sort
                vi = idx[pi]
                vp = v[vi]
                pj = pi
                while pj > pl and _less(vp, v[idx[pj - 1]]):
                    idx[pj] = idx[pj - 1]
                    pj -= 1
                idx[pj] = vi
        if not stack:
            return idx
        pl, pr, cdepth = stack.pop()


@dataclass(frozen=True)
class FilterOptions:
    """GenEval's detection filter (its `--options`): which raw detections count as objects.

    ``threshold``/``counting_threshold``: keep scores strictly above (the second for "counting" prompts);
    ``max_objects``: the most confident this many per class; ``max_overlap``: greedy NMS within a class,
    dropping a box whose IoU with a kept one is >= this (1.0, the default, turns NMS off).
    """

    threshold: float = 0.3
    counting_threshold: float = 0.9
    max_objects: int = 16
    max_overlap: float = 1.0

    def __post_init__(self) -> None:
        for name in ("threshold", "counting_threshold", "max_overlap"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"{name} must be a number, got {v!r}")
        if not isinstance(self.max_objects, int) or isinstance(self.max_objects, bool) or self.max_objects < 1:
            raise ValueError(f"max_objects must be an integer >= 1, got {self.max_objects!r}")


def filter_detections(detections: Sequence[Detection], metadata: dict,
                      options: FilterOptions = FilterOptions()) -> list[Detection]:
    """GenEval's `evaluate_image` filter: per class (in order of first appearance), the detections above the
    confidence threshold, best first, at most ``max_objects`` of them, then greedy NMS.

    The ranking is GenEval's exactly: ``np.argsort(scores)[::-1]`` over the class's float32 scores as numpy 1.23
    (GenEval's pinned version) sorts them (`geneval_argsort`), so tied scores come out in the order GenEval puts
    them whatever numpy is installed. A detector with GenEval's thresholds (Mask2Former) calls
    this on its raw detections; `check_metadata` then sees the same objects GenEval's `evaluate` does.
    """
    threshold = options.counting_threshold if metadata.get("tag") == "counting" else options.threshold
    by_class: dict[str, list[Detection]] = {}
    for d in detections:
        by_class.setdefault(d.cls, []).append(d)
    out: list[Detection] = []
    for dets in by_class.values():
        scores = np.array([d.score for d in dets], dtype=np.float32)
        ordering = np.array(geneval_argsort(scores), dtype=np.int64)[::-1]
        ordering = ordering[scores[ordering] > threshold]
        todo = ordering[: options.max_objects].tolist()
        while todo:
            best = todo.pop(0)
            out.append(dets[best])
            if options.max_overlap != 1:
                todo = [i for i in todo if box_iou(dets[best].box, dets[i].box) < options.max_overlap]
    return out


def _color_counts_text(colors: list[str]) -> str:
    order = list(GENEVAL_COLORS) + sorted(set(colors) - set(GENEVAL_COLORS))
    return ", ".join(f"{colors.count(c)} {c}" for c in order if c in colors)


def check_metadata(
    detections: Sequence[Detection], metadata: dict, position_threshold: float = POSITION_THRESHOLD
) -> tuple[bool, str]:
    """GenEval's verdict for one image: ``(correct, reason)``; ``reason`` is "" when correct.

    Detections of a class are ranked by score (stable, so equal scores keep the detector's order), and
    like GenEval only the ``count`` best of a class are checked for colour and position. ``include``
    asks for at least ``count`` objects; ``exclude`` fails when at least ``count`` are present, which is
    how counting prompts ("exactly N") are written: include N, exclude N+1.
    """
    objects: dict[str, list[Detection]] = {}
    for det in sorted(detections, key=lambda d: -d.score):
        objects.setdefault(det.cls, []).append(det)
    correct = True
    reason: list[str] = []
    matched_groups: list[list[Detection] | None] = []
    for req in metadata.get("include", []):
        classname = req["class"]
        matched = True
        found = objects.get(classname, [])[: req["count"]]
        if len(found) < req["count"]:
            correct = matched = False
            reason.append(f"expected {classname}>={req['count']}, found {len(found)}")
        else:
            if "color" in req:
                colors = [d.color for d in found]
                if any(c is None for c in colors):
                    raise ValueError(
                        f"the detector left Detection.color unset for a '{classname}' but the metadata asks "
                        f"for colour {req['color']!r}; detectors must classify colours when asked"
                    )
                if colors.count(req["color"]) < req["count"]:
                    correct = matched = False
                    reason.append(
                        f"expected {req['color']} {classname}>={req['count']}, found "
                        f"{colors.count(req['color'])} {req['color']}; and {_color_counts_text(colors)}"
                    )
            if "position" in req and matched:
                expected_rel, target_group = req["position"]
                if matched_groups[target_group] is None:
                    correct = matched = False
                    reason.append(f"no target for {classname} to be {expected_rel}")
                else:
                    for obj in found:
                        for target in matched_groups[target_group]:
                            true_rels = relative_position(obj.box, target.box, position_threshold)
                            if expected_rel not in true_rels:
                                correct = matched = False
                                reason.append(
                                    f"expected {classname} {expected_rel} target, found "
                                    f"{' and '.join(sorted(true_rels))} target"
                                )
                                break
                        if not matched:
                            break
        matched_groups.append(found if matched else None)
    for req in metadata.get("exclude", []):
        classname = req["class"]
        n = len(objects.get(classname, []))
        if n >= req["count"]:
            correct = False
            reason.append(f"expected {classname}<{req['count']}, found {n}")
    return correct, "\n".join(reason)


# ----------------------------------------------------------------------------------------------------
# results and summary


def result_record(
    filename: str, metadata: dict, correct: bool, reason: str, detections: Sequence[Detection] = ()
) -> dict:
    """One line of GenEval's ``results.jsonl``.

    As in GenEval, ``metadata`` and ``details`` are JSON strings (``details`` maps a class to its boxes),
    so prompts can be grouped by their metadata string.
    """
    details: dict[str, list] = {}
    for d in detections:
        details.setdefault(d.cls, []).append([float(v) for v in d.box] + [float(d.score)])
    return {
        "filename": str(filename),
        "tag": metadata["tag"],
        "prompt": metadata["prompt"],
        "correct": bool(correct),
        "reason": reason,
        "metadata": json.dumps(metadata),
        "details": json.dumps(details),
    }


def write_results(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Write result records (see `result_record`) as JSONL, atomically (a link planted at `path` is replaced,
    not written through)."""
    from ..output import atomic_write_bytes

    atomic_write_bytes(Path(path), "".join(json.dumps(rec) + "\n" for rec in records).encode("utf-8"))


def read_results(path: str | os.PathLike) -> list[dict]:
    """Read a GenEval ``results.jsonl`` (ours or GenEval's own); checks the fields `summarize` needs."""
    out = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {lineno}: not valid JSON ({e})") from e
            for key in ("tag", "correct", "metadata"):
                if key not in rec:
                    raise ValueError(f"{path} line {lineno}: result is missing field '{key}'")
            out.append(rec)
    return out


def _prompt_key(metadata: Any) -> str:
    if isinstance(metadata, str):
        metadata = json.loads(metadata)
    return json.dumps(metadata, sort_keys=True)


def summarize(records: Sequence[dict]) -> dict:
    """GenEval's `summary_scores.py` as a dict.

    Returns ``n_images``, ``n_prompts`` (distinct metadata), ``image_accuracy`` (fraction of correct
    images), ``prompt_accuracy`` (fraction of prompts with at least one correct image), ``per_tag``
    (tag -> ``{"accuracy", "correct", "total"}``, tags in order of first appearance) and ``overall``
    (the GenEval score: the unweighted mean of the per-tag accuracies).
    """
    if not records:
        raise ValueError("summarize() got no results; evaluate some images first")
    per_tag: dict[str, dict] = {}
    prompts: dict[str, bool] = {}
    for rec in records:
        ok = bool(rec["correct"])
        t = per_tag.setdefault(rec["tag"], {"correct": 0, "total": 0})
        t["correct"] += int(ok)
        t["total"] += 1
        key = _prompt_key(rec["metadata"])
        prompts[key] = prompts.get(key, False) or ok
    for t in per_tag.values():
        t["accuracy"] = t["correct"] / t["total"]
    return {
        "n_images": len(records),
        "n_prompts": len(prompts),
        "image_accuracy": sum(bool(r["correct"]) for r in records) / len(records),
        "prompt_accuracy": sum(prompts.values()) / len(prompts),
        "per_tag": per_tag,
        "overall": math.fsum(t["accuracy"] for t in per_tag.values()) / len(per_tag),
    }


def format_summary(summary: dict) -> str:
    """The summary as text, laid out like GenEval's `summary_scores.py` prints it."""
    lines = [
        "Summary",
        "=======",
        f"Total images: {summary['n_images']}",
        f"Total prompts: {summary['n_prompts']}",
        f"% correct images: {summary['image_accuracy']:.2%}",
        f"% correct prompts: {summary['prompt_accuracy']:.2%}",
        "",
        "Task breakdown",
        "==============",
    ]
    for tag, t in summary["per_tag"].items():
        lines.append(f"{tag:<16} = {t['accuracy']:.2%} ({t['correct']} / {t['total']})")
    lines += ["", f"Overall score (avg. over tasks): {summary['overall']:.5f}"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# GenEval's image folder layout: <root>/<index:05d>/metadata.jsonl and samples/<n:05d>.png


def write_sample_folder(
    root: str | os.PathLike, index: int, metadata: dict, images: Sequence[np.ndarray]
) -> list[Path]:
    """Save the images generated for prompt ``index`` the way GenEval's generation script does."""
    validate_metadata(metadata, f"prompt {index}")
    from ..output import atomic_write_bytes, atomic_write_png

    folder = Path(root) / f"{index:05d}"
    (folder / "samples").mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(folder / "metadata.jsonl", json.dumps(metadata).encode("utf-8"))
    paths = []
    for n, img in enumerate(images):
        img = np.asarray(img)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ValueError(f"image {n} for prompt {index} must be uint8 [H,W,3], got {img.dtype} {img.shape}")
        paths.append(folder / "samples" / f"{n:05d}.png")
        atomic_write_png(paths[-1], img)
    return paths


def iter_sample_folder(root: str | os.PathLike) -> Iterator[tuple[Path, dict]]:
    """Yield ``(image_path, metadata)`` for every sample under a GenEval image folder, in sorted order.

    Like GenEval, only numeric sub-folders and ``<digits>.png`` samples are read.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"GenEval image folder {root} does not exist")
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and p.name.isdigit()):
        mdfile = folder / "metadata.jsonl"
        if not mdfile.is_file():
            raise FileNotFoundError(f"{mdfile} is missing; every prompt folder needs its metadata.jsonl")
        try:
            with open(mdfile, encoding="utf-8") as f:
                metadata = validate_metadata(json.load(f), str(mdfile))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{mdfile} is not one JSON object ({e}); write the prompt's metadata line there, as "
                             "GenEval's generation script does") from None
        samples = folder / "samples"
        if not samples.is_dir():
            continue
        # files only, as GenEval's os.path.isfile: a folder named like a sample is skipped
        for img in sorted(p for p in samples.iterdir() if re.fullmatch(r"\d+\.png", p.name) and p.is_file()):
            yield img, metadata
