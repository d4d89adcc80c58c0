"""The shapes world (ttsvar.testbed.world): rendering, prompts, splits, datasets, truth tables."""

import itertools

import numpy as np
import pytest

from ttsvar.eval.geneval import relative_position, validate_metadata
from ttsvar.testbed import world


def test_palette_and_backgrounds_are_the_specified_colours():
    assert world.PALETTE == {
        "red": (220, 30, 30),
        "green": (30, 160, 50),
        "blue": (30, 70, 220),
        "yellow": (240, 210, 20),
        "purple": (140, 50, 190),
        "black": (20, 20, 20),
    }
    assert world.BACKGROUNDS == {"white": (255, 255, 255), "grey": (225, 225, 225)}


def test_render_paints_exact_masks_in_exact_colours():
    scene = world.Scene(
        "grey",
        (world.Shape("circle", "red", 1, 2, 9), world.Shape("triangle", "purple", 15, 15, 12)),
    )
    img = world.render(scene)
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    expected = np.zeros((32, 32), dtype=int)  # 0 background, 1 red, 2 purple
    expected[2:11, 1:10][world.MASKS["circle"][9]] = 1
    expected[15:27, 15:27][world.MASKS["triangle"][12]] = 2
    colours = np.array([world.BACKGROUNDS["grey"], world.PALETTE["red"], world.PALETTE["purple"]])
    assert np.array_equal(img, colours[expected])


def test_masks_are_the_ideal_shapes():
    sq, circ, tri = (world.MASKS[k][10] for k in ("square", "circle", "triangle"))
    assert sq.all()
    # circle: symmetric, full middle row and column, empty corners, area close to pi r^2
    assert np.array_equal(circ, circ[::-1]) and np.array_equal(circ, circ[:, ::-1]) and np.array_equal(circ, circ.T)
    assert circ[5].all() and not circ[0, 0] and abs(circ.sum() - np.pi * 25) < 5
    # upright triangle: mirror-symmetric, full base row, rows widen downwards, half the box area
    assert np.array_equal(tri, tri[:, ::-1]) and tri[-1].all()
    assert (np.diff(tri.sum(1)) >= 0).all() and abs(tri.sum() - 50) <= 5


def test_render_rejects_shapes_outside_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        world.render(world.Scene("white", (world.Shape("square", "red", 25, 0, 10),)))


def test_prompt_enumeration_follows_genevals_templates():
    p = world.ALL_PROMPTS
    assert {t: len(v) for t, v in p.items()} == {
        "single_object": 3,
        "two_object": 6,
        "counting": 9,
        "colors": 18,
        "position": 24,
        "color_attr": 180,
    }
    prompts = {m["prompt"]: m for ms in p.values() for m in ms}
    assert len(prompts) == 240
    assert prompts["a photo of a circle"]["include"] == [{"class": "circle", "count": 1}]
    assert prompts["a photo of three triangles"]["include"] == [{"class": "triangle", "count": 3}]
    assert prompts["a photo of three triangles"]["exclude"] == [{"class": "triangle", "count": 4}]
    assert prompts["a photo of a blue square"]["include"] == [{"class": "square", "count": 1, "color": "blue"}]
    # GenEval: the reference object comes first, the subject second with position [relation, 0]
    assert prompts["a photo of a circle left of a square"]["include"] == [
        {"class": "square", "count": 1},
        {"class": "circle", "count": 1, "position": ["left of", 0]},
    ]
    assert prompts["a photo of a red circle and a blue triangle"]["include"] == [
        {"class": "circle", "count": 1, "color": "red"},
        {"class": "triangle", "count": 1, "color": "blue"},
    ]
    for m in prompts.values():
        validate_metadata(m, classes=world.SHAPES, colors=world.PALETTE)
        assert world.prompt_text(m) == m["prompt"]
    counts = {m["include"][0]["count"] for m in p["counting"]}
    relations = {m["include"][1]["position"][0] for m in p["position"]}
    assert counts == {2, 3, 4} and relations == set(world.RELATIONS)


def test_heldout_split_partitions_the_prompts():
    train, held = world.prompts_of("train"), world.prompts_of("heldout")
    assert len(train) + len(held) == 240
    assert not {m["prompt"] for m in train} & {m["prompt"] for m in held}
    assert all(world.is_heldout(m) for m in held) and not any(world.is_heldout(m) for m in train)
    texts = {m["prompt"] for m in held}
    assert {
        "a photo of a purple triangle",
        "a photo of a triangle and a circle",
        "a photo of four triangles",
    } <= texts
    assert "a photo of a circle below a triangle" in texts
    assert "a photo of a yellow circle and a red square" in texts
    # every word and every attribute still appears in training prompts
    assert {w for m in train for w in m["prompt"].split()} == set(world.VOCAB[1:])
    with pytest.raises(ValueError, match="unknown split"):
        world.prompts_of("test")


def test_vocab_and_tokenize():
    assert world.VOCAB[0] == "<pad>" and len(set(world.VOCAB)) == len(world.VOCAB)
    assert {w for m in world.prompts_of() for w in m["prompt"].split()} == set(world.VOCAB[1:])
    ids = world.tokenize("a photo of two circles", length=8)
    assert ids == [world.VOCAB.index(w) for w in "a photo of two circles".split()] + [0, 0, 0]
    assert world.MAX_PROMPT_WORDS == 10
    with pytest.raises(ValueError, match="'dog'"):
        world.tokenize("a photo of a dog")
    with pytest.raises(ValueError, match="more than length=3"):
        world.tokenize("a photo of a circle", length=3)


def _gap(a: world.Shape, b: world.Shape) -> int:
    """Background pixels between two shape boxes along the axis where they are apart."""
    return max(b.x - (a.x + a.size), a.x - (b.x + b.size), b.y - (a.y + a.size), a.y - (b.y + b.size))


def test_scenes_are_valid_and_satisfy_their_prompts():
    scenes, md = world.make_scenes(600, seed=3, holdout="include", p_distractor=0.5)
    truth = world.prompt_truth(scenes, md)
    assert (np.diag(truth) == 1).all()  # every scene is correct for its own prompt
    for scene, m in zip(scenes, md):
        assert 1 <= len(scene.shapes) <= 4 and scene.background in world.BACKGROUNDS
        for a, b in itertools.combinations(scene.shapes, 2):
            assert _gap(a, b) >= world.MIN_GAP
        named = {r["class"] for r in m["include"]}
        required = sum(r["count"] for r in m["include"])
        assert len(scene.shapes) in (required, required + 1)
        extra = len(scene.shapes) - required
        kinds = [s.kind for s in scene.shapes]
        assert sum(k not in named for k in kinds) == extra  # a distractor is never of a named class


def test_position_scenes_follow_genevals_relation_rule():
    for m in world.ALL_PROMPTS["position"]:
        ref, subj = m["include"]
        rel = subj["position"][0]
        for seed in range(5):
            scene = world.sample_scene_for(m, np.random.default_rng(seed))
            a = next(s for s in scene.shapes if s.kind == subj["class"])
            b = next(s for s in scene.shapes if s.kind == ref["class"])
            assert rel in relative_position(a.box, b.box)


def test_make_dataset_is_deterministic_and_respects_holdout():
    img1, p1, m1 = world.make_dataset(300, seed=7)
    img2, p2, m2 = world.make_dataset(300, seed=7)
    img3, _, _ = world.make_dataset(300, seed=8)
    assert np.array_equal(img1, img2) and p1 == p2 and m1 == m2
    assert not np.array_equal(img1, img3)
    assert img1.shape == (300, 32, 32, 3) and img1.dtype == np.uint8
    assert [m["prompt"] for m in m1] == p1
    assert not any(world.is_heldout(m) for m in m1)
    _, _, only = world.make_dataset(100, seed=7, holdout="only")
    assert all(world.is_heldout(m) for m in only)
    tags = [m["tag"] for m in world.make_dataset(3000, seed=1, holdout="include")[2]]
    assert all(abs(tags.count(t) / 3000 - 1 / 6) < 0.03 for t in world.TAGS)  # tags uniform
    with pytest.raises(ValueError, match="holdout must be"):
        world.make_dataset(10, 0, holdout="yes")


def test_eval_prompts_are_fixed_and_cover_every_tag():
    a, b = world.eval_prompts(10, seed=0), world.eval_prompts(10, seed=0)
    assert a == b and a != world.eval_prompts(10, seed=1)
    assert [m["tag"] for m in a] == [t for t in world.TAGS for _ in range(10)]
    colors = [m["prompt"] for m in a if m["tag"] == "colors"]
    assert len(set(colors)) == 10  # distinct while the tag has enough prompts
    single = [m["prompt"] for m in a if m["tag"] == "single_object"]
    assert len(set(single)) == 3  # 3 distinct single-object prompts, cycled
    held = world.eval_prompts(4, seed=0, split="heldout")
    assert {m["tag"] for m in held} == set(world.TAGS) - {"single_object"}
    assert all(world.is_heldout(m) for m in held)


def test_perturb_prompt_changes_one_attribute():
    rng = np.random.default_rng(0)
    known = {x["prompt"] for x in world.prompts_of()}
    for m in world.prompts_of():
        for _ in range(3):
            p = world.perturb_prompt(m, rng)
            assert p["tag"] == m["tag"] and p["prompt"] != m["prompt"]
            validate_metadata(p, classes=world.SHAPES, colors=world.PALETTE)
            assert p["prompt"] in known


def test_prompt_truth_decides_colours_only_when_unambiguous():
    two_circles = world.Scene(
        "white", (world.Shape("circle", "red", 0, 0, 8), world.Shape("circle", "blue", 20, 20, 8))
    )
    one_red = world.Scene("white", (world.Shape("circle", "red", 0, 0, 8),))
    md = [
        world.ALL_PROMPTS["colors"][[m["prompt"] for m in world.ALL_PROMPTS["colors"]].index(p)]
        for p in ("a photo of a red circle", "a photo of a green circle")
    ]
    truth = world.prompt_truth([two_circles, one_red], md)
    # which of two circles a detector ranks first decides "a red circle": undecided (-1)
    assert truth.tolist() == [[-1, 0], [1, 0]]
