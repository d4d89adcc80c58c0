"""`bench/bench_reward_ensemble.py`: the numbers behind the choice of an ensemble reward are the trainer's own
metrics of each member, and an ensemble's paired difference is measured against its members."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ttsvar.testbed import world
from ttsvar.testbed.reward import ShapesRewardConfig, ShapesRewardModel, save_shapes_reward
from ttsvar.testbed.reward_metrics import ranking_metrics
from ttsvar.testbed.train_reward import dev_mask, score_grid

_spec = importlib.util.spec_from_file_location("bench_reward_ensemble",
                                               Path(__file__).parents[1] / "bench" / "bench_reward_ensemble.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def _cache(path: Path, k: int = 4) -> dict:
    """A `--data` cache shaped like train_reward's: k random images per training prompt, and k fresh ones."""
    rng = np.random.default_rng(0)
    train = world.prompts_of("train")
    texts = [m["prompt"] for m in train]
    P = len(texts)
    data = {"images": rng.integers(0, 256, (P * k, 32, 32, 3), dtype=np.uint8),
            "prompt_idx": np.repeat(np.arange(P), k), "prompts": np.asarray(texts),
            "correct": rng.integers(0, 2, (P * k, P), dtype=np.int8),
            "val_images": rng.integers(0, 256, (P, k, 32, 32, 3), dtype=np.uint8),
            "val_correct": rng.integers(0, 2, (P, k), dtype=np.int8), "val_prompts": np.asarray(texts),
            "val_tags": np.asarray([m["tag"] for m in train]), "settings": np.asarray("{}")}
    np.savez(path, **data)
    return data


def _member(path: Path, seed: int, trained: tuple[str, ...]) -> ShapesRewardModel:
    torch.manual_seed(seed)
    cfg = ShapesRewardConfig(vocab=tuple(world.VOCAB), context_length=world.MAX_PROMPT_WORDS, width=16, det_width=8,
                             fusion_layers=1, trained_prompts=trained, views=1)
    model = ShapesRewardModel(cfg).eval()
    save_shapes_reward(model, path, {"score_scale": 2.0, "score_scales": {"1": 2.0}})
    return model


def test_members_match_direct_metrics_and_the_ensemble_is_paired_against_them(tmp_path, monkeypatch, capsys):
    data = _cache(tmp_path / "c.npz")
    dev = dev_mask(list(data["prompts"].astype(str)))
    trained = tuple(p for p, d in zip(data["prompts"].astype(str), dev) if not d)  # trained with dev=true
    models = [_member(tmp_path / f"m{i}.safetensors", i, trained) for i in range(2)]
    out = tmp_path / "r.json"
    monkeypatch.setattr(sys, "argv", ["bench", "--data", str(tmp_path / "c.npz"), "--k", "4", "--json", str(out),
                                      "--weights", str(tmp_path / "m0.safetensors"), str(tmp_path / "m1.safetensors")])
    assert bench.main() == 0
    res = json.loads(out.read_text())["results"]
    assert {(tuple(r["members"]), r["set"]) for r in res} == {(m, s) for m in (("m0",), ("m1",), ("m0", "m1"))
                                                             for s in ("dev", "validation")}
    val = [r for r in res if r["set"] == "validation"]
    for i, m in enumerate(models):  # a member's row is the metric of its own scores (fp16-saved weights)
        m.load_state_dict({k: v.half().float() for k, v in m.state_dict().items()})
        s = score_grid(m, data["val_images"], list(data["val_prompts"].astype(str)))
        want = ranking_metrics(s, data["val_correct"], list(data["val_tags"].astype(str)), k=4)
        assert abs(val[i]["prompt_auroc"] - want["prompt_auroc"]) < 1e-9
        assert abs(val[i]["best_of_k"] - want["best_of_4"]) < 1e-9
    # the members' paired differences against their own mean cancel; a pair is scored as one reward
    assert abs(val[0]["vs_members_mean"] + val[1]["vs_members_mean"]) < 1e-9
    assert "| m0 + m1 | dev |" in capsys.readouterr().out


def test_dev_rows_are_skipped_when_a_member_trained_on_the_dev_prompts(tmp_path, monkeypatch, capsys):
    data = _cache(tmp_path / "c.npz")
    everything = tuple(data["prompts"].astype(str))
    for i in range(2):
        _member(tmp_path / f"m{i}.safetensors", i, everything)
    monkeypatch.setattr(sys, "argv", ["bench", "--data", str(tmp_path / "c.npz"), "--k", "4", "--weights",
                                      str(tmp_path / "m0.safetensors"), str(tmp_path / "m1.safetensors")])
    assert bench.main() == 0
    out = capsys.readouterr().out
    assert "dev: skipped" in out and "| dev |" not in out
