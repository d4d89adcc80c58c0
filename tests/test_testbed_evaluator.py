"""The exact shapes-world evaluator (ttsvar.testbed.evaluator) against rendered ground truth."""

import numpy as np
import pytest
from scipy import ndimage

from ttsvar.eval.evaluator import EvalResult, Evaluator
from ttsvar.eval.geneval import Detection, MetadataError, summarize
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator, segment

EV = ShapesEvaluator()


def _md(prompt: str) -> dict:
    return next(m for m in world.prompts_of() if m["prompt"] == prompt)


def _scene(*shapes, bg="white"):
    return world.Scene(bg, tuple(world.Shape(*s) for s in shapes))


def blur(images: np.ndarray, sigma: float) -> np.ndarray:
    x = ndimage.gaussian_filter(images.astype(np.float32), (0, sigma, sigma, 0))
    return np.clip(x.round(), 0, 255).astype(np.uint8)


def noise(images: np.ndarray, sigma: float, seed: int = 0) -> np.ndarray:
    x = images + np.random.default_rng(seed).normal(0, sigma, images.shape)
    return np.clip(x.round(), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("tag", world.TAGS)
def test_every_prompt_of_every_tag_is_correct_on_its_ground_truth(tag):
    """All prompts of the tag (every relation, every count 2-4, every colour) x 4 random scenes."""
    rng = np.random.default_rng(1)
    prompts = world.ALL_PROMPTS[tag] * 4
    scenes = [world.sample_scene_for(m, rng, p_distractor=0.5) for m in prompts]
    results = EV.evaluate_batch(world.render_batch(scenes), prompts)
    failures = [(m["prompt"], r.reason) for m, r in zip(prompts, results) if not r.correct]
    assert failures == []


def test_detections_are_the_rendered_shapes():
    scene = _scene(("circle", "red", 1, 2, 9), ("triangle", "purple", 15, 15, 12), ("square", "black", 20, 1, 7))
    dets = EV.detect(world.render(scene))
    got = sorted((d.cls, d.color, d.box, d.area) for d in dets)
    want = sorted(
        (s.kind, s.color, tuple(float(v) for v in s.box), int(world.MASKS[s.kind][s.size].sum())) for s in scene.shapes
    )
    assert got == want
    assert all(0.9 < d.score <= 1.0 for d in dets)


def test_wrong_colour_count_relation_and_missing_objects_are_incorrect_with_genevals_reasons():
    red_circle = world.render(_scene(("circle", "red", 5, 5, 10), bg="grey"))
    r = EV.evaluate(red_circle, _md("a photo of a blue circle"))
    assert not r.correct and r.reason == "expected blue circle>=1, found 0 blue; and 1 red"

    three = world.render(
        _scene(("triangle", "green", 0, 0, 9), ("triangle", "red", 20, 0, 9), ("triangle", "blue", 10, 20, 9))
    )
    assert EV.evaluate(three, _md("a photo of three triangles")).correct
    r = EV.evaluate(three, _md("a photo of two triangles"))
    assert not r.correct and r.reason == "expected triangle<3, found 3"
    r = EV.evaluate(three, _md("a photo of four triangles"))
    assert not r.correct and r.reason == "expected triangle>=4, found 3"

    left = world.render(_scene(("circle", "blue", 0, 10, 9), ("square", "yellow", 20, 10, 9)))
    assert EV.evaluate(left, _md("a photo of a circle left of a square")).correct
    assert EV.evaluate(left, _md("a photo of a square right of a circle")).correct
    r = EV.evaluate(left, _md("a photo of a circle right of a square"))
    assert not r.correct and r.reason == "expected circle right of target, found left of target"
    r = EV.evaluate(left, _md("a photo of a circle above a square"))
    assert not r.correct and r.reason == "expected circle above target, found left of target"

    r = EV.evaluate(left, _md("a photo of a circle and a triangle"))
    assert not r.correct and r.reason == "expected triangle>=1, found 0"
    # colour binding: both colours present, on the wrong shapes
    r = EV.evaluate(left, _md("a photo of a yellow circle and a blue square"))
    assert not r.correct
    assert r.reason == (
        "expected yellow circle>=1, found 0 yellow; and 1 blue\nexpected blue square>=1, found 0 blue; and 1 yellow"
    )


def test_agrees_with_the_truth_table_on_every_prompt():
    """ShapesEvaluator == world.prompt_truth for 150 random scenes x all 240 prompts (clean renders)."""
    scenes, _ = world.make_scenes(150, seed=11, holdout="include", p_distractor=0.5)
    prompts = world.prompts_of("all")
    truth = world.prompt_truth(scenes, prompts)
    dets = [EV.detect(img) for img in world.render_batch(scenes)]
    from ttsvar.eval.geneval import check_metadata

    verdict = np.array([[check_metadata(d, m)[0] for m in prompts] for d in dets])
    decided = truth >= 0
    assert decided.mean() > 0.99
    assert np.array_equal(verdict[decided], truth[decided] == 1)
    assert 0 < (truth == 1).sum() < truth.size  # both verdicts occur


@pytest.mark.parametrize("corrupt", ["blur0.5", "blur0.8", "noise8", "noise16"])
def test_robust_to_slight_blur_and_noise(corrupt):
    """Ground truth stays correct, and one-attribute perturbed prompts get the clean render's verdict."""
    prompts = world.eval_prompts(20, seed=5)
    rng = np.random.default_rng(5)
    clean = world.render_batch([world.sample_scene_for(m, rng) for m in prompts])
    negatives = [world.perturb_prompt(m, rng) for m in prompts]
    sigma = float(corrupt[4:] if corrupt.startswith("blur") else corrupt[5:])
    images = blur(clean, sigma) if corrupt.startswith("blur") else noise(clean, sigma)
    pos = np.mean([r.correct for r in EV.evaluate_batch(images, prompts)])
    ref = np.array([r.correct for r in EV.evaluate_batch(clean, negatives)])
    got = np.array([r.correct for r in EV.evaluate_batch(images, negatives)])
    assert pos >= 0.98
    assert np.mean(ref == got) >= 0.98
    assert ref.mean() < 0.5  # most perturbations are real negatives


def test_ignores_speckles_and_reads_other_image_sizes():
    img = world.render(_scene(("square", "green", 4, 4, 10)))
    img[25:27, 25:27] = world.PALETTE["red"]  # a 4-pixel artefact
    img[0, 31] = world.PALETTE["blue"]
    dets = EV.detect(img)
    assert [(d.cls, d.color) for d in dets] == [("square", "green")]
    big = np.repeat(np.repeat(img, 3, axis=0), 3, axis=1)  # 96x96: min_area scales with the image
    dets = EV.detect(big)
    assert [(d.cls, d.color) for d in dets] == [("square", "green")]
    assert dets[0].box == (12.0, 12.0, 42.0, 42.0)


def test_drops_components_that_are_no_shape():
    img = world.render(_scene(("circle", "red", 20, 20, 9)))
    img[2:5, 0:30] = world.PALETTE["blue"]  # a 3x30 bar: aspect 0.1, matches no shape
    dets = EV.detect(img)
    assert [(d.cls, d.color) for d in dets] == [("circle", "red")]
    bar = [d for d in ShapesEvaluator(min_score=0.0).detect(img) if d.color == "blue"]
    assert len(bar) == 1 and bar[0].score < 1e-6  # kept only without a threshold


def test_segmentation_assigns_half_covered_pixels_to_the_shape():
    img = world.render(_scene(("square", "black", 8, 8, 12)))
    soft = blur(img[None], 0.8)[0]
    lab = segment(soft)
    black = list(world.PALETTE).index("black")
    assert set(np.unique(lab)) == {-1, black}  # blends never become a third colour
    assert (lab == black).sum() == pytest.approx(144, abs=8)


def test_bad_inputs_are_rejected_with_clear_errors():
    md = _md("a photo of a circle")
    with pytest.raises(ValueError, match=r"uint8 numpy array \[H, W, 3\]"):
        EV.evaluate(np.zeros((32, 32, 3), np.float32), md)
    with pytest.raises(ValueError, match="uint8"):
        EV.evaluate(np.zeros((3, 32, 32), np.uint8), md)
    with pytest.raises(MetadataError, match="'dog'; this evaluator knows"):
        EV.evaluate(
            np.zeros((32, 32, 3), np.uint8),
            {"tag": "x", "prompt": "p", "include": [{"class": "dog", "count": 1}]},
        )
    with pytest.raises(MetadataError, match="'pink'"):
        EV.evaluate(
            np.zeros((32, 32, 3), np.uint8),
            {"tag": "x", "prompt": "p", "include": [{"class": "circle", "count": 1, "color": "pink"}]},
        )
    with pytest.raises(ValueError, match="2 images but 1 metadata"):
        EV.evaluate_batch(np.zeros((2, 32, 32, 3), np.uint8), [md])
    with pytest.raises(ValueError, match="min_area"):
        ShapesEvaluator(min_area=0)


def test_batch_helpers_match_single_image_evaluation_and_feed_the_summary():
    prompts = world.eval_prompts(5, seed=2)
    rng = np.random.default_rng(2)
    images = world.render_batch([world.sample_scene_for(world.perturb_prompt(m, rng), rng) for m in prompts])
    batch = EV.evaluate_batch(images, prompts)
    single = [EV.evaluate(img, m) for img, m in zip(images, prompts)]
    as_list = EV.evaluate_batch(list(images), prompts)
    assert [(r.correct, r.reason) for r in batch] == [(r.correct, r.reason) for r in single]
    assert [(r.correct, r.reason) for r in as_list] == [(r.correct, r.reason) for r in single]
    records = EV.evaluate_records(images, prompts)
    s = summarize(records)
    assert s["n_images"] == 30 and set(s["per_tag"]) == set(world.TAGS)
    assert s["image_accuracy"] == pytest.approx(np.mean([r.correct for r in batch]))


def test_other_detectors_plug_into_the_same_rules():
    class FixedDetector(Evaluator):
        """Stands in for GenEval's Mask2Former: any detector returning Detections works."""

        def detect(self, image, metadata):
            return [
                Detection("dog", (0, 0, 10, 10), 0.9, "brown"),
                Detection("cat", (20, 0, 30, 10), 0.8, "white"),
            ]

    md = {
        "tag": "position",
        "prompt": "a photo of a dog left of a cat",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    }
    r = FixedDetector().evaluate(np.zeros((32, 32, 3), np.uint8), md)
    assert isinstance(r, EvalResult) and r.correct and len(r.detections) == 2
    md["include"][1]["position"] = ["right of", 0]
    assert FixedDetector().evaluate(np.zeros((32, 32, 3), np.uint8), md).reason == (
        "expected dog right of target, found left of target"
    )
