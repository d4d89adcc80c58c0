"""The released Infinity builders (`infinity-2b`/`-8b`) on checkpoint files in the official formats, at a tiny
size: the same code path a user's real files take (meta-device build, `assign=True` load, key adaptation, VAE
and text encoder), with only the config shrunk and T5 replaced by the word encoder. Plus the one-line errors
of `read_state_dict` for files it cannot read."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from ttsvar.core.checkpoint import CheckpointError, read_state_dict
from ttsvar.core.generator import Rows
from ttsvar.models.infinity import builders
from ttsvar.models.infinity.model import Infinity, InfinityConfig
from ttsvar.models.infinity.vae import BSQVAE, BSQVAEConfig, vae_state_dict_to_official
from ttsvar.models.registry import ModelConfig
from ttsvar.models.text import WordEncoderConfig, WordTextEncoder

VCFG = BSQVAEConfig.tiny()
ICFG = InfinityConfig.tiny(codebook_dim=VCFG.codebook_dim)
NAMES = ("infinity_2b_reg.pth", "infinity_vae_d32reg.pth")


@pytest.fixture
def files(tmp_path, monkeypatch):
    """An Infinity and a VAE with random weights, the VAE saved as the official file is ({'vae': ...} with the
    mask buffers), a T5 folder stand-in, and `build(weights)` running the released builder on them."""
    monkeypatch.setattr(builders, "T5TextEncoder", lambda path, device="cpu": WordTextEncoder(
        WordEncoderConfig(dim=ICFG.text_channels, max_len=ICFG.text_maxlen)))
    monkeypatch.setattr(builders, "scale_schedule", lambda h_div_w, pixels: [(1, 1), (2, 2), (3, 3), (4, 4)])
    torch.manual_seed(0)
    model = Infinity(ICFG)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # no parameter left at a constant init
    torch.save({"vae": vae_state_dict_to_official(BSQVAE(VCFG))}, tmp_path / "vae.pth")
    (tmp_path / "t5").mkdir()

    def build(weights, dtype="float32"):
        return builders._released(ModelConfig(name="infinity-2b", weights=str(weights), device="cpu", dtype=dtype),
                                  None, ICFG, VCFG, NAMES, str(tmp_path / "vae.pth"), str(tmp_path / "t5"), 1.0, "1M")

    return tmp_path, model, build


def _sample(gen):
    state = gen.start({0: "a red circle"}, Rows.for_prompts(2, seeds=[1]))
    for _ in range(gen.num_scales):
        state = gen.step(state)
    return gen.finish(state)


def _official(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("variant", ["fp32", "bf16", "fp16-safetensors", "no-zero-k-bias", "orig-mod",
                                     "module-orig-mod", "trainer-nested"])
def test_the_released_builder_loads_official_layouts(files, variant):
    tmp, model, build = files
    sd = _official(model)
    path = tmp / "w.pth"
    if variant == "bf16":
        sd = {k: v.bfloat16() for k, v in sd.items()}
    elif variant == "fp16-safetensors":
        from safetensors.torch import save_file

        sd = {k: v.half() for k, v in sd.items()}
        path = tmp / "w.safetensors"
        save_file(sd, str(path))
    elif variant == "no-zero-k-bias":
        sd = {k: v for k, v in sd.items() if not k.endswith("zero_k_bias")}
    elif variant == "orig-mod":
        sd = {"_orig_mod." + k: v for k, v in sd.items()}
    elif variant == "module-orig-mod":
        sd = {"module._orig_mod." + k: v for k, v in sd.items()}
    elif variant == "trainer-nested":
        sd = {"trainer": {"gpt_fsdp": sd}}
    if path.suffix == ".pth":
        torch.save(sd, path)
    gen = build(path)
    loaded = gen.model.state_dict()
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in loaded.values())
    for k, v in _official(model).items():
        want = v.half().float() if variant == "fp16-safetensors" else v.bfloat16().float() if variant == "bf16" else v
        torch.testing.assert_close(loaded[k], want, rtol=0, atol=0, msg=k)
    images = _sample(gen)
    assert images.shape[0] == 2 and torch.isfinite(images.float()).all()


@pytest.mark.parametrize("rows", [8, 40])  # trained with a shorter or a longer text_maxlen than the model's 16
def test_cfg_uncond_of_another_length_is_trimmed_or_padded_reproducibly(files, rows):
    tmp, model, build = files
    sd = _official(model)
    sd["cfg_uncond"] = torch.randn(rows, ICFG.text_channels)
    torch.save(sd, tmp / "w.pth")
    a, b = build(tmp / "w.pth").model.cfg_uncond, build(tmp / "w.pth").model.cfg_uncond
    n = min(rows, ICFG.text_maxlen)
    assert a.shape == (ICFG.text_maxlen, ICFG.text_channels) and a.device.type == "cpu"
    torch.testing.assert_close(a[:n], sd["cfg_uncond"][:n], rtol=0, atol=0)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the padding is drawn from a fixed seed
    if rows < ICFG.text_maxlen:
        pad = a[n:]
        assert pad.abs().max() <= 2.0 / ICFG.text_channels**0.5 and pad.std() > 0.5 / ICFG.text_channels**0.5


def test_a_sharded_folder_with_an_index_loads_like_one_file(files):
    from safetensors.torch import save_file

    tmp, model, build = files
    sd = _official(model)
    keys = sorted(sd)
    folder = tmp / "infinity_8b_weights"
    folder.mkdir()
    halves = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    for name, ks in halves.items():
        save_file({k: sd[k] for k in ks}, str(folder / name))
    index = {"metadata": {}, "weight_map": {k: name for name, ks in halves.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    for k, v in build(folder).model.state_dict().items():
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"lists 1 shard\(s\) that are not there: model-00002-of-00002"):
        build(folder)
    (folder / "model.safetensors.index.json").unlink()
    with pytest.raises(CheckpointError, match=r"folder without a shard index"):
        build(folder)


def test_files_swapped_between_model_weights_and_vae_weights_say_so(files):
    tmp, model, build = files
    with pytest.raises(CheckpointError, match="this is a BSQ-VAE checkpoint.*pass it as model.options.vae_weights"):
        build(tmp / "vae.pth")
    torch.save(_official(model), tmp / "w.pth")
    with pytest.raises(CheckpointError, match="this is an Infinity transformer checkpoint: pass it as model.weights"):
        builders.load_vae(tmp / "w.pth", VCFG, "cpu")


def test_a_checkpoint_of_another_size_is_one_line_naming_the_keys(files):
    tmp, _, build = files
    torch.save(_official(Infinity(InfinityConfig.tiny(codebook_dim=VCFG.codebook_dim, depth=3, block_chunks=3))),
               tmp / "w.pth")
    with pytest.raises(CheckpointError) as e:
        build(tmp / "w.pth")
    msg = str(e.value)
    assert "\n" not in msg and "does not match Infinity" in msg and "Expected the released infinity_2b_reg.pth" in msg


def test_unreadable_files_get_one_line_saying_what_they_are(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"w": torch.zeros(1000)}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    pickled = tmp_path / "training.pth"
    torch.save({"args": argparse.Namespace(lr=1.0), "w": torch.zeros(1)}, pickled)
    scripted = tmp_path / "ViT-L-14.pt"
    with pytest.warns(FutureWarning):  # deprecated, but OpenAI's CLIP files are TorchScript archives
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    cases = {truncated: "truncated or corrupt", pickled: r"pickles objects other than tensors \(argparse.Namespace\)",
             scripted: "TorchScript archive", garbage: "not a torch checkpoint"}
    for path, want in cases.items():
        with pytest.raises(CheckpointError, match=want) as e:
            read_state_dict(path)
        msg = str(e.value)
        assert "\n" not in msg and str(path) in msg and "weights_only=False" not in msg, msg
