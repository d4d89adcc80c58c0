"""The evaluator interface: detect objects in an image, then apply GenEval's rules to the metadata.

A subclass supplies `detect(image, metadata) -> list[Detection]` and inherits `evaluate` (validation +
`geneval.check_metadata`) and the batch helpers. The shapes testbed's exact detector
(`ttsvar.testbed.evaluator.ShapesEvaluator`) is one; the GenEval scoring runs plug the real GenEval detector
(Mask2Former + CLIP colour classifier) into the same interface. Register one with
`ttsvar.eval.registry.register_evaluator` to make it available to `ttsvar evaluate --evaluator NAME`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .geneval import POSITION_THRESHOLD, Detection, check_metadata, result_record, validate_metadata


@dataclass
class EvalResult:
    """Verdict on one image: ``reason`` is GenEval's text ("" when correct)."""

    correct: bool
    reason: str
    detections: list[Detection] = field(default_factory=list)


def check_image(image: np.ndarray, where: str = "image") -> np.ndarray:
    """`image` if it is a uint8 [H, W, 3] array, else a ValueError saying how to convert it."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(
            f"{where} must be a uint8 numpy array [H, W, 3] (RGB, 0-255), got {desc}; "
            "convert a [3,H,W] float tensor in [0,1] with (x.permute(1,2,0)*255).round().byte().numpy()"
        )
    return image


class Evaluator(ABC):
    """Decides whether an image shows what its GenEval metadata asks for.

    Subclasses implement `detect`; the engine, benchmarks and GenEval runs call `evaluate` or
    `evaluate_batch`. ``classes``/``colors`` name the vocabulary the detector understands (``None`` =
    anything), and metadata outside it is rejected before detection.
    """

    classes: tuple[str, ...] | None = None
    colors: tuple[str, ...] | None = None
    position_threshold: float = POSITION_THRESHOLD

    @abstractmethod
    def detect(self, image: np.ndarray, metadata: dict) -> list[Detection]:
        """Objects in ``image`` (uint8 [H,W,3]); ``metadata`` lets a detector adapt (GenEval raises its
        confidence threshold for counting prompts). Colours must be set when the metadata asks for them."""

    def metadata_for(self, record: dict) -> dict | None:
        """The GenEval metadata to judge a job's manifest record by (`evaluate_output_dir`): the record's own,
        from a .jsonl prompt file, or None. An evaluator of a world with a fixed prompt set may also look up
        plain-text prompts."""
        md = record.get("metadata")
        return md if isinstance(md, dict) and "include" in md else None

    def evaluate(self, image: np.ndarray, metadata: dict) -> EvalResult:
        check_image(image)
        validate_metadata(metadata, "metadata", classes=self.classes, colors=self.colors)
        detections = self.detect(image, metadata)
        correct, reason = check_metadata(detections, metadata, self.position_threshold)
        return EvalResult(correct, reason, detections)

    def evaluate_batch(self, images: np.ndarray | Sequence[np.ndarray], metadata: Sequence[dict]) -> list[EvalResult]:
        """One `EvalResult` per image; ``images`` is uint8 [B,H,W,3] or a list of [H,W,3]."""
        if len(images) != len(metadata):
            raise ValueError(f"got {len(images)} images but {len(metadata)} metadata objects; pass one per image")
        return [self.evaluate(img, md) for img, md in zip(images, metadata)]

    def evaluate_records(
        self,
        images: np.ndarray | Sequence[np.ndarray],
        metadata: Sequence[dict],
        filenames: Sequence[str] | None = None,
    ) -> list[dict]:
        """GenEval results lines (`geneval.result_record`) for a batch; feed them to `geneval.summarize`."""
        results = self.evaluate_batch(images, metadata)
        filenames = filenames if filenames is not None else [f"{i:05d}.png" for i in range(len(results))]
        return [
            result_record(name, md, r.correct, r.reason, r.detections)
            for name, md, r in zip(filenames, metadata, results)
        ]
