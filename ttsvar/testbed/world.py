"""The shapes world: procedural 32x32 scenes with GenEval-format prompts and exact ground truth.

A scene is a background (white or light grey) and 1-4 flat-coloured, non-overlapping shapes (circle,
square, upright triangle) in six exact colours. Prompts follow GenEval's six tags and templates, and
their metadata is GenEval's JSON format, so the same evaluation code scores the testbed and real runs.

Who calls what:
* `make_dataset` / `make_scenes` + `render_batch`: training data for the testbed VAE, transformer and CLIP;
* `eval_prompts`: the fixed evaluation prompt sets (``split="train"`` or ``"heldout"``);
* `prompt_truth`: the exact GenEval verdict of every (scene, prompt) pair, from the scene description
  (the CLIP trainer uses it as its label matrix; tests compare it with the pixel evaluator);
* `VOCAB` / `tokenize`: the closed word list of all prompts for word-level text encoders.

Held-out split: some attribute combinations never appear in training prompts (``HELDOUT``), so a
model's score on them measures compositional generalisation. Their pixels still occur in training
images (an uncaptioned purple triangle can appear in "a photo of a triangle"); only the words never meet.

Distractors (``p_distractor``): an extra object is added only where GenEval's rules leave the verdict
unchanged: its class is one the prompt does not mention (a second object of a mentioned class would
change counts, or compete for the "most confident" slot of colour and position checks).
"""

from __future__ import annotations

import copy
import itertools
import random
from dataclasses import dataclass

import numpy as np

from ttsvar.eval.geneval import GENEVAL_TAGS, relative_position

IMAGE_SIZE = 32
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (240, 210, 20),
    "purple": (140, 50, 190),
    "black": (20, 20, 20),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (255, 255, 255), "grey": (225, 225, 225)}
SHAPES = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
RELATIONS = ("left of", "right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}
TAGS = GENEVAL_TAGS
MIN_SIZE, MAX_SIZE = 7, 15  # shape side in pixels; 7 keeps a triangle recognisable after blur
MIN_GAP = 2  # background pixels between shape boxes: a 1-pixel gap merges same-coloured shapes under blur
MAX_SHAPES = 4
# largest side per number of shapes in the scene, so 4 shapes still fit with their gaps
_SIZE_RANGE = {1: (8, MAX_SIZE), 2: (7, 13), 3: (7, 11), 4: (7, 10)}

HELDOUT: dict[str, frozenset] = {
    # (colour, shape) pairs never named together in a training prompt (colors, color_attr)
    "color_shape": frozenset({("purple", "triangle"), ("yellow", "circle"), ("green", "square")}),
    # (first, second) object order of two_object prompts
    "two_object": frozenset({("triangle", "circle")}),
    # (count, shape) of counting prompts
    "counting": frozenset({(4, "triangle")}),
    # (subject, relation, reference) of position prompts: "a photo of a <subject> <relation> a <reference>"
    "position": frozenset({("circle", "below", "triangle"), ("square", "right of", "circle")}),
}

VOCAB: list[str] = (
    ["<pad>", "a", "photo", "of", "and"]
    + list(SHAPES)
    + [PLURALS[s] for s in SHAPES]
    + list(COUNT_WORDS.values())
    + list(PALETTE)
    + ["left", "right", "above", "below"]
)
WORD_IDS = {w: i for i, w in enumerate(VOCAB)}
PAD_ID = 0


def tokenize(prompt: str, length: int | None = None) -> list[int]:
    """Word ids of a shapes-world prompt (``VOCAB`` index); padded with ``PAD_ID`` to ``length`` if given."""
    ids = []
    for w in prompt.split():
        if w not in WORD_IDS:
            raise ValueError(f"word {w!r} in prompt {prompt!r} is not in the shapes-world VOCAB: {VOCAB[1:]}")
        ids.append(WORD_IDS[w])
    if length is not None:
        if len(ids) > length:
            raise ValueError(f"prompt {prompt!r} has {len(ids)} words, more than length={length}")
        ids += [PAD_ID] * (length - len(ids))
    return ids


# ----------------------------------------------------------------------------------------------------
# scenes


@dataclass(frozen=True)
class Shape:
    """One shape: its ``size`` x ``size`` box has its top-left pixel at (``x``, ``y``)."""

    kind: str
    color: str
    x: int
    y: int
    size: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Tight pixel box (x0, y0, x1, y1) of the rendered mask, x1/y1 exclusive."""
        ox0, oy0, ox1, oy1 = _MASK_BOX[self.kind][self.size]
        return (self.x + ox0, self.y + oy0, self.x + ox1, self.y + oy1)


@dataclass(frozen=True)
class Scene:
    background: str
    shapes: tuple[Shape, ...]


def _shape_mask(kind: str, size: int, supersample: int = 8) -> np.ndarray:
    """bool [size, size]: pixels whose area is at least half covered by the ideal shape."""
    t = (np.arange(size * supersample) + 0.5) / supersample  # sub-pixel centres, in pixels
    yy, xx = np.meshgrid(t, t, indexing="ij")
    r = size / 2
    if kind == "circle":
        inside = (xx - r) ** 2 + (yy - r) ** 2 <= r * r
    elif kind == "square":
        inside = np.ones_like(xx, dtype=bool)
    elif kind == "triangle":  # apex at the top centre, base along the bottom edge
        inside = np.abs(xx - r) <= r * yy / size
    else:
        raise ValueError(f"unknown shape {kind!r}; shapes are {SHAPES}")
    cover = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))  # [size, size]
    return cover >= 0.5


MASKS: dict[str, dict[int, np.ndarray]] = {k: {s: _shape_mask(k, s) for s in range(3, 33)} for k in SHAPES}


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


_MASK_BOX = {k: {s: _tight_box(m) for s, m in masks.items()} for k, masks in MASKS.items()}
_PALETTE_ARR = {c: np.array(v, dtype=np.uint8) for c, v in {**PALETTE, **BACKGROUNDS}.items()}


def render(scene: Scene) -> np.ndarray:
    """uint8 [32, 32, 3] image of a scene."""
    img = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    _render_into(img, scene)
    return img


def render_batch(scenes: list[Scene]) -> np.ndarray:
    """uint8 [n, 32, 32, 3] images of a list of scenes."""
    out = np.empty((len(scenes), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for img, scene in zip(out, scenes):
        _render_into(img, scene)
    return out


def _render_into(img: np.ndarray, scene: Scene) -> None:
    img[:] = _PALETTE_ARR[scene.background]
    for s in scene.shapes:
        mask = MASKS[s.kind][s.size]
        if s.x < 0 or s.y < 0 or s.x + s.size > IMAGE_SIZE or s.y + s.size > IMAGE_SIZE:
            raise ValueError(f"{s} does not fit in the {IMAGE_SIZE}x{IMAGE_SIZE} image")
        img[s.y : s.y + s.size, s.x : s.x + s.size][mask] = _PALETTE_ARR[s.color]


# ----------------------------------------------------------------------------------------------------
# prompts


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def _enumerate_prompts() -> dict[str, list[dict]]:
    """Every distinct prompt of each tag, in GenEval's metadata format and key order."""
    p: dict[str, list[dict]] = {t: [] for t in TAGS}
    for s in SHAPES:
        p["single_object"].append(
            {
                "tag": "single_object",
                "include": [{"class": s, "count": 1}],
                "prompt": f"a photo of {_article(s)}",
            }
        )
    for a, b in itertools.permutations(SHAPES, 2):
        p["two_object"].append(
            {
                "tag": "two_object",
                "include": [{"class": a, "count": 1}, {"class": b, "count": 1}],
                "prompt": f"a photo of {_article(a)} and {_article(b)}",
            }
        )
    for s in SHAPES:
        for n, word in COUNT_WORDS.items():
            p["counting"].append(
                {
                    "tag": "counting",
                    "include": [{"class": s, "count": n}],
                    "exclude": [{"class": s, "count": n + 1}],
                    "prompt": f"a photo of {word} {PLURALS[s]}",
                }
            )
    for s in SHAPES:
        for c in PALETTE:
            p["colors"].append(
                {
                    "tag": "colors",
                    "include": [{"class": s, "count": 1, "color": c}],
                    "prompt": f"a photo of {_article(c)} {s}",
                }
            )
    for a, b in itertools.permutations(SHAPES, 2):  # "a photo of a <a> <rel> a <b>": b is the reference
        for rel in RELATIONS:
            p["position"].append(
                {
                    "tag": "position",
                    "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}],
                    "prompt": f"a photo of {_article(a)} {rel} {_article(b)}",
                }
            )
    for a, b in itertools.permutations(SHAPES, 2):
        for ca, cb in itertools.permutations(PALETTE, 2):
            p["color_attr"].append(
                {
                    "tag": "color_attr",
                    "include": [{"class": a, "count": 1, "color": ca}, {"class": b, "count": 1, "color": cb}],
                    "prompt": f"a photo of {_article(ca)} {a} and {_article(cb)} {b}",
                }
            )
    return p


def is_heldout(metadata: dict, combos: dict[str, frozenset] | None = None) -> bool:
    """True when a prompt combines attributes that `combos` (default `HELDOUT`) keeps out of training.
    The reward trainer passes its own `combos` for a compositional dev split inside the training prompts."""
    combos = HELDOUT if combos is None else combos
    tag, inc = metadata["tag"], metadata["include"]
    if tag in ("colors", "color_attr"):
        return any((r.get("color"), r["class"]) in combos["color_shape"] for r in inc)
    if tag == "two_object":
        return (inc[0]["class"], inc[1]["class"]) in combos["two_object"]
    if tag == "counting":
        return (inc[0]["count"], inc[0]["class"]) in combos["counting"]
    if tag == "position":
        return (inc[1]["class"], inc[1]["position"][0], inc[0]["class"]) in combos["position"]
    return False


ALL_PROMPTS: dict[str, list[dict]] = _enumerate_prompts()
SPLITS = ("all", "train", "heldout")
_SPLIT_PROMPTS = {
    "all": ALL_PROMPTS,
    "train": {t: [m for m in ms if not is_heldout(m)] for t, ms in ALL_PROMPTS.items()},
    "heldout": {t: [m for m in ms if is_heldout(m)] for t, ms in ALL_PROMPTS.items()},
}
MAX_PROMPT_WORDS = max(len(m["prompt"].split()) for ms in ALL_PROMPTS.values() for m in ms)


def prompts_of(split: str = "all", tags: tuple[str, ...] = TAGS) -> list[dict]:
    """All distinct prompts of a split (``"all"``, ``"train"``, ``"heldout"``), tag by tag (copies)."""
    return [copy.deepcopy(m) for t in _check_tags(tags) for m in _split(split)[t]]


def _split(split: str) -> dict[str, list[dict]]:
    if split not in _SPLIT_PROMPTS:
        raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")
    return _SPLIT_PROMPTS[split]


def _check_tags(tags) -> tuple[str, ...]:
    tags = (tags,) if isinstance(tags, str) else tuple(tags)
    bad = [t for t in tags if t not in TAGS]
    if bad or not tags:
        raise ValueError(f"unknown or no tags {bad or tags}; GenEval tags are {TAGS}")
    return tags


def sample_prompt(rng: np.random.Generator, tag: str, split: str = "all") -> dict:
    """A random prompt of ``tag`` (uniform over its distinct prompts in ``split``), as GenEval metadata."""
    pool = _split(split)[_check_tags(tag)[0]]
    if not pool:
        raise ValueError(f"tag {tag!r} has no prompts in split {split!r}")
    return copy.deepcopy(pool[int(rng.integers(len(pool)))])


def eval_prompts(n_per_tag: int, seed: int = 0, split: str = "all", tags: tuple[str, ...] = TAGS) -> list[dict]:
    """The fixed evaluation prompt set: ``n_per_tag`` prompts per tag, distinct while the tag has enough.

    Each tag's prompts are shuffled with ``seed`` and cycled if ``n_per_tag`` exceeds their number
    (single_object has 3 distinct prompts). Tags without prompts in ``split`` are skipped (the held-out
    split has no single_object prompts).
    """
    if n_per_tag < 1:
        raise ValueError(f"n_per_tag must be >= 1, got {n_per_tag}")
    rng = np.random.default_rng(seed)
    out = []
    for tag in _check_tags(tags):
        pool = _split(split)[tag]
        if not pool:
            continue
        order = rng.permutation(len(pool))
        out += [copy.deepcopy(pool[order[i % len(pool)]]) for i in range(n_per_tag)]
    return out


# ----------------------------------------------------------------------------------------------------
# scenes for prompts


def _required_objects(metadata: dict) -> list[tuple[str, str | None]]:
    objs = []
    for req in metadata["include"]:
        objs += [(req["class"], req.get("color"))] * req["count"]
    return objs


def _place(r: random.Random, objs: list[tuple[str, str]], tries: int = 200) -> list[Shape] | None:
    lo, hi = _SIZE_RANGE[len(objs)]
    for _ in range(tries):
        placed: list[Shape] = []
        for kind, color in objs:
            size = r.randint(lo, hi)
            for _ in range(30):
                x, y = r.randint(0, IMAGE_SIZE - size), r.randint(0, IMAGE_SIZE - size)
                if all(
                    x + size + MIN_GAP <= p.x
                    or p.x + p.size + MIN_GAP <= x
                    or y + size + MIN_GAP <= p.y
                    or p.y + p.size + MIN_GAP <= y
                    for p in placed
                ):
                    placed.append(Shape(kind, color, x, y, size))
                    break
            else:
                break
        if len(placed) == len(objs):
            return placed
    return None


def _scene_for(metadata: dict, r: random.Random, p_distractor: float) -> Scene:
    objs = _required_objects(metadata)
    if len(objs) > MAX_SHAPES:
        raise ValueError(f"prompt {metadata['prompt']!r} needs {len(objs)} shapes; scenes hold {MAX_SHAPES}")
    named = {req["class"] for req in metadata["include"]} | {req["class"] for req in metadata.get("exclude", [])}
    free = [s for s in SHAPES if s not in named]
    if free and len(objs) < MAX_SHAPES and r.random() < p_distractor:
        objs.append((r.choice(free), None))
    colors = list(PALETTE)
    objs = [(k, c if c is not None else r.choice(colors)) for k, c in objs]
    position = [(i, req["position"]) for i, req in enumerate(metadata["include"]) if "position" in req]
    for _ in range(1000):
        shapes = _place(r, objs)
        if shapes is None:
            raise RuntimeError(f"could not place {objs} in a {IMAGE_SIZE}x{IMAGE_SIZE} scene")
        # include entries are count-1 in position prompts, so entry i is shapes[i]
        if all(rel in relative_position(shapes[i].box, shapes[ref].box) for i, (rel, ref) in position):
            order = list(range(len(shapes)))
            r.shuffle(order)  # draw order carries no meaning
            return Scene(r.choice(list(BACKGROUNDS)), tuple(shapes[i] for i in order))
    raise RuntimeError(f"could not satisfy the position constraint of {metadata['prompt']!r}")


def sample_scene_for(metadata: dict, rng: np.random.Generator, p_distractor: float = 0.0) -> Scene:
    """A random scene that GenEval's rules judge correct for ``metadata``.

    Exactly the objects the prompt asks for (counts are exact), unconstrained colours uniform over the
    palette, random sizes/positions/background; with probability ``p_distractor`` one extra object of a
    class the prompt does not name (see the module docstring).
    """
    return _scene_for(metadata, random.Random(int(rng.integers(2**63))), p_distractor)


def make_scenes(
    n: int,
    seed: int,
    holdout: str = "exclude",
    tags: tuple[str, ...] = TAGS,
    p_distractor: float = 0.0,
) -> tuple[list[Scene], list[dict]]:
    """``n`` (scene, metadata) pairs; tags uniform, prompts uniform within a tag.

    ``holdout``: ``"exclude"`` draws only training prompts, ``"only"`` only held-out ones, ``"include"``
    all prompts. Deterministic in ``seed``.
    """
    split = {"exclude": "train", "only": "heldout", "include": "all"}.get(holdout)
    if split is None:
        raise ValueError(f"holdout must be 'exclude', 'include' or 'only', got {holdout!r}")
    pools = [p for p in (_split(split)[t] for t in _check_tags(tags)) if p]
    if not pools:
        raise ValueError(f"no prompts for tags {tags} with holdout={holdout!r}")
    r = random.Random(seed)
    scenes, metadata = [], []
    for _ in range(n):
        pool = pools[r.randrange(len(pools))]
        md = pool[r.randrange(len(pool))]
        scenes.append(_scene_for(md, r, p_distractor))
        metadata.append(copy.deepcopy(md))
    return scenes, metadata


def make_dataset(
    n: int,
    seed: int,
    holdout: str = "exclude",
    tags: tuple[str, ...] = TAGS,
    p_distractor: float = 0.0,
) -> tuple[np.ndarray, list[str], list[dict]]:
    """Training data: ``(images uint8 [n,32,32,3], prompts, metadata)``; see `make_scenes` for options."""
    scenes, metadata = make_scenes(n, seed, holdout, tags, p_distractor)
    return render_batch(scenes), [m["prompt"] for m in metadata], metadata


# ----------------------------------------------------------------------------------------------------
# exact truth from scene descriptions


def _prompt_table(prompts: list[dict]) -> dict[str, np.ndarray]:
    s_idx = {s: i for i, s in enumerate(SHAPES)}
    c_idx = {c: i for i, c in enumerate(PALETTE)}
    r_idx = {r: i for i, r in enumerate(RELATIONS)}
    t = {k: np.full(len(prompts), -1) for k in ("tag", "a", "b", "ca", "cb", "n", "rel")}
    for j, md in enumerate(prompts):
        inc = md["include"]
        t["tag"][j] = TAGS.index(md["tag"])
        t["a"][j] = s_idx[inc[0]["class"]]
        t["n"][j] = inc[0]["count"]
        t["ca"][j] = c_idx.get(inc[0].get("color"), -1)
        if len(inc) > 1:
            t["b"][j] = s_idx[inc[1]["class"]]
            t["cb"][j] = c_idx.get(inc[1].get("color"), -1)
        if md["tag"] == "position":  # "<inc1> <rel> <inc0>": subject is inc[1], reference inc[0]
            t["a"][j], t["b"][j] = s_idx[inc[1]["class"]], s_idx[inc[0]["class"]]
            t["rel"][j] = r_idx[inc[1]["position"][0]]
    return t


def prompt_truth(scenes: list[Scene], prompts: list[dict]) -> np.ndarray:
    """int8 [n_scenes, n_prompts]: GenEval's verdict on each rendered scene for each shapes-world prompt.

    1 = correct, 0 = incorrect, -1 = undecided: the verdict depends on which of several same-class
    objects a detector ranks first (GenEval checks colour and position only on the most confident one).
    Equals `ShapesEvaluator` on the clean render wherever it is not -1 (tested).
    """
    S, C, R = len(SHAPES), len(PALETTE), len(RELATIONS)
    n = len(scenes)
    counts = np.zeros((n, S), dtype=np.int64)
    color_counts = np.zeros((n, S, C), dtype=np.int64)
    rel = np.zeros((n, S, S, R), dtype=bool)  # rel[i, a, b, r]: a <r> b, for single objects a and b
    s_idx = {s: i for i, s in enumerate(SHAPES)}
    c_idx = {c: i for i, c in enumerate(PALETTE)}
    for i, scene in enumerate(scenes):
        first: dict[int, Shape] = {}
        for sh in scene.shapes:
            a = s_idx[sh.kind]
            counts[i, a] += 1
            color_counts[i, a, c_idx[sh.color]] += 1
            first.setdefault(a, sh)
        for a, b in itertools.permutations(first, 2):
            for r_name in relative_position(first[a].box, first[b].box):
                rel[i, a, b, RELATIONS.index(r_name)] = True
    t = _prompt_table(prompts)
    out = np.zeros((n, len(prompts)), dtype=np.int8)
    rows = np.arange(n)
    for j in range(len(prompts)):
        tag, a, b, n_req = TAGS[t["tag"][j]], t["a"][j], t["b"][j], t["n"][j]

        def color_ok(shape: int, color: int) -> np.ndarray:  # 1/0/-1 for "the top <shape> is <color>"
            cnt, hit = counts[:, shape], color_counts[:, shape, color]
            return np.where(cnt == 0, 0, np.where(hit == cnt, 1, np.where(hit == 0, 0, -1)))

        if tag == "single_object":
            v = (counts[:, a] >= 1).astype(np.int8)
        elif tag == "two_object":
            v = ((counts[:, a] >= 1) & (counts[:, b] >= 1)).astype(np.int8)
        elif tag == "counting":
            v = (counts[:, a] == n_req).astype(np.int8)
        elif tag == "colors":
            v = color_ok(a, t["ca"][j])
        elif tag == "color_attr":
            va, vb = color_ok(a, t["ca"][j]), color_ok(b, t["cb"][j])
            v = np.where((va == 0) | (vb == 0), 0, np.where((va == 1) & (vb == 1), 1, -1))
        else:  # position
            present = (counts[:, a] >= 1) & (counts[:, b] >= 1)
            single = (counts[:, a] == 1) & (counts[:, b] == 1)
            v = np.where(~present, 0, np.where(single, rel[rows, a, b, t["rel"][j]], -1))
        out[:, j] = v
    return out


_OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def perturb_prompt(metadata: dict, rng: np.random.Generator) -> dict:
    """A prompt of the same tag that differs from ``metadata`` in one attribute (a hard negative).

    single_object / two_object: one shape replaced; counting: another count (or shape);
    colors: another colour (or shape); position: the opposite relation (or subject and reference
    swapped); color_attr: the two colours swapped (a binding error) or one colour replaced. The result
    is a different prompt, possibly a held-out one; an image correct for ``metadata`` is usually, but
    not always, incorrect for it (a "left of" scene can also be "above"), so judge it with an evaluator.
    """
    md = copy.deepcopy(metadata)
    tag, inc = md["tag"], md["include"]
    coin = bool(rng.integers(2))

    def other(options, current):
        rest = [o for o in options if o not in current]
        return rest[int(rng.integers(len(rest)))]

    if tag == "single_object":
        inc[0]["class"] = other(SHAPES, [inc[0]["class"]])
    elif tag == "two_object":
        i = int(rng.integers(2))
        inc[i]["class"] = other(SHAPES, [inc[0]["class"], inc[1]["class"]])
    elif tag == "counting":
        if coin:
            inc[0]["count"] = other(list(COUNT_WORDS), [inc[0]["count"]])
        else:
            inc[0]["class"] = other(SHAPES, [inc[0]["class"]])
        md["exclude"] = [{"class": inc[0]["class"], "count": inc[0]["count"] + 1}]
    elif tag == "colors":
        if coin:
            inc[0]["color"] = other(list(PALETTE), [inc[0]["color"]])
        else:
            inc[0]["class"] = other(SHAPES, [inc[0]["class"]])
    elif tag == "position":
        if coin:
            inc[1]["position"][0] = _OPPOSITE[inc[1]["position"][0]]
        else:
            inc[0]["class"], inc[1]["class"] = inc[1]["class"], inc[0]["class"]
    elif tag == "color_attr":
        if coin:
            inc[0]["color"], inc[1]["color"] = inc[1]["color"], inc[0]["color"]
        else:
            i = int(rng.integers(2))
            inc[i]["color"] = other(list(PALETTE), [inc[0]["color"], inc[1]["color"]])
    else:
        raise ValueError(f"unknown tag {tag!r}; GenEval tags are {TAGS}")
    md["prompt"] = prompt_text(md)
    return md


def prompt_text(metadata: dict) -> str:
    """The template prompt of a shapes-world metadata object (the inverse of the enumeration)."""
    tag, inc = metadata["tag"], metadata["include"]
    if tag == "single_object":
        return f"a photo of {_article(inc[0]['class'])}"
    if tag == "two_object":
        return f"a photo of {_article(inc[0]['class'])} and {_article(inc[1]['class'])}"
    if tag == "counting":
        return f"a photo of {COUNT_WORDS[inc[0]['count']]} {PLURALS[inc[0]['class']]}"
    if tag == "colors":
        return f"a photo of {_article(inc[0]['color'])} {inc[0]['class']}"
    if tag == "position":
        return f"a photo of {_article(inc[1]['class'])} {inc[1]['position'][0]} {_article(inc[0]['class'])}"
    if tag == "color_attr":
        a, b = inc
        return f"a photo of {_article(a['color'])} {a['class']} and {_article(b['color'])} {b['class']}"
    raise ValueError(f"unknown tag {tag!r}; GenEval tags are {TAGS}")
