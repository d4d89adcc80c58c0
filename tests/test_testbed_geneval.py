"""GenEval formats and rules (ttsvar.eval.geneval), checked against GenEval's own files and logic."""

import json

import numpy as np
import pytest

from ttsvar.eval.geneval import (
    Detection,
    FilterOptions,
    MetadataError,
    box_iou,
    check_metadata,
    filter_detections,
    format_summary,
    geneval_argsort,
    iter_sample_folder,
    load_metadata,
    read_results,
    relative_position,
    result_record,
    save_metadata,
    summarize,
    validate_metadata,
    write_results,
    write_sample_folder,
)
from ttsvar.testbed import world

# five lines of GenEval's prompts/evaluation_metadata.jsonl (MIT), one per tag shape of the format
GENEVAL_LINES = [
    '{"tag": "single_object", "include": [{"class": "carrot", "count": 1}], "prompt": "a photo of a carrot"}',
    '{"tag": "counting", "include": [{"class": "sports ball", "count": 3}], '
    '"exclude": [{"class": "sports ball", "count": 4}], "prompt": "a photo of three sports balls"}',
    '{"tag": "colors", "include": [{"class": "boat", "count": 1, "color": "yellow"}], '
    '"prompt": "a photo of a yellow boat"}',
    '{"tag": "position", "include": [{"class": "hair drier", "count": 1}, {"class": "fork", "count": 1, '
    '"position": ["above", 0]}], "prompt": "a photo of a fork above a hair drier"}',
    '{"tag": "color_attr", "include": [{"class": "oven", "count": 1, "color": "pink"}, '
    '{"class": "motorcycle", "count": 1, "color": "green"}], '
    '"prompt": "a photo of a pink oven and a green motorcycle"}',
]


def det(cls, box, score=0.9, color=None):
    return Detection(cls, tuple(float(v) for v in box), score, color)


# ------------------------------------------------------------ metadata


def test_geneval_lines_load_and_round_trip_byte_for_byte(tmp_path):
    src = tmp_path / "evaluation_metadata.jsonl"
    src.write_text("\n".join(GENEVAL_LINES) + "\n")
    md = load_metadata(src)
    assert [m["tag"] for m in md] == ["single_object", "counting", "colors", "position", "color_attr"]
    out = tmp_path / "again.jsonl"
    save_metadata(out, md)
    assert out.read_text() == src.read_text()  # json.dumps writes exactly GenEval's layout


def test_world_prompts_have_genevals_structure():
    """Our metadata for each tag has the same keys, key order and value types as GenEval's."""
    ref = {json.loads(line)["tag"]: json.loads(line) for line in GENEVAL_LINES}
    ref["two_object"] = {"tag": "two_object", "include": [{"class": "a", "count": 1}] * 2, "prompt": "p"}

    def skeleton(x):
        if isinstance(x, dict):
            return [(k, skeleton(v)) for k, v in x.items()]
        if isinstance(x, list):
            return [skeleton(v) for v in x]
        return type(x).__name__

    for m in world.prompts_of("all"):
        assert skeleton(m) == skeleton(ref[m["tag"]]), m


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"tag": "colors", "prompt": "p"}', "line 2: field 'include' must be a non-empty list"),
        (
            '{"tag": "colors", "prompt": "p", "include": [{"class": "boat", "count": 0}]}',
            "'include[0].count'",
        ),
        (
            '{"tag": "colors", "prompt": "p", "include": [{"class": "boat", "count": 1, "color": "teal"}]}',
            "color",
        ),
        (
            '{"tag": "x", "prompt": "p", "include": [{"class": "a", "count": 1, "position": ["above", 0]}]}',
            "position",
        ),
        (
            '{"tag": "x", "prompt": "p", "include": [{"class": "a", "count": 1, "size": 3}]}',
            "unknown keys ['size']",
        ),
        ('{"tag": "x", "prompt": "", "include": [{"class": "a", "count": 1}]}', "field 'prompt'"),
        (
            '{"tag": "x", "prompt": "p", "include": [{"class": "a", "count": 1}], "exclude": {}}',
            "field 'exclude'",
        ),
        (
            '{"tag": "x", "prompt": "p", "include": [{"class": "a", "count": 1}], "exclude": [{"count": 2}]}',
            "class",
        ),
        ("{not json", "line 2: not valid JSON"),
    ],
)
def test_malformed_metadata_names_line_and_field(tmp_path, line, message):
    f = tmp_path / "m.jsonl"
    f.write_text(GENEVAL_LINES[0] + "\n" + line + "\n")
    with pytest.raises(MetadataError, match=message.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")):
        load_metadata(f)


def test_vocabulary_restriction():
    md = json.loads(GENEVAL_LINES[0])
    validate_metadata(md)
    with pytest.raises(MetadataError, match="'carrot'; this evaluator knows"):
        validate_metadata(md, classes=world.SHAPES)


# ------------------------------------------------------------ rules


def test_relative_position_matches_hand_computed_values():
    a = (0, 0, 4, 4)
    # centre offset (-10, 0); shrunk by 0.1*(4+4) = 0.8 -> dx = -9.2/10 = -0.92
    assert relative_position(a, (10, 0, 14, 4)) == {"left of"}
    assert relative_position((10, 0, 14, 4), a) == {"right of"}
    # diagonal: (-9.2, -9.2)/14.14 = -0.65 on both axes: GenEval reports both relations
    assert relative_position(a, (10, 10, 14, 14)) == {"left of", "above"}
    assert relative_position((0, 20, 4, 24), (0, 0, 4, 4)) == {"below"}
    # offset (-1, 0) is inside the 0.8-pixel size margin on x and zero on y: no relation at all
    assert relative_position((0, 0, 4, 4), (1, 0, 5, 4)) == set()
    # offset (-3, -2.5): shrunk (-2.2, -1.7)/3.905 = (-0.563, -0.435): left only
    assert relative_position((0, 0, 4, 4), (3, 2.5, 7, 6.5)) == {"left of"}
    # a larger threshold widens the margin: (-3+1.6)/3.905 = -0.36: nothing
    assert relative_position((0, 0, 4, 4), (3, 2.5, 7, 6.5), threshold=0.2) == set()


def test_relative_position_is_computed_in_float32_as_genevals_is():
    """GenEval's boxes are mmdet's float32 arrays, so its arithmetic is float32. Here A sits right at the
    "right of" cut-off: float32 gives dx <= 0.5 (only "below"), float64 gives dx > 0.5."""
    a, b = (20.0, 29.933258056640625, 30.0, 39.933258056640625), (0.0, 0.0, 10.0, 10.0)  # exact in float32
    assert relative_position(a, b) == {"below"}

    def dx(dtype):
        boxes = np.array([a, b], dtype=dtype).reshape(2, 2, 2)
        center_a, center_b = boxes.mean(axis=-2)
        dim_a, dim_b = np.abs(np.diff(boxes, axis=-2))[..., 0, :]
        offset = center_a - center_b
        revised = np.maximum(np.abs(offset) - 0.1 * (dim_a + dim_b), 0) * np.sign(offset)
        return (revised / np.linalg.norm(offset))[0]

    assert dx(np.float32) <= 0.5 < dx(np.float64)  # the case is on the boundary: float64 would flip it
    assert abs(float(dx(np.float64)) - 0.5) < 1e-6


def test_box_iou_is_genevals_inclusive_pixel_iou():
    assert box_iou((0, 0, 9, 9), (0, 0, 9, 9)) == 1.0
    assert box_iou((0, 0, 9, 9), (5, 0, 14, 9)) == pytest.approx(50 / 150)  # 5x10 of 10x10 + 10x10 - 5x10
    assert box_iou((0, 0, 9, 9), (20, 20, 29, 29)) == 0.0


def test_filter_keeps_scores_above_the_threshold_and_09_for_counting():
    dets = [det("dog", (0, 0, 9, 9), 0.3), det("dog", (20, 0, 29, 9), 0.31), det("dog", (40, 0, 49, 9), 0.9),
            det("dog", (60, 0, 69, 9), 0.95)]
    plain = {"tag": "single_object", "prompt": "p", "include": [{"class": "dog", "count": 1}]}
    counting = {**plain, "tag": "counting"}
    assert [d.score for d in filter_detections(dets, plain)] == [0.95, 0.9, 0.31]  # strictly above 0.3, best first
    assert [d.score for d in filter_detections(dets, counting)] == [0.95]  # strictly above 0.9
    assert [d.score for d in filter_detections(dets, plain, FilterOptions(threshold=0.5))] == [0.95, 0.9]


def test_filter_keeps_at_most_16_per_class_before_nms():
    dets = [det("cat", (i * 20, 0, i * 20 + 9, 9), 0.5 + i / 100) for i in range(20)] + \
        [det("dog", (0, 50, 9, 59), 0.4)]
    md = {"tag": "two_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    out = filter_detections(dets, md)
    cats = [d for d in out if d.cls == "cat"]
    assert len(cats) == 16 and [d.score for d in cats] == sorted((0.5 + i / 100 for i in range(4, 20)), reverse=True)
    assert [d.cls for d in out].count("dog") == 1
    # exclude counts what survives the filter: 17 cats in the image, but "fewer than 17 cats" holds
    md17 = {**md, "exclude": [{"class": "cat", "count": 17}]}
    assert check_metadata(out, md17)[0] and not check_metadata(dets, md17)[0]


def test_filter_nms_is_off_by_default_and_greedy_within_a_class():
    dets = [det("cat", (0, 0, 9, 9), 0.9), det("cat", (1, 0, 10, 9), 0.8), det("cat", (30, 0, 39, 9), 0.7),
            det("dog", (0, 0, 9, 9), 0.6)]
    md = {"tag": "single_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    assert len(filter_detections(dets, md)) == 4
    kept = filter_detections(dets, md, FilterOptions(max_overlap=0.5))  # IoU 90/110 with the best cat
    assert [(d.cls, d.score) for d in kept] == [("cat", 0.9), ("cat", 0.7), ("dog", 0.6)]


def test_filter_ranks_ties_as_genevals_reversed_argsort():
    dets = [det("cat", (i * 20, 0, i * 20 + 9, 9), 0.5) for i in range(3)]
    md = {"tag": "single_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    expected = np.argsort(np.full(3, 0.5, np.float32))[::-1].tolist()
    assert [dets.index(d) for d in filter_detections(dets, md)] == expected


def test_ties_are_ranked_as_numpy_123_sorts_them_whatever_numpy_is_installed():
    """GenEval pins numpy 1.23, whose argsort is an introsort: insertion sort (stable) up to 16 elements, median-of-3
    partitions beyond. numpy 2 on x86 uses SIMD sorts that order ties differently, which changed which of 20 tied
    boxes GenEval's filter keeps (found by the parity check against evaluate_images.py)."""
    assert geneval_argsort([0.5, 0.5, 0.5, 0.2, 0.5]) == [3, 0, 1, 2, 4]
    # np.argsort(np.array([0.9] * 20 + [0.3] * 5, np.float32)) under numpy 1.23.5, recorded once
    numpy123 = [24, 22, 21, 20, 23, 19, 18, 17, 16, 15, 14, 13, 0, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 11, 12]
    assert geneval_argsort([0.9] * 20 + [0.3] * 5) == numpy123
    dets = [det("cat", (i * 20, 0, i * 20 + 9, 9), 0.9 if i < 20 else 0.3) for i in range(25)]
    md = {"tag": "colors", "prompt": "p", "include": [{"class": "cat", "count": 2, "color": "red"}]}
    kept = filter_detections(dets, md)
    assert [dets.index(d) for d in kept][:3] == [12, 11, 1] and len(kept) == 16
    # without ties it is a plain argsort, at every size (insertion sort, partitions, NaN last)
    for n in (0, 1, 2, 16, 17, 18, 100, 300):
        x = np.random.default_rng(n).permutation(n).astype(np.float32) / 7
        assert geneval_argsort(x) == np.argsort(x).tolist()
    assert geneval_argsort([0.5, float("nan"), 0.1]) == [2, 0, 1]


def test_box_iou_and_nms_round_as_genevals_numpy_123():
    """Inclusive sides 17 and 14 wide, 10 high: IoU 140 / 200 = 0.7 exactly. GenEval (numpy 1.x promotes
    float32 + 1 to float64) drops the second box at max_overlap=0.7; a float32 ratio (0.69999999) kept it."""
    a, b = (0, 0, 16, 9), (3, 0, 19, 9)
    assert box_iou(a, b) == 0.7
    dets = [det("cat", a, 0.9), det("cat", b, 0.8)]
    md = {"tag": "single_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    assert [d.score for d in filter_detections(dets, md, FilterOptions(max_overlap=0.7))] == [0.9]
    assert len(filter_detections(dets, md, FilterOptions(max_overlap=0.70001))) == 2


def test_include_counts_are_at_least_and_exclude_makes_counting_exact():
    md = {
        "tag": "counting",
        "prompt": "p",
        "include": [{"class": "cat", "count": 2}],
        "exclude": [{"class": "cat", "count": 3}],
    }
    cats = [det("cat", (i * 10, 0, i * 10 + 5, 5)) for i in range(4)]
    assert check_metadata(cats[:1], md) == (False, "expected cat>=2, found 1")
    assert check_metadata(cats[:2], md) == (True, "")
    assert check_metadata(cats[:3], md) == (False, "expected cat<3, found 3")
    two = {"tag": "single_object", "prompt": "p", "include": [{"class": "cat", "count": 1}]}
    assert check_metadata(cats[:3] + [det("dog", (0, 20, 5, 25))], two) == (True, "")  # extras are fine


def test_colour_is_checked_on_the_most_confident_detections_only():
    md = {"tag": "colors", "prompt": "p", "include": [{"class": "cat", "count": 1, "color": "blue"}]}
    red_hi = det("cat", (0, 0, 5, 5), 0.9, "red")
    blue_lo = det("cat", (10, 0, 15, 5), 0.5, "blue")
    assert check_metadata([blue_lo, red_hi], md) == (False, "expected blue cat>=1, found 0 blue; and 1 red")
    assert check_metadata([red_hi.__class__("cat", red_hi.box, 0.4, "red"), blue_lo], md) == (True, "")
    with pytest.raises(ValueError, match="Detection.color unset"):
        check_metadata([det("cat", (0, 0, 5, 5))], md)


def test_position_rule_and_its_reasons():
    md = {
        "tag": "position",
        "prompt": "a photo of a dog left of a cat",
        "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1, "position": ["left of", 0]}],
    }
    cat, dog_left, dog_above = (
        det("cat", (20, 10, 28, 18)),
        det("dog", (0, 10, 8, 18)),
        det("dog", (20, 0, 28, 5)),
    )
    assert check_metadata([cat, dog_left], md) == (True, "")
    assert check_metadata([cat, dog_above], md) == (False, "expected dog left of target, found above target")
    assert check_metadata([dog_left], md) == (
        False,
        "expected cat>=1, found 0\nno target for dog to be left of",
    )


# ------------------------------------------------------------ results


def _records():
    rows = [  # tag, prompt id, correct
        ("single_object", 0, True),
        ("single_object", 0, False),
        ("single_object", 1, False),
        ("single_object", 1, False),
        ("counting", 2, True),
        ("counting", 2, True),
        ("counting", 3, True),
        ("counting", 3, True),
        ("position", 4, False),
        ("position", 4, True),
    ]
    out = []
    for tag, pid, ok in rows:
        md = {"tag": tag, "prompt": f"prompt {pid}", "include": [{"class": "cat", "count": 1}]}
        out.append(result_record(f"{pid}.png", md, ok, "" if ok else "expected cat>=1, found 0"))
    return out


def test_summary_matches_summary_scores_semantics():
    s = summarize(_records())
    assert s["n_images"] == 10 and s["n_prompts"] == 5
    assert s["image_accuracy"] == pytest.approx(6 / 10)
    assert s["prompt_accuracy"] == pytest.approx(4 / 5)  # a prompt counts if any of its images is correct
    assert list(s["per_tag"]) == ["single_object", "counting", "position"]  # order of appearance
    assert s["per_tag"]["single_object"] == {"correct": 1, "total": 4, "accuracy": 0.25}
    # overall is the mean over tags (0.25 + 1 + 0.5) / 3, not the image mean 0.6
    assert s["overall"] == pytest.approx(1.75 / 3)
    text = format_summary(s)
    assert "single_object    = 25.00% (1 / 4)" in text and "Overall score (avg. over tasks): 0.58333" in text
    with pytest.raises(ValueError, match="no results"):
        summarize([])


def test_results_round_trip(tmp_path):
    recs = _records()
    recs[0] = result_record("a.png", json.loads(GENEVAL_LINES[0]), True, "", [det("carrot", (1, 2, 3, 4), 0.5)])
    write_results(tmp_path / "results.jsonl", recs)
    back = read_results(tmp_path / "results.jsonl")
    assert back == recs
    assert set(back[0]) == {"filename", "tag", "prompt", "correct", "reason", "metadata", "details"}
    assert json.loads(back[0]["metadata"]) == json.loads(GENEVAL_LINES[0])  # a JSON string, as in GenEval
    assert json.loads(back[0]["details"]) == {"carrot": [[1.0, 2.0, 3.0, 4.0, 0.5]]}
    (tmp_path / "bad.jsonl").write_text('{"tag": "x", "correct": true}\n')
    with pytest.raises(ValueError, match="line 1: result is missing field 'metadata'"):
        read_results(tmp_path / "bad.jsonl")


def test_sample_folder_layout_round_trip(tmp_path):
    md = world.prompts_of("all")[:2]
    imgs = world.render_batch(world.make_scenes(3, 0)[0])
    write_sample_folder(tmp_path, 0, md[0], imgs[:2])
    write_sample_folder(tmp_path, 1, md[1], imgs[2:])
    assert (tmp_path / "00000" / "samples" / "00001.png").is_file()
    items = list(iter_sample_folder(tmp_path))
    assert [(p.parent.parent.name, p.name, m) for p, m in items] == [
        ("00000", "00000.png", md[0]),
        ("00000", "00001.png", md[0]),
        ("00001", "00000.png", md[1]),
    ]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(items[2][0])), imgs[2])
    with pytest.raises(ValueError, match="uint8"):
        write_sample_folder(tmp_path, 2, md[0], [imgs[0].astype(np.float32)])
