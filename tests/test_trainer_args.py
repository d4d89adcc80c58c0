"""The testbed trainers check their arguments before anything is built, and write weights with their JSON record
atomically (the audit of session 12: tracebacks, smoke-test weights over shipped files, torn pairs)."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
import torch

from ttsvar.cli import main as ttsvar_main
from ttsvar.output import write_weights
from ttsvar.testbed import clip, train, train_reward, train_var
from ttsvar.testbed.overrides import WEIGHTS_DIR

TRAINERS = {"train": train.main, "train_var": train_var.main, "train_reward": train_reward.main, "clip": clip.main}
FILE_OUT = {"train_reward": "r.safetensors", "clip": "c"}


def _out(tmp_path, name):
    return str(tmp_path / FILE_OUT.get(name, "w"))


@pytest.mark.parametrize("name", sorted(TRAINERS))
@pytest.mark.parametrize("args, match", [
    (["--threads", "-1"], "--threads -1: must be >= 1"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
])
def test_bad_arguments_are_one_line_errors_before_any_work(tmp_path, capsys, name, args, match):
    if name == "train_reward" and args[0] == "--seed":
        args = ["--set", "seed=-1"]  # its seed is a config field
        match = "seed=-1: must be >= 0"
    assert TRAINERS[name]([*args, "--out", _out(tmp_path, name)]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name, args, match", [
    ("train", ["--set", "gen_steps=0"], "gen_steps=0: must be > 0"),  # 0 steps saved untrained weights, exit 0
    ("train", ["--set", "gen_lr=nan"], "gen_lr=nan: must be a finite number"),
    ("train", ["--set", "cond_drop=1.5"], "cond_drop=1.5: is a probability"),
    ("train", ["--device", "gpu"], "--device 'gpu': use cpu or cuda"),
    ("train", ["--set", "num_heads=5"], "cannot be built with these settings: embed_dim=192 must be divisible"),
    ("train_var", ["--set", "vae_steps=0"], "vae_steps=0: must be > 0"),
    ("train_var", ["--set", "vae_norm_groups=5"], "cannot be built with these settings: num_channels"),
    ("train_var", ["--vae-from", "/nonexistent.safetensors"], "--vae-from /nonexistent.safetensors: no such file"),
    ("train_reward", ["--set", "steps=0"], "steps=0: must be > 0"),
    ("train_reward", ["--set", "data_seed=-2"], "data_seed=-2: must be >= 0 (or -1: unset)"),
    ("train_reward", ["--generator", "/nonexistent.safetensors"], "--generator /nonexistent.safetensors: no such"),
    ("clip", ["--steps", "0"], "need steps >= 1"),
])
def test_out_of_range_settings_are_refused(tmp_path, capsys, name, args, match):
    assert TRAINERS[name]([*args, "--out", _out(tmp_path, name)]) == 2
    assert match in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_without_cuda_is_refused(tmp_path, capsys):
    assert train.main(["--device", "cuda", "--out", str(tmp_path / "w")]) == 2
    assert "CUDA is not available here" in capsys.readouterr().err


def test_out_of_the_wrong_kind_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert train.main(["--out", str(tmp_path / "f")]) == 2
    assert "is a file; this trainer writes a folder" in capsys.readouterr().err
    assert train_reward.main(["--out", str(tmp_path)]) == 2
    assert "is a folder; give the weights file" in capsys.readouterr().err
    assert train_reward.main(["--out", str(tmp_path / "f" / "r.safetensors")]) == 2
    assert "is a file, so the output cannot be made there" in capsys.readouterr().err
    # `model.v2` wrote its record to `model.json`, which `model.v1`'s record also was
    assert train_reward.main(["--out", str(tmp_path / "model.v2")]) == 2
    assert "give a .safetensors file (its JSON record goes beside it, model.json)" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["train", "train_var", "train_reward"])
def test_quick_never_writes_into_the_shipped_weights_folder(capsys, name):
    # not only over the trainer's own default: any file there (train_reward over shapes_tiny was accepted)
    before = {p.name: p.stat().st_mtime_ns for p in WEIGHTS_DIR.iterdir()}
    out = WEIGHTS_DIR / "shapes_tiny.safetensors" if name == "train_reward" else WEIGHTS_DIR / "sub"
    assert TRAINERS[name](["--quick", "--out", str(out)]) == 2
    assert "give --out outside" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in WEIGHTS_DIR.iterdir()} == before


def test_train_testbed_reports_errors_like_every_other_command(tmp_path, capsys):
    assert ttsvar_main(["train-testbed", "--threads", "-1", "--out", str(tmp_path / "w")]) == 2
    assert capsys.readouterr().err.strip() == "error: --threads -1: must be >= 1 (or 0 for torch's default)"


def test_weights_and_record_are_written_together_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    write_weights(path, {"w": torch.zeros(3)}, {"step": 1})
    old = path.read_bytes(), path.with_suffix(".json").read_text()
    calls = []

    def fsync(fd):  # interrupted while the second file (the record) is being synced
        calls.append(fd)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(KeyboardInterrupt):
        write_weights(path, {"w": torch.ones(5)}, {"step": 2})
    assert (path.read_bytes(), path.with_suffix(".json").read_text()) == old  # the old pair, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]  # no temp files left
    monkeypatch.undo()
    write_weights(path, {"w": torch.ones(5)}, {"step": 2})
    assert json.loads(path.with_suffix(".json").read_text()) == {"step": 2}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # safetensors' own save_file made 0600 files


def test_the_reward_data_cache_is_reused_only_under_its_own_settings(tmp_path):
    from ttsvar.testbed.data_cache import data_cache_path, data_settings, read_data_cache, write_data_cache

    path = data_cache_path(str(tmp_path / "cache"))  # np.savez appended .npz, so the cache was never found again
    assert path == tmp_path / "cache.npz"
    built = data_settings(0, 4, 2, None)
    assert built["generator"]  # the shipped generator, by content
    write_data_cache(path, {"images": np.zeros((2, 3), np.uint8), "prompts": np.asarray(["a", "b"])}, built)
    stored = read_data_cache(path, built)
    assert sorted(stored) == ["images", "prompts"] and stored["images"].shape == (2, 3)
    with pytest.raises(ValueError, match="built with other settings \\(samples_per_prompt, seed\\)"):
        read_data_cache(path, data_settings(7, 16, 2, None))
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="not a readable data cache"):
        read_data_cache(path, built)
    np.savez(tmp_path / "old.npz", images=np.zeros(2))
    with pytest.raises(ValueError, match="written before caches recorded their settings"):
        read_data_cache(tmp_path / "old.npz", built)
    for bad in (tmp_path, tmp_path / "missing" / "c.npz"):
        with pytest.raises(ValueError, match="give a .npz file in an existing folder"):
            data_cache_path(str(bad))


def test_ensemble_members_share_one_data_seed():
    """`data_seed` decides the sampled images (and so which `--data` cache is reused); `seed` alone then varies the
    model, as members of an ensemble need."""
    tc = train_reward.RewardTrainConfig(seed=3)
    assert train_reward.sampling_seed(tc) == 3  # -1: the data follow `seed`, as before the field existed
    tc.data_seed = 0
    assert train_reward.sampling_seed(tc) == 0


def test_train_reward_refuses_a_bad_data_cache_before_sampling(tmp_path, capsys):
    (tmp_path / "c.npz").write_bytes(b"not a zip")
    assert train_reward.main(["--quick", "--out", str(tmp_path / "r.safetensors"), "--data",
                              str(tmp_path / "c.npz")]) == 2
    assert "not a readable data cache" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
