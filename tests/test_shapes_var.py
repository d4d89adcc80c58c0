"""The embedded class-conditional `shapes-var-tiny` (issue 12): its training on a tiny budget, the shipped weights
(strict loading, the class list in the JSON), a class job judged by the exact evaluator, and the rule that a text
reward reads a class's name. The common generator tests run it too (tests/test_generator.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rewards import create_reward
from rewards.base import ClassTextReward
from ttsvar.config import load_config
from ttsvar.core.checkpoint import CheckpointError
from ttsvar.core.generator import Rows
from ttsvar.eval.evaluate import evaluate_output_dir
from ttsvar.jobs import build_reward_for, run_job
from ttsvar.models.registry import create_generator, model_defaults
from ttsvar.models.var.model import VAR
from ttsvar.testbed import world
from ttsvar.testbed.evaluator import ShapesEvaluator
from ttsvar.testbed.train_var import (
    VarTrainConfig,
    class_prompts,
    encode_indices,
    init_var,
    model_configs,
    reconstruction_score,
    train_var,
    train_vqvae,
)
from ttsvar.testbed.var_model import WEIGHTS, load_shapes_var_tiny, read_record

CLASSES = class_prompts()
RED_CIRCLE = next(k for k, m in enumerate(CLASSES) if m["prompt"] == "a photo of a red circle")
BLUE_SQUARE = next(k for k, m in enumerate(CLASSES) if m["prompt"] == "a photo of a blue square")


def test_tiny_training_budget_lowers_both_losses():
    tc = VarTrainConfig(vae_steps=24, vae_batch=8, restart_every=8, depth=1, embed_dim=64, num_heads=2,
                        gen_steps=30, gen_batch=16, gen_lr=3e-3, gen_warmup=5)
    vcfg, mcfg = model_configs(tc, len(CLASSES))
    images, prompts, _ = world.make_dataset(128, 0, holdout="include", tags=("colors",))
    vae, vm = train_vqvae(vcfg, images, tc, log=None)
    assert vm["recon_l1"][-1] < 0.8 * vm["recon_l1"][0]
    assert not vae.training
    labels = torch.tensor([[m["prompt"] for m in CLASSES].index(p) for p in prompts])
    model = VAR(mcfg)
    init_var(model, 0)
    m = train_var(model, vae, encode_indices(vae, images), labels, tc, log=None)
    assert m["loss"][-1] < m["loss"][0] - 0.1
    assert not model.training


def test_shipped_weights_load_strictly_with_their_class_list(tmp_path):
    record = read_record()
    assert record["classes"] == [m["prompt"] for m in CLASSES]
    assert record["class_metadata"] == CLASSES and "command" in record and record["seed"] == 0
    assert WEIGHTS.stat().st_size + WEIGHTS.with_suffix(".json").stat().st_size < 15e6
    gen = create_generator("shapes-var-tiny")
    assert gen.conditioning == "class" and len(gen.classes) == len(CLASSES)
    assert gen.classes.resolve("a photo of a red circle") == RED_CIRCLE
    assert len(model_defaults("shapes-var-tiny").classes()) == len(CLASSES)
    # a missing key is named, and so is the file
    sd = load_file(str(WEIGHTS))
    del sd["var.head.weight"]
    bad = tmp_path / "shapes_var_tiny.safetensors"
    save_file(sd, str(bad))
    bad.with_suffix(".json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"missing keys.*head\.weight") as e:
        load_shapes_var_tiny(bad)
    assert str(bad) in str(e.value)


def test_shipped_vae_reconstructions_pass_the_exact_evaluator():
    gen = load_shapes_var_tiny()
    assert reconstruction_score(gen.vae, n=96, seed=77) >= 0.85


def test_shipped_model_follows_its_class():
    """Red-circle samples are redder than blue-square samples (a cheap, exact check)."""
    gen = load_shapes_var_tiny()
    state = gen.start({0: str(RED_CIRCLE), 1: str(BLUE_SQUARE)}, Rows.for_prompts(6, [1, 2]))
    for _ in range(gen.num_scales):
        state = gen.step(state)
    img = gen.finish(state)
    assert img.shape == (12, 3, 32, 32)
    red = (img[:, 0] - img[:, 2]).mean((1, 2))
    assert red[:6].mean() > red[6:].mean() + 0.05


def test_class_job_with_the_default_reward_is_judged_by_the_evaluator(tmp_path):
    """`{"class": k}` lines, the model's default reward (shapes-reward, which reads the class's text) and
    `ttsvar evaluate`'s path: every prompt is judged by its class's metadata."""
    ks = [RED_CIRCLE, BLUE_SQUARE, 0]
    prompts = tmp_path / "classes.jsonl"
    prompts.write_text("".join(json.dumps({"class": k}) + "\n" for k in ks[:2]) +
                       json.dumps({"class": CLASSES[0]["prompt"]}) + "\n")
    job = load_config(None, ["model.name=shapes-var-tiny", f"prompts={prompts}", "search.strategy=best-of-n",
                             "search.n=2", f"output.dir={tmp_path / 'out'}", "runtime.quiet=true"])
    s = run_job(job)
    assert s["prompts_ok"] == 3
    recs = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["class"] for r in recs) == sorted(ks)
    assert all(r["class_name"] == CLASSES[r["class"]]["prompt"] for r in recs)
    summary = evaluate_output_dir(tmp_path / "out")["summary"]
    assert summary["skipped_without_metadata"] == []
    results = [json.loads(x) for x in (tmp_path / "out" / "geneval_results.jsonl").read_text().splitlines()]
    assert len(results) == 3
    ev = ShapesEvaluator()
    assert [ev.metadata_for(r) for r in sorted(recs, key=lambda r: r["index"])] == [CLASSES[k] for k in ks]


def test_text_rewards_read_the_class_name_and_class_rewards_the_index():
    job = load_config(None, ["model.name=shapes-var-tiny"])
    reward = build_reward_for(job)
    assert isinstance(reward, ClassTextReward) and reward.name == "shapes-reward"
    assert reward.texts([str(RED_CIRCLE), "a photo of a circle"]) == ["a photo of a red circle", "a photo of a circle"]
    img = torch.rand(2, 3, 32, 32)
    inner = create_reward("shapes-reward")
    np.testing.assert_allclose(reward.score(img, [str(RED_CIRCLE)] * 2).numpy(),
                               inner.score(img, ["a photo of a red circle"] * 2).numpy(), rtol=0, atol=1e-6)
    # a text model's reward is not wrapped
    assert not isinstance(build_reward_for(load_config(None, ["model.name=shapes-tiny"])), ClassTextReward)
