"""Class-conditional jobs (issue 12): class prompts (indices, ImageNet names, `{"class": ...}` lines), the class
rewards (`classifier`, `clip-score` with `class_template`), VAR's per-model defaults (reward, TTS-VAR schedule
mapped by resolution) and a whole job on `var-tiny-random`. See docs/var.md."""

from __future__ import annotations

import json
from pathlib import Path

import helpers_components  # registers the test-pixels features; its redness scores
import pytest
import torch

from rewards import RewardInputError, create_reward
from rewards.classifier import IMAGENET_MEAN, timm_preprocess
from rewards.testing import reward_files
from search.schedule import map_paper_by_side
from ttsvar.config import load_config
from ttsvar.core.checkpoint import CheckpointError
from ttsvar.core.classes import ClassList, imagenet_classes, parse_class_prompt
from ttsvar.core.errors import ConfigError, PromptError
from ttsvar.jobs import job_fingerprint, run_job, search_plan
from ttsvar.models.registry import create_generator, model_defaults
from ttsvar.prompts import read_prompts, resolve_prompts

# ----------------------------------------------------------------------------- classes and prompts


def test_imagenet_classes_in_index_order():
    c = imagenet_classes()
    assert len(c) == 1000
    assert (c.name(0), c.name(1), c.name(207), c.name(281), c.name(999)) == \
        ("tench", "goldfish", "golden retriever", "tabby", "toilet tissue")
    assert c.resolve("Tinca tinca") == 0 and c.resolve("GOLDFISH") == 1 and c.resolve(" 207 ") == 207
    assert c.resolve("golden  retriever") == 207 and c.resolve(3) == 3
    with pytest.raises(ValueError, match=r"'crane' names 2 classes: 134 \(crane\), 517 \(crane\); give the index"):
        c.resolve("crane")
    with pytest.raises(ValueError, match="out of range: the model has 1000 classes"):
        c.resolve(1000)
    with pytest.raises(ValueError, match="not a class name"):
        c.resolve("a photo of a cat")
    assert parse_class_prompt("7") == 7 and parse_class_prompt("7", 5) is None and parse_class_prompt("cat") is None


def test_prompt_files_with_classes(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"class": 3}\n{"class": "Goldfish", "tag": "x"}\n{"prompt": "tench"}\n{"prompt": "2"}\n')
    items = resolve_prompts(read_prompts(p), p, "var-tiny-random", imagenet_classes().first(10))
    assert [(it.prompt, it.class_index, it.class_name) for it in items] == \
        [("3", 3, "tiger shark"), ("1", 1, "goldfish"), ("0", 0, "tench"), ("2", 2, "great white shark")]
    assert items[1].metadata["tag"] == "x"
    # a text model reads prompts only; .txt lines stay text
    t = tmp_path / "t.txt"
    t.write_text("3\na red circle\n")
    assert [it.prompt for it in resolve_prompts(read_prompts(t), t, "shapes-tiny", None)] == ["3", "a red circle"]
    with pytest.raises(PromptError, match=r"2 bad prompt lines(.|\n)*t.txt:2: 'a red circle' is text"):
        resolve_prompts(read_prompts(t), t, "m", ClassList((("a",), ("b",))))


def test_every_bad_class_line_is_reported_at_once(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text('{"class": 3}\n{"class": 999}\n{"class": "banana"}\n{"class": true}\n{"class": 3.7}\n')
    job = load_config(None, ["model.name=var-tiny-random", f"prompts={p}", f"output.dir={tmp_path / 'o'}"])
    with pytest.raises(PromptError) as info:
        run_job(job)
    msg = str(info.value)
    assert msg.startswith("4 bad prompt lines")
    lines = [x.strip().split(":")[1] for x in msg.splitlines()[1:]]
    assert lines == ["2", "3", "4", "5"], msg  # the type errors and the range/name errors together, in line order


def test_class_models_expose_their_classes():
    g = create_generator("var-tiny-random")
    assert g.conditioning == "class" and len(g.classes) == 10 and g.classes.name(1) == "goldfish"
    assert model_defaults("var-tiny-random").classes() == g.classes
    assert len(model_defaults("var-d16").classes()) == 1000
    assert model_defaults("shapes-tiny").classes is None
    with pytest.raises(PromptError, match="not a class index"):
        g.check_prompt("goldfish")  # names are resolved by the job, the generator reads indices


# ----------------------------------------------------------------------------- rewards


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    return reward_files("classifier", tmp_path_factory.mktemp("clf"))


def test_classifier_is_the_log_probability_of_the_class(classifier_files):
    import timm
    from safetensors.torch import load_file

    r = create_reward("classifier", **classifier_files)
    assert r.conditioning == "class" and r.input_size == 32
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10).eval()
    net.load_state_dict(load_file(classifier_files["weights"]))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    pre = timm_preprocess(net, {"input_size": 32, "crop_pct": 1.0})
    mean, std = torch.tensor(pre["mean"]).view(1, 3, 1, 1), torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = net((x - mean) / std).log_softmax(-1)[torch.arange(3), torch.tensor([4, 0, 9])]
    torch.testing.assert_close(r.score(x, ["4", "0", "9"]), ref, rtol=1e-5, atol=1e-5)
    assert (r.score(x, ["4", "0", "9"]) <= 0).all()
    with pytest.raises(RewardInputError, match=r"prompt 1 \('a cat'\) is not a class index in \[0, 10\)"):
        r.score(x[:2], ["1", "a cat"])
    with pytest.raises(RewardInputError, match="not a class index"):
        r.score(x[:1], ["10"])


def test_classifier_preprocessing_and_errors(classifier_files, tmp_path):
    import timm

    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=10)
    assert timm_preprocess(vit) == {"input_size": 224, "crop_pct": 0.9, "interpolation": "bicubic",
                                    "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    assert timm_preprocess(torch.nn.Linear(1, 1))["mean"] == IMAGENET_MEAN  # no timm config: ImageNet's
    with pytest.raises(ValueError, match="preprocess_cfg: unknown keys"):
        timm_preprocess(vit, {"size": 3})
    with pytest.raises(ConfigError, match=r"needs reward.options.weights.*'vit_base_patch16_224'"):
        create_reward("classifier")
    opts = {k: v for k, v in classifier_files.items() if k != "num_classes"}
    with pytest.raises(CheckpointError, match="(?s)wrong shapes.*check reward.options.model and num_classes"):
        create_reward("classifier", **opts)  # 1000 classes vs a 10-class file
    with pytest.raises(ConfigError, match="reward.options.model='no_such_net'"):
        create_reward("classifier", **{**classifier_files, "model": "no_such_net"})


def test_clip_score_class_template(tmp_path):
    opts = reward_files("clip-score", tmp_path)
    text = create_reward("clip-score", **opts)
    cls = create_reward("clip-score", **opts, class_template="a photo of a {}")
    assert text.conditioning == "text" and cls.conditioning == "class"
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(cls.score(x, ["1", "207"]),
                               text.score(x, ["a photo of a goldfish", "a photo of a golden retriever"]))
    own = create_reward("clip-score", **opts, class_template="{}", class_names=["cat", "dog"])
    torch.testing.assert_close(own.score(x, ["1", "0"]), text.score(x, ["dog", "cat"]))
    with pytest.raises(RewardInputError, match="with class_template: prompt 0 .* is not a class index in"):
        own.score(x[:1], ["2"])
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        create_reward("clip-score", **opts, class_template="a photo")


# ----------------------------------------------------------------------------- defaults and schedule


def test_var_defaults_and_tts_var_schedule(tmp_path):
    assert map_paper_by_side([1, 2, 3, 4, 5, 6, 8, 10, 13, 16]) == {
        "batch_schedule": (8, 6, 4, 2, 2, 2, 1, 1, 1, 1), "cluster_scales": (1, 2), "resample_scales": (3, 6)}
    assert map_paper_by_side([1, 2, 3, 4, 6, 9, 13, 18, 24, 32]) == {
        "batch_schedule": (8, 6, 6, 6, 4, 2, 2, 1, 1, 1), "cluster_scales": (1, 4), "resample_scales": (5, 7)}
    assert map_paper_by_side([1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64])["cluster_scales"] == (2, 5)
    d16 = model_defaults("var-d16")
    assert (d16.reward, d16.features) == ("classifier", "dinov2")
    assert d16.search["tts-var"]["resample_scales"] == (3, 6)
    assert model_defaults("var-d36").search["tts-var"]["cluster_scales"] == (1, 4)
    job = load_config(None, ["model.name=var-d16", "search.strategy=tts-var", "search.n=1", f"prompts={tmp_path}"])
    _, plan = search_plan(job, 10)
    assert plan.batch_sizes == (8, 8, 6, 4, 2, 2, 2, 1, 1, 1)
    assert sorted(plan.feature_scales) == [1, 2] and plan.decision_scales == (1, 2, 3, 6)
    job = load_config(None, ["model.name=var-d16", "search.strategy=tts-var", "search.options.resample_scales=[5]"])
    assert search_plan(job, 10)[1].decision_scales == (1, 2, 5)  # the job's options win
    fp = job_fingerprint(job)  # a resume sees the defaults that were used
    assert (fp["search.cluster_scales"], fp["search.resample_scales"]) == ((1, 2), [5])
    assert job_fingerprint(load_config(None, ["model.name=infinity-2b"]))["search.cluster_scales"] is None


def test_shapes_tiny_tts_var_defaults_are_the_testbed_schedule(tmp_path):
    """shapes-tiny's TTS-VAR defaults (chosen on training prompts, docs/search.md): 2n rows to the end, lam 1;
    the job's own options still win, and the paper's schedule is one override away."""
    job = load_config(None, ["model.name=shapes-tiny", "search.n=2", f"prompts={tmp_path}"])
    strategy, plan = search_plan(job, 6)
    assert plan.batch_sizes == (8, 8, 6, 6, 4, 4) and plan.decision_scales == (1, 3, 4)
    assert strategy.lam == 1.0
    fp = job_fingerprint(job)
    assert (fp["search.cluster_scales"], fp["search.resample_scales"], fp["search.lam"]) == ((1,), (3, 4), 1.0)
    paper = load_config(None, ["model.name=shapes-tiny", "search.n=2", "search.options.batch_schedule=[8,6,4,2,1,1]",
                               "search.options.cluster_scales=[1,2]", "search.options.lam=10"])
    strategy, plan = search_plan(paper, 6)
    assert plan.batch_sizes == (16, 16, 12, 8, 4, 2) and strategy.lam == 10.0
    ablation = load_config(None, ["model.name=shapes-tiny", "search.strategy=cluster-only", "search.n=2"])
    _, plan = search_plan(ablation, 6)
    assert plan.batch_sizes == (8, 8, 6, 6, 6, 6)


def test_value_and_the_ablations_take_each_models_own_tts_var_schedule():
    from ttsvar.models.registry import list_generators

    checked = 0
    for name in list_generators():
        d = model_defaults(name).search
        if "tts-var" not in d:
            continue
        own = d["tts-var"]
        for strategy, keys in (("cluster-only", ("batch_schedule", "cluster_scales")),
                               ("resample-only", ("batch_schedule", "resample_scales")),
                               ("value", ("batch_schedule", "cluster_scales", "resample_scales"))):
            assert {k: d[strategy][k] for k in keys} == {k: own[k] for k in keys}, (name, strategy)
        assert "lam" not in d["value"]  # value's lam weighs V_k, not the reward
        checked += 1
    assert checked >= 3  # shapes-tiny, var-tiny-random and the released VAR depths


# ----------------------------------------------------------------------------- a whole job


def test_class_conditional_job_end_to_end(tmp_path, classifier_files):
    jl = tmp_path / "classes.jsonl"
    jl.write_text('{"class": 1}\n{"class": "tench"}\n{"class": 1}\n')
    txt = tmp_path / "classes.txt"
    txt.write_text("goldfish\n7\nTinca tinca\n")
    reward = ["reward.name=classifier", f"reward.options.weights={classifier_files['weights']}",
              "reward.options.model=test_resnet", "reward.options.num_classes=10",
              "reward.options.preprocess_cfg.input_size=32", "reward.options.preprocess_cfg.crop_pct=1.0"]
    for prompts, want in ((jl, [(1, "goldfish"), (0, "tench"), (1, "goldfish")]),
                          (txt, [(1, "goldfish"), (7, "cock"), (0, "tench")])):
        out = tmp_path / prompts.suffix[1:]
        job = load_config(None, ["model.name=var-tiny-random", f"prompts={prompts}", "search.strategy=tts-var",
                                 "search.n=2", "search.features=test-pixels", "runtime.quiet=true",
                                 f"output.dir={out}", *reward])
        s = run_job(job)
        assert s["prompts_ok"] == 3 and s["prompts_failed"] == 0, (out / "manifest.jsonl").read_text()[-1500:]
        recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        assert [(r["class"], r["class_name"]) for r in recs] == want
        assert [r["prompt"] for r in recs] == [str(k) for k, _ in want]
        assert all(r["reward"] <= 0 and Path(out / r["image"]).is_file() for r in recs)
    # resume: nothing to redo (the resolved class is the prompt recorded)
    assert run_job(job)["skipped_done"] == 3


def test_cli_text_prompt_for_a_class_model_is_one_line_exit_2(tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    p = tmp_path / "p.txt"
    p.write_text("goldfish\na photo of a cat\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "tests")]), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "ttsvar.cli", "run", "model.name=var-tiny-random", f"prompts={p}",
                        f"output.dir={tmp_path / 'out'}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=240)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    errors = [x for x in r.stderr.splitlines() if x.startswith("ttsvar: error: ")]
    assert len(errors) == 1 and "p.txt:2: 'a photo of a cat' is text but var-tiny-random is class-conditional" \
        in errors[0], r.stderr


SEEN_TEXTS: list[str] = []


def text_member(images, prompts):
    """An ensemble member that reads text: records what it is given (a reward plugin, by this module's path)."""

    SEEN_TEXTS.extend(prompts)
    return helpers_components.redness(images, prompts)


def test_an_ensemble_gives_class_members_the_index_and_text_members_the_name(tmp_path, classifier_files):
    SEEN_TEXTS.clear()
    p = tmp_path / "c.jsonl"
    p.write_text('{"class": 1}\n{"class": "tench"}\n')
    clf = {"name": "classifier", "weight": 1.0, "options": dict(classifier_files)}
    job = load_config({"reward": {"name": "ensemble", "options": {"members": [
        clf, {"name": f"{__name__}:text_member", "weight": 0.5}]}}},
        ["model.name=var-tiny-random", f"prompts={p}", "search.strategy=random", "search.n=1",
         "search.features=test-pixels", "runtime.quiet=true", f"output.dir={tmp_path / 'o'}"])
    s = run_job(job)  # the classifier member used to be handed class names, and every prompt was blamed
    assert (s["prompts_ok"], s["prompts_failed"]) == (2, 0)
    assert set(SEEN_TEXTS) == {"goldfish", "tench"}
